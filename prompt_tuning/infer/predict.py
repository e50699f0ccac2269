"""Model-level inference: decode predictions, score targets, rank label strings.

All functions take a Flax model (a `Transformer` or a `DecoderOnlyLM`, with or
without deltas), its variables ({'params': ..., <delta collections>: ...})
and the features its architecture names (`model.contract`), which does the
architecture-specific part.
"""
import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning.infer import bank as bank_lib
from prompt_tuning.infer import decoding
from prompt_tuning.model import contract

Array = jax.Array
Variables = Dict[str, Any]
# One array (encoder_input_tokens) or the tuple of an architecture's predict_features.
Inputs = Union[Array, Sequence[Array]]


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


def _features(inputs: Inputs) -> Tuple[Array, ...]:
  return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def decode(model: nn.Module, variables: Variables, inputs: Inputs, max_decode_length: int,
           config: DecodingConfig = DecodingConfig(), rng: Optional[Array] = None) -> Array:
  """Predictions [b, max_decode_length] (beam search: the best beam).

  `inputs`: the architecture's `predict_features` (`model.contract`):
  encoder_input_tokens [b, L], or a decoder-only model's (decoder_input_tokens,
  decoder_causal_attention). The prefill runs once (the encoder, or the
  decoder over the inputs); each step runs one position against the cache.
  """
  features = _features(inputs)
  batch = features[0].shape[0]
  copies = config.num_beams if config.method == 'beam' else 1
  step, cache, start = contract.of(model).prefill(
      model, variables, *features, max_decode_length=max_decode_length, copies=copies)
  if config.method == 'beam':
    sequences, _ = decoding.beam_search(step, cache, batch, max_decode_length,
                                        config.num_beams, config.alpha, config.eos_id,
                                        start=start)
    return sequences[:, 0]
  temperature = 0.0 if config.method == 'greedy' else config.temperature
  out, _ = decoding.temperature_sample(
      step, cache, batch, max_decode_length, rng, temperature=temperature,
      top_k=config.top_k, top_p=config.top_p, eos_id=config.eos_id, start=start)
  return out


def score(model: nn.Module, variables: Variables, *features: Array) -> Array:
  """Sum of target log-likelihoods per example [b] (T5X's `score_batch`).

  `features`: the architecture's `score_features` (`model.contract`).
  """
  return contract.of(model).score(model, variables, *features)


def rank_classify(model: nn.Module, variables: Variables, inputs: Inputs,
                  label_tokens: Sequence[Sequence[int]]) -> Array:
  """Index of the most likely label string per example [b].

  `inputs`: the architecture's `predict_features`, as for `decode`. Encoder-decoder: the
  encoder runs once per example and the decoder scores every label (ids
  including EOS) against that encoding, in one batch of b * num_labels rows.
  Decoder-only: one prefill of [BOS, (prompt), inputs] per example, then
  each label's tokens through a copy of that cache. Ties go to the earlier
  label. Per-example delta
  leaves (e.g. prompts [b, P, d], see `infer.bank`) follow their example.
  """
  arch = contract.of(model)
  context = arch.rank_context(model, variables, *_features(inputs),
                             label_length=max(map(len, label_tokens)))
  repeated = bank_lib.repeat_examples(model.deltas, variables, len(label_tokens))
  scores = arch.label_scores(model, repeated, context, label_tokens)
  return jnp.argmax(scores, axis=-1)
