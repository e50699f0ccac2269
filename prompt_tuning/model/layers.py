"""Building blocks of the T5.1.1 network, numerically as T5X.

Every parameter is created with its T5X logical axes (flax's
`with_logical_partitioning`), so `nn.get_partition_spec` on the initialized
variables yields the partitioning and loaded plain arrays apply unchanged.

Shapes use: batch b, query length q, key/value length k, model width d
('embed'), heads h, head width hd ('kv'), joined heads h*hd ('joined_kv').
"""
import functools
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Initializer = Callable[..., Array]

# Added to attention logits at masked positions (T5X's value).
MASK_BIAS = -1e10

default_kernel_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')
attention_kernel_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')


def _param(module: nn.Module, name: str, init: Initializer, shape: Sequence[int],
           axes: Sequence[str]) -> Array:
  """A float32 parameter annotated with its logical axes."""
  return module.param(name, nn.with_logical_partitioning(init, tuple(axes)),
                      tuple(shape), jnp.float32)


class RMSNorm(nn.Module):
  """T5's layer norm: scale only, no mean subtraction, statistics in float32."""
  dtype: jnp.dtype = jnp.float32
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[..., d] -> [..., d]."""
    scale = _param(self, 'scale', nn.initializers.ones, (x.shape[-1],), ('embed',))
    x = x.astype(jnp.float32)
    mean_square = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    y = (x * jax.lax.rsqrt(mean_square + self.epsilon)).astype(self.dtype)
    return y * scale.astype(self.dtype)


class Dense(nn.Module):
  """A bias-free projection whose kernel is stored 2-D, [in, out], as T5X does."""
  features: int
  axes: Sequence[str]
  dtype: jnp.dtype = jnp.float32
  kernel_init: Initializer = default_kernel_init

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[..., in] -> [..., features]."""
    kernel = _param(self, 'kernel', self.kernel_init, (x.shape[-1], self.features),
                    self.axes)
    return jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))


class Embed(nn.Module):
  """Token embedding table [vocab, d]; `attend` gives tied output logits."""
  num_embeddings: int
  features: int
  dtype: jnp.dtype = jnp.float32
  embedding_init: Initializer = nn.initializers.normal(stddev=1.0)

  def setup(self):
    self.embedding = _param(self, 'embedding', self.embedding_init,
                            (self.num_embeddings, self.features), ('vocab', 'embed'))

  def __call__(self, tokens: Array) -> Array:
    """[b, l] int -> [b, l, d]. A gather; T5X's one-hot matmul gives the same values."""
    return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

  def attend(self, x: Array) -> Array:
    """[b, l, d] -> [b, l, vocab] against the (transposed) table."""
    return jnp.dot(x.astype(self.dtype), self.embedding.T.astype(self.dtype))


_ACTIVATIONS = {
    'gelu': functools.partial(nn.gelu, approximate=True),  # T5X's 'gelu' is tanh-GELU
    'relu': nn.relu,
    'linear': lambda x: x,
}


class MlpBlock(nn.Module):
  """Gated feed-forward: prod_i act_i(x @ wi_i) -> dropout -> @ wo.

  With one activation the kernel is called `wi` (original T5); with several,
  `wi_0, wi_1, ...` (T5.1.1's gated GELU is ('gelu', 'linear')).
  """
  mlp_dim: int
  activations: Sequence[str] = ('gelu', 'linear')
  dropout_rate: float = 0.1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, enable_dropout: bool = False) -> Array:
    """[b, l, d] -> [b, l, d]."""
    d = x.shape[-1]
    hidden = None
    for i, name in enumerate(self.activations):
      kernel_name = 'wi' if len(self.activations) == 1 else f'wi_{i}'
      h = Dense(self.mlp_dim, ('embed', 'mlp'), self.dtype, name=kernel_name)(x)
      h = _ACTIVATIONS[name](h)
      hidden = h if hidden is None else hidden * h
    hidden = nn.with_logical_constraint(hidden, ('batch', 'length', 'mlp'))
    hidden = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(
        hidden, deterministic=not enable_dropout)
    return Dense(d, ('mlp', 'embed'), self.dtype, name='wo')(hidden)


