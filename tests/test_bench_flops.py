"""The benchmarks' FLOP counts against the dots XLA actually compiles."""
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.model import SIZES, Transformer, compute_weighted_cross_entropy

BENCH = pathlib.Path(__file__).resolve().parents[1] / 'bench'
if str(BENCH) not in sys.path:
  sys.path.insert(0, str(BENCH))

import forward  # pylint: disable=g-import-not-at-top,wrong-import-position
import step_profile  # pylint: disable=g-import-not-at-top,wrong-import-position

BATCH, INPUTS, TARGETS = 2, 12, 5


@pytest.fixture(scope='module')
def model_and_data():
  config = SIZES['tiny'].replace(dropout_rate=0.0, dtype='float32')
  model = Transformer(config)
  rng = np.random.RandomState(0)
  enc = jnp.asarray(rng.randint(1, config.vocab_size, (BATCH, INPUTS)), jnp.int32)
  tgt = jnp.asarray(rng.randint(1, config.vocab_size, (BATCH, TARGETS)), jnp.int32)
  dec = jnp.concatenate([jnp.zeros_like(tgt[:, :1]), tgt[:, :-1]], axis=1)
  params = model.init(jax.random.PRNGKey(0), enc, dec, tgt)['params']
  return config, model, params, (enc, dec, tgt)


def _all_dot_flops(fn, *args) -> float:
  computations = step_profile.parse_hlo(jax.jit(fn).lower(*args).compile().as_text())
  return sum(step_profile.one_dot_flops(body, shape, rest)
             for body in computations.values()
             for shape, opcode, _, _, rest in body.values() if opcode == 'dot')


def test_forward_flops_equal_the_compiled_dots(model_and_data):
  config, model, params, (enc, dec, tgt) = model_and_data
  logits = lambda p: model.apply({'params': p}, enc, dec, tgt)
  assert _all_dot_flops(logits, params) == pytest.approx(
      forward.model_flops(config, BATCH, INPUTS, TARGETS), rel=1e-6)


@pytest.mark.parametrize('weight_gradients', [False, True])
def test_train_flops_equal_the_compiled_dots(model_and_data, weight_gradients):
  config, model, params, (enc, dec, tgt) = model_and_data
  def loss(p):
    logits = model.apply({'params': p}, enc, dec, tgt)
    return compute_weighted_cross_entropy(logits, tgt)[0]

  if weight_gradients:
    grad = jax.grad(loss)
    counted = _all_dot_flops(grad, params)
  else:
    # Only the token embedding table trains: every activation gradient is
    # needed, down to the embedded inputs, but no weight gradient of a matmul.
    def embedding_grad(table, rest):
      return jax.grad(lambda t: loss({**rest, 'token_embedder': {'embedding': t}}))(table)
    rest = {k: v for k, v in params.items() if k != 'token_embedder'}
    counted = _all_dot_flops(embedding_grad, params['token_embedder']['embedding'], rest)
  expected = forward.train_flops(config, BATCH, INPUTS, TARGETS, weight_gradients)
  assert counted == pytest.approx(expected, rel=1e-6)
