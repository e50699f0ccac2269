"""Prefix tuning (Li & Liang, 2021) and P-tuning v2's deep prompts, as a delta.

Each chosen attention gets n trained key and value vectors per head, joined
in front of its own keys and values at the `attention_scores` site:

    key   [b, k, h, hd] -> [b, n + k, h, hd]          (value likewise)
    bias  [b|1, h|1, q, k] -> [b|1, h|1, q, n + k]    (prefix columns always visible)

Queries are unchanged, so lengths, masks and the key/value cache are too: in
cached decoding the keys at that site are the whole cache, and the prefix is
joined to them at every step, never written into it.

Placements: 'encoder' (encoder/layers_i/attention), 'decoder'
(decoder/layers_i/self_attention), 'cross' (decoder/layers_i/
encoder_decoder_attention); `layers` keeps only those layer indices.

Variables, collection 'prefix', float32, at the attention module's path:

    prefix/<attention>/prefix_key, prefix_value   [n, h, hd]   ('prefix_length', 'heads', 'kv')

(a bank's are [b, n, h, hd], one prefix per example). With `reparameterize`
(P-tuning v2; PEFT's `prefix_projection`) they are computed instead:

    prefix/prefix_encoder/embedding [n, d], hidden_kernel [d, H], hidden_bias [H]
        hidden = tanh(embedding @ hidden_kernel + hidden_bias)           [n, H]
    prefix/<attention>/key_kernel, value_kernel [H, h, hd], key_bias, value_bias [h, hd]
        prefix_key = hidden @ key_kernel + key_bias                      [n, h, hd]

The per-attention kernels are the column blocks of the reference's one
Linear(H, 2 * L * h * hd), kept beside the attention they feed: the function
and the parameter count are the same, `materialize` needs no model config,
and they shard with the heads. The hidden layer is computed at the root
(`encoder_input`, `encoder_mask`: the first sites of encode and decode) and
handed to the layers through `sites.scratch`, since `nn.remat`-lifted layers
cannot call a root module. `materialize` turns it into the plain per-attention
prefixes, which this delta then serves (per-attention leaves win).

Relative position bias of the prefix columns (`position_bias`):

  * 'none': zero, as the `adapters` library;
  * 'past': as Hugging Face T5 with n past keys (what PEFT's PREFIX_TUNING
    gives): the prefix is positions 0..n-1 and the sequence starts at n, so
    query i and prefix key j get the stack's bias for j - (n + i). The
    `relative_position_bias` site computes the stack's table for n more
    positions; its real block is the usual one, its prefix columns are kept
    for that stack's attentions.

Cross-attention has no relative bias in T5: its prefix columns get zero in
both modes. PEFT's PREFIX_TUNING on T5 is `placements=('decoder',),
position_bias='past'` (tests/test_prefix.py checks the logits against it).
"""
import dataclasses
import re
from typing import Any, Callable, ClassVar, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.deltas import base
from prompt_tuning.model import sites
from prompt_tuning.model.param_shapes import unflatten_tree
from prompt_tuning.model.sites import Site, module_path

Array = jax.Array
COLLECTION = 'prefix'
ENCODER = 'prefix_encoder'  # the root module of the reparameterization
PREFIX_AXES = ('prefix_length', 'heads', 'kv')
POSITION_BIASES = ('none', 'past')
# placement -> (stack, attention module name)
PLACEMENTS = {'encoder': ('encoder', 'attention'), 'decoder': ('decoder', 'self_attention'),
              'cross': ('decoder', 'encoder_decoder_attention')}
_PLACEMENT_OF = {(stack, name): p for p, (stack, name) in PLACEMENTS.items()}
_ATTENTION = re.compile(r'(encoder|decoder)/layers_(\d+)/(\w+)')
# torch.nn.Linear's default weight init: uniform in +-1/sqrt(fan_in).
_LINEAR_INIT = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform', in_axis=0,
                                                out_axis=-1)
_OUT_INIT = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform', in_axis=0,
                                             out_axis=(1, 2))


