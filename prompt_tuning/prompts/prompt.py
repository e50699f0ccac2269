"""The soft prompt and the T5.1.1 model that reads it.

    model = PromptTransformer(config, prompt_length=100,
                              prompt_init=initializers.class_labels(labels, vocab))
    # The prompt starts from the frozen model's own embedding table:
    _, state = model.apply({'params': pretrained}, enc, dec_in, dec_tgt,
                           mutable=['prompt'], rngs={'params': rng})
    logits = model.apply({'params': pretrained, 'prompt': state['prompt']},
                         enc, dec_in, dec_tgt)

The prompt is the variable 'prompt' of the submodule 'prompt' in the
collection 'prompt' (tree `{'prompt': {'prompt': [P, d]}}`), float32, with
logical axes ('prompt', 'prompt_embed'). It lives outside 'params' so the
trainer can differentiate and optimize it alone while the backbone stays
frozen; the backbone's 'params' tree is exactly `Transformer`'s.

Only the encoder sees the prompt (the paper prompts the encoder of T5): the
embedded input and its mask get the prompt positions, and the decoder's
cross-attention mask covers them through `encoder_mask`.
"""
from typing import Tuple

import flax.linen as nn
import jax

from prompt_tuning.model.t5 import Transformer
from prompt_tuning.prompts import combine as combine_lib
from prompt_tuning.prompts import initializers

Array = jax.Array
PROMPT_AXES = ('prompt', 'prompt_embed')
COLLECTION = 'prompt'


class Prompt(nn.Module):
  """P trainable vectors [length, embed] in the 'prompt' collection.

  Attributes:
    length: number of prompt positions P.
    prompt_init: `init(rng, (length, embed), embedding) -> [length, embed]`,
      see `initializers`. It runs only when the variable is created, which
      happens in `init`, or in `apply` with `mutable=['prompt']` and a
      'params' rng while the variable is missing.
  """
  length: int
  prompt_init: initializers.Initializer = initializers.SampledVocab()

  @nn.compact
  def __call__(self, embedding: Array) -> Array:
    """The token-embedding table [vocab, d] -> the prompt [length, d] (float32).

    At serving time the variable may also hold one prompt per example,
    [batch, length, d] (a prompt bank indexed per example, see
    `prompt_tuning.infer.prompt_bank`); it is returned as it is.

    The table is what the initializer reads (sampled vocabulary, class
    labels): passing the backbone's table at call time means the prompt is
    built from the weights actually loaded, not from a random table.
    """
    if self.length < 1:
      raise ValueError(f'The prompt length must be at least 1, got {self.length}.')
    shape = (self.length, embedding.shape[-1])
    if (not self.has_variable(COLLECTION, 'prompt') and
        not self.is_mutable_collection(COLLECTION)):
      raise ValueError(
          "No prompt: pass variables['prompt'], or create it with model.init(...) "
          "or model.apply(..., mutable=['prompt'], rngs={'params': rng}).")

    def init_fn():
      # make_rng only when the variable is really created: applying a model
      # whose prompt exists needs no 'params' rng.
      return self.prompt_init(self.make_rng('params'), shape, embedding)

    prompt = self.variable(COLLECTION, 'prompt',
                           nn.with_logical_partitioning(init_fn, PROMPT_AXES)).value
    if tuple(prompt.shape[-2:]) != shape or prompt.ndim not in (2, 3):
      raise ValueError(f'The prompt variable has shape {tuple(prompt.shape)} but this '
                       f'model expects {shape} [length, embed] (or [batch, *{shape}]).')
    return prompt


class PromptTransformer(Transformer):
  """T5.1.1 with a soft prompt joined to the embedded encoder input.

  Attributes:
    config: the backbone's `T5Config` (inherited).
    prompt_length: number of prompt positions P (100 in the paper).
    prompt_init: the prompt's initializer (sampled vocabulary by default; the
      paper's best is class labels, see gin/prompts/).
    combine: where the prompt goes, see `combine` (`prefix` as in the paper).
  """
  prompt_length: int = 100
  prompt_init: initializers.Initializer = initializers.SampledVocab()
  combine: combine_lib.CombineFn = combine_lib.prefix

  def setup(self):
    super().setup()
    # Assigned in setup, so named 'prompt': the tree is {'prompt': {'prompt': ...}}.
    self.prompt = Prompt(self.prompt_length, self.prompt_init)

  def embed_encoder_inputs(self, encoder_input_tokens: Array) -> Tuple[Array, Array]:
    """[b, L] tokens -> (embedded [b, L + P, d], mask [b, L + P])."""
    embedded, mask = super().embed_encoder_inputs(encoder_input_tokens)
    prompt = self.prompt(self.token_embedder.embedding)  # [P, d] or [b, P, d]
    return self.combine(prompt if prompt.ndim == 3 else prompt[None], embedded, mask)

  def encoder_mask(self, encoder_input_tokens: Array) -> Array:
    """[b, L] tokens -> [b, L + P] booleans, prompt positions valid.

    Needs no variables, so cached decoding builds its cross-attention mask
    from the tokens alone.
    """
    return combine_lib.combined_mask(self.combine, super().encoder_mask(encoder_input_tokens),
                                     self.prompt_length)


__all__ = ['COLLECTION', 'PROMPT_AXES', 'Prompt', 'PromptTransformer']
