"""The paper's Adafactor against a from-the-formulas numpy Adafactor (T5X conventions)."""
import jax
import numpy as np
import optax
import pytest

from prompt_tuning.train.optimizers import Adafactor


def reference_adafactor(params, grads_per_step, *, lr, base_step, weight_decay,
                        decay_exponent=0.8, clip=1.0, eps=1e-30, factor_min_dim=128):
  """Adafactor without momentum or parameter scaling, as T5X runs it.

  decay at (global) step t: beta_t = 1 - (t + 1)^-0.8, t counting from the
  pretrained checkpoint's step; update = -lr * clip(g / sqrt(v)) - wd * param.
  """
  p = params.copy()
  factored = min(p.shape) >= factor_min_dim
  v = np.zeros_like(p)
  v_row, v_col = np.zeros(p.shape[0]), np.zeros(p.shape[1])
  for i, g in enumerate(grads_per_step):
    beta = 1.0 - (base_step + i + 1.0) ** -decay_exponent
    g2 = g * g + eps
    if factored:
      v_row = beta * v_row + (1 - beta) * g2.mean(axis=1)
      v_col = beta * v_col + (1 - beta) * g2.mean(axis=0)
      v_hat = np.outer(v_row, v_col) / v_row.mean()
    else:
      v = beta * v + (1 - beta) * g2
      v_hat = v
    u = g / np.sqrt(v_hat)
    u = u / max(1.0, np.sqrt(np.mean(u * u)) / clip)
    p = p - lr * u - weight_decay * p
  return p


@pytest.mark.parametrize('shape', [(100, 8), (256, 128)], ids=['prompt', 'factored'])
@pytest.mark.parametrize('base_step', [0, 1_100_000])
def test_paper_adafactor_matches_the_formulas(shape, base_step):
  rng = np.random.RandomState(0)
  params = rng.normal(size=shape).astype(np.float64)
  grads = [rng.normal(size=shape) * scale for scale in (1.0, 0.1, 3.0, 0.5)]
  tx = Adafactor().build(base_step=base_step)
  p = params.astype(np.float32)
  state = tx.init(p)
  for g in grads:
    updates, state = tx.update(g.astype(np.float32), state, p)
    p = optax.apply_updates(p, updates)
  expected = reference_adafactor(params, grads, lr=0.3, base_step=base_step,
                                 weight_decay=1e-5)
  np.testing.assert_allclose(p, expected, rtol=2e-5, atol=2e-5)


def test_t5x_step_offset_changes_the_trajectory():
  # A sanity check that the option matters: with the global step restored,
  # the second moment barely decays, so later updates differ.
  rng = np.random.RandomState(1)
  grads = [rng.normal(size=(10, 4)) * s for s in (1.0, 0.01, 1.0)]
  ours = reference_adafactor(np.zeros((10, 4)), grads, lr=0.3, base_step=1_100_000,
                             weight_decay=0.0)
  naive = reference_adafactor(np.zeros((10, 4)), grads, lr=0.3, base_step=0,
                              weight_decay=0.0)
  assert not np.allclose(ours, naive)
  off = Adafactor(t5x_step_offset=False, weight_decay_rate=None).build(base_step=1_100_000)
  p = np.zeros((10, 4), np.float32)
  state = off.init(p)
  for g in grads:
    updates, state = off.update(g.astype(np.float32), state, p)
    p = optax.apply_updates(p, updates)
  np.testing.assert_allclose(p, naive, rtol=1e-5, atol=1e-5)


def test_prompt_state_is_not_factored():
  state = Adafactor().build().init(np.zeros((100, 4096), np.float32))
  shapes = sorted({np.shape(x) for x in jax.tree_util.tree_leaves(state)})
  assert (100, 4096) in shapes  # a full second moment for the prompt


@pytest.mark.parametrize('base_step,expected_lr', [(0, 0.01), (40_000, 0.005),
                                                   (1_000_000, 0.001)])
def test_rsqrt_decay_follows_the_global_step(base_step, expected_lr):
  # T5's pre-training schedule: 1 / sqrt(max(step, 10000)), worked by hand.
  rng = np.random.RandomState(1)
  grads = [rng.randn(10, 4) for _ in range(3)]
  want = reference_adafactor(np.ones((10, 4)), grads, lr=expected_lr, base_step=base_step,
                             weight_decay=0.0)
  tx = Adafactor(learning_rate=1.0, schedule='rsqrt_decay', weight_decay_rate=None
                 ).build(base_step=base_step)
  p = np.ones((10, 4), np.float32)
  state = tx.init(p)
  for g in grads:
    updates, state = tx.update(g.astype(np.float32), state, p)
    p = optax.apply_updates(p, updates)
  np.testing.assert_allclose(p, want, rtol=2e-5)
  assert Adafactor(learning_rate=1.0, schedule='rsqrt_decay').learning_rate_at(
      base_step + 1) == pytest.approx(expected_lr)


def test_unknown_schedule_is_named():
  with pytest.raises(ValueError, match="'cosine'"):
    Adafactor(schedule='cosine')
