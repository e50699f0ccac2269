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
always on the gin search path.
"""
import os
import sys

from absl import app
from absl import flags
from absl import logging

from prompt_tuning import gin_utils

flags.DEFINE_multi_string('gin_file', [], 'Gin files, in order.')
flags.DEFINE_multi_string('gin_bindings', [], 'Individual gin bindings.')
flags.DEFINE_list('gin_search_paths', [], 'Extra directories to find gin files in.')
flags.DEFINE_string('tfds_data_dir', None, 'TFDS data directory (seqio/TFDS default if unset).')
flags.DEFINE_string('coordinator_address', None, 'Multi-host: address of process 0.')
flags.DEFINE_integer('process_count', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_index', None, 'Multi-host: index of this process.')
FLAGS = flags.FLAGS


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Import late so --help is fast.
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.coordinator_address:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.process_count,
                               FLAGS.process_index)
  if FLAGS.tfds_data_dir:
    import seqio  # pylint: disable=g-import-not-at-top
    seqio.set_tfds_data_dir_override(FLAGS.tfds_data_dir)
  from prompt_tuning.train import trainer  # pylint: disable=g-import-not-at-top
  if not FLAGS.gin_file:
    raise app.UsageError('Give at least one --gin_file (e.g. gin/runs/prompt_tune.gin).')
  gin_utils.parse_gin(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths)
  logging.info('JAX sees %d devices on %d processes: %s', jax.device_count(),
               jax.process_count(), jax.devices()[:8])
  try:
    trainer.train()
  except ValueError as e:
    if 'REQUIRED' in str(e) or 'macro' in str(e):
      logging.error('%s', e)
      sys.exit(f'Configuration error: {e}')
    raise


if __name__ == '__main__':
  sys.argv = [sys.argv[0]] + gin_utils.rewrite_gin_args(sys.argv[1:])
  app.run(main)
