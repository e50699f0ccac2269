"""BitFit for a bias-free T5 (Ben Zaken et al., 2022; PEFT's BEFT): added, trained biases.

T5.1.1 has no biases, so BitFit adds a zero-initialised bias [out] to every
projection whose path matches `targets`: by default every attention and MLP
projection of every layer except the keys (a key bias adds q . b to every
score of a query, which the softmax cancels: its gradient is exactly zero,
and Adafactor would turn the rounding noise into a random walk). PEFT's BEFT
default is `value` alone: `targets=r'.*/value'`. The model is unchanged at init. Biases live in the
'bitfit' collection under the projection's path, e.g.
bitfit/encoder/layers_0/attention/query/bias; in a bank they are per example,
[b, out].

This is the smallest method: a model for writing a new one (docs/deltas.md).
"""
import dataclasses
import re
from typing import Any, Callable, ClassVar, Dict, Tuple

import flax.linen as nn
import jax.numpy as jnp

from prompt_tuning.deltas import base
from prompt_tuning.model.sites import Site, module_path


@base.register
@dataclasses.dataclass(frozen=True)
class BitFit(base.Delta):
  """A zero-initialised bias [out] added to the dense projections matching `targets`."""
  kind: ClassVar[str] = 'bitfit'
  sites: ClassVar[Tuple[str, ...]] = ('dense',)

  targets: str = r'(encoder|decoder)/layers_\d+/(\w*attention/(query|value|out)|mlp/\w+)'

  @property
  def collection(self) -> str:
    return 'bitfit'

  def no_variables_hint(self) -> str:
    return f'the BitFit targets {self.targets!r} match no dense projection'

  def intercept(self, site: Site, next_fun: Callable[..., Any], args: tuple,
                kwargs: dict, module: nn.Module) -> Any:
    y = next_fun(*args, **kwargs)  # [b, l, out]
    if not re.fullmatch(self.targets, module_path(module)):
      return y
    init = nn.with_logical_partitioning(lambda: jnp.zeros(y.shape[-1:], jnp.float32),
                                        module.axes[-1:])  # shards as the kernel's output
    bias = module.variable(self.collection, 'bias', init).value  # [out] or [b, out]
    return y + base.along_rows(bias).astype(y.dtype)

  def bank_leaves(self) -> Dict[str, int]:
    return {f'{self.collection}/.*/bias': 1}


@base.register
@dataclasses.dataclass(frozen=True)
class NormTuning(base.Delta):
  """Trains the RMS norms' `scale` leaves of the backbone (PEFT's LN_TUNING): no new variables.

  The checkpoint holds only those leaves of `params`; the loader merges them
  over the frozen base. Attaches to no site; its collection stays empty.
  Being leaves of the backbone's own tree, they cannot differ per example:
  norm-tuned deltas do not bank.
  """
  kind: ClassVar[str] = 'norm'
  mergeable: ClassVar[bool] = True

  patterns: Tuple[str, ...] = ('params/.*norm/scale',)

  def __post_init__(self):
    object.__setattr__(self, 'patterns', tuple(self.patterns))  # JSON and gin give lists

  @property
  def collection(self) -> str:
    return 'norm'

  def trainable_patterns(self) -> Tuple[str, ...]:
    return self.patterns

  def merge(self, variables: base.Variables) -> base.Variables:
    return variables  # its leaves are the backbone's already


__all__ = ['BitFit', 'NormTuning']
