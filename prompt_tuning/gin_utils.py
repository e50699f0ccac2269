"""Gin, the T5X way: gin files found on search paths, macros in CAPITALS.

The repository root (the parent of this package) is always on the search
path, so `--gin_file=gin/models/t5_1_1/base.gin` and `include 'gin/...'`
resolve from anywhere.
"""
import os
from typing import Any, Sequence

import gin

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str] = (),
              search_paths: Sequence[str] = ()) -> None:
  """Parses gin files (later ones override earlier), then the bindings."""
  for path in [REPO_ROOT, *search_paths]:
    gin.add_config_file_search_path(path)
  gin.parse_config_files_and_bindings(list(gin_files), list(bindings),
                                      finalize_config=False)


@gin.configurable
def _macro_value(value: Any = gin.REQUIRED) -> Any:
  return value


def macro(name: str) -> Any:
  """The evaluated value of gin macro `name` (configurable references called).

  Raises:
    ValueError: naming the macro when it is not defined.
  """
  try:
    gin.query_parameter(f'{name}/macro.value')
  except ValueError as e:
    raise ValueError(f"The gin macro {name} is not set; bind it with "
                     f"--gin.{name}=... or in a gin file.") from e
  # Evaluating a macro means binding it to something and calling that.
  with gin.unlock_config():
    gin.parse_config(f'prompt_tuning.gin_utils._macro_value.value = %{name}')
  return _macro_value()
