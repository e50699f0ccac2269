"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2021), as the `adapters` library.

    y' = y + up(act(down(y)))      down: d -> d / reduction_factor, up: back to d

on the output y [b, l, d] of a sub-layer, before its dropout and residual:

  * 'houlsby' (the library's DoubleSeqBnConfig): after every attention
    (encoder self, decoder self and encoder-decoder) and every MLP, swish;
  * 'pfeiffer' (SeqBnConfig): after every MLP only, ReLU.

Reduction factor 16 and the library's "bert" init (weights N(0, 0.02), zero
biases: not an identity at init) by default; `zero_init_up` starts the
up-projection at zero, so the model is unchanged at init. Variables live in
the 'adapters' collection under the sub-layer's path, e.g.
adapters/encoder/layers_0/mlp/{down_kernel, down_bias, up_kernel, up_bias};
in a bank they are per example.

The library applies the adapter after the sub-layer's dropout; here the
dropout (T5's, on the sub-layer output) also covers the adapter's output.
Without dropout (evaluation, serving) the two are the same function.
"""
import dataclasses
from typing import Any, Callable, ClassVar, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning.deltas import base
from prompt_tuning.model.sites import Site, module_path

ACTIVATIONS = {'relu': nn.relu, 'swish': nn.swish, 'gelu': nn.gelu, 'tanh': jnp.tanh}
PLACEMENTS = {'houlsby': ('attention', 'mlp'), 'pfeiffer': ('mlp',)}
_DEFAULT_ACTIVATION = {'houlsby': 'swish', 'pfeiffer': 'relu'}


@base.register
@dataclasses.dataclass(frozen=True)
class Adapters(base.Delta):
  """Bottleneck adapters after the sub-layers of `placement`.

  Attributes:
    placement: 'houlsby' (attention and MLP) or 'pfeiffer' (MLP only).
    reduction_factor: the bottleneck is d // reduction_factor wide.
    activation: one of ACTIVATIONS; None is the placement's own (swish / ReLU).
    zero_init_up: a zero up-projection (identity at init) instead of N(0, 0.02).
    init_std: standard deviation of the normal weight init.
  """
  kind: ClassVar[str] = 'adapters'
  sites: ClassVar[Tuple[str, ...]] = ('attention', 'mlp')

  placement: str = 'houlsby'
  reduction_factor: int = 16
  activation: Optional[str] = None
  zero_init_up: bool = False
  init_std: float = 0.02

  def __post_init__(self):
    if self.placement not in PLACEMENTS:
      raise ValueError(f'Unknown adapter placement {self.placement!r}; one of '
                       f'{sorted(PLACEMENTS)}.')
    if self.activation is not None and self.activation not in ACTIVATIONS:
      raise ValueError(f'Unknown adapter activation {self.activation!r}; one of '
                       f'{sorted(ACTIVATIONS)}.')
    if self.reduction_factor < 1:
      raise ValueError(f'reduction_factor must be at least 1, got {self.reduction_factor}.')

  @property
  def collection(self) -> str:
    return 'adapters'

  def logical_axis_rules(self) -> base.LogicalAxisRules:
    return (('adapter', None),)  # the bottleneck: small, replicated

  def intercept(self, site: Site, next_fun: Callable[..., Any], args: tuple,
                kwargs: dict, module: nn.Module) -> Any:
    y = next_fun(*args, **kwargs)  # [b, l, d]
    if site.name not in PLACEMENTS[self.placement]:
      return y
    d = y.shape[-1]
    width = d // self.reduction_factor
    if width < 1:
      raise ValueError(f'reduction_factor {self.reduction_factor} leaves no bottleneck for '
                       f'width {d}.')
    normal = nn.initializers.normal(self.init_std)
    up_init = nn.initializers.zeros if self.zero_init_up else normal
    param = lambda name, init, shape, axes: module.variable(
        self.collection, name, nn.with_logical_partitioning(
            lambda: init(module.make_rng('params'), shape, jnp.float32), axes)).value
    down = param('down_kernel', normal, (d, width), ('embed', 'adapter'))
    down_bias = param('down_bias', nn.initializers.zeros, (width,), ('adapter',))
    up = param('up_kernel', up_init, (width, d), ('adapter', 'embed'))
    up_bias = param('up_bias', nn.initializers.zeros, (d,), ('embed',))
    act = ACTIVATIONS[self.activation or _DEFAULT_ACTIVATION[self.placement]]
    h = y.astype(jnp.float32)
    h = act(_matmul(h, down) + base.along_rows(down_bias))
    return y + (_matmul(h, up) + base.along_rows(up_bias)).astype(y.dtype)

  def bank_leaves(self) -> Dict[str, int]:
    return {f'{self.collection}/.*/(down|up)_kernel': 2,
            f'{self.collection}/.*/(down|up)_bias': 1}


def _matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """[b, l, i] x [i, o] (or per example [b, i, o]) -> [b, l, o]."""
  return jnp.einsum('bli,bio->blo', x, kernel) if kernel.ndim == 3 else x @ kernel


__all__ = ['ACTIVATIONS', 'PLACEMENTS', 'Adapters']