def _variable(module: nn.Module, name: str, init: Callable[..., Array],
              shape: Sequence[int], axes: Sequence[str]) -> Array:
  """A float32 variable of the 'prefix' collection, initialized from the 'params' rng."""
  return module.variable(COLLECTION, name, nn.with_logical_partitioning(
      lambda: init(module.make_rng('params'), tuple(shape), jnp.float32), tuple(axes))).value


class PrefixEncoder(nn.Module):
  """The shared part of the reparameterization: tanh(E W + b) [length, hidden_size]."""
  length: int
  width: int
  hidden_size: int

  @nn.compact
  def __call__(self) -> Optional[Array]:
    """The hidden layer [n, H]; None when its variables are absent (materialized)."""
    if (not self.has_variable(COLLECTION, 'embedding') and
        not self.is_mutable_collection(COLLECTION)):
      return None
    embedding = _variable(self, 'embedding', nn.initializers.normal(1.0),
                          (self.length, self.width), ('prefix_length', 'prefix_embed'))
    kernel = _variable(self, 'hidden_kernel', _LINEAR_INIT, (self.width, self.hidden_size),
                       ('prefix_embed', 'prefix_hidden'))
    bias = _variable(self, 'hidden_bias', nn.initializers.zeros, (self.hidden_size,),
                     ('prefix_hidden',))
    return jnp.tanh(embedding @ kernel + bias)


