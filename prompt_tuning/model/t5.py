"""The T5.1.1 encoder-decoder, with T5X's parameter tree and call signature.

    model = Transformer(config)
    logits = model.apply({'params': params}, encoder_input_tokens,
                         decoder_input_tokens, decoder_target_tokens)

Token id 0 is padding: it makes every mask. Logits are float32
[batch, target_length, vocab]. `encode` and `decode` are separate methods for
decoding; `decode(..., decode=True)` runs one position at a time against a
key/value cache in the 'cache' collection.

Methods (prompts, LoRA, adapters, ...) are deltas: `Transformer(config,
deltas=(...))` attaches them at the sites of `sites.py` while `__call__`,
`encode` and `decode` run; the `params` tree and numerics stay T5X's.
"""
import functools
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning.model import layers
from prompt_tuning.model import sites
from prompt_tuning.model.config import T5Config

Array = jax.Array
ACTIVATION_AXES = ('batch', 'length', 'embed')


def dropout(config: T5Config) -> nn.Dropout:
  """Hidden-state dropout, one mask shared across the length axis (as T5)."""
  return nn.Dropout(config.dropout_rate, broadcast_dims=(-2,))


def mlp_sublayer(config: T5Config, x: Array, enable_dropout: bool) -> Array:
  """pre_mlp_layer_norm -> mlp -> dropout -> residual, the last block of every layer.

  Called inside a layer's compact method, so the modules belong to that layer.
  """
  y = layers.RMSNorm(config.activation_dtype, name='pre_mlp_layer_norm')(x)
  y = layers.MlpBlock(config.mlp_dim, config.mlp_activations, config.dropout_rate,
                      config.activation_dtype, name='mlp')(y, enable_dropout)
  x = x + dropout(config)(y, deterministic=not enable_dropout)
  return nn.with_logical_constraint(x, ACTIVATION_AXES)


class EncoderLayer(nn.Module):
  """Pre-norm self-attention and MLP blocks with residuals."""
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, bias: Array, enable_dropout: bool = False) -> Array:
    """[b, l, d] with bias [b, h, l, l] -> [b, l, d]."""
    cfg, dtype = self.config, self.config.activation_dtype
    deterministic = not enable_dropout
    y = layers.RMSNorm(dtype, name='pre_attention_layer_norm')(x)
    y = layers.MultiHeadDotProductAttention(
        cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dtype, name='attention')(
            y, y, bias, enable_dropout=enable_dropout)
    x = x + dropout(cfg)(y, deterministic=deterministic)
    return mlp_sublayer(cfg, x, enable_dropout)


class DecoderLayer(nn.Module):
  """Self-attention, cross-attention and MLP blocks, each pre-norm."""
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, encoded: Array, self_bias: Array, cross_bias: Array,
               enable_dropout: bool = False, decode: bool = False) -> Array:
    cfg, dtype = self.config, self.config.activation_dtype
    deterministic = not enable_dropout
    attention = lambda name: layers.MultiHeadDotProductAttention(
        cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dtype, name=name)
    y = layers.RMSNorm(dtype, name='pre_self_attention_layer_norm')(x)
    y = attention('self_attention')(y, y, self_bias, enable_dropout=enable_dropout,
                                    decode=decode)
    x = x + dropout(cfg)(y, deterministic=deterministic)
    y = layers.RMSNorm(dtype, name='pre_cross_attention_layer_norm')(x)
    y = attention('encoder_decoder_attention')(y, encoded, cross_bias,
                                               enable_dropout=enable_dropout)
    x = x + dropout(cfg)(y, deterministic=deterministic)
    return mlp_sublayer(cfg, x, enable_dropout)


REMAT_POLICIES = {
    'full': None,  # jax.checkpoint's default: nothing saved but the inputs
    'minimal': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    'dots': jax.checkpoint_policies.checkpoint_dots,
}


@functools.lru_cache(maxsize=None)
def _layer_class(layer: type, remat_policy: str) -> type:
  """`layer`, or `nn.remat(layer)` recomputing its activations in the backward pass.

  The lifted module keeps the name it is given, so the parameter tree is the
  same either way. The boolean flags are static arguments (positions count
  `self` as 0, as flax's `nn.remat` does): EncoderLayer's enable_dropout,
  DecoderLayer's enable_dropout and decode; callers pass them positionally.
  """
  if remat_policy == 'none':
    return layer
  flags = {EncoderLayer: (3,), DecoderLayer: (5, 6)}[layer]
  return nn.remat(layer, policy=REMAT_POLICIES[remat_policy], prevent_cse=True,
                  static_argnums=flags)


def relpos(config: T5Config) -> layers.RelativePositionBiases:
  return layers.RelativePositionBiases(
      config.relative_attention_num_buckets, config.relative_attention_max_distance,
      config.num_heads, config.activation_dtype, name='relpos_bias')


class Encoder(nn.Module):
  """Embedded inputs [b, l, d] and mask [b, l] -> encoded [b, l, d]."""
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, mask: Array, enable_dropout: bool = False) -> Array:
    cfg = self.config
    length = x.shape[1]
    bias = (relpos(cfg)(length, length, bidirectional=True) +
            layers.mask_to_bias(layers.make_attention_mask(mask, mask), cfg.activation_dtype))
    x = dropout(cfg)(x, deterministic=not enable_dropout)
    x = nn.with_logical_constraint(x, ACTIVATION_AXES)
    for i in range(cfg.num_encoder_layers):
      x = _layer_class(EncoderLayer, cfg.remat_policy)(cfg, name=f'layers_{i}')(
          x, bias, enable_dropout)
    x = layers.RMSNorm(cfg.activation_dtype, name='encoder_norm')(x)
    return dropout(cfg)(x, deterministic=not enable_dropout)


