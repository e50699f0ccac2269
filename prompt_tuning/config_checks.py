"""Checks of the run's numbers and directories, before any heavy work.

Gin checks syntax, not meaning: `TRAIN_STEPS = 'abc'` or `BATCH_SIZE = 0`
parse, and fail minutes later (after the base model loaded) with a deep
traceback, or never (`CHECKPOINT_PERIOD = 0` divides by zero at the first
step). `validate_config()` reads the macros as the gin files and flags set
them and raises one `ConfigurationError` naming the macro and the fix. The
command-line tools call it right after parsing gin.

Only macros that are defined are checked (train, eval and infer define
different ones), and only literal values (a macro bound to another macro or
to a configurable is left to the code that uses it).
"""
import numbers
import os
from typing import Any, Optional

import gin

from prompt_tuning.gin_utils import ConfigurationError

# Counts that must be whole numbers >= 1.
POSITIVE = ('TRAIN_STEPS', 'BATCH_SIZE', 'CHECKPOINT_PERIOD', 'LOG_PERIOD', 'EVAL_STEPS',
            'PROMPT_LENGTH', 'PREFIX_LENGTH', 'NUM_PARTITIONS')
# The same, or None (off / the default).
POSITIVE_OR_NONE = ('EVAL_PERIOD', 'NUM_MICROBATCHES', 'KEEP_CHECKPOINTS')
NON_NEGATIVE = ('RANDOM_SEED',)
# Directories the run writes into (created when missing).
OUTPUT_DIRECTORIES = ('MODEL_DIR', 'INFER_OUTPUT_DIR', 'EVAL_OUTPUT_DIR')
STRINGS = ('MIXTURE_OR_TASK_NAME',)

_UNSET = object()


def _literal(name: str) -> Any:
  """The macro's value as written, or _UNSET (not defined, or not a literal)."""
  try:
    value = gin.query_parameter(f'{name}/macro.value')
  except ValueError:
    return _UNSET
  if type(value).__module__.startswith('gin'):  # a reference, %gin.REQUIRED, ...
    return _UNSET
  return value


def _whole(name: str, value: Any, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    kind = f'the string {value!r}' if isinstance(value, str) else repr(value)
    example = {'BATCH_SIZE': 32, 'PROMPT_LENGTH': 100, 'RANDOM_SEED': 0}.get(name, 1000)
    raise ConfigurationError(f'{name} must be a whole number, not {kind}; e.g. '
                             f'--gin.{name}={example}.')
  if value < minimum:
    raise ConfigurationError(f'{name} must be at least {minimum}, not {value}.')


def _creatable_directory(name: str, path: Any) -> None:
  if not isinstance(path, str) or not path:
    raise ConfigurationError(f'{name} must be a directory path in quotes, not {path!r}; '
                             f'e.g. --gin.{name}="\'/tmp/run\'".')
  if '://' in path:  # remote filesystems: their client reports what is wrong
    return
  path = os.path.abspath(path)
  if os.path.exists(path):
    if not os.path.isdir(path):
      raise ConfigurationError(f'{name} {path} is a file, not a directory; choose '
                               f'another {name}.')
    if not os.access(path, os.W_OK | os.X_OK):
      raise ConfigurationError(f'{name} {path} is not writable; choose another {name} '
                               'or fix its permissions.')
    return
  parent = os.path.dirname(path)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ConfigurationError(f'{name} {path} cannot be created: {parent} is a file; '
                             f'choose another {name}.')
  if not os.access(parent, os.W_OK | os.X_OK):
    raise ConfigurationError(f'{name} {path} cannot be created: {parent} is not '
                             f'writable; choose another {name}.')


def _feature_lengths(value: Any) -> None:
  if not isinstance(value, dict) or not value:
    raise ConfigurationError('TASK_FEATURE_LENGTHS must be a dict of lengths, e.g. '
                             '--gin.TASK_FEATURE_LENGTHS="{\'inputs\': 512, \'targets\': 8}", '
                             f'not {value!r}.')
  for feature, length in value.items():
    _whole(f'TASK_FEATURE_LENGTHS[{feature!r}]', length, 1)


def validate_config(macro: Optional[Any] = None) -> None:
  """Checks the types and ranges of the run's macros (see the module docstring).

  Args:
    macro: name -> literal value or _UNSET (tests); the parsed gin config by default.

  Raises:
    ConfigurationError: one line naming the macro, the value and the fix.
  """
  macro = macro or _literal
  for name in POSITIVE + POSITIVE_OR_NONE + NON_NEGATIVE:
    value = macro(name)
    if value is _UNSET or (value is None and name in POSITIVE_OR_NONE):
      continue
    _whole(name, value, 0 if name in NON_NEGATIVE else 1)
  for name in STRINGS:
    value = macro(name)
    if value is not _UNSET and not isinstance(value, str):
      raise ConfigurationError(f'{name} must be a string in quotes, not {value!r}; e.g. '
                               f'--gin.{name}="\'my_task\'".')
  for name in OUTPUT_DIRECTORIES:
    value = macro(name)
    if value is not _UNSET:
      _creatable_directory(name, value)
  lengths = macro('TASK_FEATURE_LENGTHS')
  if lengths is not _UNSET:
    _feature_lengths(lengths)


__all__ = ['validate_config']
