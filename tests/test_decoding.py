"""Decoding against brute force and against recomputing the whole sequence."""
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.infer import decoding, predict
from prompt_tuning.model import T5Config, Transformer

CONFIG = T5Config(vocab_size=64, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=48,
                  num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0)

# A toy language model over {0: start, 1: EOS, 2, 3}: the next-token
# distribution depends only on the previous token.
TRANSITIONS = np.log(np.array([
    [1e-9, 0.10, 0.50, 0.40],   # after start
    [1e-9, 0.97, 0.01, 0.02],   # after EOS (never used)
    [1e-9, 0.30, 0.05, 0.65],   # after 2
    [1e-9, 0.55, 0.40, 0.05],   # after 3
], np.float32))


def _toy_step(tokens, cache):
  return jnp.asarray(TRANSITIONS)[tokens[:, 0]], cache


def _brute_force_best(max_length, alpha):
  best, best_score = None, -np.inf
  for length in range(1, max_length + 1):
    for body in itertools.product([2, 3], repeat=length - 1):
      seq = list(body) + [1]
      logp, prev = 0.0, 0
      for t in seq:
        logp += TRANSITIONS[prev, t]
        prev = t
      normalised = logp / ((5 + length) / 6) ** alpha
      if normalised > best_score:
        best, best_score = seq, normalised
  return best, best_score


def test_beam_search_finds_the_brute_force_optimum():
  for alpha in (0.0, 0.6, 2.0):
    sequences, scores = decoding.beam_search(_toy_step, {}, batch_size=2, max_length=6,
                                             beams=4, alpha=alpha)
    expected, expected_score = _brute_force_best(6, alpha)
    for row in range(2):
      got = sequences[row, 0].tolist()
      assert got[:len(expected)] == expected and not any(got[len(expected):]), (alpha, got)
      np.testing.assert_allclose(scores[row, 0], expected_score, rtol=1e-5)
    assert np.all(np.diff(np.asarray(scores), axis=1) <= 1e-6)  # best first


def test_greedy_sampling_follows_the_argmax_until_eos():
  tokens, logp = decoding.temperature_sample(_toy_step, {}, batch_size=1, max_length=6)
  # start -> 2 (0.5) -> 3 (0.65) -> 1 (0.55, EOS), then padding.
  assert tokens.tolist() == [[2, 3, 1, 0, 0, 0]]
  np.testing.assert_allclose(logp, np.log(0.5 * 0.65 * 0.55), rtol=1e-5)


def test_top_k_1_and_tiny_top_p_are_greedy_and_sampling_matches_the_distribution():
  rng = jax.random.PRNGKey(0)
  for kwargs in ({'top_k': 1}, {'top_p': 1e-3}):
    tokens, _ = decoding.temperature_sample(_toy_step, {}, 8, 6, rng, temperature=1.0,
                                            **kwargs)
    assert (np.asarray(tokens) == [2, 3, 1, 0, 0, 0]).all()
  tokens, _ = decoding.temperature_sample(_toy_step, {}, 4000, 1, rng, temperature=1.0)
  freq = np.bincount(np.asarray(tokens)[:, 0], minlength=4) / 4000
  np.testing.assert_allclose(freq, np.exp(TRANSITIONS[0]), atol=0.03)
  # top_p 0.8 keeps {2, 3} (0.5 + 0.4 >= 0.8) and drops EOS.
  tokens, _ = decoding.temperature_sample(_toy_step, {}, 2000, 1, rng, temperature=1.0,
                                          top_p=0.8)
  assert set(np.asarray(tokens)[:, 0].tolist()) == {2, 3}


def _model_and_inputs():
  model = Transformer(CONFIG)
  rng = np.random.RandomState(0)
  enc = rng.randint(2, CONFIG.vocab_size, (3, 9))
  enc[1, 5:] = 0
  enc = jnp.asarray(enc)
  params = nn.unbox(model.init(jax.random.PRNGKey(1), enc, enc[:, :4], enc[:, :4])['params'])
  # Scale the output layer so the argmax is decisive (no near-ties).
  params['decoder']['logits_dense']['kernel'] = params['decoder']['logits_dense']['kernel'] * 4
  return model, {'params': params}, enc


def greedy_by_recomputing(model, variables, enc, length):
  """Greedy decoding without the cache: the full decoder on the prefix, each step.

  Positions after EOS are padding (0), as `predict.decode` gives them.
  """
  prefix = np.zeros((enc.shape[0], length), np.int32)
  out = np.zeros_like(prefix)
  for t in range(length):
    logits = model.apply(variables, enc, jnp.asarray(prefix), jnp.ones_like(prefix))
    out[:, t] = np.argmax(logits[:, t], -1)
    if t + 1 < length:
      prefix[:, t + 1] = out[:, t]
  ended = np.cumsum(out == 1, axis=1) - (out == 1) > 0
  return np.where(ended, 0, out)


def test_cached_greedy_decoding_equals_recomputing_the_whole_sequence():
  model, variables, enc = _model_and_inputs()
  length = 7
  cached = np.asarray(jax.jit(lambda v, e: predict.decode(model, v, e, length))(variables, enc))
  np.testing.assert_array_equal(cached, greedy_by_recomputing(model, variables, enc, length))


def test_beam_search_through_the_model_with_one_beam_is_greedy():
  model, variables, enc = _model_and_inputs()
  greedy = predict.decode(model, variables, enc, 6)
  beam = predict.decode(model, variables, enc, 6,
                        predict.DecodingConfig(method='beam', num_beams=1, alpha=0.0))
  np.testing.assert_array_equal(greedy, beam)


def test_rank_classification_picks_the_most_likely_label():
  model, variables, enc = _model_and_inputs()
  labels = [[5, 1], [9, 7, 1], [12, 1]]
  picked = predict.rank_classify(model, variables, enc, labels)
  # Independently: teacher-force each label and sum log-softmax by hand.
  expected = []
  for row in range(enc.shape[0]):
    totals = []
    for label in labels:
      target = jnp.asarray([label])
      dec_in = jnp.asarray([[0] + label[:-1]])
      logits = model.apply(variables, enc[row:row + 1], dec_in, target)[0]
      log_probs = jax.nn.log_softmax(logits)
      totals.append(sum(float(log_probs[i, t]) for i, t in enumerate(label)))
    expected.append(int(np.argmax(totals)))
  assert picked.tolist() == expected