@base.register
@dataclasses.dataclass(frozen=True)
class PrefixTuning(base.Delta):
  """Trained key/value prefixes [n, h, hd] on the chosen attentions.

  Attributes:
    length: prefix positions n (P-tuning v2: 4-20; `adapters`: 30; PEFT's examples: 20).
    placements: any of 'encoder', 'decoder', 'cross' (see PLACEMENTS).
    layers: layer indices to prefix in each placed stack; None for all.
    position_bias: 'none' or 'past' (see the module docstring).
    reparameterize: compute the prefixes with P-tuning v2's MLP.
    hidden_size: H, the MLP's hidden width (P-tuning v2: 512).
    init_std: the std of the normal init of plain prefixes (PEFT's torch
      Embedding: 1).
  """
  kind: ClassVar[str] = 'prefix'
  sites: ClassVar[Tuple[str, ...]] = ('encoder_input', 'encoder_mask', 'decoder_input',
                                      'relative_position_bias', 'attention_scores')

  length: int = 20
  placements: Tuple[str, ...] = ('encoder', 'decoder', 'cross')
  layers: Optional[Tuple[int, ...]] = None
  position_bias: str = 'none'
  reparameterize: bool = False
  hidden_size: int = 512
  init_std: float = 1.0

  def __post_init__(self):
    # Gin and JSON give lists; a module field must be hashable.
    object.__setattr__(self, 'placements', tuple(self.placements))
    if self.layers is not None:
      object.__setattr__(self, 'layers', tuple(int(i) for i in self.layers))
    if self.length < 1:
      raise ValueError(f'The prefix length must be at least 1, got {self.length}.')
    unknown = [p for p in self.placements if p not in PLACEMENTS]
    if unknown or not self.placements:
      raise ValueError(f'Unknown prefix placements {unknown or "(none given)"}; use some of '
                       f'{sorted(PLACEMENTS)}.')
    if self.layers is not None and (not self.layers or min(self.layers) < 0):
      raise ValueError(f'Prefix layers must be non-negative layer indices (or None for all), '
                       f'got {self.layers}.')
    if self.position_bias not in POSITION_BIASES:
      raise ValueError(f'Unknown position_bias {self.position_bias!r}; one of '
                       f'{POSITION_BIASES}.')
    if self.hidden_size < 1:
      raise ValueError(f'hidden_size must be at least 1, got {self.hidden_size}.')

  @property
  def collection(self) -> str:
    return COLLECTION

  def logical_axis_rules(self) -> base.LogicalAxisRules:
    # Prefixes shard with their heads ('heads' is T5X's); the rest is small.
    return (('prefix_length', None), ('prefix_embed', None), ('prefix_hidden', None))

  def no_variables_hint(self) -> str:
    return (f'the placements {self.placements} with layers {self.layers} select no '
            'attention of this model')

  def setup(self, root: nn.Module) -> None:
    if self.position_bias == 'past' and not hasattr(root.config,
                                                     'relative_attention_num_buckets'):
      raise ValueError(f"position_bias='past' shifts relative position biases, which "
                       f'{type(root).__name__} does not have; use '
                       "position_bias='none'.")
    counts = {'encoder': root.config.num_encoder_layers,
              'decoder': root.config.num_decoder_layers}
    for placement in self.placements:
      stack = PLACEMENTS[placement][0]
      missing = [i for i in self.layers or () if i >= counts[stack]]
      if missing:
        raise ValueError(f'Prefix layers {missing} do not exist in the {stack} of this model '
                         f'({counts[stack]} layers, 0..{counts[stack] - 1}); choose layers '
                         f'below {counts[stack]} or other placements.')
    if self.reparameterize:
      setattr(root, ENCODER, PrefixEncoder(self.length, root.config.emb_dim, self.hidden_size))

  def intercept(self, site: Site, next_fun: Callable[..., Any], args: tuple, kwargs: dict,
                module: nn.Module) -> Any:
    if site.name in ('encoder_input', 'encoder_mask', 'decoder_input'):
      store = sites.scratch(self)
      if self.reparameterize and 'hidden' not in store:
        store['hidden'] = getattr(module, ENCODER)()
      return next_fun(*args, **kwargs)
    if site.name == 'relative_position_bias':
      return self._relative_bias(next_fun, args, kwargs, module)
    return self._attend(next_fun, args, kwargs, module)

  def _relative_bias(self, next_fun, args, kwargs, module) -> Array:
    """The stack's bias [1, h, q, k]; with 'past', its prefix columns go to the scratch."""
    stack = module_path(module).split('/')[0]
    placed = {PLACEMENTS[p][0] for p in self.placements if p != 'cross'}
    if self.position_bias != 'past' or stack not in placed:
      return next_fun(*args, **kwargs)
    q, k, bidirectional = _bind(('q_length', 'k_length', 'bidirectional'), args, kwargs)
    n = self.length
    # Positions 0..n-1 are the prefix, the sequence is shifted to start at n.
    full = next_fun(q + n, k + n, bidirectional=bidirectional)  # [1, h, n + q, n + k]
    sites.scratch(self)[f'{stack}_bias'] = full[:, :, n:, :n]  # [1, h, q, n]
    return full[:, :, n:, n:]  # buckets depend on j - i only: next_fun(q, k)

  def _placement(self, module: nn.Module) -> Optional[str]:
    """The placement of an attention module this delta prefixes, else None."""
    match = _ATTENTION.fullmatch(module_path(module))
    if not match:
      return None
    placement = _PLACEMENT_OF.get((match.group(1), match.group(3)))
    if placement not in self.placements:
      return None
    if self.layers is not None and int(match.group(2)) not in self.layers:
      return None
    return placement

  def _attend(self, next_fun, args, kwargs, module) -> Array:
    placement = self._placement(module)
    if placement is None:
      return next_fun(*args, **kwargs)
    query, key, value, bias, enable_dropout = _bind(
        ('query', 'key', 'value', 'bias', 'enable_dropout'), args, kwargs, (None, False))
    batch, _, heads, head_dim = key.shape
    prefixes = self._prefixes(module, (self.length, heads, head_dim))

    def join(prefix, x):  # [n, h, hd] | [b, n, h, hd] before [b, k, h, hd]
      prefix = jnp.broadcast_to(prefix, (batch,) + prefix.shape[-3:]).astype(x.dtype)
      return jnp.concatenate([prefix, x], axis=1)

    stack = PLACEMENTS[placement][0]
    columns = (sites.scratch(self)[f'{stack}_bias']
               if self.position_bias == 'past' and placement != 'cross' else None)
    bias = self._bias(module, bias, query.shape[1], key.shape[1], columns)
    return next_fun(query, join(prefixes[0], key), join(prefixes[1], value), bias,
                    enable_dropout)

  def _bias(self, module, bias, q, k, columns) -> Array:
    """bias [b|1, h|1, q, k] with the prefix's columns in front: [.., q, n + k]."""
    if bias is None:
      bias = jnp.zeros((1, 1, q, k), jnp.float32)
    if columns is None:
      columns = jnp.zeros((1, 1, q, self.length), bias.dtype)
    elif columns.shape[-2] != q:
      # Cached decoding: one query, at the position just written to the cache.
      row = module.get_variable('cache', 'cache_index') - 1
      columns = jax.lax.dynamic_slice_in_dim(columns, row, 1, axis=-2)
    rows = jnp.broadcast_shapes(bias.shape[:-1], columns.shape[:-1])
    return jnp.concatenate([jnp.broadcast_to(columns.astype(bias.dtype), rows + (self.length,)),
                            jnp.broadcast_to(bias, rows + (k,))], axis=-1)

  def _prefixes(self, module: nn.Module, shape: Tuple[int, int, int]) -> Tuple[Array, Array]:
    """This attention's (key, value) prefixes, [n, h, hd] each (a bank's [b, n, h, hd])."""
    path = module_path(module)
    served = module.has_variable(COLLECTION, 'prefix_key')
    hidden = sites.scratch(self).get('hidden')
    if not served and not module.is_mutable_collection(COLLECTION) and (
        not self.reparameterize or hidden is None):
      raise ValueError(f"No prefix at {path}: pass variables['{COLLECTION}'] (materialized "
                       "or with the reparameterization), or create them with model.init or "
                       f"model.apply(..., mutable=['{COLLECTION}'], rngs={{'params': rng}}).")
    if served or not self.reparameterize:
      normal = nn.initializers.normal(self.init_std)
      pair = tuple(_variable(module, name, normal, shape, PREFIX_AXES)
                   for name in ('prefix_key', 'prefix_value'))
      if any(p.shape[-3:] != shape or p.ndim not in (3, 4) for p in pair):
        raise ValueError(f'The prefixes at {path} have shapes {[p.shape for p in pair]}; this '
                         f'model expects {shape} [n, h, hd] (or [b, *{shape}] in a bank).')
      return pair
    heads_axes = PREFIX_AXES[1:]
    out = []
    for part in ('key', 'value'):
      kernel = _variable(module, f'{part}_kernel', _OUT_INIT, (hidden.shape[-1],) + shape[1:],
                         ('prefix_hidden',) + heads_axes)
      bias = _variable(module, f'{part}_bias', nn.initializers.zeros, shape[1:], heads_axes)
      out.append(jnp.einsum('nz,zhd->nhd', hidden, kernel) + bias)
    return out[0], out[1]

  def materialize(self, variables: base.Variables) -> base.Variables:
    """Reparameterized variables -> the plain prefix_key / prefix_value of every attention.

    Anything else (plain or already materialized prefixes) is returned as it is.
    """
    tree = variables.get(self.collection) or {}
    if ENCODER not in tree:
      return variables
    encoder = {k: np.asarray(v, np.float32) for k, v in tree[ENCODER].items()}
    hidden = np.tanh(encoder['embedding'] @ encoder['hidden_kernel'] + encoder['hidden_bias'])
    served = {}
    for part in ('key', 'value'):
      biases = base.module_leaves(variables, self.collection, f'{part}_bias')
      for path, kernel in base.module_leaves(variables, self.collection,
                                             f'{part}_kernel').items():
        prefix = np.einsum('nz,zhd->nhd', hidden, kernel.astype(np.float32)) + biases[path]
        served[f'{path}/prefix_{part}'] = prefix.astype(np.float32)
    return {**variables, self.collection: unflatten_tree(served)}

  def bank_leaves(self) -> Dict[str, int]:
    return {f'{self.collection}/.*/prefix_(key|value)': 3}


def _bind(names: Sequence[str], args: tuple, kwargs: dict, defaults: tuple = ()) -> list:
  """The arguments of a site call in `names` order, however they were passed."""
  values = dict(zip(names, args), **kwargs)
  fallback = dict(zip(names[len(names) - len(defaults):], defaults))
  return [values[name] if name in values else fallback[name] for name in names]


__all__ = ['COLLECTION', 'PLACEMENTS', 'POSITION_BIASES', 'PREFIX_AXES', 'PrefixEncoder',
           'PrefixTuning']
