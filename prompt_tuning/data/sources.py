"""SuperGLUE from the unzipped official release, in TFDS's form, without TFDS.

Set PROMPT_TUNING_SUPERGLUE_DIR to the folder that holds the release's task
folders (BoolQ/, CB/, COPA/, MultiRC/, ReCoRD/, RTE/, WiC/, WSC/, AX-b/,
AX-g/, each with train.jsonl, val.jsonl and test.jsonl; the diagnostics hold
AX-b.jsonl / AX-g.jsonl) before `prompt_tuning.data.tasks` is imported, and
every SuperGLUE task reads these files instead of TFDS `super_glue/*:1.0.2`.

The examples are exactly those TFDS builds from the same files (field names,
label ids, MultiRC's one example per answer with idx {paragraph, question,
answer}, ReCoRD's one example per query with the sorted unique entity and
answer strings, and TFDS's repairs of the WSC spans), so every task gives the
same strings from either source. Only the order differs: TFDS shuffles when
it builds, these files are read in order.
"""
import json
import os
from typing import Any, Dict, Iterator, List, Mapping, Optional

import seqio
import tensorflow as tf

ENV_VAR = 'PROMPT_TUNING_SUPERGLUE_DIR'

# TFDS config name -> the release's folder name.
FOLDERS = {
    'boolq': 'BoolQ', 'cb': 'CB', 'copa': 'COPA', 'multirc': 'MultiRC',
    'record': 'ReCoRD', 'rte': 'RTE', 'wic': 'WiC', 'wsc': 'WSC',
    'wsc.fixed': 'WSC', 'axb': 'AX-b', 'axg': 'AX-g',
}
SPLIT_FILES = {'train': 'train.jsonl', 'validation': 'val.jsonl', 'test': 'test.jsonl'}
LABEL_NAMES = {
    'boolq': ('False', 'True'), 'cb': ('entailment', 'contradiction', 'neutral'),
    'copa': ('choice1', 'choice2'), 'multirc': ('False', 'True'),
    'rte': ('entailment', 'not_entailment'), 'wic': ('False', 'True'),
    'wsc': ('False', 'True'), 'wsc.fixed': ('False', 'True'),
    'axb': ('entailment', 'not_entailment'), 'axg': ('entailment', 'not_entailment'),
}
# The text features of the flat tasks, and their integer features.
TEXT_FEATURES = {
    'boolq': ('question', 'passage'), 'cb': ('premise', 'hypothesis'),
    'copa': ('premise', 'choice1', 'choice2', 'question'),
    'rte': ('premise', 'hypothesis'), 'wic': ('word', 'sentence1', 'sentence2'),
    'wsc': ('text', 'span1_text', 'span2_text'),
    'wsc.fixed': ('text', 'span1_text', 'span2_text'),
    'axb': ('sentence1', 'sentence2'), 'axg': ('premise', 'hypothesis'),
}
INT_FEATURES = {
    'wic': ('start1', 'start2', 'end1', 'end2'),
    'wsc': ('span1_index', 'span2_index'), 'wsc.fixed': ('span1_index', 'span2_index'),
}


def data_dir_from_env() -> Optional[str]:
  """PROMPT_TUNING_SUPERGLUE_DIR, or None when unset or empty."""
  return os.environ.get(ENV_VAR) or None


def split_path(data_dir: str, name: str, split: str) -> str:
  """The release's file for a split; the diagnostics have one test file."""
  folder = os.path.join(data_dir, FOLDERS[name])
  if name in ('axb', 'axg'):
    if split != 'test':
      raise ValueError(f'{name} has only a test split, not {split!r}.')
    named = os.path.join(folder, FOLDERS[name] + '.jsonl')
    return named if tf.io.gfile.exists(named) else os.path.join(folder, 'test.jsonl')
  return os.path.join(folder, SPLIT_FILES[split])


def _label(name: str, row: Mapping[str, Any]) -> int:
  """TFDS's label id: -1 when absent (test), else the class of the label.

  Booleans are the classes 'False'/'True', strings are class names, and
  integers (COPA's 0/1) are the class id itself, as TFDS's ClassLabel reads
  them.
  """
  if 'label' not in row:
    return -1
  label = row['label']
  if isinstance(label, bool):
    return LABEL_NAMES[name].index(str(label))
  if isinstance(label, int):
    return label
  return LABEL_NAMES[name].index(label)


def fix_wsc_spans(example: Dict[str, Any]) -> Dict[str, Any]:
  """TFDS's wsc.fixed repairs of span texts that are not in the text.

  The span's first letter takes the case of the word at its index, a
  trailing '.' is dropped and newlines become spaces; two spans with words in
  between cannot be repaired and stay as they are.
  """
  for span in ('span1', 'span2'):
    text, index = example[span + '_text'], example[span + '_index']
    if text in example['text'] or text in ('Kamenev and Zinoviev',
                                           'Kamenev, Zinoviev, and Stalin'):
      continue
    if 'theyscold' in text:
      # TFDS sets this index (and leaves the text itself alone).
      example['span2_index'] = 10
    word = example['text'].split()[index]
    first = text[0].lower() if word[0].islower() else text[0].upper()
    example[span + '_text'] = (first + text[1:]).rstrip('.').replace('\n', ' ')
  return example


