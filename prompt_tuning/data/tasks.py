"""Registers every task and mixture of the project: import this module.

    --gin.MIXTURE_OR_TASK_MODULE="'prompt_tuning.data.tasks'"

- SuperGLUE v1.0.2 (`superglue_tasks`): `super_glue_<name>_v102`,
  `taskless_super_glue_<name>_v102`, `taskless_super_glue_<name>_v102_sentinel`,
  WSC's simple train/eval pair, `super_glue_v102_proportional` (and forms).
  Set PROMPT_TUNING_SUPERGLUE_DIR to read the official release's JSONL files
  instead of TFDS.
- GLUE (`glue_tasks`): `glue_<name>_v002` in the same forms,
  `glue_v002_proportional`, and the QQP <-> MRPC zero-shot transfer tasks
  (`glue_mrpc_from_qqp_v002`, `glue_qqp_from_mrpc_v002`).
- C4 objectives and local text files (`lm_tasks`), SQuAD / MRQA (`qa_tasks`).

`python tools/show_tasks.py` lists them. Importing twice is harmless: every
registration replaces the previous one.
"""
# pylint: disable=unused-import
from prompt_tuning.data import glue_tasks
from prompt_tuning.data import lm_tasks
from prompt_tuning.data import qa_tasks
from prompt_tuning.data import superglue_tasks
