"""Text and token preprocessors for (Super)GLUE as the T5 library formats them.

Every function here runs inside tf.data (TensorFlow string ops only) and
produces, byte for byte, the `inputs` / `targets` strings of the public T5
library (see ../shared/reference/superglue.md):

- `glue`: the generic rule. `"<benchmark> key1: value1 key2: value2"` over the
  text features in sorted key order (label and idx left out); targets are the
  label's name, or `<unk>` for label -1. MultiRC drops its HTML markup and
  keeps its three-part index as `idx/paragraph`, `idx/question`, `idx/answer`.
- `stsb`: the score rounded to the nearest 0.2 and written with one decimal.
- `record`: query, entities and passage (with `@highlight` markers turned into
  sentence breaks), one example per gold answer.
- `wsc_simple`: the pronoun at `span2_index` marked `*like this*`; the target
  is the candidate referent (`span1_text`).
- `remove_first_word`: the paper's "taskless" inputs (benchmark word dropped).
- `add_sentinel_to_targets`: the paper's "span corruption + sentinel" setting,
  `<extra_id_0>` as the first target token.
"""
from typing import Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from prompt_tuning.data import vocab as vocab_lib

UNKNOWN_LABEL = '<unk>'
AUTOTUNE = tf.data.AUTOTUNE

# Two WSC texts whose span2_index does not point at the pronoun; the T5
# library blanks them by hand (the first ends in a space, which is part of it).
WSC_SPECIAL_CASES = {
    'The boy continued to whip the pony , and eventually the pony threw him '
    'over. John laughed out quite loud. "Good for him," he said. ':
        'The boy continued to whip the pony , and eventually the pony threw '
        'him over. John laughed out quite loud. "Good for X ," he said.',
    'When they had eventually calmed down a bit , and had gotten home, Mr. '
    'Farley put the magic pebble in an iron safe . Some day they might want to '
    'use it , but really for now, what more could they wish for?':
        'When they had eventually calmed down a bit , and had gotten home, Mr. '
        'Farley put the magic pebble in an iron safe . Some day they might want '
        'to use X , but really for now, what more could they wish for?',
}


def label_name(label: tf.Tensor, label_names: Sequence[str]) -> tf.Tensor:
  """`label_names[label]`, or '<unk>' for an unlabelled (-1) example."""
  label = tf.cast(label, tf.int32)
  known = tf.gather(tf.constant(list(label_names)), tf.maximum(label, 0))
  return tf.where(label < 0, tf.constant(UNKNOWN_LABEL), known)


@seqio.map_over_dataset
def glue(x: Mapping[str, tf.Tensor], benchmark_name: str,
         label_names: Sequence[str],
         feature_names: Optional[Sequence[str]] = None) -> dict:
  """The generic (Super)GLUE rule; see the module docstring.

  Args:
    x: one example with the TFDS feature names.
    benchmark_name: the first word of `inputs` (e.g. 'rte' also for axb/axg).
    label_names: the class names, indexed by `label`.
    feature_names: the text features in order; default all features but
      label and idx, sorted by name.

  Returns:
    {'inputs', 'targets'} plus the example's index: `idx`, or for MultiRC
    `idx/paragraph`, `idx/question` and `idx/answer`.
  """
  keys = feature_names or sorted(k for k in x if k not in ('label', 'idx'))
  parts = [benchmark_name]
  for key in keys:
    parts += [f'{key}:', x[key]]
  inputs = tf.strings.join(parts, separator=' ')
  out = {}
  if benchmark_name == 'multirc':
    # MultiRC paragraphs carry HTML line breaks and bold sentence numbers.
    inputs = tf.strings.regex_replace(inputs, '<br>', ' ')
    inputs = tf.strings.regex_replace(inputs, '<(/)?b>', '')
    for part in ('paragraph', 'question', 'answer'):
      out[f'idx/{part}'] = x['idx'][part]
  else:
    out['idx'] = x['idx']
  out['inputs'] = inputs
  out['targets'] = label_name(x['label'], label_names)
  return out


@seqio.map_over_dataset
def stsb(x: Mapping[str, tf.Tensor]) -> dict:
  """STS-B as 26 classes: the score rounded to 0.2, e.g. '3.4'."""
  inputs = tf.strings.join(
      ['stsb sentence1:', x['sentence1'], 'sentence2:', x['sentence2']],
      separator=' ')
  rounded = tf.round(tf.cast(x['label'], tf.float32) * 5) / 5
  return {'inputs': inputs, 'targets': tf.strings.as_string(rounded, precision=1),
          'idx': x['idx']}


