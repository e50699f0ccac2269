"""A T5X-style decoder-only LM, with T5X's parameter tree, masks and call signature.

    model = DecoderOnlyLM(config)
    logits = model.apply({'params': params}, decoder_input_tokens, decoder_target_tokens,
                         decoder_causal_attention=...)       # [b, l, vocab] float32

The network of T5X's `t5x/examples/decoder_only/network.py` (what its
`DecoderOnlyModel` drives), built from this project's `layers.py` and the
T5 blocks of `t5.py`: every parameter has T5X's path and logical axes,

    decoder/token_embedder/embedding                 [vocab, d]  ('vocab', 'embed')
    decoder/relpos_bias/rel_embedding                [h, 32]     ('heads', 'relpos_buckets')
    decoder/layers_i/pre_self_attention_layer_norm/scale, self_attention/{query,key,value,out}
    decoder/layers_i/pre_mlp_layer_norm/scale, mlp/{wi_0,wi_1,wo}
    decoder/decoder_norm/scale                       [d]
    decoder/logits_dense/kernel                      [d, vocab]  (untied configs only)

Features are seqio's `DecoderFeatureConverter`'s: the padding mask comes from
`decoder_target_tokens` > 0 (the input starts with id 0, the BOS);
`decoder_causal_attention` [b, l] marks the inputs of an inputs+targets
example (and the first target position), which attend bidirectionally when
`config.inputs_bidirectional_attention` (the prefix LM); `decoder_segment_ids`
keeps packed examples apart (relative positions need no per-example offsets).

Deltas (`sites.py`): `decoder_input` is where prompts join the embedded
input. A delta may insert e extra positions there, all before the second
token (`combine.prefix`, or `combine.after_first_token`, google-research/
prompt-tuning's placement for decoder-only models: [BOS, prompt, x1, ...]);
the model drops the first e outputs, so logits stay [b, l, vocab] and
output j is read at the position just before token j + 1, as GR-PT does.
Cached decoding (`decode=True`) takes one token per call; `prefill=True`
fills the cache with a whole (prompted) prefix first, see `model.contract`.
"""
import functools
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning.model import layers
from prompt_tuning.model import sites
from prompt_tuning.model import t5
from prompt_tuning.model.config import DecoderOnlyConfig

Array = jax.Array


class DecoderOnlyLayer(nn.Module):
  """Pre-norm causal self-attention and MLP blocks with residuals (no cross-attention)."""
  config: DecoderOnlyConfig

  @nn.compact
  def __call__(self, x: Array, bias: Array, enable_dropout: bool = False,
               decode: bool = False, prefill: bool = False) -> Array:
    """[b, l, d] with bias [b|1, h, l, l] (cached decoding: the whole cache's) -> [b, l, d]."""
    cfg = self.config
    y = layers.RMSNorm(cfg.activation_dtype, name='pre_self_attention_layer_norm')(x)
    y = layers.MultiHeadDotProductAttention(
        cfg.num_heads, cfg.head_dim, cfg.dropout_rate, cfg.activation_dtype,
        name='self_attention')(y, y, bias, enable_dropout=enable_dropout, decode=decode,
                               prefill=prefill)
    x = x + t5.dropout(cfg)(y, deterministic=not enable_dropout)
    return t5.mlp_sublayer(cfg, x, enable_dropout)


@functools.lru_cache(maxsize=None)
def _layer_class(remat_policy: str) -> type:
  """DecoderOnlyLayer, or its `nn.remat` (flags static: positions 3-5 counting self)."""
  if remat_policy == 'none':
    return DecoderOnlyLayer
  return nn.remat(DecoderOnlyLayer, policy=t5.REMAT_POLICIES[remat_policy],
                  prevent_cse=True, static_argnums=(3, 4, 5))


class Decoder(nn.Module):
  """T5X's `decoder` scope: the embedder, the stack and the output projection."""
  config: DecoderOnlyConfig

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim, cfg.activation_dtype)
    self.relpos_bias = layers.RelativePositionBiases(
        cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance,
        cfg.num_heads, cfg.activation_dtype)
    layer = _layer_class(cfg.remat_policy)
    self.layers = [layer(cfg) for _ in range(cfg.num_layers)]  # named layers_0, ...: T5X's
    self.decoder_norm = layers.RMSNorm(cfg.activation_dtype)
    self.dropout = t5.dropout(cfg)  # one module: dropout has no parameters
    if not cfg.logits_via_embedding:
      self.logits_dense = layers.Dense(cfg.vocab_size, ('embed', 'vocab'), jnp.float32)

  def __call__(self, x: Array, mask: Optional[Array], enable_dropout: bool = False,
               decode: bool = False, prefill: bool = False,
               max_decode_length: Optional[int] = None) -> Array:
    """Embedded x [b, l, d], mask [b, 1, l, l] (None in cached decoding) -> logits [b, l, V]."""
    cfg = self.config
    dtype = cfg.activation_dtype
    drop = lambda y: self.dropout(y, deterministic=not enable_dropout)
    # In cached decoding the bias covers the whole cache; layers take their row.
    length = max_decode_length if decode and max_decode_length else x.shape[1]
    bias = self.relpos_bias(length, length, bidirectional=False)
    if mask is not None:
      bias = bias + layers.mask_to_bias(mask, dtype)
    y = nn.with_logical_constraint(drop(x), t5.ACTIVATION_AXES)
    for layer in self.layers:
      y = layer(y, bias, enable_dropout, decode, prefill)
    y = drop(self.decoder_norm(y))
    if cfg.logits_via_embedding:
      # Tied output projection, scaled as T5X does for the shared case.
      return (self.token_embedder.attend(y) / jnp.sqrt(y.shape[-1]).astype(dtype)
              ).astype(jnp.float32)
    return self.logits_dense(y)