def flatten(name: str, row: Mapping[str, Any]) -> Iterator[Dict[str, Any]]:
  """One release JSON line as TFDS's example(s)."""
  if name == 'multirc':
    passage = row['passage']
    for question in passage['questions']:
      for answer in question['answers']:
        yield {
            'paragraph': passage['text'], 'question': question['question'],
            'answer': answer['text'],
            'label': -1 if answer.get('label') is None else int(bool(answer['label'])),
            'idx': {'paragraph': row['idx'], 'question': question['idx'],
                    'answer': answer['idx']},
        }
  elif name == 'record':
    text = row['passage']['text']
    # Entity offsets are inclusive of the end character.
    entities = sorted({text[e['start']:e['end'] + 1] for e in row['passage']['entities']})
    for qa in row['qas']:
      yield {
          'passage': text, 'query': qa['query'], 'entities': entities,
          'answers': sorted({a['text'] for a in qa.get('answers', [])}),
          'idx': {'passage': row['idx'], 'query': qa['idx']},
      }
  else:
    if name.startswith('wsc'):
      row = {**row, **row['target']}
    example = {k: row[k] for k in TEXT_FEATURES[name] + INT_FEATURES.get(name, ())}
    if name == 'wsc.fixed':
      example = fix_wsc_spans(example)
    example['idx'] = row['idx']
    example['label'] = _label(name, row)
    yield example


def read_examples(path: str, name: str) -> Iterator[Dict[str, Any]]:
  """All TFDS-form examples of one release file."""
  with tf.io.gfile.GFile(path, 'rb') as f:
    for number, raw in enumerate(f, 1):
      try:
        line = raw.decode('utf-8')
      except UnicodeDecodeError as e:  # name the line: Python's message does not
        from prompt_tuning.gin_utils import ConfigurationError  # pylint: disable=g-import-not-at-top
        raise ConfigurationError(
            f'{path} line {number} is not UTF-8 (byte {raw[e.start]:#04x} at column '
            f'{e.start + 1}); save the file as UTF-8.') from e
      if line.strip():
        yield from flatten(name, json.loads(line))


def _columns(examples: List[Dict[str, Any]], signature: Mapping[str, Any]) -> Dict[str, Any]:
  """Examples (dicts) as one tensor per feature, lists of strings ragged."""
  columns = {}
  for key, spec in signature.items():
    values = [ex[key] for ex in examples]
    if isinstance(spec, Mapping):
      columns[key] = _columns(values, spec)
    elif spec.shape.rank:  # ReCoRD's entities / answers: a list per example
      flat = [v for row in values for v in row]
      columns[key] = tf.RaggedTensor.from_row_lengths(
          tf.constant(flat, tf.string, shape=[len(flat)]),
          tf.constant([len(row) for row in values], tf.int64))
    else:
      columns[key] = tf.constant(values, spec.dtype, shape=[len(values)])
  return columns


def output_signature(name: str) -> Dict[str, Any]:
  """The TFDS dtypes and shapes of a SuperGLUE config's examples."""
  text = tf.TensorSpec([], tf.string)
  int32 = tf.TensorSpec([], tf.int32)
  if name == 'multirc':
    return {'paragraph': text, 'question': text, 'answer': text,
            'label': tf.TensorSpec([], tf.int64),
            'idx': {'paragraph': int32, 'question': int32, 'answer': int32}}
  if name == 'record':
    return {'passage': text, 'query': text,
            'entities': tf.TensorSpec([None], tf.string),
            'answers': tf.TensorSpec([None], tf.string),
            'idx': {'passage': int32, 'query': int32}}
  signature = {k: text for k in TEXT_FEATURES[name]}
  signature.update({k: int32 for k in INT_FEATURES.get(name, ())})
  signature.update(idx=int32, label=tf.TensorSpec([], tf.int64))
  return signature


def _local_dataset(data_dir: str, name: str, split: str, shuffle_files: bool,
                   seed: Optional[int] = None) -> tf.data.Dataset:
  """The split read into memory (no Python generator: nothing to hang at exit)."""
  del shuffle_files, seed  # One file per split; SeqIO shuffles examples.
  path = split_path(data_dir, name, split)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(
        f'SuperGLUE {name} {split}: {path} does not exist. {ENV_VAR}='
        f'{data_dir!r} should be the unzipped official release, with folders '
        f'{", ".join(sorted(set(FOLDERS.values())))}.')
  examples = list(read_examples(path, name))
  if not examples:
    raise ValueError(f'SuperGLUE {name} {split}: {path} has no examples.')
  dataset = tf.data.Dataset.from_tensor_slices(
      _columns(examples, output_signature(name)))
  # Rows of a ragged column come out dense; this makes the spec say so too.
  return dataset.map(lambda x: x)


def local_super_glue_source(data_dir: str, name: str,
                            splits: Optional[List[str]] = None) -> seqio.DataSource:
  """A SeqIO source of one SuperGLUE config (TFDS name, e.g. 'wsc.fixed')."""
  if name not in FOLDERS:
    raise ValueError(f'Unknown SuperGLUE config {name!r}; one of {sorted(FOLDERS)}.')
  splits = splits or (['test'] if name in ('axb', 'axg') else list(SPLIT_FILES))

  def dataset_fn(split, shuffle_files, seed=None):
    return _local_dataset(data_dir, name, split, shuffle_files, seed)

  return seqio.FunctionDataSource(dataset_fn, splits=splits)


def super_glue_source(name: str, splits: Optional[List[str]] = None,
                      data_dir: Optional[str] = None) -> seqio.DataSource:
  """TFDS `super_glue/<name>:1.0.2`, or the release files under `data_dir`."""
  if data_dir:
    return local_super_glue_source(data_dir, name, splits)
  return seqio.TfdsDataSource(tfds_name=f'super_glue/{name}:1.0.2',
                              splits=splits or (['test'] if name in ('axb', 'axg')
                                                else list(SPLIT_FILES)))
