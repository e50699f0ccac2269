"""What `python -m prompt_tuning.{train,eval,infer}` share: T5X's flags and start-up.

    --gin_file=FILE            repeatable; later files override earlier ones
    --gin_bindings='A = 1'     repeatable; applied after the files
    --gin.NAME=VALUE           shorthand for --gin_bindings='NAME = VALUE'
    --gin_search_paths=a,b     extra directories for gin files and includes
    --tfds_data_dir=DIR        TFDS data directory
    --coordinator_address, --process_count, --process_index
                               multi-host runs (jax.distributed.initialize)
    --verbose                  every library's log lines (TensorFlow, absl, CUDA,
                               Orbax, SeqIO), off by default (`console`), and the
                               traceback under the one-line errors
                               (also PROMPT_TUNING_VERBOSE=1)

A command's module calls `run(main, example_gin_file=...)`; `main` takes no
arguments and reads everything from gin. The configuration is checked right
after parsing, before anything heavy (`config_checks`; an unknown macro is
refused with the nearest known name). The user's mistakes end the process
with one line instead of a traceback:

    Configuration error: ...  a macro unset, unknown or of the wrong type, a
                              missing file, a base of another fingerprint
    Checkpoint error: ...     a checkpoint unreadable, of other shapes than the
                              configuration, or holding NaN
    Disk error: ...           no space left (or a file-size limit) while writing
"""
import errno
import os
import sys
import traceback
from typing import Any, Callable, Optional, Sequence

from absl import app
from absl import flags
from absl import logging

from prompt_tuning import config_checks
from prompt_tuning import console
from prompt_tuning import gin_utils

flags.DEFINE_multi_string('gin_file', [], 'Gin files, in order.')
flags.DEFINE_multi_string('gin_bindings', [], 'Individual gin bindings.')
flags.DEFINE_list('gin_search_paths', [], 'Extra directories to find gin files in.')
flags.DEFINE_string('tfds_data_dir', None, 'TFDS data directory (seqio/TFDS default if unset).')
flags.DEFINE_string('coordinator_address', None, 'Multi-host: address of process 0.')
flags.DEFINE_integer('process_count', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_index', None, 'Multi-host: index of this process.')
flags.DEFINE_bool('verbose', False, 'Every library\'s log lines, and the traceback under '
                  'one-line error messages.')
FLAGS = flags.FLAGS

# gin's own wording for parameters and macros left unset, and for bindings of
# configurables or parameters that do not exist.
_GIN_CONFIGURATION_MESSAGES = ('REQUIRED', 'Required bindings', 'macro',
                               'No configurable matching', "doesn't have a parameter named")
# What a full disk (or RLIMIT_FSIZE, or a quota) says when the errno is lost
# on the way up (TensorFlow's and TensorStore's errors carry only text).
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_DISK_FULL_MESSAGES = ('No space left on device', 'File too large', 'Disk quota exceeded')


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


def _chain(error: BaseException):
  """`error` and the exceptions it was raised from or during, outermost first."""
  seen = []
  while error is not None and error not in seen:
    seen.append(error)
    error = error.__cause__ or error.__context__
  return seen


def _disk_full(error: BaseException) -> Optional[str]:
  for e in _chain(error):
    if isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS:
      where = f' writing {e.filename}' if e.filename else ''
      return f'{os.strerror(e.errno)}{where}'
    text = str(e)
    for message in _DISK_FULL_MESSAGES:
      if message in text:
        return text.strip().splitlines()[0][:300]
  return None


def _restored_shapes_differ(error: BaseException) -> Optional[str]:
  """Which variables differ, when a checkpoint restores into a target of other shapes."""
  from prompt_tuning.model.checkpoints import StateShapeError  # pylint: disable=g-import-not-at-top
  for e in _chain(error):
    if isinstance(e, StateShapeError):
      return f': {e}'
    # Orbax's own refusal; its advice ("set strict=False") is about its API.
    if 'strict=False' in str(e) or 'shape mismatch' in str(e).lower():
      return ''
  return None


def one_line(error: BaseException) -> Optional[str]:
  """The one-line message for a user's mistake or the environment, None for a bug."""
  disk = _disk_full(error)
  if disk:
    return (f'Disk error: the disk is full ({disk}); free space, or point MODEL_DIR / '
            'the output directory at a disk with room, and rerun.')
  differ = _restored_shapes_differ(error)
  if differ is not None:
    return ('Checkpoint error: the checkpoint being restored holds variables of other '
            f'shapes than this configuration{differ} (did PROMPT_LENGTH, the method or the '
            'model change since it was saved?). Resume with the configuration the run was '
            'started with (MODEL_DIR/config.gin), or train into a new MODEL_DIR.')
  from prompt_tuning.model.param_shapes import CheckpointError  # pylint: disable=g-import-not-at-top
  if isinstance(error, CheckpointError):
    return f'Checkpoint error: {error}'
  if isinstance(error, UnicodeDecodeError):
    return (f'Configuration error: a file is not UTF-8 ({error}); save it as UTF-8 '
            '(--verbose shows which read failed).')
  if is_configuration_error(error):
    # gin appends "In call to configurable ..." lines: noise for the user.
    message = '\n'.join(line for line in str(error).splitlines()
                        if not line.strip().startswith('In call to configurable'))
    return f'Configuration error: {message}'
  return None


def _verbose() -> bool:
  if os.environ.get('PROMPT_TUNING_VERBOSE', '') not in ('', '0'):
    return True
  return bool(FLAGS.is_parsed() and FLAGS.verbose)


def call_reporting_configuration_errors(fn: Callable[[], Any]) -> Any:
  """Calls `fn`; the user's mistakes exit with one line (`one_line`), bugs raise.

  With --verbose (or PROMPT_TUNING_VERBOSE=1) the traceback is printed first.
  """
  try:
    return fn()
  except Exception as e:  # pylint: disable=broad-except
    message = one_line(e)
    if message is None:
      raise
    if _verbose():
      traceback.print_exc()
    sys.exit(message)


def start(argv: Sequence[str], example_gin_file: str) -> None:
  """Multi-host initialisation, the TFDS directory, then the gin configuration."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  console.setup(verbose=_verbose())  # before TensorFlow is imported
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
  gin_utils.parse_gin(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths,
                      check_names=True)
  config_checks.validate_config()  # before the base model or any data is read
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
