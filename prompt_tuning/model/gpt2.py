"""GPT-2, a decoder-only language model, in Flax with T5X-style names.

    model = GPT2LM(config)
    logits = model.apply({'params': params}, tokens, mask)

tokens [batch, length] int, mask [batch, length] bool (False at padding;
None: no padding). GPT-2 has no padding id (id 0 is '!'), so padding is only
ever known from `mask`. Logits are float32 [batch, length, vocab], the input
and output embeddings are one table.

Positions: the sequence the layers see is numbered 0..l-1 as given, with no
knowledge of prompts. Position embeddings are added after `embed_inputs`,
the method where prompts will be prepended, so a prompt of p vectors takes
positions 0..p-1 and the text p..p+l-1 (as PEFT does on Hugging Face GPT-2).

Sites (`sites.py`) this model calls, because its modules are subclasses of
the T5 ones with the same contracts: `attention` and `attention_scores`
(`Attention`), `mlp` (`Mlp`), `dense` (`DenseWithBias`, every projection).
Paths follow T5X's decoder: 'decoder/layers_0/self_attention/query', so the
LoRA and IA3 target patterns match. Not yet sites: `embed_inputs` (the T5
`encoder_input` site is owned by `Transformer` and derives the mask from
token id 0) and `Block` (no T5 layer site has its signature).
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

  def replace(self, **changes) -> 'GPT2Config':
    return dataclasses.replace(self, **changes)


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
               enable_dropout: bool = False) -> Array:
    """Attends [b, q, d] to [b, k, d] with additive bias [b|1, h|1, q, k] -> [b, q, d]."""
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
  def __call__(self, x: Array, bias: Array, enable_dropout: bool = False) -> Array:
    """[b, l, d] with bias [b|1, 1, l, l] -> [b, l, d]."""
    cfg, dtype = self.config, self.config.activation_dtype
    dropout = nn.Dropout(cfg.resid_pdrop)
    y = _layer_norm(cfg, 'pre_self_attention_layer_norm')(x)
    y = Attention(cfg.n_head, cfg.head_dim, cfg.attn_pdrop, dtype,
                  scale_logits=cfg.scale_attn_weights, kernel_init=_init(cfg),
                  out_init=_init(cfg, residual=True), name='self_attention')(
                      y, y, bias, enable_dropout=enable_dropout)
    x = x + dropout(y, deterministic=not enable_dropout)
    y = _layer_norm(cfg, 'pre_mlp_layer_norm')(x)
    y = Mlp(cfg.mlp_dim, (cfg.activation_function,), 0.0, dtype, kernel_init=_init(cfg),
            out_init=_init(cfg, residual=True), name='mlp')(y, enable_dropout)
    x = x + dropout(y, deterministic=not enable_dropout)
    return nn.with_logical_constraint(x, ACTIVATION_AXES)


class Decoder(nn.Module):
  """Embedded inputs [b, l, d] and mask [b, l] -> final-normed hidden states [b, l, d]."""
  config: GPT2Config

  @nn.compact
  def __call__(self, x: Array, mask: Array, enable_dropout: bool = False) -> Array:
    cfg = self.config
    # Causal, and padding hidden both as keys and as queries (as the T5 decoder).
    visible = (layers.make_attention_mask(mask, mask) &
               layers.make_causal_mask(x.shape[1]))
    bias = layers.mask_to_bias(visible, cfg.activation_dtype)
    x = nn.Dropout(cfg.embd_pdrop)(x, deterministic=not enable_dropout)
    x = nn.with_logical_constraint(x, ACTIVATION_AXES)
    for i in range(cfg.n_layer):
      x = Block(cfg, name=f'layers_{i}')(x, bias, enable_dropout)
    return _layer_norm(cfg, 'decoder_norm')(x)


class GPT2LM(nn.Module):
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
    for delta in self.deltas:
      delta.setup(self)

  def embed_inputs(self, tokens: Array, mask: Array) -> Tuple[Array, Array]:
    """tokens [b, l], mask [b, l] -> (token embeddings [b, l', d], mask [b, l']).

    Where a prompt will be prepended: positions are added after this.
    """
    return self.token_embedder(tokens), mask

  def __call__(self, tokens: Array, mask: Optional[Array] = None,
               enable_dropout: bool = False) -> Array:
    """tokens [b, l] (+ mask [b, l], True at real tokens) -> logits [b, l, vocab] float32."""
    with sites.attach(self.deltas):
      if mask is None:
        mask = jnp.ones(tokens.shape, bool)
      x, mask = self.embed_inputs(tokens, mask.astype(bool))
      length = x.shape[1]
      if length > self.config.n_positions:
        raise ValueError(f'A sequence of {length} positions is longer than n_positions '
                         f'{self.config.n_positions}; truncate the inputs.')
      x = x + self.position_embedder(jnp.arange(length)[None, :])
      y = self.decoder(x, mask, enable_dropout)
      logits = self.token_embedder.attend(y).astype(jnp.float32)
      return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))
