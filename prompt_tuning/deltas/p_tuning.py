"""P-tuning v1 (Liu et al., 2021, "GPT Understands, Too") as a delta.

    delta = PTuning(template='[P:3] {inputs} [P:3]', encoder='lstm')
    model = Transformer(config, deltas=(delta,))

A prompt encoder turns P trainable input embeddings [P, d] into the prompt
[P, d], whose rows fill the template's pseudo-prompt positions around the
input (`templates`): real anchor tokens stay in the template, and only the
encoder sees the prompt, as in prompt tuning. Two encoders:

  'lstm' (the original, and PEFT's LSTM): a 2-layer bidirectional LSTM with
      hidden h per direction (d // 2 by default, as the original), then
      Linear(2h, 2h) - ReLU - Linear(2h, d);
  'mlp' (PEFT's default): Linear(d, h) - ReLU - Linear(h, h) - ReLU -
      Linear(h, d), h = d by default.

Variables (collection and root module `name`, 'p_tuning'), in Flax's
[in, out] layout, each one torch tensor of PEFT's `PromptEncoder` transposed:

  embeddings [P, d]                   embedding.weight
  lstm/w_ih_l{k}[_reverse] [in, 4h]   lstm_head.weight_ih_l{k}[_reverse]
  lstm/w_hh_l{k}[_reverse] [h, 4h]    lstm_head.weight_hh_l{k}[_reverse]
  lstm/bias_l{k}[_reverse] [4h]       bias_ih + bias_hh (one summed bias)
  mlp/kernel_{i} [in, out], bias_{i}  mlp_head.{0,2[,4]}.weight / .bias

Gates in torch's order (i, f, g, o). Training keeps all of these (a run
resumes and trains on; PEFT saves only the encoder's output).
`materialize` replaces them by the prompt alone, {'prompt': [P, d]}, which
the same delta serves (and a bank of them, [b, P, d]); `export` writes it as
`<name>.npy`. The PEFT P_TUNING adapter of a prefix template comes from
`prompt_tuning.interop.peft` (its stored `prompt_embeddings` are this prompt).
"""
import dataclasses
import io
import os
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.deltas import base
from prompt_tuning.deltas import initializers
from prompt_tuning.deltas import templates
from prompt_tuning.deltas.prompt import NotRecorded
from prompt_tuning.model import checkpoints
from prompt_tuning.model.sites import Site

Array = jax.Array
COLLECTION = 'p_tuning'
ENCODERS = ('lstm', 'mlp')
LSTM_LAYERS = 2
# Every variable is small: replicated.
_AXES = {'matrix': ('p_tuning_in', 'p_tuning_out'), 'vector': ('p_tuning_out',),
         'embeddings': ('p_tuning_tokens', 'p_tuning_in')}


@dataclasses.dataclass(frozen=True)
class StandardNormal:
  """N(0, stddev^2) input embeddings: torch's nn.Embedding init (PEFT, THUDM)."""
  stddev: float = 1.0

  def __call__(self, rng: Array, shape: Tuple[int, int], embedding: Any = None) -> Array:
    del embedding
    return self.stddev * jax.random.normal(rng, shape, jnp.float32)


