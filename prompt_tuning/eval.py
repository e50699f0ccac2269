r"""`python -m prompt_tuning.eval`: T5X's `t5x.eval` for delta checkpoints and prompts.

Every checkpoint of a run, in step order:

    python -m prompt_tuning.eval \
      --gin_file=gin/models/t5_1_1/base.gin \
      --gin_file=gin/runs/eval.gin \
      --gin.CHECKPOINT_PATH="'/tmp/rte_prompt'" \
      --gin.EVAL_OUTPUT_DIR="'/tmp/rte_prompt/eval'" \
      --gin.MIXTURE_OR_TASK_NAME="'my_rte_task'" \
      --gin.MIXTURE_OR_TASK_MODULE="'my_tasks'"

One checkpoint: CHECKPOINT_PATH=.../checkpoint_1103000 (or .../best). A `.npy`
prompt: CHECKPOINT_PATH='rte.npy' with INITIAL_CHECKPOINT_PATH. An ensemble:
PROMPT_FILES=['a.npy', 'b.npy', '/runs/rte/checkpoint_1103000']. Metrics go
to EVAL_OUTPUT_DIR/<task>-metrics.jsonl, one line per checkpoint. The flags
are `prompt_tuning.cli`'s.
"""
from prompt_tuning import cli


def main() -> None:
  from prompt_tuning.infer import checkpoint_eval  # pylint: disable=g-import-not-at-top
  checkpoint_eval.evaluate_checkpoints()


if __name__ == '__main__':
  cli.run(main, example_gin_file='gin/runs/eval.gin')