def _record_passage(passage: tf.Tensor) -> tf.Tensor:
  """ReCoRD highlights become sentence breaks ('. ' unless one is there)."""
  passage = tf.strings.regex_replace(
      passage, r'(\.|\?|\!|\"|\')\n@highlight\n', r'\1 ')
  return tf.strings.regex_replace(passage, r'\n@highlight\n', '. ')


def record(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """ReCoRD: one example per gold answer (one '<unk>' example if none).

  Every split is expanded, as in the T5 library; evaluation keeps one
  prediction per (passage, query) through `metrics.record`.

  Args:
    dataset: examples with passage, query, entities, answers and
      idx {passage, query}.

  Returns:
    Examples with inputs, targets, answers (all gold answers, for the
    metric), idx/passage and idx/query.
  """
  def expand(x):
    inputs = tf.strings.join(
        ['record query:', x['query'], 'entities:',
         tf.strings.reduce_join(x['entities'], separator=', '), 'passage:',
         _record_passage(x['passage'])], separator=' ')
    answers = x['answers']
    count = tf.maximum(tf.size(answers), 1)
    targets = tf.cond(tf.size(answers) > 0, lambda: answers,
                      lambda: tf.constant([UNKNOWN_LABEL]))

    def repeat(t):
      return tf.broadcast_to(t, tf.concat([[count], tf.shape(t)], axis=0))

    return {
        'inputs': repeat(inputs),
        'targets': targets,
        'answers': repeat(answers),
        'idx/passage': repeat(x['idx']['passage']),
        'idx/query': repeat(x['idx']['query']),
    }

  return dataset.map(expand, num_parallel_calls=AUTOTUNE).unbatch()


def _wsc_blanked_text(x: Mapping[str, tf.Tensor]) -> tf.Tensor:
  """The text, split on single spaces, with the word at span2_index -> 'X'."""
  words = tf.strings.split(x['text'], sep=' ')
  index = tf.cast(x['span2_index'], tf.int32)
  blanked = tf.strings.join(
      [tf.strings.reduce_join(words[:index], separator=' '), 'X',
       tf.strings.reduce_join(words[index + 1:], separator=' ')],
      separator=' ')
  for text, fixed in WSC_SPECIAL_CASES.items():
    blanked = tf.where(tf.equal(x['text'], text), tf.constant(fixed), blanked)
  return blanked


def wsc_simple(dataset: tf.data.Dataset,
               correct_referent_only: bool = False) -> tf.data.Dataset:
  """WSC as generation: 'wsc: ' + text with the pronoun as *pronoun*.

  Args:
    dataset: SuperGLUE WSC examples (text, span1_text, span2_index,
      span2_text, label, idx).
    correct_referent_only: keep only examples whose candidate is the right
      referent (label True); the training task sets it, since the target is
      always the candidate.

  Returns:
    Examples with inputs, targets (span1_text), label and idx; the
    postprocessor compares a prediction with the candidate and the label
    says whether the candidate is right.
  """
  def convert(x):
    marked = tf.strings.regex_replace(
        _wsc_blanked_text(x), ' X ',
        tf.strings.join([' *', x['span2_text'], '* ']))
    return {
        'inputs': tf.strings.join(['wsc:', marked], separator=' '),
        'targets': x['span1_text'],
        'label': x['label'],
        'idx': x['idx'],
    }

  if correct_referent_only:
    # As the T5 library: any non-zero label counts as True.
    dataset = dataset.filter(lambda x: tf.cast(x['label'], tf.bool))
  return dataset.map(convert, num_parallel_calls=AUTOTUNE)


@seqio.map_over_dataset
def remove_first_word(x: Mapping[str, tf.Tensor], key: str = 'inputs') -> dict:
  """Drops everything up to and including the first space of `x[key]`."""
  x = dict(x)
  x[key] = tf.strings.regex_replace(x[key], r'^[^ ]* ', '', replace_global=False)
  return x


def add_sentinel_to_targets(
    dataset: tf.data.Dataset,
    output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
  """Prepends the `<extra_id_0>` id to the (tokenized) targets.

  A token preprocessor (after `tokenize`): the sentinel is one id, never
  spelled out in `targets_pretokenized`, and `append_eos_after_trim` keeps it
  when trimming since it comes first.
  """
  sentinel = vocab_lib.sentinel_id(0, output_features['targets'].vocabulary)

  def prepend(x):
    x = dict(x)
    targets = x['targets']
    x['targets'] = tf.concat([tf.constant([sentinel], targets.dtype), targets], 0)
    return x

  return dataset.map(prepend, num_parallel_calls=AUTOTUNE)
