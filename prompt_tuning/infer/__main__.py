r"""`python -m prompt_tuning.infer`: T5X's `t5x.infer`, predicting or scoring to JSON lines.

    python -m prompt_tuning.infer \
      --gin_file=gin/models/t5_1_1/base.gin \
      --gin_file=gin/runs/infer.gin \
      --gin.CHECKPOINT_PATH="'/tmp/rte_prompt/best'" \
      --gin.INFER_OUTPUT_DIR="'/tmp/rte_prompt/infer'" \
      --gin.MIXTURE_OR_TASK_NAME="'my_rte_task'" \
      --gin.MIXTURE_OR_TASK_MODULE="'my_tasks'"

writes /tmp/rte_prompt/infer/my_rte_task-validation-predict.jsonl. INFER_MODE
'score' writes each target's log-likelihood instead. PROMPT_FILES (a list)
ensembles prompts; decoding is `predict.DecodingConfig` (greedy, beam,
sample). The flags are `prompt_tuning.cli`'s.
"""
from prompt_tuning import cli


def main() -> None:
  from prompt_tuning.infer import batch_infer  # pylint: disable=g-import-not-at-top
  batch_infer.infer()


if __name__ == '__main__':
  cli.run(main, example_gin_file='gin/runs/infer.gin')
