"""How a prompt joins the embedded input.

Each function takes

    prompt    [b or 1, P, d]  (a batch of 1 is shared by every example)
    embedded  [b, L, d]       the embedded input tokens
    mask      [b, L]          booleans, True at real tokens
    tokens    [b, L]          the input ids (for placements that read them,
                              such as templates; optional)

and returns (combined [b, L + P, d], mask [b, L + P]); prompt positions are
always valid. All are pure jnp and jit-able; the output length is static.

  * `prefix` (the paper's, and the default): [prompt, input].
  * `after_first_token`: [input[0], prompt, input[1:]], for decoder-only
    models whose first position must stay the start token.
  * `suffix`: the prompt right after each example's last real token, before
    its padding, so no padding sits between the input and the prompt.

`combined_mask` gives only the mask, for the encoder-decoder attention mask
during decoding, where no embeddings are at hand.
"""
import inspect
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array
CombineFn = Callable[..., Tuple[Array, Array]]


def _broadcast_prompt(prompt: Array, embedded: Array) -> Array:
  """[b|1, P, d] -> [b, P, d] in the activation dtype of `embedded`."""
  if prompt.ndim != 3 or embedded.ndim != 3 or prompt.shape[-1] != embedded.shape[-1]:
    raise ValueError(f'Expected prompt [b|1, P, d] and embedded [b, L, d]; got '
                     f'{prompt.shape} and {embedded.shape}.')
  batch = embedded.shape[0]
  if prompt.shape[0] not in (1, batch):
    raise ValueError(f'The prompt batch {prompt.shape[0]} is neither 1 nor the '
                     f'input batch {batch}.')
  return jnp.broadcast_to(prompt, (batch,) + prompt.shape[1:]).astype(embedded.dtype)


def _prompt_mask(prompt: Array, mask: Array) -> Array:
  return jnp.ones((mask.shape[0], prompt.shape[1]), bool)


def prefix(prompt: Array, embedded: Array, mask: Array,
           tokens: Optional[Array] = None) -> Tuple[Array, Array]:
  """[prompt, input]: the paper's placement.

  Returns:
    combined [b, P + L, d] and mask [b, P + L].
  """
  prompt = _broadcast_prompt(prompt, embedded)
  return (jnp.concatenate([prompt, embedded], axis=1),
          jnp.concatenate([_prompt_mask(prompt, mask), mask.astype(bool)], axis=1))


def after_first_token(prompt: Array, embedded: Array, mask: Array,
                      tokens: Optional[Array] = None) -> Tuple[Array, Array]:
  """[input[:1], prompt, input[1:]]: keeps token 0 (BOS) first.

  Returns:
    combined [b, 1 + P + (L - 1), d] and mask of the same length.
  """
  prompt = _broadcast_prompt(prompt, embedded)
  mask = mask.astype(bool)
  combined = jnp.concatenate([embedded[:, :1], prompt, embedded[:, 1:]], axis=1)
  combined_mask = jnp.concatenate(
      [mask[:, :1], _prompt_mask(prompt, mask), mask[:, 1:]], axis=1)
  return combined, combined_mask


def suffix(prompt: Array, embedded: Array, mask: Array,
           tokens: Optional[Array] = None) -> Tuple[Array, Array]:
  """The prompt right after each example's last real token, before its padding.

  With `end` = 1 + the index of example b's last real token (0 if none),
  combined[b] = [input[:end], prompt, input[end:]], the padding shifted right
  by P. Positions before `end` keep their mask, so interior padding stays
  masked.

  Returns:
    combined [b, L + P, d] and mask [b, L + P].
  """
  prompt = _broadcast_prompt(prompt, embedded)
  mask = mask.astype(bool)
  batch, length = mask.shape
  num_prompt = prompt.shape[1]
  positions = jnp.arange(length)
  end = jnp.max(jnp.where(mask, positions + 1, 0), axis=1)  # [b]
  out = jnp.arange(length + num_prompt)[None, :]  # [1, L + P]
  in_prompt = (out >= end[:, None]) & (out < end[:, None] + num_prompt)
  # Which input position each output position copies (before / after the prompt).
  source = jnp.where(out < end[:, None], out, out - num_prompt)
  source = jnp.clip(source, 0, length - 1)
  prompt_index = jnp.clip(out - end[:, None], 0, num_prompt - 1)
  rows = jnp.arange(batch)[:, None]
  from_input = embedded[rows, source]  # [b, L + P, d]
  from_prompt = prompt[rows, prompt_index]
  combined = jnp.where(in_prompt[..., None], from_prompt, from_input)
  combined_mask = jnp.where(in_prompt, True, mask[rows, source])
  return combined, combined_mask


def combined_mask(combine: CombineFn, mask: Array, prompt_length: int,
                  tokens: Optional[Array] = None) -> Array:
  """The mask `combine` gives for input mask [b, L] and P = `prompt_length`.

  Runs `combine` on zero-width embeddings, so no embedding is needed or read.

  Returns:
    [b, L + P] booleans.
  """
  batch, length = mask.shape
  empty_prompt = jnp.zeros((1, prompt_length, 0), jnp.float32)
  empty_input = jnp.zeros((batch, length, 0), jnp.float32)
  return combine(empty_prompt, empty_input, mask, tokens)[1]


COMBINE_FUNCTIONS = {'prefix': prefix, 'after_first_token': after_first_token,
                     'suffix': suffix}


def name_of(combine: CombineFn) -> str:
  """The registered name of `combine` (what a checkpoint records).

  A gin reference (`@combine.after_first_token`) is a wrapper of the function:
  it names the function it wraps.
  """
  for name, fn in COMBINE_FUNCTIONS.items():
    if fn is inspect.unwrap(combine):
      return name
  raise ValueError(f'{combine} is not one of the combine functions '
                   f'{sorted(COMBINE_FUNCTIONS)}; add it to COMBINE_FUNCTIONS so '
                   'checkpoints can name it.')


def by_name(name: str) -> CombineFn:
  if name not in COMBINE_FUNCTIONS:
    raise ValueError(f'Unknown combine function {name!r}; one of {sorted(COMBINE_FUNCTIONS)}.')
  return COMBINE_FUNCTIONS[name]


__all__ = ['COMBINE_FUNCTIONS', 'CombineFn', 'after_first_token', 'by_name',
           'combined_mask', 'name_of', 'prefix', 'suffix']
