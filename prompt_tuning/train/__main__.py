r"""`python -m prompt_tuning.train`: T5X's `t5x.train` command line for delta tuning.

    python -m prompt_tuning.train \
      --gin_file=gin/models/t5_1_1/base.gin \
      --gin_file=gin/prompts/class_labels.gin \
      --gin_file=gin/runs/prompt_tune.gin \
      --gin.MODEL_DIR="'/tmp/rte_prompt'" \
      --gin.MIXTURE_OR_TASK_NAME="'taskless_super_glue_rte_v102'" \
      --gin.CLASS_LABELS="['entailment', 'not_entailment']" \
      --gin.INITIAL_CHECKPOINT_PATH="'gs://t5-data/pretrained_models/t5x/t5_1_1_lm100k_base/checkpoint_1100000'"

Gin files are read in order (later ones override earlier ones), then
`--gin_bindings` and the `--gin.NAME=VALUE` shorthand. The repository root is
always on the gin search path. The flags are `prompt_tuning.cli`'s.
"""
from prompt_tuning import cli


def main() -> None:
  from prompt_tuning.train import trainer  # pylint: disable=g-import-not-at-top
  trainer.train()


if __name__ == '__main__':
  cli.run(main, example_gin_file='gin/runs/prompt_tune.gin')
