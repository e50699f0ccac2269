"""Autoregressive decoding against a key/value cache: sampling and beam search.

Both work on a step function

    tokens_to_logits(tokens [n, 1], cache) -> (logits [n, vocab], cache)

so they know nothing of the model. T5 conventions: decoding starts from id 0
(or given start tokens: a decoder-only model's last input token),
stops at EOS (id 1); positions after a sequence's EOS are 0 (padding).
Greedy decoding is sampling at temperature 0. Beam search ranks finished
beams by log-probability / ((5 + length) / 6)^alpha, T5X's brevity penalty.
"""
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array
StepFn = Callable[[Array, Any], Tuple[Array, Any]]
NEG_INF = -1.0e7


def _filter_top_k_top_p(logits: Array, top_k: int, top_p: float) -> Array:
  """Keeps the top_k logits and the smallest set reaching probability top_p."""
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, NEG_INF, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # The smallest logit still inside the nucleus (the top token always is).
    inside = jnp.sum(cumulative - jax.nn.softmax(sorted_logits, -1) < top_p, axis=-1)
    cutoff = jnp.take_along_axis(sorted_logits, inside[..., None] - 1, axis=-1)
    logits = jnp.where(logits < cutoff, NEG_INF, logits)
  return logits


def temperature_sample(tokens_to_logits: StepFn, cache: Any, batch_size: int,
                       max_length: int, rng: Array = None, *, temperature: float = 0.0,
                       top_k: int = 0, top_p: float = 1.0, eos_id: int = 1,
                       start: Optional[Array] = None) -> Tuple[Array, Array]:
  """Samples (or, at temperature 0, greedily picks) up to `max_length` tokens.

  `start` [b] is the first token fed (default id 0; a decoder-only model's
  last input token after its prefill).

  Returns:
    (tokens [b, max_length], log-probabilities of the chosen tokens summed [b]).
  """
  rng = jax.random.PRNGKey(0) if rng is None else rng

  def cond(carry):
    i, _, _, done, _, _, _ = carry
    return (i < max_length) & ~jnp.all(done)

  def body(carry):
    i, token, cache, done, out, score, rng = carry
    logits, cache = tokens_to_logits(token[:, None], cache)
    logits = logits.astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits)
    rng, step_rng = jax.random.split(rng)
    if temperature == 0.0:
      next_token = jnp.argmax(logits, axis=-1)
    else:
      filtered = _filter_top_k_top_p(logits / temperature, top_k, top_p)
      next_token = jax.random.categorical(step_rng, filtered)
    next_token = jnp.where(done, 0, next_token).astype(jnp.int32)
    gained = jnp.take_along_axis(log_probs, next_token[:, None], -1)[:, 0]
    score = score + jnp.where(done, 0.0, gained)
    out = out.at[:, i].set(next_token)
    done = done | (next_token == eos_id)
    return i + 1, next_token, cache, done, out, score, rng

  start = jnp.zeros((batch_size,), jnp.int32) if start is None else start.astype(jnp.int32)
  carry = (0, start, cache, jnp.zeros((batch_size,), bool),
           jnp.zeros((batch_size, max_length), jnp.int32), jnp.zeros((batch_size,)), rng)
  _, _, _, _, out, score, _ = jax.lax.while_loop(cond, body, carry)
  return out, score


def brevity_penalty(alpha: float, length: Array) -> Array:
  """T5X's length normalisation: ((5 + length) / 6) ** alpha."""
  return jnp.power((5.0 + length) / 6.0, alpha)


def _gather_beams(tree: Any, indices: Array, batch_size: int, beams: int) -> Any:
  """Reorders every [batch * beams, ...] leaf by `indices` [batch, beams]."""
  def gather(x):
    if x.ndim == 0 or x.shape[0] != batch_size * beams:
      return x  # e.g. the cache index, shared by all beams
    x = x.reshape((batch_size, beams) + x.shape[1:])
    x = jnp.take_along_axis(x, indices.reshape(indices.shape + (1,) * (x.ndim - 2)), 1)
    return x.reshape((batch_size * beams,) + x.shape[2:])
  return jax.tree_util.tree_map(gather, tree)


