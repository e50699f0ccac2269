"""Gin, the T5X way: gin files found on search paths, macros in CAPITALS.

The repository root (the parent of this package) is always on the search
path, so `--gin_file=gin/models/t5_1_1/base.gin` and `include 'gin/...'`
resolve from anywhere.
"""
import difflib
import os
import re
from typing import Any, Optional, Sequence, Set

import gin

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ConfigurationError(ValueError):
  """The gin configuration is incomplete or inconsistent (e.g. a macro is unset).

  The command-line tools print these as one line, without a traceback.
  """


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str] = (),
              search_paths: Sequence[str] = (), check_names: bool = False) -> None:
  """Parses gin files (later ones override earlier), then the bindings.

  Args:
    check_names: refuse a binding of a macro that no gin file defines (and no
      binding refers to): gin accepts it silently, so a misspelled
      `--gin.TRAIN_STEP=5` would otherwise leave TRAIN_STEPS at its default.
      The command-line tools set it.

  Raises:
    ConfigurationError: a file is not UTF-8, a binding does not parse, an
      unknown macro is bound (check_names), or a required macro is unset.
  """
  for path in [REPO_ROOT, *search_paths]:
    gin.add_config_file_search_path(path)
  try:
    gin.parse_config_files_and_bindings(list(gin_files), [], finalize_config=False)
  except UnicodeDecodeError as e:
    raise ConfigurationError(_not_utf8(gin_files, search_paths, e)) from e
  defined = macro_names()
  # One binding at a time, so a parse error names the binding it is in.
  for binding in bindings:
    try:
      gin.parse_config(binding)
    except SyntaxError as e:
      name, _, value = binding.partition('=')
      raise ConfigurationError(
          f'Cannot parse the value of the binding {binding!r} ({e.msg}). Gin values are '
          f'Python literals: strings need quotes inside the flag, e.g. '
          f'--gin.{name.strip()}="\'{value.strip()}\'".') from e
    except ValueError as e:  # an unknown configurable or parameter: gin's first line
      raise ConfigurationError(f'{str(e).splitlines()[0]} (in the binding {binding!r})') from e
  if check_names:
    check_macro_names(defined, bindings)
  check_required_macros()


def macro_names() -> Set[str]:
  """The names of every macro bound so far."""
  # gin has no public listing of macros; its config dict is keyed by
  # (name, 'gin.macro') for them.
  return {name for name, selector in gin.config._CONFIG if selector == 'gin.macro'}  # pylint: disable=protected-access


def check_macro_names(defined: Set[str], bindings: Sequence[str]) -> None:
  """Fails on a macro the bindings set that no gin file defines, naming the nearest."""
  referenced = set()
  for binding in bindings:  # a new macro another binding uses is meant
    referenced.update(re.findall(r'%([A-Za-z_][\w.]*)', binding))
  for name in sorted(macro_names() - defined - referenced):
    close = difflib.get_close_matches(name, sorted(defined), n=1, cutoff=0.6)
    hint = (f'did you mean {close[0]}?' if close else
            'no gin file given defines it; check the spelling or add the gin file '
            'that defines it.')
    raise ConfigurationError(f'unknown macro {name} (from --gin.{name}=...); {hint}')


def _resolve(path: str, search_paths: Sequence[str]) -> Optional[str]:
  for directory in ['', REPO_ROOT, *search_paths]:
    candidate = os.path.join(directory, path)
    if os.path.isfile(candidate):
      return candidate
  return None


def _not_utf8(gin_files: Sequence[str], search_paths: Sequence[str],
              error: UnicodeDecodeError) -> str:
  """Which gin file (and line) is not UTF-8, for the message."""
  for path in gin_files:
    resolved = _resolve(path, search_paths)
    if resolved is None:
      continue
    with open(resolved, 'rb') as f:
      for number, line in enumerate(f, 1):
        try:
          line.decode('utf-8')
        except UnicodeDecodeError as e:
          return (f'{path} line {number} is not UTF-8 (byte {line[e.start]:#04x} at column '
                  f'{e.start + 1}); save the file as UTF-8.')
  return f'a gin file (or one it includes) is not UTF-8 ({error}); save it as UTF-8.'


def check_required_macros() -> None:
  """Fails naming every macro still bound to %gin.REQUIRED."""
  # gin has no public listing of macros; its config dict is keyed by
  # (name, 'gin.macro') for them.
  unset = sorted(name for (name, selector), bindings in gin.config._CONFIG.items()  # pylint: disable=protected-access
                 if selector == 'gin.macro' and repr(bindings.get('value')) == '%gin.REQUIRED')
  if unset:
    flags = ' '.join(f'--gin.{name}=...' for name in unset)
    raise ConfigurationError(f'Required gin macros are not set: {", ".join(unset)}. '
                     f'Set them with {flags} or in a gin file.')


@gin.configurable
def _macro_value(value: Any = gin.REQUIRED) -> Any:
  return value


def macro(name: str) -> Any:
  """The evaluated value of gin macro `name` (configurable references called).

  Raises:
    ConfigurationError: naming the macro when it is not defined.
  """
  try:
    gin.query_parameter(f'{name}/macro.value')
  except ValueError as e:
    raise ConfigurationError(f"The gin macro {name} is not set; bind it with "
                     f"--gin.{name}=... or in a gin file.") from e
  # Evaluating a macro means binding it to something and calling that.
  with gin.unlock_config():
    gin.parse_config(f'prompt_tuning.gin_utils._macro_value.value = %{name}')
  return _macro_value()


def rewrite_gin_args(argv: Sequence[str]) -> list:
  """Turns T5X's `--gin.NAME=VALUE` shorthand into `--gin_bindings=NAME = VALUE`.

  The value is a gin literal, so strings keep their inner quotes:
  `--gin.MODEL_DIR="'/tmp/run'"`.
  """
  rewritten = []
  for arg in argv:
    if arg.startswith('--gin.'):
      name, sep, value = arg[len('--gin.'):].partition('=')
      if not sep:
        raise ValueError(f'{arg}: expected --gin.NAME=VALUE')
      rewritten.append(f'--gin_bindings={name} = {value}')
    else:
      rewritten.append(arg)
  return rewritten


def config_str() -> str:
  """The effective configuration, as gin prints it (for MODEL_DIR/config.gin)."""
  return gin.config_str()
