"""SQuAD for training and the MRQA 2019 out-of-domain sets for zero-shot evaluation.

Importing this module registers (idempotently):

  squad_v010_allanswers   TFDS `squad/v1.1:3.0.0` (the T5 library's task)
  mrqa_<name>_v001        <name> in bioasq, drop, duorc, race,
                          relation_extraction, textbookqa: 'validation' only
  squad_to_<name>         mixture: SQuAD (train + validation) and one MRQA set
  squad_to_mrqa           mixture: SQuAD and all six MRQA sets

Format (the T5 library's `squad` preprocessor): every ASCII punctuation
character gets a space on both sides, then each run of whitespace becomes one
space (no trimming). Then

  inputs  = "question: {q} context: {c}" (joined with spaces, runs collapsed)
  targets = first gold answer, padded the same way
  answers = all gold answers, padded (the targets the metric sees)

e.g. question "Who won?", context "Denver won (24-10)." ->
"question: Who won ? context: Denver won ( 24 - 10 ) . " (the trailing space
is kept, as in T5). Features kept: id, question, context, answers (strings).
Metrics: SQuAD EM and F1 (`metrics.squad`), max over the gold answers.

MRQA sources. By default TFDS `mrqa/<config>:1.0.0`, split 'test' (served as
'validation'). Set PROMPT_TUNING_MRQA_DIR, before the import, to a directory
holding the official dev files (from the MRQA shared task's
download_out_of_domain_dev.sh) to read them instead, gzipped or not:
BioASQ, DROP, DuoRC.ParaphraseRC, RACE, RelationExtraction, TextbookQA
`.jsonl.gz`. MRQA format: a header line ({"header": {"dataset": ...}}), then
one JSON object per context: {"context": str, "qas": [{"qid", "question",
"answers": [str], "detected_answers": [...]}, ...]}. Each question is one
example; context and question are stripped (as TFDS does), the answers are
the `answers` list.
"""
import functools
import gzip
import json
import os
from typing import Any, Dict, Iterable, Iterator, Mapping, Optional

import seqio
import tensorflow as tf

from prompt_tuning.data import metrics
from prompt_tuning.data import task_utils

SQUAD_TASK = 'squad_v010_allanswers'
SQUAD_TFDS_NAME = 'squad/v1.1:3.0.0'
MRQA_DIR_ENV = 'PROMPT_TUNING_MRQA_DIR'
MRQA_TFDS_VERSION = '1.0.0'
# Task suffix -> (TFDS config of `mrqa`, stem of the official dev file).
MRQA_DATASETS = {
    'bioasq': ('bio_asq', 'BioASQ'),
    'drop': ('drop', 'DROP'),
    'duorc': ('duo_rc', 'DuoRC.ParaphraseRC'),
    'race': ('race', 'RACE'),
    'relation_extraction': ('relation_extraction', 'RelationExtraction'),
    'textbookqa': ('textbook_qa', 'TextbookQA'),
}


def mrqa_task_name(name: str) -> str:
  return f'mrqa_{name}_v001'


# ------------------------------------------------------------ text format

def pad_punctuation(text: tf.Tensor) -> tf.Tensor:
  """Spaces around each ASCII punctuation character, whitespace runs -> ' '."""
  text = tf.strings.regex_replace(text, r'([[:punct:]])', r' \1 ')
  return tf.strings.regex_replace(text, r'\s+', ' ')


def join_with_spaces(parts) -> tf.Tensor:
  return tf.strings.regex_replace(tf.strings.join(parts, separator=' '), r'\s+', ' ')


def _qa_example(example_id: tf.Tensor, question: tf.Tensor, context: tf.Tensor,
                answers: tf.Tensor) -> Dict[str, tf.Tensor]:
  question, context, answers = map(pad_punctuation, (question, context, answers))
  return {
      'inputs': join_with_spaces(['question:', question, 'context:', context]),
      'targets': answers[0],
      'id': example_id,
      'question': question,
      'context': context,
      'answers': answers,
  }


@seqio.map_over_dataset
def squad(x: Mapping[str, Any]) -> Dict[str, tf.Tensor]:
  """A TFDS SQuAD example ({id, context, question, answers: {text}}) -> text-to-text."""
  return _qa_example(x['id'], x['question'], x['context'], x['answers']['text'])


@seqio.map_over_dataset
def mrqa(x: Mapping[str, Any]) -> Dict[str, tf.Tensor]:
  """A flat MRQA example ({qid, question, context, answers}) -> text-to-text."""
  return _qa_example(x['qid'], x['question'], x['context'], x['answers'])


def qa_postprocess(output: Any, example: Optional[Mapping[str, Any]] = None,
                   is_target: bool = False) -> Any:
  """Predictions stay strings; a target becomes the example's list of gold answers."""
  if is_target:
    return [tf.compat.as_text(answer) for answer in example['answers']]
  return output


