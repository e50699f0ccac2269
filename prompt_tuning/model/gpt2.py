"""GPT-2, a decoder-only language model, in Flax with T5X-style names.

    model = GPT2LM(config)
    logits = model.apply({'params': params}, tokens, mask)

tokens [batch, length] int; the second argument marks the real positions:
a bool mask [batch, length] (False at padding), or, as the decoder-only
contract passes it, seqio's `decoder_target_tokens` [batch, length], whose
trailing zeros are the padding (None: no padding). GPT-2 has no padding id
(id 0 is '!'), so a 0 before the last non-zero target is a real token here,
where `DecoderOnlyLM` (T5X's) would mask it. Logits are float32
[batch, length, vocab], the input and output embeddings are one table.

GPT2LM is a `decoder_only.DecoderOnlyBackbone`, so `model.contract`'s
`DecoderOnly` drives it as it drives `DecoderOnlyLM`: the same features
(seqio's `DecoderFeatureConverter`), prefill and one-token cached decoding
(`decode=True`). It is causal throughout: `decoder_causal_attention` (the
prefix LM) is accepted and ignored, as GPT-2 was trained without it.

Positions: learned absolute ones, added after `embed_decoder_inputs` (the
`decoder_input` site, where prompts join), so a prompt of p vectors placed
first takes positions 0..p-1 and the text p..p+l-1 (as PEFT does on
Hugging Face GPT-2); placed after the first token (`combine.after_first_token`)
it takes 1..p. The model drops the outputs of the p inserted positions, as
`DecoderOnlyLM` does. In cached decoding each example's next position is the
'cache'/`position/cache_index` [b] the prefill sets (as it sets every layer's
`cache_index`), so examples of different lengths continue at their own
positions. More than `n_positions` positions is an error naming the prompt's
and the input's share.

Sites (`sites.py`): `decoder_input` (`DecoderOnlyBackbone`), and, because
the modules are subclasses of the T5 ones with the same contracts,
`attention` and `attention_scores` (`Attention`), `mlp` (`Mlp`), `dense`
(`DenseWithBias`, every projection). Paths follow T5X's decoder:
'decoder/layers_0/self_attention/query', so the LoRA, IA3 and prefix target
patterns match. Not a site: `Block` (T5X's `decoder_only_layer` site is
`DecoderOnlyLayer`'s; no delta needs GPT-2's).
"""
import dataclasses
import functools
from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.model import layers
from prompt_tuning.model import sites
from prompt_tuning.model.decoder_only import DecoderOnlyBackbone, decoder_mask

Array = jax.Array
ACTIVATION_AXES = ('batch', 'length', 'embed')

# Hugging Face `activation_function` names: 'gelu_new' is the tanh
# approximation GPT-2 was trained with, 'gelu' the exact erf form.
ACTIVATIONS: Dict[str, Callable[[Array], Array]] = {
    'gelu_new': functools.partial(nn.gelu, approximate=True),
    'gelu': functools.partial(nn.gelu, approximate=False),
}