def decoder_mask(valid: Array, causal_attention: Optional[Array] = None,
                 segment_ids: Optional[Array] = None) -> Array:
  """T5X's decoder self-attention mask, [b, 1, l, l] booleans.

  Causal, or-ed with inputs-to-inputs where `causal_attention` [b, l] is set
  (the prefix LM), and-ed with padding (`valid` [b, l]) and, for packed rows,
  with equal segment ids [b, l].
  """
  mask = layers.make_causal_mask(valid.shape[1])
  if causal_attention is not None:
    inputs = causal_attention.astype(bool)
    mask = mask | layers.make_attention_mask(inputs, inputs)
  mask = mask & layers.make_attention_mask(valid, valid)
  if segment_ids is not None:
    mask = mask & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
  return mask


def _lengthen(x: Optional[Array], extra: int) -> Optional[Array]:
  """[b, l] per-position values -> [b, l + extra]: the inserted positions copy position 0's."""
  if x is None or not extra:
    return x
  return jnp.concatenate([jnp.repeat(x[:, :1], extra + 1, axis=1), x[:, 1:]], axis=1)


class DecoderOnlyBackbone(nn.Module):
  """What every decoder-only backbone shares for the model contract (`contract.DecoderOnly`).

  Subclasses (`DecoderOnlyLM`, `gpt2.GPT2LM`) have a `token_embedder`
  (`layers.Embed`) and `deltas`, and take `__call__(decoder_input_tokens,
  decoder_target_tokens, decoder_segment_ids, decoder_positions,
  decoder_causal_attention, *, enable_dropout, decode, prefill,
  max_decode_length)` as `DecoderOnlyLM` documents it. The `decoder_input`
  site is this class's method, so one site serves every such backbone.
  """

  # -- the site: what goes in front of the decoder's input -----------------------
  def embed_decoder_inputs(self, decoder_input_tokens: Array, valid: Array
                           ) -> Tuple[Array, Array]:
    """tokens [b, l], valid [b, l] -> (embedded [b, l', d], valid [b, l'])."""
    return self.token_embedder(decoder_input_tokens), valid

  def embed_decoder_step(self, tokens: Array) -> Array:
    """The `decoder_step_input` site: cached decoding's tokens [b, 1] -> [b, 1, d]."""
    return self.token_embedder(tokens)

  def embed_decoder_inputs_attached(self, decoder_input_tokens: Array, valid: Array
                                    ) -> Tuple[Array, Array]:
    """`embed_decoder_inputs` with the deltas attached: how long their input is."""
    with sites.attach(self.deltas):
      return self.embed_decoder_inputs(decoder_input_tokens, valid)


class DecoderOnlyLM(DecoderOnlyBackbone):
  """The decoder-only LM: T5X's `DecoderWrapper` tree, deltas at the sites.

  Attributes:
    config: shape and numerics.
    deltas: the methods attached to this backbone (`prompt_tuning.deltas`);
      each delta's `setup(root)` may add modules at the root.
  """
  config: DecoderOnlyConfig
  deltas: Tuple[Any, ...] = ()

  def setup(self):
    self.decoder = Decoder(self.config)
    for delta in self.deltas:
      delta.setup(self)

  @property
  def token_embedder(self) -> layers.Embed:
    """The shared table, where input deltas (prompts) read the vocabulary."""
    return self.decoder.token_embedder

  def __call__(self, decoder_input_tokens: Array, decoder_target_tokens: Optional[Array],
               decoder_segment_ids: Optional[Array] = None,
               decoder_positions: Optional[Array] = None,
               decoder_causal_attention: Optional[Array] = None, *,
               enable_dropout: bool = False, decode: bool = False, prefill: bool = False,
               max_decode_length: Optional[int] = None) -> Array:
    """Logits [b, l, vocab] (float32) for decoder inputs [b, l].

    Teacher forcing and `prefill` mask as T5X; with `prefill` the keys and
    values are also written to the cache (created beforehand with
    `decode=True`), prompt positions included. Cached decoding
    (`decode=True`): l is 1, the cache does the masking, no delta's input
    positions are added. `decoder_positions` is accepted for T5X's signature;
    relative position biases need none.
    """
    del decoder_positions
    with sites.attach(self.deltas):
      if decode:
        return self.decoder(self.embed_decoder_step(decoder_input_tokens), None, enable_dropout,
                            decode=True, max_decode_length=max_decode_length)
      if decoder_target_tokens is None:
        raise ValueError('decoder_target_tokens is needed to mask padding unless decoding '
                         'with the cache (decode=True).')
      length = decoder_input_tokens.shape[1]
      causal_attention = (decoder_causal_attention
                          if self.config.inputs_bidirectional_attention else None)
      x, valid = self.embed_decoder_inputs(decoder_input_tokens, decoder_target_tokens > 0)
      extra = x.shape[1] - length
      if extra and decoder_segment_ids is not None:
        raise ValueError('Packed rows cannot take input positions from a delta (a prompt): '
                         'they would join only the first example of a row; do not pack.')
      mask = decoder_mask(valid, _lengthen(causal_attention, extra), decoder_segment_ids)
      logits = self.decoder(x, mask, enable_dropout, prefill=prefill)
      logits = logits[:, extra:]
      return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))


__all__ = ['Decoder', 'DecoderOnlyBackbone', 'DecoderOnlyLM', 'DecoderOnlyLayer', 'decoder_mask']