def hidden_size(encoder: str, hidden: Optional[int], width: int) -> int:
  """h: `hidden`, or the default for model width d (LSTM d // 2, MLP d)."""
  if hidden is not None:
    return hidden
  return max(width // 2, 1) if encoder == 'lstm' else width


def weight_shapes(encoder: str, hidden: int, width: int) -> Dict[str, Dict[str, Tuple]]:
  """{'lstm'|'mlp': {leaf: (shape, kind, torch-init bound, uniforms summed)}}."""
  if encoder == 'lstm':
    bound, lstm = 1 / np.sqrt(hidden), {}
    for layer in range(LSTM_LAYERS):
      width_in = width if layer == 0 else 2 * hidden
      for suffix in (f'l{layer}', f'l{layer}_reverse'):
        lstm[f'w_ih_{suffix}'] = ((width_in, 4 * hidden), 'matrix', bound, 1)
        lstm[f'w_hh_{suffix}'] = ((hidden, 4 * hidden), 'matrix', bound, 1)
        # torch draws bias_ih and bias_hh alike; their sum is what acts.
        lstm[f'bias_{suffix}'] = ((4 * hidden,), 'vector', bound, 2)
    # The original's head: Linear(2h, 2h) - ReLU - Linear(2h, d).
    sizes, tree, width_in = [2 * hidden, width], {'lstm': lstm}, 2 * hidden
  else:
    sizes, tree, width_in = [hidden, hidden, width], {}, width
  mlp = {}
  for i, size in enumerate(sizes):
    # torch's Linear: kaiming_uniform(a=sqrt(5)) weights and its bias, +-1/sqrt(in).
    mlp[f'kernel_{i}'] = ((width_in, size), 'matrix', 1 / np.sqrt(width_in), 1)
    mlp[f'bias_{i}'] = ((size,), 'vector', 1 / np.sqrt(width_in), 1)
    width_in = size
  tree['mlp'] = mlp
  return tree


def _lstm_direction(x: Array, w_ih: Array, w_hh: Array, bias: Array, reverse: bool) -> Array:
  """One direction of one torch LSTM layer: [P, in] -> [P, h], from zero state."""
  hidden = w_hh.shape[0]
  projected = x @ w_ih + bias  # [P, 4h]: the input's part of every gate at once

  def step(carry, gates_in):
    h, c = carry
    i, f, g, o = jnp.split(gates_in + h @ w_hh, 4)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), h

  zeros = jnp.zeros((hidden,), projected.dtype)
  # reverse=True runs from the last position and stacks outputs in input order.
  return jax.lax.scan(step, (zeros, zeros), projected, reverse=reverse)[1]


def encode(tree: Mapping[str, Any], encoder: str) -> Array:
  """The prompt [P, d] (float32) from the encoder's variables (unmaterialized tree)."""
  x = jnp.asarray(tree['embeddings'], jnp.float32)
  if encoder == 'lstm':
    lstm = {k: jnp.asarray(v, jnp.float32) for k, v in tree['lstm'].items()}
    for layer in range(LSTM_LAYERS):
      x = jnp.concatenate([
          _lstm_direction(x, lstm[f'w_ih_{s}'], lstm[f'w_hh_{s}'], lstm[f'bias_{s}'],
                          reverse=s.endswith('_reverse'))
          for s in (f'l{layer}', f'l{layer}_reverse')], axis=-1)
  mlp = tree['mlp']
  layers = len(mlp) // 2  # LSTM head: 2 linear layers; MLP: 3
  for i in range(layers):
    x = x @ jnp.asarray(mlp[f'kernel_{i}'], jnp.float32) + jnp.asarray(mlp[f'bias_{i}'],
                                                                      jnp.float32)
    x = jax.nn.relu(x) if i < layers - 1 else x
  return x


def _check_shapes(tree: Mapping[str, Any], want: Mapping[str, Any], where: str) -> None:
  for group, leaves in want.items():
    for leaf, (shape, *_) in leaves.items():
      found = tuple(np.shape(tree[group][leaf]))
      if found != tuple(shape):
        raise ValueError(f'{where}/{group}/{leaf} has shape {found} but this P-tuning '
                         f'encoder expects {tuple(shape)}: another encoder or hidden size?')


class _Weights(nn.Module):
  """Creates (or reads) one group of encoder weights with torch's uniform inits."""
  shapes: Tuple[Tuple[str, Tuple[int, ...], str, float, int], ...]
  collection: str

  @nn.compact
  def __call__(self) -> Dict[str, Array]:
    def init(shape, bound, summed):
      return lambda: sum(jax.random.uniform(self.make_rng('params'), shape, jnp.float32,
                                            -bound, bound) for _ in range(summed))
    return {name: self.variable(self.collection, name, nn.with_logical_partitioning(
        init(shape, bound, summed), _AXES[kind])).value
            for name, shape, kind, bound, summed in self.shapes}


