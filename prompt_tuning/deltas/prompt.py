"""Prompt tuning as a delta: a soft prompt joined to the encoder input.

    model = Transformer(config, deltas=(PromptTuning(
        length=100, init=initializers.class_labels(labels, vocab)),))
    # The prompt starts from the frozen model's own embedding table:
    _, state = model.apply({'params': pretrained}, enc, dec_in, dec_tgt,
                           mutable=['prompt'], rngs={'params': rng})
    logits = model.apply({'params': pretrained, 'prompt': state['prompt']},
                         enc, dec_in, dec_tgt)

The prompt is the variable 'prompt' of the submodule 'prompt' in the
collection 'prompt' (tree `{'prompt': {'prompt': [P, d]}}`), float32, with
logical axes ('prompt', 'prompt_embed'). It lives outside 'params' so the
trainer can differentiate and optimize it alone while the backbone stays
frozen; the backbone's 'params' tree is unchanged.

Only the encoder sees the prompt (the paper prompts the encoder of T5): at
the `encoder_input` site the embedded input and its mask get the prompt
positions, and at `encoder_mask` the decoder's cross-attention mask covers
them (computed from the tokens alone, so cached decoding needs no prompt).
On the decoder-only LM the prompt joins its input at `decoder_input`; give
`combine=combine.after_first_token` for google-research/prompt-tuning's
decoder-only placement, after the BOS ([BOS, prompt, x1, ...]; its
`prefix_prompt_after_bos`, gin/methods/prompt_decoder_only.gin).
"""
import dataclasses
import io
import os
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.deltas import base
from prompt_tuning.deltas import combine as combine_lib
from prompt_tuning.deltas import initializers
from prompt_tuning.model import checkpoints
from prompt_tuning.model import sites
from prompt_tuning.model.sites import Site

Array = jax.Array
PROMPT_AXES = ('prompt', 'prompt_embed')
COLLECTION = 'prompt'
PROMPT_NPY = 'prompt.npy'


class Prompt(nn.Module):
  """P trainable vectors [length, embed] in the 'prompt' collection.

  Attributes:
    length: number of prompt positions P.
    collection: the variable collection ('prompt').
    prompt_init: `init(rng, (length, embed), embedding) -> [length, embed]`,
      see `initializers`. It runs only when the variable is created, which
      happens in `init`, or in `apply` with `mutable=['prompt']` and a
      'params' rng while the variable is missing.
  """
  length: int
  prompt_init: initializers.Initializer = initializers.SampledVocab()
  collection: str = COLLECTION

  @nn.compact
  def __call__(self, embedding: Array) -> Array:
    """The token-embedding table [vocab, d] -> the prompt [length, d] (float32).

    At serving time the variable may also hold one prompt per example,
    [batch, length, d] (a prompt bank indexed per example, see
    `prompt_tuning.infer.bank`); it is returned as it is.

    The table is what the initializer reads (sampled vocabulary, class
    labels): passing the backbone's table at call time means the prompt is
    built from the weights actually loaded, not from a random table.
    """
    if self.length < 1:
      raise ValueError(f'The prompt length must be at least 1, got {self.length}.')
    shape = (self.length, embedding.shape[-1])
    if (not self.has_variable(self.collection, 'prompt') and
        not self.is_mutable_collection(self.collection)):
      raise ValueError(
          f"No prompt: pass variables['{self.collection}'], or create it with "
          f"model.init(...) or model.apply(..., mutable=['{self.collection}'], "
          "rngs={'params': rng}).")

    def init_fn():
      # make_rng only when the variable is really created: applying a model
      # whose prompt exists needs no 'params' rng.
      return self.prompt_init(self.make_rng('params'), shape, embedding)

    prompt = self.variable(self.collection, 'prompt',
                           nn.with_logical_partitioning(init_fn, PROMPT_AXES)).value
    if tuple(prompt.shape[-2:]) != shape or prompt.ndim not in (2, 3):
      raise ValueError(f'The prompt variable has shape {tuple(prompt.shape)} but this '
                       f'model expects {shape} [length, embed] (or [batch, *{shape}]).')
    return prompt


class NotRecorded:
  """The initializer of a prompt rebuilt from a checkpoint, whose values are loaded.

  Zeros of the prompt's shape: `init` still runs abstractly (decoding takes
  the cache's shapes from `jax.eval_shape(model.init)`), but applying the
  model without the loaded prompt fails in `Prompt` ("No prompt").
  """

  def __init__(self, description: str = ''):
    self.description = description

  def __call__(self, rng, shape, embedding=None):
    del rng, embedding
    return jnp.zeros(shape, jnp.float32)

  def __repr__(self):
    return f'NotRecorded({self.description!r})'

  def __eq__(self, other):
    return isinstance(other, NotRecorded)

  def __hash__(self):
    return hash(NotRecorded)


