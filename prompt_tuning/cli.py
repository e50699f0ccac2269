"""What `python -m prompt_tuning.{train,eval,infer}` share: T5X's flags and start-up.

    --gin_file=FILE            repeatable; later files override earlier ones
    --gin_bindings='A = 1'     repeatable; applied after the files
    --gin.NAME=VALUE           shorthand for --gin_bindings='NAME = VALUE'
    --gin_search_paths=a,b     extra directories for gin files and includes
    --tfds_data_dir=DIR        TFDS data directory
    --coordinator_address, --process_count, --process_index
                               multi-host runs (jax.distributed.initialize)

A command's module calls `run(main, example_gin_file=...)`; `main` takes no
arguments and reads everything from gin. Configuration mistakes (a required
macro left unset, a missing gin file, a checkpoint that is not there) end the
process with one readable line instead of a traceback.
"""
import sys
from typing import Any, Callable, Sequence

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

# gin's own wording for parameters and macros left unset.
_GIN_CONFIGURATION_MESSAGES = ('REQUIRED', 'Required bindings', 'macro')


def is_configuration_error(error: BaseException) -> bool:
  """Whether `error` is the user's configuration (reported in one line) or a bug."""
  if isinstance(error, (gin_utils.ConfigurationError, FileNotFoundError)):
    return True
  # Checkpoint-compatibility errors (e.g. a fingerprint mismatch) say what to fix.
  from prompt_tuning.model.checkpoints import FingerprintMismatchError  # pylint: disable=g-import-not-at-top
  if isinstance(error, FingerprintMismatchError):
    return True
  if isinstance(error, IOError) and 'gin' in str(error).lower():
    return True  # gin: "Unable to open file: ..."
  return (isinstance(error, (ValueError, RuntimeError)) and
          any(m in str(error) for m in _GIN_CONFIGURATION_MESSAGES))


def call_reporting_configuration_errors(fn: Callable[[], Any]) -> Any:
  """Calls `fn`; a configuration error exits with 'Configuration error: ...'."""
  try:
    return fn()
  except Exception as e:  # pylint: disable=broad-except
    if not is_configuration_error(e):
      raise
    # gin appends "In call to configurable ..." lines: noise for the user.
    message = '\n'.join(line for line in str(e).splitlines()
                        if not line.strip().startswith('In call to configurable'))
    sys.exit(f'Configuration error: {message}')


def start(argv: Sequence[str], example_gin_file: str) -> None:
  """Multi-host initialisation, the TFDS directory, then the gin configuration."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Imported late so --help is fast.
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.coordinator_address:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.process_count,
                               FLAGS.process_index)
  if FLAGS.tfds_data_dir:
    import seqio  # pylint: disable=g-import-not-at-top
    seqio.set_tfds_data_dir_override(FLAGS.tfds_data_dir)
  if not FLAGS.gin_file:
    raise app.UsageError(f'Give at least one --gin_file (e.g. {example_gin_file}).')
  gin_utils.parse_gin(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths)
  logging.info('JAX sees %d devices on %d processes: %s', jax.device_count(),
               jax.process_count(), jax.devices()[:8])


def run(main: Callable[[], Any], example_gin_file: str) -> None:
  """The whole command: rewrite `--gin.NAME=VALUE`, parse flags, start, call `main`."""
  try:
    sys.argv = [sys.argv[0]] + gin_utils.rewrite_gin_args(sys.argv[1:])
  except ValueError as e:
    sys.exit(f'Usage error: {e}')

  def absl_main(argv):
    call_reporting_configuration_errors(lambda: start(argv, example_gin_file))
    call_reporting_configuration_errors(main)

  app.run(absl_main)
