"""The model configurations (T5.1.1 encoder-decoder, T5X decoder-only) and their sizes.

Field names follow T5X's `network.T5Config` so that T5X gin files read
naturally (`T5Config.emb_dim = 4096`). The two relative-position fields are
ours: T5X hard-codes them, but real checkpoints (the tiny one in shared/data
uses 4 buckets) need them configurable.
"""
import dataclasses
from typing import Any, Sequence, Union

import jax.numpy as jnp

# Values of T5Config.remat_policy (see there).
REMAT_POLICIES = ('none', 'minimal', 'dots', 'full')


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Shape and numerics of a T5.1.1 encoder-decoder.

  Attributes:
    vocab_size: rows of the embedding table (32128 for the T5 vocabulary:
      32000 pieces + 100 sentinels, padded to a multiple of 128).
    emb_dim: model width d.
    num_heads: attention heads.
    num_encoder_layers: encoder blocks.
    num_decoder_layers: decoder blocks.
    head_dim: width of one head (64 in every T5.1.1 size).
    mlp_dim: hidden width of the feed-forward block (d_ff).
    mlp_activations: ('gelu', 'linear') is T5.1.1's gated GELU; ('relu',) is
      the original T5's plain ReLU MLP.
    dropout_rate: rate of every dropout in the network (0.1 in fine-tuning).
    dtype: activation dtype; parameters and logits are always float32.
    logits_via_embedding: tie the output projection to the embedding table
      (original T5); T5.1.1 has a separate `logits_dense`.
    relative_attention_num_buckets: position buckets per stack (32).
    relative_attention_max_distance: distance beyond which buckets saturate.
    remat_policy: what each encoder/decoder layer keeps for the backward pass
      (T5X's scalable_t5 `remat_policy`): 'none' keeps every activation;
      'full' keeps only the layer's inputs and recomputes the rest; 'minimal'
      also keeps the outputs of matmuls without batch dimensions (the
      projections; `jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims`);
      'dots' keeps every matmul output, attention scores included
      (`checkpoint_dots`). Numerics and the parameter tree do not change.
  """
  vocab_size: int = 32128
  emb_dim: int = 512
  num_heads: int = 6
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  head_dim: int = 64
  mlp_dim: int = 1024
  mlp_activations: Sequence[str] = ('gelu', 'linear')
  dropout_rate: float = 0.1
  dtype: Any = 'float32'
  logits_via_embedding: bool = False
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  remat_policy: str = 'none'

  def __post_init__(self):
    # Gin and JSON hand us lists; the module needs something hashable.
    object.__setattr__(self, 'mlp_activations', tuple(self.mlp_activations))
    if self.remat_policy is None:
      object.__setattr__(self, 'remat_policy', 'none')
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f'Unknown remat_policy {self.remat_policy!r}; expected one of '
                       f'{REMAT_POLICIES}.')

  @property
  def activation_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  def replace(self, **changes) -> 'T5Config':
    return dataclasses.replace(self, **changes)


def _size(d, d_ff, heads, layers, **extra) -> T5Config:
  return T5Config(emb_dim=d, mlp_dim=d_ff, num_heads=heads,
                  num_encoder_layers=layers, num_decoder_layers=layers, **extra)


# T5.1.1 sizes (T5X's t5_1_1/*.gin). `tiny` is ours, for tests and demos.
SIZES = {
    'tiny': _size(64, 128, 4, 2, head_dim=16),
    'small': _size(512, 1024, 6, 8),
    'base': _size(768, 2048, 12, 12),
    'large': _size(1024, 2816, 16, 24),
    'xl': _size(2048, 5120, 32, 24),
    'xxl': _size(4096, 10240, 64, 24),
}


@dataclasses.dataclass(frozen=True)
class DecoderOnlyConfig:
  """Shape and numerics of a T5X-style decoder-only LM (T5X's decoder-only
  `network.TransformerConfig`, whose field names these are).

  Attributes:
    num_layers: decoder blocks; the others are T5Config's.
    logits_via_embedding: T5X's decoder-only presets tie the output projection
      to the embedding table (True, its gin files' value); False adds
      `decoder/logits_dense`.
    inputs_bidirectional_attention: the prefix LM (T5X's `DecoderOnlyModel`
      argument of that name): positions marked by `decoder_causal_attention`
      (the inputs and the first target position) attend to each other in
      both directions. False: fully causal.
  """
  vocab_size: int = 32128
  emb_dim: int = 768
  num_heads: int = 12
  num_layers: int = 12
  head_dim: int = 64
  mlp_dim: int = 2048
  mlp_activations: Sequence[str] = ('gelu', 'linear')
  dropout_rate: float = 0.1
  dtype: Any = 'float32'
  logits_via_embedding: bool = True
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  remat_policy: str = 'none'
  inputs_bidirectional_attention: bool = False

  __post_init__ = T5Config.__post_init__
  activation_dtype = T5Config.activation_dtype

  @property
  def num_decoder_layers(self) -> int:
    """The blocks, under the encoder-decoder name that stack-counting code reads."""
    return self.num_layers

  @property
  def num_encoder_layers(self) -> int:
    return 0

  def replace(self, **changes) -> 'DecoderOnlyConfig':
    return dataclasses.replace(self, **changes)


def _decoder_only_size(d, d_ff, heads, layers, **extra) -> DecoderOnlyConfig:
  return DecoderOnlyConfig(emb_dim=d, mlp_dim=d_ff, num_heads=heads, num_layers=layers,
                           **extra)


# T5X's decoder-only presets (t5x/examples/decoder_only/models/*.gin); `tiny` is ours.
DECODER_ONLY_SIZES = {
    'tiny': _decoder_only_size(64, 128, 4, 2, head_dim=16),
    'base': _decoder_only_size(768, 2048, 12, 12),
    'large': _decoder_only_size(1024, 2816, 16, 24),
    'xl': _decoder_only_size(2048, 5120, 32, 24),
    'xxl': _decoder_only_size(4096, 10240, 64, 24),
}


def num_parameters(config: Union[T5Config, DecoderOnlyConfig]) -> int:
  """Counts the parameters of `config` from the T5X tree, without building it."""
  d, v = config.emb_dim, config.vocab_size
  kv = config.num_heads * config.head_dim
  attention = 4 * d * kv
  mlp = (len(config.mlp_activations) + 1) * d * config.mlp_dim
  relpos = config.num_heads * config.relative_attention_num_buckets
  logits = 0 if config.logits_via_embedding else d * v
  if isinstance(config, DecoderOnlyConfig):
    return v * d + config.num_layers * (attention + mlp + 2 * d) + d + relpos + logits
  encoder = config.num_encoder_layers * (attention + mlp + 2 * d) + d + relpos
  decoder = config.num_decoder_layers * (2 * attention + mlp + 3 * d) + d + relpos
  return v * d + encoder + decoder + logits


def default_activation_dtype() -> str:
  """'float32' on CPU, where bfloat16 is slow, else 'bfloat16' (as T5X runs)."""
  import jax  # pylint: disable=g-import-not-at-top
  return 'float32' if jax.default_backend() == 'cpu' else 'bfloat16'
