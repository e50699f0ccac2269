"""The T5X loss on hand-worked numbers."""
import math

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.model import compute_weighted_cross_entropy, sequence_scores

# Two-word vocabulary, logits (0, ln 3): softmax = (1/4, 3/4), logsumexp = ln 4.
LOGITS = jnp.array([[[0.0, math.log(3.0)]]])
LN4 = math.log(4.0)


def test_loss_is_cross_entropy_plus_z_loss():
  loss, z, weight = compute_weighted_cross_entropy(LOGITS, jnp.array([[1]]), z_loss=1e-4)
  assert math.isclose(float(z), 1e-4 * LN4**2, rel_tol=1e-5)
  assert math.isclose(float(loss), math.log(4 / 3) + 1e-4 * LN4**2, rel_tol=1e-5)
  assert float(weight) == 1.0


def test_gradient_includes_the_z_loss_term():
  grad = jax.grad(lambda l: compute_weighted_cross_entropy(l, jnp.array([[1]]),
                                                           z_loss=1e-4)[0])(LOGITS)
  softmax = np.array([0.25, 0.75])
  expected = softmax - np.array([0.0, 1.0]) + 2e-4 * LN4 * softmax
  np.testing.assert_allclose(grad[0, 0], expected, rtol=1e-5, atol=1e-7)


def test_loss_is_summed_over_non_padding_targets_only():
  logits = jnp.concatenate([LOGITS, LOGITS, LOGITS], axis=1)  # 3 positions
  loss, _, weight = compute_weighted_cross_entropy(logits, jnp.array([[1, 1, 0]]),
                                                   z_loss=0.0)
  assert math.isclose(float(loss), 2 * math.log(4 / 3), rel_tol=1e-5)
  assert float(weight) == 2.0
  halved, _, _ = compute_weighted_cross_entropy(logits, jnp.array([[1, 1, 0]]),
                                                z_loss=0.0, loss_normalizing_factor=2.0)
  assert math.isclose(float(halved), math.log(4 / 3), rel_tol=1e-5)


def test_label_smoothing_subtracts_the_target_entropy():
  loss, _, _ = compute_weighted_cross_entropy(LOGITS, jnp.array([[1]]), z_loss=0.0,
                                              label_smoothing=0.1)
  cross = -(0.9 * math.log(0.75) + 0.1 * math.log(0.25))
  entropy = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
  assert math.isclose(float(loss), cross - entropy, rel_tol=1e-5)


def test_sequence_score_sums_target_log_likelihoods():
  logits = jnp.concatenate([LOGITS, LOGITS[..., ::-1]], axis=1)  # second: (3/4, 1/4)
  scores = sequence_scores(logits, jnp.array([[1, 0]]))
  # Target 0 at position 1 is padding, so only log(3/4) counts.
  assert math.isclose(float(scores[0]), math.log(0.75), rel_tol=1e-6)
  scores = sequence_scores(logits, jnp.array([[1, 1]]), weights=jnp.array([[1, 1]]))
  assert math.isclose(float(scores[0]), math.log(0.75) + math.log(0.25), rel_tol=1e-6)