@dataclasses.dataclass(frozen=True)
class GPT2Config:
  """Shape and numerics of a GPT-2; field names are Hugging Face's.

  Attributes:
    vocab_size: rows of the (tied) embedding table, 50257 for GPT-2's BPE.
    n_positions: rows of the position table, the longest sequence.
    n_embd: model width d.
    n_layer: blocks.
    n_head: attention heads; the head width is n_embd / n_head.
    n_inner: MLP hidden width; None is 4 * n_embd.
    activation_function: a key of ACTIVATIONS.
    layer_norm_epsilon: added to the variance in every LayerNorm.
    scale_attn_weights: divide attention logits by sqrt(head width).
    embd_pdrop: dropout on the embedded input.
    attn_pdrop: dropout on the attention weights.
    resid_pdrop: dropout on each sub-layer's output, before the residual.
    dtype: activation dtype; parameters and logits are always float32.
  """
  vocab_size: int = 50257
  n_positions: int = 1024
  n_embd: int = 768
  n_layer: int = 12
  n_head: int = 12
  n_inner: Optional[int] = None
  activation_function: str = 'gelu_new'
  layer_norm_epsilon: float = 1e-5
  scale_attn_weights: bool = True
  embd_pdrop: float = 0.1
  attn_pdrop: float = 0.1
  resid_pdrop: float = 0.1
  dtype: Any = 'float32'

  def __post_init__(self):
    if self.n_embd % self.n_head:
      raise ValueError(f'n_embd {self.n_embd} is not a multiple of n_head {self.n_head}.')
    if self.activation_function not in ACTIVATIONS:
      raise ValueError(f'activation_function {self.activation_function!r} is not one of '
                       f'{sorted(ACTIVATIONS)}.')

  @property
  def head_dim(self) -> int:
    return self.n_embd // self.n_head

  @property
  def mlp_dim(self) -> int:
    return self.n_inner or 4 * self.n_embd

  @property
  def activation_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  # The T5 names that width- and stack-reading code (deltas' setup) uses.
  @property
  def emb_dim(self) -> int:
    return self.n_embd

  @property
  def num_decoder_layers(self) -> int:
    return self.n_layer

  @property
  def num_encoder_layers(self) -> int:
    return 0

  def replace(self, **changes) -> 'GPT2Config':
    return dataclasses.replace(self, **changes)


def parameter_shapes(config: GPT2Config) -> Dict[str, Any]:
  """GPT2LM's parameter tree with shape tuples as leaves, written from the layout.

  token_embedder/embedding [vocab, d], position_embedder/embedding
  [n_positions, d], decoder/layers_i/{pre_self_attention_layer_norm,
  pre_mlp_layer_norm}/{scale, bias} [d], self_attention/{query, key, value,
  out}/{kernel [d, d], bias [d]}, mlp/wi {kernel [d, m], bias [m]}, mlp/wo
  {kernel [m, d], bias [d]}, decoder/decoder_norm/{scale, bias} [d].
  """
  d, m = config.n_embd, config.mlp_dim
  norm = {'scale': (d,), 'bias': (d,)}
  dense = lambda n_in, n_out: {'kernel': (n_in, n_out), 'bias': (n_out,)}
  decoder: Dict[str, Any] = {f'layers_{i}': {
      'pre_self_attention_layer_norm': dict(norm),
      'self_attention': {name: dense(d, d) for name in ('query', 'key', 'value', 'out')},
      'pre_mlp_layer_norm': dict(norm),
      'mlp': {'wi': dense(d, m), 'wo': dense(m, d)},
  } for i in range(config.n_layer)}
  decoder['decoder_norm'] = dict(norm)
  return {'token_embedder': {'embedding': (config.vocab_size, d)},
          'position_embedder': {'embedding': (config.n_positions, d)},
          'decoder': decoder}


def _init(config: GPT2Config, residual: bool = False) -> layers.Initializer:
  """GPT-2's normal(0.02); projections into the residual stream get 1/sqrt(2 n_layer) of it."""
  scale = 1 / np.sqrt(2 * config.n_layer) if residual else 1.0
  return nn.initializers.normal(stddev=0.02 * scale)


