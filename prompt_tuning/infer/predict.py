"""Model-level inference: decode predictions, score targets, rank label strings.

All functions take a Flax model (a `Transformer`, with or without deltas) and
its variables ({'params': ..., <delta collections>: ...}).
"""
import dataclasses
from typing import Any, Dict, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.infer import bank as bank_lib
from prompt_tuning.infer import decoding
from prompt_tuning.model.losses import sequence_scores
from prompt_tuning.model.t5 import Transformer

Array = jax.Array
Variables = Dict[str, Any]


@dataclasses.dataclass(frozen=True)
class DecodingConfig:
  """How to decode. method: 'greedy', 'sample' or 'beam'.

  alpha is T5X's brevity-penalty exponent for beam search; temperature,
  top_k and top_p apply to sampling.
  """
  method: str = 'greedy'
  num_beams: int = 4
  alpha: float = 0.6
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  eos_id: int = 1

  def __post_init__(self):
    if self.method not in ('greedy', 'sample', 'beam'):
      raise ValueError(f"Unknown decoding method {self.method!r}: use 'greedy', 'sample' "
                       "or 'beam'.")


def _repeat(x: Array, times: int) -> Array:
  return jnp.repeat(x, times, axis=0) if times > 1 else x


def decode(model: nn.Module, variables: Variables, encoder_input_tokens: Array,
           max_decode_length: int, config: DecodingConfig = DecodingConfig(),
           rng: Optional[Array] = None) -> Array:
  """Predictions [b, max_decode_length] (beam search: the best beam).

  The encoder runs once; each step runs the decoder on one position with the
  key/value cache.
  """
  batch = encoder_input_tokens.shape[0]
  copies = config.num_beams if config.method == 'beam' else 1
  encoded = model.apply(variables, encoder_input_tokens, method=Transformer.encode)
  encoded, tokens = _repeat(encoded, copies), _repeat(encoder_input_tokens, copies)
  placeholder = jnp.zeros((batch * copies, max_decode_length), jnp.int32)
  cache = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), tokens, placeholder, placeholder, decode=True,
      max_decode_length=max_decode_length))['cache']
  cache = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), cache)
  frozen = {k: v for k, v in variables.items() if k != 'cache'}

  def tokens_to_logits(step_tokens, cache):
    logits, mutated = model.apply(
        {**frozen, 'cache': cache}, encoded, tokens, step_tokens, decode=True,
        max_decode_length=max_decode_length, method=Transformer.decode,
        mutable=['cache'])
    return logits[:, 0], mutated['cache']

  if config.method == 'beam':
    sequences, _ = decoding.beam_search(tokens_to_logits, cache, batch, max_decode_length,
                                        config.num_beams, config.alpha, config.eos_id)
    return sequences[:, 0]
  temperature = 0.0 if config.method == 'greedy' else config.temperature
  out, _ = decoding.temperature_sample(
      tokens_to_logits, cache, batch, max_decode_length, rng, temperature=temperature,
      top_k=config.top_k, top_p=config.top_p, eos_id=config.eos_id)
  return out


def score(model: nn.Module, variables: Variables, encoder_input_tokens: Array,
          decoder_target_tokens: Array) -> Array:
  """Sum of target log-likelihoods per example [b] (T5X's `score_batch`)."""
  decoder_input_tokens = jnp.concatenate(
      [jnp.zeros_like(decoder_target_tokens[:, :1]), decoder_target_tokens[:, :-1]], 1)
  logits = model.apply(variables, encoder_input_tokens, decoder_input_tokens,
                       decoder_target_tokens)
  return sequence_scores(logits, decoder_target_tokens)


def rank_classify(model: nn.Module, variables: Variables, encoder_input_tokens: Array,
                  label_tokens: Sequence[Sequence[int]]) -> Array:
  """Index of the most likely label string per example [b].

  The encoder runs once per example; the decoder then scores every label
  (ids including EOS) against that encoding, in one batch of b * num_labels
  rows. Ties go to the earlier label. Per-example delta leaves (e.g. prompts
  [b, P, d], see `infer.bank`) follow their example.
  """
  labels = len(label_tokens)
  length = max(len(t) for t in label_tokens)
  targets = np.zeros((labels, length), np.int32)
  for i, ids in enumerate(label_tokens):
    targets[i, :len(ids)] = ids
  batch = encoder_input_tokens.shape[0]
  encoded = model.apply(variables, encoder_input_tokens, method=Transformer.encode)
  targets = jnp.tile(jnp.asarray(targets), (batch, 1))  # [b * labels, length]
  decoder_inputs = jnp.concatenate([jnp.zeros_like(targets[:, :1]), targets[:, :-1]], 1)
  logits = model.apply(bank_lib.repeat_examples(model.deltas, variables, labels),
                       jnp.repeat(encoded, labels, axis=0),
                       jnp.repeat(encoder_input_tokens, labels, axis=0), decoder_inputs,
                       targets, method=Transformer.decode)
  scores = sequence_scores(logits, targets)
  return jnp.argmax(scores.reshape(batch, labels), axis=-1)
