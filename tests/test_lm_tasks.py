"""Prefix LM and span corruption: hand-worked pieces and the tasks end to end.

The tasks read a text file written here (or TFDS mock data); nothing touches
the network.
"""
import importlib
import random

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from prompt_tuning.data import lm_preprocessors as lp
from prompt_tuning.data import lm_tasks
from prompt_tuning.data import task_utils
from prompt_tuning.data import vocab

S0, S1, S2 = 32099, 32098, 32097  # <extra_id_0>, <extra_id_1>, <extra_id_2>
EOS = 1
WORDS = ('the cat sat on a mat while dogs barked loudly at night and in the '
         'morning people walked to work').split()
SPAN_LENGTHS = {'inputs': 512, 'targets': 114}
PREFIX_LENGTHS = {'inputs': 64, 'targets': 64}


def _documents(count=40, seed=0):
  rng = random.Random(seed)
  docs = [' '.join(rng.choice(WORDS) for _ in range(rng.randint(1, 120)))
          for _ in range(count)]
  docs[3] = ''  # Empty documents are dropped.
  return docs


def _token_stream(docs):
  v = vocab.get_vocabulary()
  return [t for d in docs if d for t in v.encode(d)]


@pytest.fixture(scope='module')
def text_tasks(tmp_path_factory):
  path = tmp_path_factory.mktemp('text') / 'docs.txt'
  docs = _documents()
  path.write_text('\n'.join(docs) + '\n')
  prefix_name, span_name = lm_tasks.register_text_file_tasks('pttest_text', str(path))
  return prefix_name, span_name, docs


def _examples(task_name, lengths, seed, split='train'):
  ds = seqio.get_mixture_or_task(task_name).get_dataset(
      lengths, split=split, shuffle=False, seed=seed, use_cached=False)
  return [{k: v.tolist() for k, v in ex.items()} for ex in ds.as_numpy_iterator()]


def _uncorrupt(inputs, targets):
  """Puts each sentinel's span from the targets back into the inputs."""
  spans, current = {}, None
  for t in targets:
    if t > 32000:
      current = spans.setdefault(t, [])
    else:
      current.append(t)
  out = []
  for t in inputs:
    out.extend(spans.get(t, []) if t > 32000 else [t])
  return out


def _mask(*bits):
  return tf.constant([bool(b) for b in bits])


# ------------------------------------------------------------ pieces

def test_random_spans_helper_gives_568_tokens_for_512_inputs_and_114_targets():
  # 568 tokens: round(85.2) = 85 noise in round(85 / 3) = 28 spans; inputs
  # 568 - 85 + 28 sentinels + EOS = 512, targets 85 + 28 + EOS = 114.
  # 569 would give 484 + 28 + 1 = 513 inputs.
  assert lp.random_spans_helper(512) == (568, 114)
  assert lp.random_spans_helper(512, noise_density=0.15, mean_noise_span_length=3.0) == (
      568, 114)


@pytest.mark.parametrize('inputs_length', [16, 64, 200, 1024])
def test_random_spans_helper_is_the_longest_raw_length_that_fits(inputs_length):
  def corrupted(n):
    noise = round(n * 0.15)
    spans = round(noise / 3)
    return n - noise + spans + 1, noise + spans + 1

  tokens, targets = lp.random_spans_helper(inputs_length)
  assert corrupted(tokens)[0] <= inputs_length < corrupted(tokens + 1)[0]
  assert corrupted(tokens)[1] == targets


def test_corrupt_spans_on_a_hand_mask():
  a, b, c, d, e, f, g, h = range(10, 18)
  inputs, targets = lp.corrupt_spans(tf.constant([a, b, c, d, e, f, g, h]),
                                     _mask(0, 0, 1, 1, 0, 0, 0, 1), S0)
  assert inputs.numpy().tolist() == [a, b, S0, e, f, g, S1]
  assert targets.numpy().tolist() == [S0, c, d, S1, h]


def test_a_final_non_noise_span_ends_the_targets_with_a_sentinel():
  a, b, c, d, e, f, g, h, i, j = range(10, 20)
  inputs, targets = lp.corrupt_spans(tf.constant([a, b, c, d, e, f, g, h, i, j]),
                                     _mask(0, 0, 1, 1, 0, 0, 0, 1, 0, 0), S0)
  assert inputs.numpy().tolist() == [a, b, S0, e, f, g, S1, i, j]
  assert targets.numpy().tolist() == [S0, c, d, S1, h, S2]