class DenseWithBias(layers.Dense):
  """layers.Dense plus a bias: Hugging Face's Conv1D, kernel [in, out], bias [out].

  A subclass, so it is the `dense` site with the same attributes (features,
  axes, dtype) that LoRA and IA3 read; T5's projections have no bias, which
  is why layers.Dense itself does not take one.
  """

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[..., in] -> [..., features]."""
    kernel = layers._param(self, 'kernel', self.kernel_init,  # pylint: disable=protected-access
                           (x.shape[-1], self.features), self.axes)
    bias = layers._param(self, 'bias', nn.initializers.zeros,  # pylint: disable=protected-access
                         (self.features,), self.axes[-1:])
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    return y + bias.astype(self.dtype)


class Attention(layers.MultiHeadDotProductAttention):
  """GPT-2 self-attention: biased query/key/value/out projections, logits / sqrt(hd).

  Hugging Face fuses query, key and value into one [d, 3d] `c_attn`; here
  they are three [d, d] projections (the checkpoint reader splits it), so
  deltas can target each. The 1/sqrt(hd) scaling is applied to the query
  before the inherited `attend` (the `attention_scores` site), whose
  attention dropout shares its mask across query positions as T5's does.
  """
  scale_logits: bool = True
  kernel_init: layers.Initializer = layers.default_kernel_init
  out_init: layers.Initializer = layers.default_kernel_init

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, bias: Optional[Array], *,
               enable_dropout: bool = False, decode: bool = False,
               prefill: bool = False) -> Array:
    """Attends [b, q, d] to [b, k, d] with additive bias [b|1, h|1, q, k] -> [b, q, d].

    `decode`: q is 1 and the keys and values join the cache (the base class's
    `_update_cache`, which masks what is not yet written); `prefill`: also
    writes the k keys and values to cache positions 0..k-1.
    """
    joined = self.num_heads * self.head_dim
    project = functools.partial(DenseWithBias, joined, ('embed', 'joined_kv'), self.dtype,
                                self.kernel_init)
    split = lambda x: x.reshape(x.shape[:2] + (self.num_heads, self.head_dim))
    query = split(project(name='query')(inputs_q))
    key = split(project(name='key')(inputs_kv))
    value = split(project(name='value')(inputs_kv))
    query, key, value = (nn.with_logical_constraint(x, ('batch', 'length', 'heads', 'kv'))
                         for x in (query, key, value))
    if self.scale_logits:
      query = query * jnp.asarray(self.head_dim ** -0.5, query.dtype)
    if decode:
      key, value, bias = self._update_cache(key, value, bias)
    elif prefill:
      self._prefill_cache(key, value)
    out = self.attend(query, key, value, bias, enable_dropout)
    out = out.reshape(out.shape[:2] + (joined,))
    return DenseWithBias(inputs_q.shape[-1], ('joined_kv', 'embed'), self.dtype,
                         self.out_init, name='out')(out)


class Mlp(layers.MlpBlock):
  """d -> mlp_dim -> activation -> d with biases (Hugging Face's c_fc, c_proj).

  A subclass of the T5 block for its `mlp` site; `activations` holds one
  GPT-2 activation name (a key of ACTIVATIONS), and the only dropout is the
  block's residual one, outside.
  """
  kernel_init: layers.Initializer = layers.default_kernel_init
  out_init: layers.Initializer = layers.default_kernel_init

  @nn.compact
  def __call__(self, x: Array, enable_dropout: bool = False) -> Array:
    """[b, l, d] -> [b, l, d]."""
    del enable_dropout  # GPT-2 has no dropout on the hidden activation
    (activation,) = self.activations
    h = DenseWithBias(self.mlp_dim, ('embed', 'mlp'), self.dtype, self.kernel_init,
                      name='wi')(x)
    h = nn.with_logical_constraint(ACTIVATIONS[activation](h), ('batch', 'length', 'mlp'))
    return DenseWithBias(x.shape[-1], ('mlp', 'embed'), self.dtype, self.out_init,
                         name='wo')(h)


def _layer_norm(config: GPT2Config, name: str) -> nn.LayerNorm:
  """LayerNorm with scale and bias carrying the 'embed' axis; statistics in float32.

  Two-pass variance (use_fast_variance=False), as PyTorch computes it.
  """
  return nn.LayerNorm(
      epsilon=config.layer_norm_epsilon, dtype=config.activation_dtype,
      use_fast_variance=False,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)), name=name)


class Block(nn.Module):
  """Pre-LayerNorm self-attention and MLP, each added back to the residual stream."""
  config: GPT2Config

  @nn.compact
  def __call__(self, x: Array, bias: Optional[Array], enable_dropout: bool = False,
               decode: bool = False, prefill: bool = False) -> Array:
    """[b, l, d] with bias [b|1, 1, l, l] (None in cached decoding) -> [b, l, d]."""
    cfg, dtype = self.config, self.config.activation_dtype
    dropout = nn.Dropout(cfg.resid_pdrop)
    y = _layer_norm(cfg, 'pre_self_attention_layer_norm')(x)
    y = Attention(cfg.n_head, cfg.head_dim, cfg.attn_pdrop, dtype,
                  scale_logits=cfg.scale_attn_weights, kernel_init=_init(cfg),
                  out_init=_init(cfg, residual=True), name='self_attention')(
                      y, y, bias, enable_dropout=enable_dropout, decode=decode,
                      prefill=prefill)
    x = x + dropout(y, deterministic=not enable_dropout)
    y = _layer_norm(cfg, 'pre_mlp_layer_norm')(x)
    y = Mlp(cfg.mlp_dim, (cfg.activation_function,), 0.0, dtype, kernel_init=_init(cfg),
            out_init=_init(cfg, residual=True), name='mlp')(y, enable_dropout)
    x = x + dropout(y, deterministic=not enable_dropout)
    return nn.with_logical_constraint(x, ACTIVATION_AXES)


class Decoder(nn.Module):
  """Embedded inputs [b, l, d] (positions added) -> final-normed hidden states [b, l, d]."""
  config: GPT2Config

  @nn.compact
  def __call__(self, x: Array, bias: Optional[Array], enable_dropout: bool = False,
               decode: bool = False, prefill: bool = False) -> Array:
    """bias [b|1, 1, l, l]: additive mask (None in cached decoding: the cache masks)."""
    cfg = self.config
    x = nn.Dropout(cfg.embd_pdrop)(x, deterministic=not enable_dropout)
    x = nn.with_logical_constraint(x, ACTIVATION_AXES)
    for i in range(cfg.n_layer):
      x = Block(cfg, name=f'layers_{i}')(x, bias, enable_dropout, decode, prefill)
    return _layer_norm(cfg, 'decoder_norm')(x)


class DecodePosition(nn.Module):
  """The absolute position of the token cached decoding feeds next.

  'cache'/cache_index: a scalar from 0, or [b] after a prefill (which sets
  every `cache_index` of the cache to each example's next position).
  """

  @nn.compact
  def __call__(self) -> Optional[Array]:
    """The position ([b] or scalar) of this call's token, then advances; None when creating."""
    created = self.has_variable('cache', 'cache_index')
    index = self.variable('cache', 'cache_index', lambda: jnp.array(0, jnp.int32))
    if not created:  # the call that creates the cache sees the whole length
      return None
    position = index.value
    index.value = position + 1
    return position


def _valid(target_tokens: Optional[Array], shape: Tuple[int, int]) -> Array:
  """[b, l] True at real positions: a bool mask as given, else up to the last non-zero id.

  seqio pads with 0, which in GPT-2's vocabulary is '!': only trailing zeros
  can be padding (unpacked and packed rows are padded at the end).
  """
  if target_tokens is None:
    return jnp.ones(shape, bool)
  if target_tokens.dtype == jnp.bool_:
    return target_tokens
  nonzero = (target_tokens > 0)[:, ::-1]
  return (jnp.cumsum(nonzero, axis=1) > 0)[:, ::-1]


class GPT2LM(DecoderOnlyBackbone):
  """GPT-2 with tied input/output embeddings.

  Attributes:
    config: shape and numerics.
    deltas: methods attached at the sites while `__call__` runs, a tuple of
      `prompt_tuning.deltas.Delta` (empty: the plain model); each delta's
      `setup(root)` may add modules at the root.
  """
  config: GPT2Config
  deltas: Tuple[Any, ...] = ()

  def setup(self):
    cfg = self.config
    dtype = cfg.activation_dtype
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.n_embd, dtype, _init(cfg))
    # The same lookup as for tokens; the table's rows are named 'vocab' (as
    # layers.Embed names them), which only decides how it is sharded.
    self.position_embedder = layers.Embed(cfg.n_positions, cfg.n_embd, dtype, _init(cfg))
    self.decoder = Decoder(cfg)
    self.position = DecodePosition()
    for delta in self.deltas:
      delta.setup(self)

  def _check_length(self, length: int, extra: int) -> None:
    """ValueError unless `extra` (a delta's) + `length` input positions fit the table."""
    limit = self.config.n_positions
    if length + extra <= limit:
      return
    if extra:
      raise ValueError(f'A prompt of {extra} positions + inputs of {length} = '
                       f'{length + extra} positions, more than n_positions {limit} of this '
                       f'GPT-2: shorten TASK_FEATURE_LENGTHS (inputs + targets) to at most '
                       f'{limit - extra} or the prompt.')
    raise ValueError(f'A sequence of {length} positions is longer than n_positions {limit} '
                     f'of this GPT-2: shorten TASK_FEATURE_LENGTHS (inputs + targets) to at '
                     f'most {limit}.')

  def embed_decoder_inputs_attached(self, decoder_input_tokens: Array, valid: Array
                                    ) -> Tuple[Array, Array]:
    """As the base class's, and the result must fit `n_positions` (the prefill asks first)."""
    x, valid = super().embed_decoder_inputs_attached(decoder_input_tokens, valid)
    self._check_length(decoder_input_tokens.shape[1], x.shape[1] - decoder_input_tokens.shape[1])
    return x, valid

  def _logits(self, y: Array) -> Array:
    logits = self.token_embedder.attend(y).astype(jnp.float32)
    return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))

  def __call__(self, decoder_input_tokens: Array, decoder_target_tokens: Optional[Array] = None,
               decoder_segment_ids: Optional[Array] = None,
               decoder_positions: Optional[Array] = None,
               decoder_causal_attention: Optional[Array] = None, *,
               enable_dropout: bool = False, decode: bool = False, prefill: bool = False,
               max_decode_length: Optional[int] = None) -> Array:
    """Logits [b, l, vocab] (float32) for tokens [b, l]; the signature is `DecoderOnlyLM`'s.

    Args:
      decoder_input_tokens: [b, l] ids (in cached decoding [b, 1]).
      decoder_target_tokens: [b, l]: real positions (see the module docstring).
      decoder_segment_ids: [b, l] packed examples, kept apart by the mask.
      decoder_positions: [b, l] each token's position (packed rows restart at
        0 per example); None: 0..l'-1 over the (prompted) sequence.
      decoder_causal_attention: ignored: GPT-2 is fully causal.
      enable_dropout: training.
      decode: one token per call against the cache ('cache' mutable).
      prefill: teacher forcing that also writes the cache (`contract.DecoderOnly`).
      max_decode_length: the cache's length (read from the input when it is created).
    """
    del decoder_causal_attention, max_decode_length  # causal; the cache knows its length
    with sites.attach(self.deltas):
      if decode:
        return self._decode_step(decoder_input_tokens, enable_dropout)
      length = decoder_input_tokens.shape[1]
      x, valid = self.embed_decoder_inputs(
          decoder_input_tokens, _valid(decoder_target_tokens, decoder_input_tokens.shape))
      extra = x.shape[1] - length
      self._check_length(length, extra)
      if extra and (decoder_segment_ids is not None or decoder_positions is not None):
        raise ValueError('Packed rows cannot take input positions from a delta (a prompt): '
                         'they would join only the first example of a row; do not pack.')
      positions = (jnp.arange(x.shape[1])[None, :] if decoder_positions is None
                   else decoder_positions)
      x = x + self.position_embedder(positions)
      bias = layers.mask_to_bias(decoder_mask(valid, None, decoder_segment_ids),
                                 self.config.activation_dtype)
      y = self.decoder(x, bias, enable_dropout, prefill=prefill)
      return self._logits(y[:, extra:])  # the inserted positions' outputs are not read

  def _decode_step(self, tokens: Array, enable_dropout: bool) -> Array:
    """tokens [b, 1] at each example's cached position -> logits [b, 1, vocab]."""
    position = self.position()
    if position is None:  # creating the cache: tokens [b, cache length]
      if tokens.shape[1] > self.config.n_positions:
        raise ValueError(f'Cached decoding over {tokens.shape[1]} positions (prompt + inputs '
                         f'+ decoded tokens) is longer than n_positions '
                         f'{self.config.n_positions} of this GPT-2: shorten '
                         'TASK_FEATURE_LENGTHS or the prompt.')
      positions = jnp.arange(tokens.shape[1])[None, :]
    else:
      positions = jnp.reshape(position, (-1, 1))  # [b|1, 1]
    x = self.embed_decoder_step(tokens) + self.position_embedder(positions)
    return self._logits(self.decoder(x, None, enable_dropout, decode=True))


__all__ = ['ACTIVATIONS', 'GPT2Config', 'GPT2LM', 'parameter_shapes']
