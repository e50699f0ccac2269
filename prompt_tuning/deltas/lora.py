"""LoRA (Hu et al., 2021; PEFT's `LORA`): a low-rank update beside chosen projections.

    y = W x + (alpha / r) * B A dropout(x)        (rsLoRA: alpha / sqrt(r))

on every dense projection whose path matches `targets` (default: `query` and
`value` of every attention, encoder self, decoder self and encoder-decoder,
as PEFT's T5 default `q`, `v`). In Flax's [in, out] layout the factors are
`lora_a` [in, r] (PEFT's lora_A.weight transposed; kaiming-uniform with
a = sqrt(5), i.e. uniform in +-1/sqrt(in)) and `lora_b` [r, out] (zeros, so
the model is unchanged at init). They live in the 'lora' collection under
the projection's path, e.g. lora/encoder/layers_0/attention/query/lora_a,
with the kernel's logical axes on their outer dimension, so they shard with
their kernels.

`merge` folds the update into the kernels: the plain backbone then serves
with no overhead (and the same logits). In a bank the factors are per
example, [b, in, r] and [b, r, out].
"""
import dataclasses
import re
from typing import Any, Callable, ClassVar, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.deltas import base
from prompt_tuning.model.sites import Site, module_path

ATTENTION_QUERY_VALUE = r'(encoder|decoder)/layers_\d+/(attention|self_attention|encoder_decoder_attention)/(query|value)'
# torch's kaiming_uniform_(a=sqrt(5)) on a [r, in] weight: uniform in +-1/sqrt(in).
_A_INIT = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')


@base.register
@dataclasses.dataclass(frozen=True)
class LoRA(base.Delta):
  """Low-rank adapters on the dense projections matching `targets`.

  Attributes:
    rank: r (PEFT's default 8).
    alpha: the scale's numerator (PEFT's `lora_alpha`, default 8).
    dropout: dropout on the adapter's input while training (default 0).
    targets: a regex over projection paths (`sites.module_path`), matched whole.
    use_rslora: scale alpha / sqrt(r) instead of alpha / r.
  """
  kind: ClassVar[str] = 'lora'
  sites: ClassVar[Tuple[str, ...]] = ('dense',)
  mergeable: ClassVar[bool] = True

  rank: int = 8
  alpha: float = 8.0
  dropout: float = 0.0
  targets: str = ATTENTION_QUERY_VALUE
  use_rslora: bool = False

  def __post_init__(self):
    if self.rank < 1:
      raise ValueError(f'The LoRA rank must be at least 1, got {self.rank}.')
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f'The LoRA dropout must be in [0, 1), got {self.dropout}.')
    re.compile(self.targets)

  @property
  def collection(self) -> str:
    return 'lora'

  @property
  def scale(self) -> float:
    return self.alpha / (np.sqrt(self.rank) if self.use_rslora else self.rank)

  def logical_axis_rules(self) -> base.LogicalAxisRules:
    return (('lora_rank', None),)

  def no_variables_hint(self) -> str:
    return (f'the LoRA targets {self.targets!r} match no dense projection (paths look '
            "like 'encoder/layers_0/attention/query', 'decoder/layers_1/mlp/wo')")

  def intercept(self, site: Site, next_fun: Callable[..., Any], args: tuple,
                kwargs: dict, module: nn.Module) -> Any:
    y = next_fun(*args, **kwargs)
    if not re.fullmatch(self.targets, module_path(module)):
      return y
    (x,) = args  # [b, l, in]; Dense.__call__(x), called positionally by the backbone
    d_in, d_out = x.shape[-1], y.shape[-1]
    if self.rank > min(d_in, d_out):
      raise ValueError(f'LoRA rank {self.rank} is larger than the projection '
                       f'{module_path(module)} ({d_in} -> {d_out}); use a rank <= '
                       f'{min(d_in, d_out)}.')
    in_axis, out_axis = module.axes
    a = module.variable(self.collection, 'lora_a', nn.with_logical_partitioning(
        lambda: _A_INIT(module.make_rng('params'), (d_in, self.rank), jnp.float32),
        (in_axis, 'lora_rank'))).value
    b = module.variable(self.collection, 'lora_b', nn.with_logical_partitioning(
        lambda: jnp.zeros((self.rank, d_out), jnp.float32), ('lora_rank', out_axis))).value
    h = x.astype(module.dtype)
    if self.dropout and module.has_rng('dropout'):  # training: the step passes a dropout rng
      keep = jax.random.bernoulli(module.make_rng('dropout'), 1.0 - self.dropout, h.shape)
      h = jnp.where(keep, h / (1.0 - self.dropout), 0.0).astype(h.dtype)
    a, b = a.astype(module.dtype), b.astype(module.dtype)
    if a.ndim == 3:  # a bank: factors per example
      update = jnp.einsum('blr,bro->blo', jnp.einsum('bli,bir->blr', h, a), b)
    else:
      update = h @ a @ b
    return y + (self.scale * update).astype(y.dtype)

  def bank_leaves(self) -> Dict[str, int]:
    return {f'{self.collection}/.*/lora_(a|b)': 2}

  def merge(self, variables: base.Variables) -> base.Variables:
    """`variables` with W + scale * A B in every adapted kernel and no 'lora' collection.

    The result serves with the backbone alone (no LoRA delta attached).
    """
    factors_b = base.module_leaves(variables, self.collection, 'lora_b')
    kernels = {}
    for path, a in base.module_leaves(variables, self.collection, 'lora_a').items():
      if a.ndim != 2:
        raise ValueError('A bank of LoRA deltas cannot be merged into one kernel.')
      kernel = base.kernel_at(variables, path)
      kernels[path] = (kernel.astype(np.float32) +
                       self.scale * (a @ factors_b[path])).astype(kernel.dtype)
    return base.with_kernels(variables, self.collection, kernels)

__all__ = ['ATTENTION_QUERY_VALUE', 'LoRA']