def test_denoise_takes_an_injected_mask():
  ds = tf.data.Dataset.from_tensors({'targets': tf.range(10, 18)})
  mask = _mask(0, 0, 1, 1, 0, 0, 0, 1)
  with seqio.utils.map_seed_manager(0):
    ds = lp.denoise(ds, lambda length, seeds: mask,
                    inputs_fn=lambda t, m: lp.noise_span_to_unique_sentinel(t, m, S0),
                    targets_fn=lambda t, m: lp.nonnoise_span_to_unique_sentinel(t, m, S0))
  [ex] = list(ds.as_numpy_iterator())
  assert ex['inputs'].tolist() == [10, 11, S0, 14, 15, 16, S1]
  assert ex['targets'].tolist() == [S0, 12, 13, S1, 17]


# length -> (noise tokens, noise spans): round(0.15 * length) clipped to
# [1, length - 1], then max(1, round(noise / 3)).
HAND_COUNTS = {2: (1, 1), 3: (1, 1), 10: (2, 1), 20: (3, 1), 37: (6, 2), 100: (15, 5),
               568: (85, 28)}


@pytest.mark.parametrize('length', sorted(HAND_COUNTS))
@pytest.mark.parametrize('seed', [(0, 1), (7, 3), (123, 456)])
def test_random_spans_noise_mask_has_exact_counts(length, seed):
  seeds = [tf.constant(seed), tf.constant((seed[1], seed[0] + 1))]
  mask = lp.random_spans_noise_mask(tf.constant(length), seeds).numpy()
  starts = np.flatnonzero(mask & ~np.concatenate([[False], mask[:-1]]))
  assert mask.shape == (length,)
  assert (int(mask.sum()), len(starts)) == HAND_COUNTS[length]
  assert not mask[0] and mask[-1]  # Non-noise first, noise last.


def test_random_spans_noise_mask_is_a_function_of_the_seeds():
  def mask(seed):
    return lp.random_spans_noise_mask(
        tf.constant(100), [tf.constant((seed, 1)), tf.constant((seed, 2))]).numpy()

  np.testing.assert_array_equal(mask(5), mask(5))
  assert len({mask(s).tobytes() for s in range(6)}) > 1
  assert lp.random_spans_noise_mask(tf.constant(1), [tf.constant((0, 0))] * 2
                                    ).numpy().tolist() == [False]


@pytest.mark.parametrize('length', [1, 2, 5, 50])
def test_random_prefix_mask_marks_a_prefix_of_1_to_length_minus_1(length):
  lengths = set()
  for s in range(20):
    mask = lp.random_prefix_mask(tf.constant(length), [tf.constant((s, 9))]).numpy()
    k = int(mask.sum())
    assert mask.tolist() == [True] * k + [False] * (length - k)
    lengths.add(k)
  assert lengths <= set(range(min(1, length - 1), max(length - 1, 0) + 1))
  if length >= 5:
    assert len(lengths) > 1


def test_span_corruption_rejects_short_targets_and_missing_lengths():
  features = task_utils.output_features()
  ds = tf.data.Dataset.from_tensors({'targets': tf.range(5)})
  with pytest.raises(ValueError, match='114'):
    lp.span_corruption(ds, {'inputs': 512, 'targets': 100}, features)
  with pytest.raises(ValueError, match='sequence_length'):
    lp.span_corruption(ds, None, features)
  with pytest.raises(ValueError, match='sentinels'):
    lp.span_corruption(ds, {'inputs': 4096, 'targets': 4096}, features)


# ------------------------------------------------------------ tasks

def test_span_corruption_task_gives_512_114_and_loses_no_text(text_tasks):
  _, span_name, docs = text_tasks
  examples = _examples(span_name, SPAN_LENGTHS, seed=3)
  assert len(examples) > 3
  for ex in examples:
    assert ex['inputs'][-1] == EOS and ex['targets'][-1] == EOS
    assert ex['targets'][0] == S0
  # Every raw piece but the last has 568 tokens, so exactly 512 / 114.
  assert all((len(ex['inputs']), len(ex['targets'])) == (512, 114) for ex in examples[:-1])
  rebuilt = [t for ex in examples for t in _uncorrupt(ex['inputs'][:-1], ex['targets'][:-1])]
  assert rebuilt == _token_stream(docs)


def test_span_corruption_task_is_deterministic_under_the_seed(text_tasks):
  _, span_name, _ = text_tasks
  first = _examples(span_name, SPAN_LENGTHS, seed=3)
  assert first == _examples(span_name, SPAN_LENGTHS, seed=3)
  assert first != _examples(span_name, SPAN_LENGTHS, seed=4)


