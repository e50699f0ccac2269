"""Many prompts, one frozen model, one forward pass.

A prompt bank is an array [num_prompts, length, embed]. Serving a batch that
mixes tasks, or ensembling N prompts of one task, is the same operation: give
every example its own prompt by indexing the bank, and put the resulting
[batch, length, embed] array where the model's single prompt would be. The
backbone runs once for the whole batch.
"""
import collections
from typing import Any, Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Variables = Dict[str, Any]


def stack_prompts(prompts: Sequence[np.ndarray]) -> np.ndarray:
  """[length, embed] arrays -> a bank [num_prompts, length, embed]; shapes must agree."""
  shapes = {tuple(np.shape(p)) for p in prompts}
  if len(shapes) != 1:
    raise ValueError(f'Prompts of different shapes cannot share a bank: {sorted(shapes)}.')
  return np.stack([np.asarray(p, np.float32) for p in prompts])


def with_prompts(variables: Variables, prompts: Array) -> Variables:
  """`variables` with the prompt replaced: [length, embed] or per example [b, length, embed]."""
  return {**variables, 'prompt': {'prompt': {'prompt': prompts}}}


def select(bank: Array, prompt_index: Array) -> Array:
  """Per-example prompts [b, length, embed] from a bank and indices [b]."""
  return jnp.take(jnp.asarray(bank), jnp.asarray(prompt_index), axis=0)


def replicate_for_ensemble(encoder_input_tokens: Array, num_prompts: int
                           ) -> Tuple[Array, Array]:
  """Each example repeated once per prompt: (tokens [b * N, L], prompt_index [b * N]).

  Row i * N + j is example i with prompt j.
  """
  batch = encoder_input_tokens.shape[0]
  tokens = jnp.repeat(encoder_input_tokens, num_prompts, axis=0)
  return tokens, jnp.tile(jnp.arange(num_prompts), batch)


def majority_vote(predictions: Sequence[Any], num_prompts: int) -> list:
  """The most frequent of each example's N predictions.

  `predictions` has b * N hashable entries ordered as `replicate_for_ensemble`
  orders rows. Ties go to the tied prediction made by the lowest-numbered
  prompt, so the result is deterministic and, with N = 1, the prompt's own.
  """
  if len(predictions) % num_prompts:
    raise ValueError(f'{len(predictions)} predictions do not split into groups of '
                     f'{num_prompts}.')
  voted = []
  for start in range(0, len(predictions), num_prompts):
    group = list(predictions[start:start + num_prompts])
    counts = collections.Counter(group)
    top = max(counts.values())
    voted.append(next(p for p in group if counts[p] == top))
  return voted