def beam_search(tokens_to_logits: StepFn, cache: Any, batch_size: int, max_length: int,
                beams: int = 4, alpha: float = 0.6, eos_id: int = 1,
                start: Optional[Array] = None) -> Tuple[Array, Array]:
  """Beam search over a cache whose leaves have batch_size * beams rows.

  `start` [b * beams]: the first token fed (default id 0), as in sampling.

  Returns:
    (sequences [b, beams, max_length], scores [b, beams]), best first; the
    score is the length-normalised log-probability.
  """
  def body(carry):
    i, alive_seq, alive_logp, cache, fin_seq, fin_score = carry
    last = _last_token(alive_seq, i, first)
    logits, cache = tokens_to_logits(last.reshape(-1, 1), cache)
    vocab = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(batch_size, beams, vocab)
    candidates = (alive_logp[:, :, None] + log_probs).reshape(batch_size, beams * vocab)
    # 2 * beams candidates: enough alive ones even if `beams` of them end here.
    top_logp, top_ids = jax.lax.top_k(candidates, 2 * beams)
    beam_of, token = top_ids // vocab, (top_ids % vocab).astype(jnp.int32)
    seqs = jnp.take_along_axis(alive_seq, beam_of[:, :, None], 1).at[:, :, i].set(token)
    ended = token == eos_id

    # Alive: the best `beams` candidates that did not end.
    alive_rank = jnp.where(ended, NEG_INF, top_logp)
    _, keep = jax.lax.top_k(alive_rank, beams)
    alive_seq = jnp.take_along_axis(seqs, keep[:, :, None], 1)
    alive_logp = jnp.take_along_axis(alive_rank, keep, 1)
    cache = _gather_beams(cache, jnp.take_along_axis(beam_of, keep, 1), batch_size, beams)

    # Finished: merge the candidates that ended with the ones kept so far.
    new_score = jnp.where(ended, top_logp / brevity_penalty(alpha, i + 1.0), NEG_INF)
    all_seq = jnp.concatenate([fin_seq, seqs], 1)
    all_score = jnp.concatenate([fin_score, new_score], 1)
    fin_score, best = jax.lax.top_k(all_score, beams)
    fin_seq = jnp.take_along_axis(all_seq, best[:, :, None], 1)
    return i + 1, alive_seq, alive_logp, cache, fin_seq, fin_score

  def cond(carry):
    i, _, alive_logp, _, _, fin_score = carry
    # Stop when no alive beam can still beat the worst finished one, even with
    # the largest brevity bonus left.
    best_alive = alive_logp[:, 0] / brevity_penalty(alpha, float(max_length))
    can_improve = jnp.any(best_alive > fin_score[:, -1])
    return (i < max_length) & can_improve

  first = (jnp.zeros((batch_size, beams), jnp.int32) if start is None
           else start.reshape(batch_size, beams).astype(jnp.int32))
  alive_seq = jnp.zeros((batch_size, beams, max_length), jnp.int32)
  # Only the first beam is live at the start, so the beams do not duplicate.
  alive_logp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (beams - 1)), (batch_size, 1))
  fin_seq = jnp.zeros((batch_size, beams, max_length), jnp.int32)
  fin_score = jnp.full((batch_size, beams), NEG_INF)
  carry = (0, alive_seq, alive_logp, cache, fin_seq, fin_score)
  _, alive_seq, alive_logp, _, fin_seq, fin_score = jax.lax.while_loop(cond, body, carry)
  # Rows with no finished beam fall back on the alive ones (hit max_length).
  none_finished = fin_score[:, 0] <= NEG_INF
  alive_score = alive_logp / brevity_penalty(alpha, float(max_length))
  sequences = jnp.where(none_finished[:, None, None], alive_seq, fin_seq)
  scores = jnp.where(none_finished[:, None], alive_score, fin_score)
  return sequences, scores


def _last_token(sequences: Array, i: Array, first: Array) -> Array:
  """The token at position i - 1 of [b, beams, length] (`first` [b, beams] at i = 0)."""
  previous = jax.lax.dynamic_index_in_dim(sequences, jnp.maximum(i - 1, 0), axis=2,
                                          keepdims=False)
  return jnp.where(i == 0, first, previous)
