"""Gin, the T5X way: gin files found on search paths, macros in CAPITALS.

The repository root (the parent of this package) is always on the search
path, so `--gin_file=gin/models/t5_1_1/base.gin` and `include 'gin/...'`
resolve from anywhere.
"""
import os
from typing import Any, Sequence

import gin

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ConfigurationError(ValueError):
  """The gin configuration is incomplete or inconsistent (e.g. a macro is unset).

  The command-line tools print these as one line, without a traceback.
  """


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str] = (),
              search_paths: Sequence[str] = ()) -> None:
  """Parses gin files (later ones override earlier), then the bindings."""
  for path in [REPO_ROOT, *search_paths]:
    gin.add_config_file_search_path(path)
  gin.parse_config_files_and_bindings(list(gin_files), list(bindings),
                                      finalize_config=False)
  check_required_macros()


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
