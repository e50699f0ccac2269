"""Banks: mixed-task batches and ensembles equal serving each delta on its own."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.deltas import PromptTuning, paths
from prompt_tuning.infer import bank as bank_lib
from prompt_tuning.infer import predict
from prompt_tuning.model import T5Config, Transformer

CONFIG = T5Config(vocab_size=64, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                  num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0)
LENGTH = 3
PROMPT = PromptTuning(length=LENGTH)


def _serve(variables, leaves):
  return paths.merge(variables, leaves)


@pytest.fixture(scope='module')
def served():
  model = Transformer(CONFIG, deltas=(PROMPT,))
  rng = np.random.RandomState(0)
  enc = rng.randint(2, CONFIG.vocab_size, (4, 7))
  enc[3, 4:] = 0
  enc = jnp.asarray(enc)
  variables = model.init(jax.random.PRNGKey(0), enc, enc[:, :3], enc[:, :3])
  params = nn.unbox(variables['params'])
  params['decoder']['logits_dense']['kernel'] *= 4  # decisive argmaxes
  members = [PROMPT.with_prompt({}, rng.normal(size=(LENGTH, 16))) for _ in range(3)]
  shared, bank = bank_lib.stack(members, model.deltas)
  assert shared == {} and bank_lib.size(bank) == 3
  return model, {'params': params}, enc, bank


def test_mixed_task_batch_equals_each_task_alone(served):
  model, variables, enc, bank = served
  index = jnp.asarray([2, 0, 1, 2])
  dec_in = jnp.zeros((4, 5), jnp.int32).at[:, 1:].set(enc[:, :4])
  mixed = model.apply(_serve(variables, bank_lib.select(bank, index)),
                      enc, dec_in, jnp.ones_like(dec_in))
  for row, task in enumerate(index.tolist()):
    alone = model.apply(_serve(variables, bank_lib.member(bank, task)), enc[row:row + 1],
                        dec_in[row:row + 1], jnp.ones_like(dec_in[row:row + 1]))
    np.testing.assert_allclose(mixed[row], alone[0], atol=1e-5)

  decoded = predict.decode(model, _serve(variables, bank_lib.select(bank, index)), enc, 5)
  for row, task in enumerate(index.tolist()):
    alone = predict.decode(model, _serve(variables, bank_lib.member(bank, task)),
                           enc[row:row + 1], 5)
    np.testing.assert_array_equal(decoded[row], alone[0])


@pytest.mark.parametrize('rows_per_pass', [1, 3, 4, None])
def test_run_selected_in_chunks_equals_each_task_alone(served, rows_per_pass):
  # 3 rows per pass over 4 rows pads the second pass with a copy of row 0.
  model, variables, enc, bank = served
  index = jnp.asarray([1, 2, 0, 1])
  targets = jnp.asarray(np.random.RandomState(1).randint(2, CONFIG.vocab_size, (4, 5)))
  scores = jax.jit(lambda v, i, x, y: bank_lib.run_selected(
      lambda v, x, y: predict.score(model, v, x, y), v, bank, i, x, y,
      rows_per_pass=rows_per_pass))(variables, index, enc, targets)
  decoded = bank_lib.run_selected(lambda v, x: predict.decode(model, v, x, 5), variables,
                                  bank, index, enc, rows_per_pass=rows_per_pass)
  assert scores.shape == (4,) and decoded.shape[0] == 4
  for row, task in enumerate(index.tolist()):
    alone = _serve(variables, bank_lib.member(bank, task))
    np.testing.assert_allclose(
        scores[row], predict.score(model, alone, enc[row:row + 1], targets[row:row + 1])[0],
        rtol=1e-5)
    np.testing.assert_array_equal(decoded[row], predict.decode(model, alone,
                                                               enc[row:row + 1], 5)[0])


def test_run_selected_refuses_a_non_positive_chunk(served):
  model, variables, enc, bank = served
  with pytest.raises(ValueError, match='rows_per_pass must be a positive'):
    bank_lib.run_selected(lambda v, x: predict.decode(model, v, x, 5), variables, bank,
                          jnp.zeros(4, jnp.int32), enc, rows_per_pass=-2)


def test_majority_vote_hand_worked():
  votes = bank_lib.majority_vote(['a', 'b', 'a',   # clear majority
                                     'x', 'y', 'z',   # three-way tie: prompt 0's
                                     'q', 'r', 'r'], 3)
  assert votes == ['a', 'x', 'r']
  with pytest.raises(ValueError, match='groups of 3'):
    bank_lib.majority_vote(['a', 'b'], 3)


def test_ensemble_in_one_pass_equals_separate_passes_then_vote(served):
  model, variables, enc, bank = served
  size = bank_lib.size(bank)
  tokens, index = bank_lib.replicate_for_ensemble(enc, size)
  one_pass = predict.decode(model, _serve(variables, bank_lib.select(bank, index)), tokens, 5)
  voted = bank_lib.majority_vote([tuple(r) for r in np.asarray(one_pass).tolist()], size)
  separate = [np.asarray(predict.decode(model, _serve(variables, bank_lib.member(bank, j)),
                                        enc, 5)) for j in range(size)]
  for row in range(enc.shape[0]):
    per_prompt = [tuple(s[row].tolist()) for s in separate]
    assert voted[row] == bank_lib.majority_vote(per_prompt, size)[0]


def test_members_of_different_shapes_are_refused():
  with pytest.raises(ValueError, match='different shapes'):
    bank_lib.stack([PROMPT.with_prompt({}, np.zeros((3, 16))),
                    PromptTuning(length=4).with_prompt({}, np.zeros((4, 16)))], (PROMPT,))


def test_leaves_that_cannot_be_banked_must_be_equal():
  # A leaf no delta declares bankable is shared by all members, so it must agree.
  members = [paths.merge(PROMPT.with_prompt({}, np.zeros((3, 16))),
                         {'other': {'x': np.full((2,), float(i))}}) for i in range(2)]
  with pytest.raises(ValueError, match='other/x differs'):
    bank_lib.stack(members, (PROMPT,))
  same = [paths.merge(m, {'other': {'x': np.ones(2)}}) for m in members]
  shared, stacked = bank_lib.stack(same, (PROMPT,))
  assert list(shared) == ['other'] and stacked['prompt']['prompt']['prompt'].shape == (2, 3, 16)


def test_repeat_examples_repeats_only_per_example_leaves():
  per_example = PROMPT.with_prompt({'params': {'w': jnp.ones((2, 3))}},
                                   jnp.arange(2 * 3 * 4.).reshape(2, 3, 4))
  repeated = bank_lib.repeat_examples((PROMPT,), per_example, 3)
  np.testing.assert_array_equal(repeated['prompt']['prompt']['prompt'],
                                np.repeat(np.arange(24.).reshape(2, 3, 4), 3, axis=0))
  assert repeated['params']['w'].shape == (2, 3)  # not a bank leaf: untouched
  shared = PROMPT.with_prompt({}, jnp.zeros((3, 4)))  # one prompt for the batch
  assert bank_lib.repeat_examples((PROMPT,), shared, 3)['prompt']['prompt']['prompt'].shape == (3, 4)