@base.register
@dataclasses.dataclass(frozen=True)
class PromptTuning(base.Delta):
  """A soft prompt [length, embed] joined to the embedded encoder input.

  Attributes:
    length: number of prompt positions P (100 in the paper).
    init: the prompt's initializer (sampled vocabulary by default; the
      paper's best is class labels, see gin/prompts/).
    combine: where the prompt goes (`combine.prefix` as in the paper; see
      `combine`); called as combine(prompt, embedded, mask, tokens).
    name: the root module's name and the variable collection ('prompt'); a
      second prompt needs another.
  """
  kind: ClassVar[str] = 'prompt'
  sites: ClassVar[Tuple[str, ...]] = ('encoder_input', 'encoder_mask', 'decoder_input')

  length: int = 100
  init: initializers.Initializer = initializers.SampledVocab()
  combine: combine_lib.CombineFn = combine_lib.prefix
  name: str = COLLECTION

  def __post_init__(self):
    if self.length < 1:
      raise ValueError(f'The prompt length must be at least 1, got {self.length}.')

  @property
  def collection(self) -> str:
    return self.name

  def logical_axis_rules(self) -> base.LogicalAxisRules:
    # The prompt [length, embed] and its optimizer state are small: replicated.
    return (('prompt', None), ('prompt_embed', None))

  def setup(self, root: nn.Module) -> None:
    # Assigned in setup, so named `name`: the tree is {name: {name: {'prompt': ...}}}.
    setattr(root, self.name, Prompt(self.length, self.init, collection=self.name))

  def intercept(self, site: Site, next_fun: Callable[..., Any], args: tuple, kwargs: dict,
                module: nn.Module) -> Any:
    tokens = args[0] if args else kwargs['encoder_input_tokens']
    if site.name in sites.INPUT_SITES:
      embedded, mask = next_fun(*args, **kwargs)
      prompt = getattr(module, self.name)(module.token_embedder.embedding)  # [P, d] | [b, P, d]
      return self.combine(prompt if prompt.ndim == 3 else prompt[None], embedded, mask, tokens)
    mask = next_fun(*args, **kwargs)
    return combine_lib.combined_mask(self.combine, mask, self.length, tokens)

  def export(self, variables: base.Variables, directory: str) -> List[str]:
    """`prompt.npy` [length, embed] (the released prompts' format), written atomically."""
    path = os.path.join(directory, PROMPT_NPY if self.name == COLLECTION
                        else f'{self.name}.npy')
    buffer = io.BytesIO()
    np.save(buffer, self.prompt_of(variables))
    checkpoints.atomic_write(path, buffer.getvalue())
    return [path]

  def prompt_of(self, variables: base.Variables) -> np.ndarray:
    """The [length, embed] prompt in `variables`."""
    try:
      return np.asarray(variables[self.collection][self.name]['prompt'])
    except KeyError as e:
      raise ValueError(f'No prompt at {self.collection}/{self.name}/prompt; the variables '
                       f'hold {sorted(variables)}.') from e

  def with_prompt(self, variables: base.Variables, prompt: Any) -> base.Variables:
    """`variables` with this delta's prompt replaced ([length, embed] or [b, length, embed])."""
    return {**variables, self.collection: {self.name: {'prompt': prompt}}}

  def bank_leaves(self) -> Dict[str, int]:
    return {f'{self.collection}/{self.name}/prompt': 2}

  def to_config(self) -> Dict[str, Any]:
    # The initializer is recorded for the reader only (a rebuilt delta's values
    # are loaded); a rebuilt one keeps the original's description.
    init = self.init.description if isinstance(self.init, NotRecorded) else repr(self.init)
    return {'kind': self.kind, 'length': self.length, 'name': self.name,
            'combine': combine_lib.name_of(self.combine), 'init': init}

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> 'PromptTuning':
    return cls(length=int(config['length']), name=config.get('name', COLLECTION),
               combine=combine_lib.by_name(config.get('combine', 'prefix')),
               init=NotRecorded(config.get('init', '')))


__all__ = ['COLLECTION', 'PROMPT_AXES', 'PROMPT_NPY', 'Prompt', 'PromptTuning']