class Decoder(nn.Module):
  """Decoder tokens + encoded -> logits [b, l, vocab] (float32).

  Owns `logits_dense` (T5.1.1) or, with tied embeddings, projects through the
  shared token embedder.
  """
  config: T5Config
  shared_embedding: layers.Embed

  @nn.compact
  def __call__(self, decoder_input_tokens: Array, encoded: Array,
               self_mask: Optional[Array], cross_mask: Array,
               enable_dropout: bool = False, decode: bool = False,
               max_decode_length: Optional[int] = None) -> Array:
    """self_mask [b, 1, l, l] (None in cached decoding), cross_mask [b, 1, l, k]."""
    cfg = self.config
    dtype = cfg.activation_dtype
    y = self.shared_embedding(decoder_input_tokens)
    # In cached decoding the bias covers the whole cache; layers slice their row.
    length = max_decode_length if decode and max_decode_length else y.shape[1]
    self_bias = relpos(cfg)(length, length, bidirectional=False)
    if self_mask is not None:
      self_bias = self_bias + layers.mask_to_bias(self_mask, dtype)
    cross_bias = layers.mask_to_bias(cross_mask, dtype)
    y = dropout(cfg)(y, deterministic=not enable_dropout)
    y = nn.with_logical_constraint(y, ACTIVATION_AXES)
    for i in range(cfg.num_decoder_layers):
      y = _layer_class(DecoderLayer, cfg.remat_policy)(cfg, name=f'layers_{i}')(
          y, encoded, self_bias, cross_bias, enable_dropout, decode)
    y = layers.RMSNorm(dtype, name='decoder_norm')(y)
    y = dropout(cfg)(y, deterministic=not enable_dropout)
    if cfg.logits_via_embedding:
      # Tied output projection, scaled as T5X does for the shared case.
      logits = self.shared_embedding.attend(y) / jnp.sqrt(y.shape[-1]).astype(dtype)
      return logits.astype(jnp.float32)
    return layers.Dense(cfg.vocab_size, ('embed', 'vocab'), jnp.float32,
                        name='logits_dense')(y)


class Transformer(nn.Module):
  """T5.1.1: a token embedder shared by encoder and decoder, untied logits.

  Attributes:
    config: shape and numerics.
    deltas: the methods attached to this backbone, a tuple of
      `prompt_tuning.deltas.Delta` (empty: the plain model). Each delta's
      `setup(root)` may add modules at the root (a prompt); its handlers
      wrap the sites while `__call__`, `encode` and `decode` run.
  """
  config: T5Config
  deltas: Tuple[Any, ...] = ()

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim, cfg.activation_dtype)
    self.encoder = Encoder(cfg)
    self.decoder = Decoder(cfg, self.token_embedder)
    for delta in self.deltas:
      delta.setup(self)

  # -- sites: what goes in front of the encoder input --------------------------
  def embed_encoder_inputs(self, encoder_input_tokens: Array) -> Tuple[Array, Array]:
    """[b, l] tokens -> (embedded [b, l', d], mask [b, l'])."""
    return self.token_embedder(encoder_input_tokens), encoder_input_tokens > 0

  def encoder_mask(self, encoder_input_tokens: Array) -> Array:
    """[b, l] tokens -> [b, l'] booleans over the encoded positions."""
    return encoder_input_tokens > 0

  # -- the network -----------------------------------------------------------
  def encode(self, encoder_input_tokens: Array, enable_dropout: bool = False) -> Array:
    """[b, l] tokens -> encoded [b, l', d]."""
    with sites.attach(self.deltas):
      x, mask = self.embed_encoder_inputs(encoder_input_tokens)
      return self.encoder(x, mask, enable_dropout)

  def decode(self, encoded: Array, encoder_input_tokens: Array,
             decoder_input_tokens: Array, decoder_target_tokens: Optional[Array] = None,
             enable_dropout: bool = False, decode: bool = False,
             max_decode_length: Optional[int] = None) -> Array:
    """Logits [b, t, vocab] (float32) for decoder inputs [b, t].

    Teacher forcing: queries and keys at padding targets are masked, plus the
    causal mask. Cached decoding (`decode=True`): t is 1 and the cache does
    the causal masking.
    """
    with sites.attach(self.deltas):
      encoder_valid = self.encoder_mask(encoder_input_tokens)
      if decode:
        self_mask = None
        decoder_valid = jnp.ones(decoder_input_tokens.shape, bool)
      else:
        if decoder_target_tokens is None:
          raise ValueError('decoder_target_tokens is needed to mask padding '
                           'unless decoding with the cache (decode=True).')
        decoder_valid = decoder_target_tokens > 0
        self_mask = (layers.make_attention_mask(decoder_valid, decoder_valid) &
                     layers.make_causal_mask(decoder_input_tokens.shape[1]))
      cross_mask = layers.make_attention_mask(decoder_valid, encoder_valid)
      logits = self.decoder(decoder_input_tokens, encoded, self_mask, cross_mask,
                            enable_dropout, decode, max_decode_length)
      return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Array, enable_dropout: bool = False,
               decode: bool = False, max_decode_length: Optional[int] = None) -> Array:
    with sites.attach(self.deltas):
      encoded = self.encode(encoder_input_tokens, enable_dropout)
      return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                         decoder_target_tokens, enable_dropout, decode, max_decode_length)