class MultiHeadDotProductAttention(nn.Module):
  """T5 attention: no 1/sqrt(hd) on the logits (folded into the query init).

  With `decode=True` keys and values are kept in the 'cache' collection
  (cached_key, cached_value [b, max_len, h, hd], cache_index): the call that
  creates the cache sees the full-length input and only records shapes; every
  later call takes one new position.
  """
  num_heads: int
  head_dim: int
  dropout_rate: float = 0.1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, bias: Optional[Array], *,
               enable_dropout: bool = False, decode: bool = False,
               prefill: bool = False) -> Array:
    """Attends [b, q, d] to [b, k, d] with additive bias [b|1, h|1, q, k].

    In cached decoding q is 1 and `bias` covers the whole cache,
    [b|1, h|1, max_len, max_len]; the row of the current position is used.
    `prefill` (a decoder-only prompt): attends as without a cache and also
    writes the k keys and values at cache positions 0..k-1; the caller then
    sets `cache_index` to each example's next position ([b]).
    """
    joined = self.num_heads * self.head_dim
    depth_scaling = np.sqrt(self.head_dim).astype(np.float32)
    query_init = lambda *a: attention_kernel_init(*a) / depth_scaling
    project = functools.partial(Dense, joined, ('embed', 'joined_kv'), self.dtype)
    split = lambda x: x.reshape(x.shape[:2] + (self.num_heads, self.head_dim))
    query = split(project(kernel_init=query_init, name='query')(inputs_q))
    key = split(project(kernel_init=attention_kernel_init, name='key')(inputs_kv))
    value = split(project(kernel_init=attention_kernel_init, name='value')(inputs_kv))
    query = nn.with_logical_constraint(query, ('batch', 'length', 'heads', 'kv'))
    key = nn.with_logical_constraint(key, ('batch', 'length', 'heads', 'kv'))
    value = nn.with_logical_constraint(value, ('batch', 'length', 'heads', 'kv'))

    if decode:
      key, value, bias = self._update_cache(key, value, bias)
    elif prefill:
      self._prefill_cache(key, value)
    out = self.attend(query, key, value, bias, enable_dropout)
    out = out.reshape(out.shape[:2] + (joined,))
    return Dense(inputs_q.shape[-1], ('joined_kv', 'embed'), self.dtype,
                 kernel_init=attention_kernel_init, name='out')(out)

  def attend(self, query: Array, key: Array, value: Array, bias: Optional[Array],
             enable_dropout: bool = False) -> Array:
    """Scores, softmax and weighted values: [b, q, h, hd] x [b, k, h, hd] -> [b, q, h, hd].

    A site of its own (after keys and values are formed, after the cache
    update), where prefixes join the keys and values.
    """
    # Logits and softmax in float32 whatever the activation dtype.
    logits = jnp.einsum('bqhd,bkhd->bhqk', query, key,
                        preferred_element_type=jnp.float32)
    if bias is not None:
      logits = logits + bias.astype(jnp.float32)
    weights = jax.nn.softmax(logits).astype(self.dtype)
    # T5 shares the attention-dropout mask across query positions.
    weights = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(
        weights, deterministic=not enable_dropout)
    return jnp.einsum('bhqk,bkhd->bqhd', weights, value)

  def _update_cache(self, key, value, bias):
    """Writes this step's key/value at cache_index; returns the full cache."""
    initialized = self.has_variable('cache', 'cached_key')
    cached_key = self.variable('cache', 'cached_key', jnp.zeros, key.shape, key.dtype)
    cached_value = self.variable('cache', 'cached_value', jnp.zeros, value.shape,
                                 value.dtype)
    cache_index = self.variable('cache', 'cache_index',
                                lambda: jnp.array(0, dtype=jnp.int32))
    if not initialized:
      return key, value, bias
    max_length = cached_key.value.shape[1]
    if key.shape[1] != 1:
      raise ValueError(f'Cached decoding takes one position per call, got {key.shape[1]}.')
    index = cache_index.value
    if index.ndim:
      return self._update_rows(key, value, bias, cached_key, cached_value, cache_index)
    key = jax.lax.dynamic_update_slice(cached_key.value, key, (0, index, 0, 0))
    value = jax.lax.dynamic_update_slice(cached_value.value, value, (0, index, 0, 0))
    cached_key.value, cached_value.value = key, value
    cache_index.value = index + 1
    # Only positions written so far are visible.
    visible = jnp.where(jnp.arange(max_length) <= index, 0.0, MASK_BIAS)
    step_bias = visible[None, None, None, :]
    if bias is not None:
      step_bias = step_bias + jax.lax.dynamic_slice_in_dim(bias, index, 1, axis=-2)
    return key, value, step_bias

  def _update_rows(self, key, value, bias, cached_key, cached_value, cache_index):
    """`_update_cache` after a prefill: each example at its own position, index [b]."""
    index = cache_index.value
    max_length = cached_key.value.shape[1]
    here = jnp.arange(max_length)[None, :] == index[:, None]  # [b, max_len]
    key = jnp.where(here[:, :, None, None], key, cached_key.value)
    value = jnp.where(here[:, :, None, None], value, cached_value.value)
    cached_key.value, cached_value.value = key, value
    cache_index.value = index + 1
    visible = jnp.where(jnp.arange(max_length)[None, :] <= index[:, None], 0.0, MASK_BIAS)
    step_bias = visible[:, None, None, :]  # [b, 1, 1, max_len]
    if bias is not None:
      rows = jnp.broadcast_to(bias, (index.shape[0],) + bias.shape[1:])
      step_bias = step_bias + rows[jnp.arange(index.shape[0]), :, index, :][:, :, None, :]
    return key, value, step_bias

  def _prefill_cache(self, key, value):
    """Writes keys and values [b, k, h, hd] at cache positions 0..k-1."""
    if not self.has_variable('cache', 'cached_key'):
      raise ValueError('Prefill needs a cache: create it first with decode=True and '
                       'max_decode_length (model.init or apply with mutable=["cache"]).')
    for name, x in (('cached_key', key), ('cached_value', value)):
      cached = self.variable('cache', name)
      cached.value = jax.lax.dynamic_update_slice(cached.value, x.astype(cached.value.dtype),
                                                  (0, 0, 0, 0))