class PromptEncoder(nn.Module):
  """The prompt [P, d]: the materialized one if present, else the encoder's output."""
  length: int
  encoder: str = 'lstm'
  hidden: Optional[int] = None
  embeddings_init: initializers.Initializer = StandardNormal()
  collection: str = COLLECTION

  @nn.compact
  def __call__(self, embedding: Array) -> Array:
    """The token-embedding table [vocab, d] -> the prompt [P, d] or a bank's [b, P, d]."""
    width = embedding.shape[-1]
    if self.has_variable(self.collection, 'prompt'):  # materialized (serving)
      prompt = self.get_variable(self.collection, 'prompt')
      if tuple(prompt.shape[-2:]) != (self.length, width) or prompt.ndim not in (2, 3):
        raise ValueError(f'The P-tuning prompt has shape {tuple(prompt.shape)} but this '
                         f'model expects {(self.length, width)} [P, d] (or [b, P, d]).')
      return prompt
    if (not self.has_variable(self.collection, 'embeddings') and
        not self.is_mutable_collection(self.collection)):
      raise ValueError(
          f"No P-tuning variables: pass variables['{self.collection}'] (trained or "
          f"materialized), or create them with model.init(...) or model.apply(..., "
          f"mutable=['{self.collection}'], rngs={{'params': rng}}).")
    shape = (self.length, width)
    tree = {'embeddings': self.variable(
        self.collection, 'embeddings', nn.with_logical_partitioning(
            lambda: self.embeddings_init(self.make_rng('params'), shape, embedding),
            _AXES['embeddings'])).value}
    want = weight_shapes(self.encoder, hidden_size(self.encoder, self.hidden, width), width)
    for group, leaves in want.items():
      specs = tuple((k, s, kind, bound, n) for k, (s, kind, bound, n) in leaves.items())
      tree[group] = _Weights(specs, self.collection, name=group)()
    _check_shapes(tree, want, self.collection)
    return encode(tree, self.encoder)


