"""A small SeqIO task for training tests (a FunctionDataSource; no TFDS, no network).

Importing this module registers `fixture_sentiment`: inputs are short
sentences, the target is 'positive' when the sentence holds 'good', else
'negative'. It is learnable from the inputs, and its label prior alone
already lowers the loss, which is what a few steps of a tiny model can show.
"""
import os

import seqio
import tensorflow as tf

VOCABULARY = seqio.SentencePieceVocabulary(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                 'prompt_tuning', 'assets', 't5_sentencepiece.model'), extra_ids=100)
WORDS = ['the', 'movie', 'was', 'food', 'very', 'really', 'day', 'plot', 'service', 'weather']


def _examples(split: str, count: int):
  rng = __import__('random').Random(0 if split == 'train' else 1)
  for i in range(count):
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 8))]
    positive = i % 2 == 0
    words.insert(rng.randint(0, len(words)), 'good' if positive else 'bad')
    yield ' '.join(words), 'positive' if positive else 'negative'


def _dataset_fn(split: str, shuffle_files: bool, seed=None) -> tf.data.Dataset:
  del shuffle_files, seed
  inputs, targets = zip(*_examples(split, 256 if split == 'train' else 32))
  return tf.data.Dataset.from_tensor_slices({'inputs': list(inputs),
                                             'targets': list(targets)})


def _accuracy(targets, predictions):
  return {'accuracy': 100.0 * sum(t == p for t, p in zip(targets, predictions)) / len(targets)}


if 'fixture_sentiment' not in seqio.TaskRegistry.names():
  seqio.TaskRegistry.add(
      'fixture_sentiment',
      source=seqio.FunctionDataSource(_dataset_fn, splits=['train', 'validation']),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
      metric_fns=[_accuracy],
      output_features={
          'inputs': seqio.Feature(VOCABULARY, add_eos=True),
          'targets': seqio.Feature(VOCABULARY, add_eos=True),
      })


def _shout(output, example=None, is_target=False):
  del example, is_target
  return output.upper()


# The same data with a postprocessor, and a mixture of the two (inference
# writes one file per task, and the postprocessed prediction beside the raw one).
if 'fixture_sentiment_shouted' not in seqio.TaskRegistry.names():
  seqio.TaskRegistry.add(
      'fixture_sentiment_shouted',
      source=seqio.FunctionDataSource(_dataset_fn, splits=['train', 'validation']),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
      postprocess_fn=_shout,
      metric_fns=[_accuracy],
      output_features={
          'inputs': seqio.Feature(VOCABULARY, add_eos=True),
          'targets': seqio.Feature(VOCABULARY, add_eos=True),
      })
if 'fixture_sentiment_mixture' not in seqio.MixtureRegistry.names():
  seqio.MixtureRegistry.add('fixture_sentiment_mixture',
                            ['fixture_sentiment', 'fixture_sentiment_shouted'], default_rate=1.0)

# The two tasks marked as tasks 0 and 1 of a multi-task prompt (first input
# token <extra_id_0> or <extra_id_1>).
if 'fixture_sentiment_marked' not in seqio.MixtureRegistry.names():
  from prompt_tuning.data import task_markers  # pylint: disable=g-import-not-at-top
  task_markers.add_marked_mixture('fixture_sentiment_marked',
                                  ['fixture_sentiment', 'fixture_sentiment_shouted'])