# ----------------------------------------------------------- MRQA files

def flatten_mrqa_contexts(paragraphs: Iterable[Mapping[str, Any]], subset: str = ''
                          ) -> Iterator[Dict[str, Any]]:
  """MRQA context objects -> one flat example per question.

  Each: {'qid': str, 'question': str, 'context': str, 'answers': [str],
  'subset': str}; context and question stripped as TFDS does.
  """
  for paragraph in paragraphs:
    context = paragraph['context'].strip()
    for qa in paragraph['qas']:
      if not qa['answers']:
        raise ValueError(f'MRQA question {qa["qid"]} has no answers.')
      yield {'qid': qa['qid'], 'question': qa['question'].strip(), 'context': context,
             'answers': list(qa['answers']), 'subset': subset}


def read_mrqa_jsonl(path: str) -> Iterator[Dict[str, Any]]:
  """Yields the flat examples (`flatten_mrqa_contexts`) of an MRQA `.jsonl[.gz]` file."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rt', encoding='utf-8') as f:
    lines = (line for line in f if line.strip())
    try:
      header = json.loads(next(lines))
    except StopIteration:
      raise ValueError(f'{path}: empty file; expected an MRQA header line.') from None
    if 'header' not in header:
      raise ValueError(f'{path}: the first line is not an MRQA header: {header!r:.200}')
    yield from flatten_mrqa_contexts(map(json.loads, lines),
                                     header['header'].get('dataset', ''))


MRQA_SIGNATURE = {
    'qid': tf.TensorSpec([], tf.string),
    'question': tf.TensorSpec([], tf.string),
    'context': tf.TensorSpec([], tf.string),
    'answers': tf.TensorSpec([None], tf.string),
    'subset': tf.TensorSpec([], tf.string),
}


def mrqa_file(data_dir: str, stem: str) -> str:
  """The dev file `<stem>.jsonl.gz` (or `.jsonl`) in data_dir."""
  candidates = [os.path.join(data_dir, stem + ext) for ext in ('.jsonl.gz', '.jsonl')]
  for path in candidates:
    if tf.io.gfile.exists(path):
      return path
  raise FileNotFoundError(f'No MRQA file for {stem} in {data_dir} (${MRQA_DIR_ENV}); '
                          f'looked for {candidates}.')


def _local_mrqa_dataset(split: str, shuffle_files: bool, seed: Optional[int] = None, *,
                        data_dir: str, stem: str) -> tf.data.Dataset:
  del shuffle_files, seed  # One file, read in order.
  if split != 'validation':
    raise ValueError(f'MRQA out-of-domain sets have only a validation split, not {split!r}.')
  path = mrqa_file(data_dir, stem)
  return tf.data.Dataset.from_generator(lambda: read_mrqa_jsonl(path),
                                        output_signature=MRQA_SIGNATURE)


def mrqa_source(name: str, data_dir: Optional[str] = None) -> seqio.DataSource:
  """Local official files when data_dir is given, else TFDS (test split as validation)."""
  config, stem = MRQA_DATASETS[name]
  if data_dir:
    return seqio.FunctionDataSource(
        functools.partial(_local_mrqa_dataset, data_dir=data_dir, stem=stem),
        splits=['validation'])
  return seqio.TfdsDataSource(tfds_name=f'mrqa/{config}:{MRQA_TFDS_VERSION}',
                              splits={'validation': 'test'})


# --------------------------------------------------------- registration

def _add_task(name: str, source: seqio.DataSource, text_preprocessor) -> None:
  task_utils.add_task(
      name, source,
      [text_preprocessor, seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
       seqio.preprocessors.append_eos_after_trim],
      postprocess_fn=qa_postprocess, metric_fns=[metrics.squad])


def register_qa_tasks(mrqa_dir: Optional[str] = None) -> None:
  """Registers SQuAD, the six MRQA sets (from mrqa_dir if given) and the mixtures.

  Calling it again replaces them, e.g. to switch the MRQA sets to another
  directory (or, with mrqa_dir=None, back to TFDS).
  """
  _add_task(SQUAD_TASK, seqio.TfdsDataSource(tfds_name=SQUAD_TFDS_NAME), squad)
  for name in MRQA_DATASETS:
    _add_task(mrqa_task_name(name), mrqa_source(name, mrqa_dir), mrqa)
  # A mixture holds Task objects, so it is rebuilt whenever the tasks are.
  for name in MRQA_DATASETS:
    task_utils.add_mixture(f'squad_to_{name}', [(SQUAD_TASK, 1.0),
                                                (mrqa_task_name(name), 1.0)])
  task_utils.add_mixture('squad_to_mrqa', [(SQUAD_TASK, 1.0)] +
                         [(mrqa_task_name(n), 1.0) for n in MRQA_DATASETS])


register_qa_tasks(os.environ.get(MRQA_DIR_ENV) or None)
