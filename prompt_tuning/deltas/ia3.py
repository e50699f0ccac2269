"""(IA)^3 (Liu et al., 2022; PEFT's `IA3`): learned rescaling of keys, values and the MLP.

Vectors initialised to ones multiply

  * the output of every key and value projection whose path matches
    `targets` ([heads * head_dim]; PEFT's T5 targets `k`, `v`), and
  * the input of every projection matching `feedforward`: the MLP's hidden
    activation [mlp] before `wo` (PEFT's feed-forward module `wo`; for the
    gated GELU, scaling either branch is the same).

The vectors live in the 'ia3' collection under the projection's path, e.g.
ia3/encoder/layers_0/attention/key/scale, with the kernel's logical axis of
the scaled dimension. In a bank they are per example, [b, dim].
"""
import dataclasses
import re
from typing import Any, Callable, ClassVar, Dict, Tuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from prompt_tuning.deltas import base
from prompt_tuning.model.sites import Site, module_path


@base.register
@dataclasses.dataclass(frozen=True)
class IA3(base.Delta):
  """Ones-initialised scaling vectors.

  Attributes:
    targets: projections whose output is scaled (regex over paths, matched whole).
    feedforward: projections whose input is scaled.
  """
  kind: ClassVar[str] = 'ia3'
  sites: ClassVar[Tuple[str, ...]] = ('dense',)
  mergeable: ClassVar[bool] = True

  targets: str = r'(encoder|decoder)/layers_\d+/\w*attention/(key|value)'
  feedforward: str = r'(encoder|decoder)/layers_\d+/mlp/wo'

  def __post_init__(self):
    re.compile(self.targets)
    re.compile(self.feedforward)

  @property
  def collection(self) -> str:
    return 'ia3'

  def no_variables_hint(self) -> str:
    return (f'the IA3 patterns {self.targets!r} and {self.feedforward!r} match no dense '
            "projection (paths look like 'encoder/layers_0/attention/key')")

  def intercept(self, site: Site, next_fun: Callable[..., Any], args: tuple,
                kwargs: dict, module: nn.Module) -> Any:
    path = module_path(module)
    in_axis, out_axis = module.axes
    if re.fullmatch(self.feedforward, path):
      (x,) = args  # Dense.__call__(x), called positionally by the backbone
      scale = self._scale(module, x.shape[-1], in_axis)
      return next_fun(x * base.along_rows(scale).astype(x.dtype), **kwargs)
    y = next_fun(*args, **kwargs)
    if re.fullmatch(self.targets, path):
      y = y * base.along_rows(self._scale(module, y.shape[-1], out_axis)).astype(y.dtype)
    return y

  def _scale(self, module: nn.Module, size: int, axis: str) -> Any:
    init = nn.with_logical_partitioning(lambda: jnp.ones((size,), jnp.float32), (axis,))
    return module.variable(self.collection, 'scale', init).value

  def bank_leaves(self) -> Dict[str, int]:
    return {f'{self.collection}/.*/scale': 1}

  def merge(self, variables: base.Variables) -> base.Variables:
    """Scales folded into the kernels [in, out]: rows for inputs, columns for outputs."""
    kernels = {}
    for path, scale in base.module_leaves(variables, self.collection, 'scale').items():
      if scale.ndim != 1:
        raise ValueError('A bank of IA3 deltas cannot be merged into one kernel.')
      kernel = base.kernel_at(variables, path)
      scale = scale.astype(np.float32)
      rows = re.fullmatch(self.feedforward, path)  # an input scale: the kernel's rows
      kernels[path] = (kernel * (scale[:, None] if rows else scale[None, :])).astype(kernel.dtype)
    return base.with_kernels(variables, self.collection, kernels)

__all__ = ['IA3']