def test_prefix_lm_task_splits_chunks_of_the_text(text_tasks):
  prefix_name, _, docs = text_tasks
  examples = _examples(prefix_name, PREFIX_LENGTHS, seed=5)
  pieces = []
  for ex in examples:
    assert ex['inputs'][-1] == EOS and ex['targets'][-1] == EOS
    inputs, targets = ex['inputs'][:-1], ex['targets'][:-1]
    assert targets and len(inputs) + len(targets) <= 63  # 64 minus the EOS slot.
    if len(inputs) + len(targets) > 1:
      assert inputs
    pieces.append(inputs + targets)
  assert [t for p in pieces for t in p] == _token_stream(docs)
  # Each document is cut into consecutive 63-token chunks.
  v = vocab.get_vocabulary()
  expected_chunks = [len(v.encode(d)[i:i + 63]) for d in docs if d
                     for i in range(0, len(v.encode(d)), 63)]
  assert [len(p) for p in pieces] == expected_chunks
  assert examples == _examples(prefix_name, PREFIX_LENGTHS, seed=5)
  assert examples != _examples(prefix_name, PREFIX_LENGTHS, seed=6)


@pytest.mark.parametrize('objective,lengths', [('span_corruption', SPAN_LENGTHS),
                                               ('prefix_lm', PREFIX_LENGTHS)])
def test_tasks_feed_the_enc_dec_feature_converter(text_tasks, objective, lengths):
  ds = seqio.get_dataset(f'pttest_text_{objective}', lengths,
                         seqio.EncDecFeatureConverter(pack=False), dataset_split='train',
                         shuffle=False, seed=3)
  ex = next(ds.as_numpy_iterator())
  assert ex['encoder_input_tokens'].shape == (lengths['inputs'],)
  assert ex['decoder_target_tokens'].shape == (lengths['targets'],)
  assert ex['decoder_input_tokens'][0] == 0
  np.testing.assert_array_equal(ex['decoder_input_tokens'][1:],
                                ex['decoder_target_tokens'][:-1])
  assert ex['decoder_loss_weights'].sum() == (ex['decoder_target_tokens'] > 0).sum()


def test_text_files_env_var(tmp_path):
  assert lm_tasks.parse_text_files_spec(' a=/x/*.txt|/y/*.txt , b=/z.txt,') == {
      'a': ('/x/*.txt', '/y/*.txt'), 'b': ('/z.txt', None)}
  assert lm_tasks.parse_text_files_spec('') == {}
  for bad in ('noequals', '=/x.txt', 'a=', 'a=|/v.txt'):
    with pytest.raises(ValueError, match=lm_tasks.TEXT_FILES_ENV):
      lm_tasks.parse_text_files_spec(bad)
  train, valid = tmp_path / 'train.txt', tmp_path / 'valid.txt'
  train.write_text('one document\nanother one\n')
  valid.write_text('held out\n')
  environ = {lm_tasks.TEXT_FILES_ENV: f'pttest_env={train}|{valid}'}
  names = lm_tasks.register_text_file_tasks_from_env(environ)
  assert names == ['pttest_env_prefix_lm', 'pttest_env_span_corruption']
  assert lm_tasks.register_text_file_tasks_from_env(environ) == names  # Idempotent.
  task = seqio.get_mixture_or_task('pttest_env_prefix_lm')
  assert set(task.splits) == {'train', 'validation'}
  [ex] = _examples('pttest_env_prefix_lm', PREFIX_LENGTHS, seed=0, split='validation')
  v = vocab.get_vocabulary()
  assert ex['inputs'][:-1] + ex['targets'][:-1] == v.encode('held out')


def test_c4_tasks_read_tfds_text(monkeypatch):
  for name in lm_tasks.C4_TASKS.values():
    task = seqio.get_mixture_or_task(name)
    assert isinstance(task.source, seqio.TfdsDataSource)
    assert task.source.tfds_dataset.name == 'c4/en:3.0.1'
  docs = _documents(count=12, seed=1)

  def as_dataset(self, split, **unused_kwargs):
    assert self.name == 'c4' and split == 'train'
    return tf.data.Dataset.from_tensor_slices({'text': docs, 'url': ['u'] * len(docs)})

  # TFDS here can only build c4 2.2.0 from code, so mock that version; mocked
  # builders have no split sizes.
  monkeypatch.setattr(seqio.TfdsDataSource, 'num_input_examples', lambda *_: None)
  monkeypatch.setenv(lm_tasks.C4_TFDS_NAME_ENV, 'c4/en:2.2.0')
  lm_tasks.register_c4_tasks()
  try:
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
      examples = _examples('c4_v220_span_corruption', SPAN_LENGTHS, seed=0)
  finally:
    monkeypatch.delenv(lm_tasks.C4_TFDS_NAME_ENV)
    lm_tasks.register_c4_tasks()
  rebuilt = [t for ex in examples for t in _uncorrupt(ex['inputs'][:-1], ex['targets'][:-1])]
  assert rebuilt == _token_stream(docs)
  assert seqio.get_mixture_or_task('c4_v220_prefix_lm').source.tfds_dataset.name == (
      'c4/en:3.0.1')


def test_registration_is_idempotent():
  importlib.reload(lm_tasks)  # Registers again: no duplicate-name error.
  assert set(lm_tasks.C4_TASKS.values()) <= set(seqio.TaskRegistry.names())