def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> np.ndarray:
  """Maps memory_position - query_position to a bucket id, as T5.

  Half of the buckets (per direction when bidirectional) hold exact small
  distances; the rest grow logarithmically up to `max_distance`, beyond which
  everything shares the last bucket.
  """
  bucket = np.zeros_like(relative_position)
  distance = -relative_position
  if bidirectional:
    num_buckets //= 2
    bucket += (distance < 0).astype(np.int32) * num_buckets
    distance = np.abs(distance)
  else:
    distance = np.maximum(distance, 0)
  max_exact = num_buckets // 2
  is_small = distance < max_exact
  # eps keeps log(0) away; T5X adds it too, which matters at exact powers.
  log_ratio = np.log(distance.astype(np.float32) / max_exact + np.finfo(np.float32).eps)
  large = max_exact + (log_ratio / np.log(max_distance / max_exact) *
                       (num_buckets - max_exact)).astype(np.int32)
  large = np.minimum(large, num_buckets - 1)
  return bucket + np.where(is_small, distance, large)


class RelativePositionBiases(nn.Module):
  """Learned per-head bias from bucketed relative positions, [1, h, q, k]."""
  num_buckets: int
  max_distance: int
  num_heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, q_length: int, k_length: int, bidirectional: bool) -> Array:
    context = np.arange(q_length, dtype=np.int32)[:, None]
    memory = np.arange(k_length, dtype=np.int32)[None, :]
    buckets = relative_position_bucket(memory - context, bidirectional,
                                       self.num_buckets, self.max_distance)
    table = _param(self, 'rel_embedding',
                   nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform'),
                   (self.num_heads, self.num_buckets), ('heads', 'relpos_buckets'))
    bias = jnp.take(table, jnp.asarray(buckets), axis=1)  # [h, q, k]
    return bias[None].astype(self.dtype)


def make_attention_mask(query_valid: Array, key_valid: Array) -> Array:
  """[b, q] and [b, k] booleans -> [b, 1, q, k]."""
  return (query_valid[:, None, :, None] & key_valid[:, None, None, :])


def make_causal_mask(length: int) -> Array:
  """[1, 1, l, l]: position i sees positions <= i."""
  return jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]


def mask_to_bias(mask: Array, dtype: jnp.dtype = jnp.float32) -> Array:
  """Boolean mask -> additive bias (0 where visible, -1e10 where masked)."""
  return jnp.where(mask, 0.0, MASK_BIAS).astype(dtype)