@base.register
@dataclasses.dataclass(frozen=True)
class PTuning(base.Delta):
  """P-tuning: an encoded prompt at a template's pseudo-prompt positions.

  Attributes:
    template: where the prompt, anchor tokens and the input go (`templates`),
      e.g. '[P:3] {inputs} [P:3] ? [P:3]'; '[P:n] {inputs}' is a prefix
      (PEFT's P_TUNING).
    encoder: 'lstm' (the original) or 'mlp' (PEFT's default).
    hidden: h (None: d // 2 for the LSTM, d for the MLP).
    init: the input embeddings' initializer (N(0, 1) as torch's nn.Embedding;
      any `initializers` one, e.g. sampled vocabulary).
    vocabulary: a SentencePiece .model to tokenize anchor text (only then
      needed; a checkpoint records the anchors as ids).
    eos_id: a last input token with this id is moved after the template
      (T5's EOS closes the encoder input); None keeps it in the slot.
    name: the root module's name and the variable collection.
  """
  kind: ClassVar[str] = 'p_tuning'
  sites: ClassVar[Tuple[str, ...]] = ('encoder_input', 'encoder_mask', 'decoder_input')

  template: str = '[P:3] {inputs} [P:3]'
  encoder: str = 'lstm'
  hidden: Optional[int] = None
  init: initializers.Initializer = StandardNormal()
  vocabulary: Optional[str] = None
  eos_id: Optional[int] = templates.EOS_ID
  name: str = COLLECTION

  def __post_init__(self):
    if self.encoder not in ENCODERS:
      raise ValueError(f'Unknown P-tuning encoder {self.encoder!r}; use one of {ENCODERS}.')
    if self.hidden is not None and self.hidden < 1:
      raise ValueError(f'The P-tuning hidden size must be at least 1, got {self.hidden}.')
    self.parsed  # pylint: disable=pointless-statement  (bad templates fail here)

  @property
  def parsed(self) -> templates.Template:
    return templates.parse(self.template, self.vocabulary)

  @property
  def length(self) -> int:
    """P, the pseudo-prompt positions."""
    return self.parsed.num_prompt

  @property
  def collection(self) -> str:
    return self.name

  def logical_axis_rules(self) -> base.LogicalAxisRules:
    return tuple((axis, None) for axis in ('p_tuning_tokens', 'p_tuning_in', 'p_tuning_out'))

  def no_variables_hint(self) -> str:
    return ('the P-tuning encoder is created where the model embeds its encoder input '
            '(the encoder_input site), which did not run')

  def setup(self, root: nn.Module) -> None:
    setattr(root, self.name, PromptEncoder(self.length, self.encoder, self.hidden, self.init,
                                           collection=self.name))

  def intercept(self, site: Site, next_fun: Callable[..., Any], args: tuple, kwargs: dict,
                module: nn.Module) -> Any:
    tokens = args[0] if args else kwargs['encoder_input_tokens']
    template = self.parsed
    if site.name == 'encoder_mask':
      return templates.placed_mask(template, next_fun(*args, **kwargs), tokens, self.eos_id)
    if site.name == 'decoder_input' and template.num_before != template.length:
      # The decoder-only LM reads its outputs after inserted positions that all
      # precede the text; after {inputs} would be after the targets too.
      raise ValueError(f'On a decoder-only model the P-tuning template must put every '
                       f'prompt and anchor before {{inputs}}; {self.template!r} does not: '
                       'write it into the text instead (PTuningInText, '
                       'gin/methods/p_tuning_in_text.gin).')
    embedded, mask = next_fun(*args, **kwargs)
    templates.check_anchor_ids(template, module.token_embedder.num_embeddings)
    prompt = getattr(module, self.name)(module.token_embedder.embedding)  # [P, d] | [b, P, d]
    prompt = prompt if prompt.ndim == 3 else prompt[None]
    prompt_row, anchor_id = template.rows()
    anchors = module.token_embedder(jnp.asarray(anchor_id))  # [T, d], as the input's tokens
    shown = jnp.where((prompt_row >= 0)[None, :, None],
                      prompt[:, np.maximum(prompt_row, 0)].astype(anchors.dtype), anchors[None])
    return templates.place(template, shown, embedded, mask, tokens, self.eos_id)

  def materialize(self, variables: base.Variables) -> base.Variables:
    """`variables` with this delta's collection holding only {'prompt': [P, d]}."""
    tree = variables.get(self.collection, {}).get(self.name)
    if tree is None or 'prompt' in tree:
      return variables  # nothing of ours, or already served
    tree = nn.unbox(tree)
    prompt = np.asarray(jax.device_get(encode(tree, self.encoder)), np.float32)
    return {**variables, self.collection: {self.name: {'prompt': prompt}}}

  def prompt_of(self, variables: base.Variables) -> np.ndarray:
    """The prompt [P, d] of `variables`, trained or materialized."""
    try:
      return np.asarray(self.materialize(variables)[self.collection][self.name]['prompt'])
    except (KeyError, TypeError) as e:
      raise ValueError(f'No P-tuning variables at {self.collection}/{self.name}; the '
                       f'variables hold {sorted(variables)}.') from e

  def export(self, variables: base.Variables, directory: str) -> List[str]:
    """`<name>.npy`, the prompt [P, d], written atomically."""
    path = os.path.join(directory, f'{self.name}.npy')
    buffer = io.BytesIO()
    np.save(buffer, self.prompt_of(variables))
    checkpoints.atomic_write(path, buffer.getvalue())
    return [path]

  def bank_leaves(self) -> Dict[str, int]:
    return {f'{self.collection}/{self.name}/prompt': 2}

  def to_config(self) -> Dict[str, Any]:
    # Anchors as ids: a checkpoint rebuilds without the vocabulary file. The
    # initializer is recorded for the reader (the values are loaded).
    init = self.init.description if isinstance(self.init, NotRecorded) else repr(self.init)
    return {'kind': self.kind, 'template': self.parsed.canonical, 'encoder': self.encoder,
            'hidden': self.hidden, 'eos_id': self.eos_id, 'name': self.name, 'init': init}

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> 'PTuning':
    return cls(template=config['template'], encoder=config.get('encoder', 'lstm'),
               hidden=config.get('hidden'), eos_id=config.get('eos_id', templates.EOS_ID),
               name=config.get('name', COLLECTION), init=NotRecorded(config.get('init', '')))


