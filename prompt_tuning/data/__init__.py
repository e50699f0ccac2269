"""Data: the T5 vocabulary, SeqIO tasks, preprocessors, postprocessors, metrics.

Importing `prompt_tuning.data.tasks` registers every task (set
MIXTURE_OR_TASK_MODULE = 'prompt_tuning.data.tasks').
"""
