"""Many prompts, one frozen model, one forward pass.

A prompt bank is an array [num_prompts, length, embed]. Serving a batch that
mixes tasks, or ensembling N prompts of one task, is the same operation: give
every example its own prompt by indexing the bank, and put the resulting
[batch, length, embed] array where the model's single prompt would be. The
backbone runs once for the whole batch.
"""
import collections
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

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


def for_ensemble(variables: Variables, bank: Array, encoder_input_tokens: Array
                 ) -> Tuple[Variables, Array]:
  """Every example once per prompt of the bank: (variables, tokens [b * N, L]).

  Row i * N + j is example i with prompt j; run the model on the result once,
  then `majority_vote` (predictions) or average (scores) groups of N rows.
  """
  tokens, index = replicate_for_ensemble(encoder_input_tokens, bank.shape[0])
  return with_prompts(variables, select(bank, index)), tokens


def run_ensemble(fn: Callable[..., Any], variables: Variables, bank: Optional[Array],
                 encoder_input_tokens: Array, *per_example: Array) -> Any:
  """`fn(variables, tokens, *per_example)` with every example once per prompt of `bank`.

  Rows of the result follow `for_ensemble` ([b * N, ...]); other per-example
  arrays (e.g. targets to score) are repeated to match. With `bank` None this
  is `fn` on the inputs as they are.
  """
  if bank is None:
    return fn(variables, encoder_input_tokens, *per_example)
  copies = bank.shape[0]
  variables, tokens = for_ensemble(variables, bank, encoder_input_tokens)
  return fn(variables, tokens, *[jnp.repeat(x, copies, axis=0) for x in per_example])


def repeat_examples(variables: Variables, times: int) -> Variables:
  """Per-example prompts [b, P, d] repeated `times` each, as `jnp.repeat` repeats inputs.

  A single shared prompt [P, d] needs nothing and is returned as it is.
  """
  prompt = variables.get('prompt')
  if prompt is None or times == 1:
    return variables
  repeat = lambda x: jnp.repeat(x, times, axis=0) if jnp.ndim(x) == 3 else x
  return {**variables, 'prompt': jax.tree_util.tree_map(repeat, prompt)}


def vote_rows(rows: np.ndarray, num_prompts: int) -> np.ndarray:
  """`majority_vote` over rows of tokens [b * N, ...] -> [b, ...]."""
  rows = np.asarray(rows)
  voted = majority_vote([tuple(np.reshape(r, -1).tolist()) for r in rows], num_prompts)
  return np.asarray(voted, rows.dtype).reshape((len(voted),) + rows.shape[1:])


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