@base.register
@dataclasses.dataclass(frozen=True)
class PTuningInText(PTuning):
  """P-tuning with the pseudo tokens in the text: the original code's placement.

  The task writes the template into its inputs (`templates.as_text`), so
  pseudo-prompt position k is the token `marker_base - k` ('<extra_id_k>'
  in T5's vocabulary), and this delta swaps that token's embedding for
  prompt row k wherever it appears; no position is inserted. That is how
  "GPT Understands, Too" places a template on a causal LM: its LAMA code
  builds [P x3, subject, P x3] and reads the answer after the last pseudo
  token, which an inserting placement cannot do on a decoder-only LM (its
  inserted positions must precede the text). Cached decoding swaps again
  (`decoder_step_input`): the prefill re-feeds the last input token, here
  a pseudo token.

  Attributes (besides PTuning's): marker_base: the id of pseudo position 0.
  The template only counts the pseudo positions (its anchors and `{inputs}`
  are the data's); `vocabulary` and `eos_id` are unused.
  """
  kind: ClassVar[str] = 'p_tuning_in_text'
  sites: ClassVar[Tuple[str, ...]] = ('encoder_input', 'decoder_input', 'decoder_step_input')

  marker_base: int = 32099  # '<extra_id_0>' in T5's vocabulary (32000 pieces + 100 sentinels)

  @property
  def parsed(self) -> templates.Template:
    # Anchor words are the data's: check the template as the text's, then
    # count its pseudo positions without a vocabulary.
    templates.as_text(self.template, '')
    return templates.parse(templates.markers_only(self.template))

  def intercept(self, site: Site, next_fun: Callable[..., Any], args: tuple, kwargs: dict,
                module: nn.Module) -> Any:
    result = next_fun(*args, **kwargs)
    embedded, mask = result if site.name != 'decoder_step_input' else (result, None)
    tokens = args[0] if args else next(iter(kwargs.values()))
    row = self.marker_base - tokens  # [b, l]: the prompt row a pseudo token shows
    is_pseudo = (row >= 0) & (row < self.length) & (tokens > 0)
    prompt = getattr(module, self.name)(module.token_embedder.embedding)  # [P, d] | [b, P, d]
    prompt = prompt if prompt.ndim == 3 else prompt[None]
    rows = jnp.arange(prompt.shape[0])[:, None] if prompt.shape[0] > 1 else 0
    shown = prompt[rows, jnp.clip(row, 0, self.length - 1)].astype(embedded.dtype)
    embedded = jnp.where(is_pseudo[..., None], shown, embedded)
    return embedded if mask is None else (embedded, mask)

  def to_config(self) -> Dict[str, Any]:
    return {**super().to_config(), 'template': self.template, 'marker_base': self.marker_base}

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> 'PTuningInText':
    return cls(template=config['template'], encoder=config.get('encoder', 'lstm'),
               hidden=config.get('hidden'), name=config.get('name', COLLECTION),
               marker_base=config['marker_base'], init=NotRecorded(config.get('init', '')))


__all__ = ['COLLECTION', 'ENCODERS', 'PTuning', 'PTuningInText', 'PromptEncoder', 'StandardNormal', 'encode',
           'hidden_size', 'weight_shapes']
