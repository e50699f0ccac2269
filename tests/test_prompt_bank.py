"""Mixed-task batches and prompt ensembles equal serving each prompt on its own."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.infer import predict, prompt_bank
from prompt_tuning.model import T5Config
from prompt_tuning.prompts import PromptTransformer

CONFIG = T5Config(vocab_size=64, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                  num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0)
LENGTH = 3


@pytest.fixture(scope='module')
def served():
  model = PromptTransformer(CONFIG, prompt_length=LENGTH)
  rng = np.random.RandomState(0)
  enc = rng.randint(2, CONFIG.vocab_size, (4, 7))
  enc[3, 4:] = 0
  enc = jnp.asarray(enc)
  variables = model.init(jax.random.PRNGKey(0), enc, enc[:, :3], enc[:, :3])
  params = nn.unbox(variables['params'])
  params['decoder']['logits_dense']['kernel'] *= 4  # decisive argmaxes
  bank = prompt_bank.stack_prompts([rng.normal(size=(LENGTH, 16)) for _ in range(3)])
  return model, {'params': params}, enc, bank


def test_mixed_task_batch_equals_each_task_alone(served):
  model, variables, enc, bank = served
  index = jnp.asarray([2, 0, 1, 2])
  dec_in = jnp.zeros((4, 5), jnp.int32).at[:, 1:].set(enc[:, :4])
  mixed = model.apply(prompt_bank.with_prompts(variables, prompt_bank.select(bank, index)),
                      enc, dec_in, jnp.ones_like(dec_in))
  for row, task in enumerate(index.tolist()):
    alone = model.apply(prompt_bank.with_prompts(variables, bank[task]), enc[row:row + 1],
                        dec_in[row:row + 1], jnp.ones_like(dec_in[row:row + 1]))
    np.testing.assert_allclose(mixed[row], alone[0], atol=1e-5)

  decoded = predict.decode(model, prompt_bank.with_prompts(
      variables, prompt_bank.select(bank, index)), enc, 5)
  for row, task in enumerate(index.tolist()):
    alone = predict.decode(model, prompt_bank.with_prompts(variables, bank[task]),
                           enc[row:row + 1], 5)
    np.testing.assert_array_equal(decoded[row], alone[0])


def test_majority_vote_hand_worked():
  votes = prompt_bank.majority_vote(['a', 'b', 'a',   # clear majority
                                     'x', 'y', 'z',   # three-way tie: prompt 0's
                                     'q', 'r', 'r'], 3)
  assert votes == ['a', 'x', 'r']
  with pytest.raises(ValueError, match='groups of 3'):
    prompt_bank.majority_vote(['a', 'b'], 3)


def test_ensemble_in_one_pass_equals_separate_passes_then_vote(served):
  model, variables, enc, bank = served
  tokens, index = prompt_bank.replicate_for_ensemble(enc, len(bank))
  one_pass = predict.decode(
      model, prompt_bank.with_prompts(variables, prompt_bank.select(bank, index)), tokens, 5)
  voted = prompt_bank.majority_vote([tuple(r) for r in np.asarray(one_pass).tolist()],
                                    len(bank))
  separate = [np.asarray(predict.decode(model, prompt_bank.with_prompts(variables, p), enc, 5))
              for p in bank]
  for row in range(enc.shape[0]):
    per_prompt = [tuple(s[row].tolist()) for s in separate]
    assert voted[row] == prompt_bank.majority_vote(per_prompt, len(bank))[0]


def test_prompts_of_different_shapes_are_refused():
  with pytest.raises(ValueError, match='different shapes'):
    prompt_bank.stack_prompts([np.zeros((3, 16)), np.zeros((4, 16))])
