"""Multi-task prompts: the four combinations, task markers, a mixed batch, bad markers."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from prompt_tuning.data import task_markers
from prompt_tuning.deltas import MultiTaskPrompt, PromptTuning
from prompt_tuning.deltas.prompt import NotRecorded
from prompt_tuning.model import T5Config, Transformer

import fixture_tasks  # pylint: disable=unused-import  (registers fixture_sentiment_marked)

CONFIG = T5Config(vocab_size=32128, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                  num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)
MARKER_0 = 32099


def _batch(task_indices):
  rng = np.random.RandomState(0)
  enc = rng.randint(2, 500, (len(task_indices), 9))
  enc[:, 0] = MARKER_0 - np.asarray(task_indices)
  enc[0, 6:] = 0
  tgt = rng.randint(2, 500, (len(task_indices), 3))
  dec = np.concatenate([np.zeros((len(task_indices), 1), int), tgt[:, :-1]], 1)
  return [jnp.asarray(x) for x in (enc, dec, tgt)]


def _init(delta, batch):
  model = Transformer(CONFIG, deltas=(delta,))
  variables = nn.unbox(model.init(jax.random.PRNGKey(0), *batch))
  # Non-trivial values everywhere (the init's identity kernels and zero biases hide bugs).
  rng = np.random.RandomState(1)
  leaves = variables[delta.collection][delta.name]
  leaves = {k: jnp.asarray(rng.normal(size=v.shape).astype(np.float32)) for k, v in leaves.items()}
  return model, {**variables, delta.collection: {delta.name: leaves}}


# The combinations by hand, for task t, from the google-research definitions.
def _by_hand(combination, leaves, t):
  shared = np.asarray(leaves['shared'])
  if combination == 'add':
    return shared + np.asarray(leaves['tasks'][t])
  if combination == 'concat':
    return np.concatenate([shared, np.asarray(leaves['tasks'][t])], 0)
  if combination == 'concat_features':
    return np.concatenate([shared, np.asarray(leaves['tasks'][t])], 1)
  return shared @ np.asarray(leaves['task_kernel'][t]) + np.asarray(leaves['task_bias'][t])


@pytest.mark.parametrize('combination,expected_length', [
    ('add', 4), ('concat', 4 + 2), ('concat_features', 4), ('project', 4)])
def test_a_mixed_batch_serves_each_example_its_tasks_prompt(combination, expected_length):
  extra = {'task_length': 2} if combination == 'concat' else (
      {'task_features': 6} if combination == 'concat_features' else {})
  delta = MultiTaskPrompt(num_tasks=3, length=4, combination=combination, **extra)
  indices = [2, 0, 1, 2]
  batch = _batch(indices)
  model, variables = _init(delta, batch)
  leaves = variables[delta.collection][delta.name]
  assert delta.prompt_length == expected_length
  mixed = model.apply(variables, *batch)
  exported = delta.task_prompts(variables)
  assert exported.shape == (3, expected_length, CONFIG.emb_dim)
  for row, t in enumerate(indices):
    prompt = _by_hand(combination, leaves, t)
    np.testing.assert_allclose(exported[t], prompt, rtol=1e-5, atol=1e-5)
    # The same example through plain prompt tuning with that task's prompt.
    single = PromptTuning(length=expected_length, init=NotRecorded())
    alone = Transformer(CONFIG, deltas=(single,)).apply(
        single.with_prompt({'params': variables['params']}, jnp.asarray(prompt)),
        *[x[row:row + 1] for x in batch])
    np.testing.assert_allclose(mixed[row:row + 1], alone, rtol=1e-5, atol=1e-5)


def test_tasks_differ_and_the_marker_stays_in_the_input():
  delta = MultiTaskPrompt(num_tasks=2, length=3)
  batch = _batch([0, 1])
  model, variables = _init(delta, batch)
  same_tokens = [jnp.concatenate([x[:1], x[:1]]) for x in batch]
  other = same_tokens[0].at[1, 0].set(MARKER_0 - 1)
  logits = model.apply(variables, other, *same_tokens[1:])
  assert not np.allclose(logits[0], logits[1])
  encoded = model.apply(variables, other, method=model.encode)
  assert encoded.shape == (2, 3 + 9, CONFIG.emb_dim)


def test_a_marker_out_of_range_is_an_error_naming_it():
  delta = MultiTaskPrompt(num_tasks=2, length=3)
  model, variables = _init(delta, _batch([0, 1]))
  with pytest.raises(Exception, match=r'task index 5, outside the 2 tasks'):
    jax.block_until_ready(model.apply(variables, *_batch([0, 5])))
  # Unchecked, the example gets a NaN prompt rather than another task's.
  unchecked = MultiTaskPrompt(num_tasks=2, length=3, check_task_index=False)
  logits = Transformer(CONFIG, deltas=(unchecked,)).apply(variables, *_batch([0, 5]))
  assert np.isfinite(logits[0]).all() and np.isnan(logits[1]).all()


@pytest.mark.parametrize('kwargs,message', [
    ({'combination': 'multiply'}, 'Unknown multi-task combination'),
    ({'num_tasks': 0}, 'at least 1'),
    ({'task_length': 3}, "for combination='concat' only"),
])
def test_bad_settings_are_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    MultiTaskPrompt(**kwargs)


def test_config_round_trip():
  delta = MultiTaskPrompt(num_tasks=3, length=5, combination='concat', task_length=2)
  rebuilt = MultiTaskPrompt.from_config(delta.to_config())
  assert rebuilt.to_config()['combination'] == 'concat' and rebuilt.task_length == 2
  assert rebuilt.prompt_length == 7


def test_marked_mixture_prepends_each_tasks_marker_and_keeps_eos():
  for name, marker in (('fixture_sentiment_task0', MARKER_0),
                       ('fixture_sentiment_shouted_task1', MARKER_0 - 1)):
    task = seqio.get_mixture_or_task(name)
    original = seqio.get_mixture_or_task(name.rsplit('_task', 1)[0])
    lengths = {'inputs': 32, 'targets': 4}
    for ex, raw in zip(task.get_dataset(lengths, split='validation', shuffle=False).take(3),
                       original.get_dataset(lengths, split='validation', shuffle=False)):
      inputs = ex['inputs'].numpy().tolist()
      assert inputs[0] == marker and inputs[1:] == raw['inputs'].numpy().tolist()
      assert inputs[-1] == 1  # EOS
    assert task.postprocessor is original.postprocessor
  mixture = seqio.get_mixture_or_task('fixture_sentiment_marked')
  assert sorted(t.name for t in mixture.tasks) == ['fixture_sentiment_shouted_task1',
                                                   'fixture_sentiment_task0']


def test_marker_errors():
  with pytest.raises(ValueError, match='No marker for task index -1'):
    task_markers.marker(-1)
  with pytest.raises(ValueError, match='needs at least one task'):
    task_markers.add_marked_mixture('empty', [])
