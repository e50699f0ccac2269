"""NaN and infinity checks on what is loaded: base models, deltas, prompt files, banks.

A NaN in a loaded file does not fail where it is read: it trains until the
first logged loss and is then blamed on the learning rate, or it silently
turns every prediction into the same token. `check_finite` fails at load,
naming the file, the variable and how many values are not finite.
"""
from typing import Any, Mapping

import numpy as np
from flax.traverse_util import flatten_dict

from prompt_tuning.model.param_shapes import CheckpointError


class NonFiniteError(CheckpointError):
  """A loaded file holds NaN or infinite values."""


def _all_finite(array: np.ndarray) -> bool:
  # A float64 sum of float32 values cannot overflow, and is NaN or infinite
  # exactly when some value is: one pass, no temporary the size of the array.
  return bool(np.isfinite(np.sum(array, dtype=np.float64)))


def non_finite_count(value: Any) -> int:
  """How many values of `value` are NaN or infinite (0 for non-float arrays)."""
  array = np.asarray(value)
  floating = array.dtype.kind == 'f' or 'float' in array.dtype.name  # bfloat16 is kind 'V'
  if not floating or _all_finite(array):
    return 0
  return int(array.size - np.count_nonzero(np.isfinite(array.astype(np.float32))))


def check_finite(tree: Any, source: str) -> None:
  """Raises NonFiniteError naming `source` and every variable with NaN or infinity.

  Args:
    tree: an array, or a (nested) mapping of arrays.
    source: the file or checkpoint it was read from, for the message.
  """
  flat = flatten_dict(tree, sep='/') if isinstance(tree, Mapping) else {'': tree}
  bad = {path: count for path, value in flat.items() if (count := non_finite_count(value))}
  report_non_finite(bad, {path: np.size(flat[path]) for path in bad}, source)


def report_non_finite(bad: Mapping[str, int], sizes: Mapping[str, int], source: str) -> None:
  """Raises NonFiniteError for {path: non-finite count} (nothing when it is empty)."""
  if bad:
    listing = ', '.join(f'{path or "the array"}: {count} of {sizes[path]}'
                        for path, count in sorted(bad.items()))
    raise NonFiniteError(f'{source} holds NaN or infinite values ({listing}); the file is '
                         'damaged or was saved from a diverged run: use another one.')


__all__ = ['NonFiniteError', 'check_finite', 'non_finite_count', 'report_non_finite']
