"""SQuAD and MRQA tasks: exact strings, SQuAD metrics, MRQA file parsing (no network)."""
import functools
import importlib
import gzip
import json

import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from prompt_tuning.data import metrics


def _exact_match(target, prediction):
  return metrics.squad([[target]], [prediction])['em'] / 100


def _token_f1(target, prediction):
  return metrics.squad([[target]], [prediction])['f1'] / 100
from prompt_tuning.data import qa_tasks
from prompt_tuning.data import vocab

SQUAD_EXAMPLES = [
    {'id': 'q1', 'title': 'Super_Bowl_50',
     'context': 'Denver won (24-10).',
     'question': 'Who won Super Bowl 50?',
     'answers': {'text': ['Denver', 'the Denver Broncos'], 'answer_start': [0, 0]}},
    {'id': 'q2', 'title': 'Beyonce',
     'context': 'Beyoncé’s  first\nsolo album, "Dangerously in Love" (2003).',
     'question': '  When did it come out?',
     'answers': {'text': ['2003', 'in 2003.'], 'answer_start': [48, 45]}},
]
# Hand-padded: ASCII punctuation gets spaces around it, whitespace runs
# (newline included) become one space, nothing is trimmed; ’ is not ASCII.
SQUAD_EXPECTED = [
    ('question: Who won Super Bowl 50 ? context: Denver won ( 24 - 10 ) . ',
     'Denver', ['Denver', 'the Denver Broncos']),
    ('question: When did it come out ? context: Beyoncé’s first solo album , '
     '" Dangerously in Love " ( 2003 ) . ',
     '2003', ['2003', 'in 2003 . ']),
]

MRQA_HEADER = {'header': {'dataset': 'DROP', 'split': 'dev'}}
MRQA_CONTEXTS = [
    {'id': 'c1', 'context': ' [PAR] The Bears scored 7 points; the Lions, 10. ',
     'context_tokens': [['[PAR]', 1]],
     'qas': [
         {'qid': 'd1', 'question': 'Who scored 10 points? ', 'question_tokens': [],
          'answers': ['the Lions', 'Lions'],
          'detected_answers': [{'text': 'Lions', 'char_spans': [[38, 42]],
                                'token_spans': [[8, 8]]}]},
         {'qid': 'd2', 'question': 'How many did the Bears score?',
          'question_tokens': [], 'answers': ['7'], 'detected_answers': []},
     ]},
    {'id': 'c2', 'context': 'It rained.', 'context_tokens': [],
     'qas': [{'qid': 'd3', 'question': 'What happened?', 'question_tokens': [],
              'answers': ['It rained'], 'detected_answers': []}]},
]
MRQA_EXPECTED = [
    ('d1', 'question: Who scored 10 points ? context: [ PAR ] The Bears scored 7 points ; '
     'the Lions , 10 . ', 'the Lions', ['the Lions', 'Lions']),
    ('d2', 'question: How many did the Bears score ? context: [ PAR ] The Bears scored 7 '
     'points ; the Lions , 10 . ', '7', ['7']),
    ('d3', 'question: What happened ? context: It rained . ', 'It rained', ['It rained']),
]


def _text(value):
  return value.decode() if isinstance(value, bytes) else value


def _examples(task_name, split='validation'):
  ds = seqio.get_mixture_or_task(task_name).get_dataset(
      {'inputs': 512, 'targets': 64}, split=split, shuffle=False, use_cached=False)
  return list(ds.as_numpy_iterator())


@pytest.fixture
def mock_tfds(monkeypatch):
  """TFDS mock returning given examples; mocked builders have no split sizes."""
  monkeypatch.setattr(seqio.TfdsDataSource, 'num_input_examples', lambda *_: None)

  def mock(examples, name, split):
    def as_dataset(self, split, **unused_kwargs):
      assert (self.name, split) == (name, expected_split)
      # One dataset per example: list features may differ in length.
      return functools.reduce(lambda a, b: a.concatenate(b),
                              [tf.data.Dataset.from_tensors(ex) for ex in examples])
    expected_split = split
    return tfds.testing.mock_data(as_dataset_fn=as_dataset)

  return mock


# ------------------------------------------------------------ format

def test_pad_punctuation_and_join():
  assert _text(qa_tasks.pad_punctuation(tf.constant('a,b  (c)\t\nd')).numpy()) == (
      'a , b ( c ) d')
  assert _text(qa_tasks.pad_punctuation(tf.constant('U.S.')).numpy()) == 'U . S . '
  assert _text(qa_tasks.join_with_spaces(['x:', ' y ', 'z']).numpy()) == 'x: y z'


def test_squad_task_builds_t5_strings(mock_tfds):
  with mock_tfds(SQUAD_EXAMPLES, 'squad', 'validation'):
    examples = _examples(qa_tasks.SQUAD_TASK)
  v = vocab.get_vocabulary()
  for ex, (inputs, targets, answers) in zip(examples, SQUAD_EXPECTED, strict=True):
    assert _text(ex['inputs_pretokenized']) == inputs
    assert _text(ex['targets_pretokenized']) == targets
    assert [_text(a) for a in ex['answers']] == answers
    assert ex['targets'].tolist() == v.encode(targets) + [1]
  assert [_text(ex['id']) for ex in examples] == ['q1', 'q2']


def test_squad_postprocess_and_metric(mock_tfds):
  with mock_tfds(SQUAD_EXAMPLES, 'squad', 'validation'):
    examples = _examples(qa_tasks.SQUAD_TASK)
  task = seqio.get_mixture_or_task(qa_tasks.SQUAD_TASK)
  targets = [task.postprocess_fn(ex['targets_pretokenized'], example=ex, is_target=True)
             for ex in examples]
  assert targets == [answers for _, _, answers in SQUAD_EXPECTED]
  predictions = [task.postprocess_fn(p, example=ex, is_target=False)
                 for p, ex in zip(['Denver Broncos', 'in 2003'], examples)]
  [metric_fn] = task.metric_fns
  # 'Denver Broncos' matches 'the Denver Broncos' ('denver broncos' both);
  # 'in 2003' matches 'in 2003 . ' ('in 2003' both).
  assert metric_fn(targets, predictions) == {'em': 100.0, 'f1': 100.0}


# ------------------------------------------------------------ metrics

@pytest.mark.parametrize('text,normalized', [
    ('The  U.S.!', 'us'),
    ('An apple, a pear & THE theater', 'apple pear theater'),
    ('the-end', 'theend'),  # Punctuation goes before articles are matched.
    ('A', ''),
    ('  Ünïcode – dash\t', 'ünïcode – dash'),  # Only ASCII punctuation goes.
])
def test_normalize_squad(text, normalized):
  assert metrics.normalize_squad(text) == normalized


def test_exact_match_and_token_f1_by_hand():
  assert _exact_match('The Lions', 'lions!') == 1.0
  assert _exact_match('Lions', 'the lion') == 0.0
  # Gold [cat sat on mat], predicted [cat sat]: P 1, R 1/2, F1 2/3.
  assert _token_f1('cat sat on the mat', 'the cat sat') == pytest.approx(2 / 3)
  # Counts are clipped: overlap min(2, 1) + min(1, 2) = 2 of 3 and 3.
  assert _token_f1('x x y', 'x y y') == pytest.approx(2 / 3)
  assert _token_f1('blue', 'green') == 0.0
  assert _exact_match('', 'the') == 1.0 and _token_f1('', '') == 0.0


def test_squad_metric_takes_the_best_gold_answer():
  result = metrics.squad([['Denver Broncos', 'Denver'], ['blue']],
                            ['the Denver Broncos!', 'dark blue sky'])
  # Example 1: EM 1, F1 1. Example 2: EM 0, F1 2 * (1/3 * 1) / (1/3 + 1) = 0.5.
  assert result == pytest.approx({'em': 50.0, 'f1': 75.0})
  with pytest.raises(ValueError):
    metrics.squad([['a']], [])
  with pytest.raises(ValueError):
    metrics.squad([[]], ['a'])


# ------------------------------------------------------------ MRQA

def _write_mrqa(path, contexts=MRQA_CONTEXTS, header=MRQA_HEADER):
  lines = [json.dumps(header)] + [json.dumps(c) for c in contexts]
  opener = gzip.open if str(path).endswith('.gz') else open
  with opener(path, 'wt', encoding='utf-8') as f:
    f.write('\n'.join(lines) + '\n')


def test_read_mrqa_jsonl_flattens_questions(tmp_path):
  path = tmp_path / 'DROP.jsonl.gz'
  _write_mrqa(path)
  rows = list(qa_tasks.read_mrqa_jsonl(str(path)))
  assert rows == [
      {'qid': 'd1', 'question': 'Who scored 10 points?',
       'context': '[PAR] The Bears scored 7 points; the Lions, 10.',
       'answers': ['the Lions', 'Lions'], 'subset': 'DROP'},
      {'qid': 'd2', 'question': 'How many did the Bears score?',
       'context': '[PAR] The Bears scored 7 points; the Lions, 10.',
       'answers': ['7'], 'subset': 'DROP'},
      {'qid': 'd3', 'question': 'What happened?', 'context': 'It rained.',
       'answers': ['It rained'], 'subset': 'DROP'},
  ]
  bad = tmp_path / 'bad.jsonl'
  _write_mrqa(bad, header={'dataset': 'x'})
  with pytest.raises(ValueError, match='header'):
    list(qa_tasks.read_mrqa_jsonl(str(bad)))


def _check_mrqa(examples):
  for ex, (qid, inputs, target, answers) in zip(examples, MRQA_EXPECTED, strict=True):
    assert _text(ex['id']) == qid
    assert _text(ex['inputs_pretokenized']) == inputs
    assert _text(ex['targets_pretokenized']) == target
    assert [_text(a) for a in ex['answers']] == answers


def test_mrqa_tasks_read_local_files(tmp_path):
  _write_mrqa(tmp_path / 'DROP.jsonl.gz')
  _write_mrqa(tmp_path / 'RACE.jsonl')  # Unzipped files work too.
  qa_tasks.register_qa_tasks(str(tmp_path))
  try:
    _check_mrqa(_examples('mrqa_drop_v001'))
    _check_mrqa(_examples('mrqa_race_v001'))
    with pytest.raises(FileNotFoundError, match=qa_tasks.MRQA_DIR_ENV):
      _examples('mrqa_bioasq_v001')
    mixture = seqio.get_mixture_or_task('squad_to_mrqa')
    assert seqio.get_mixture_or_task('mrqa_drop_v001') in mixture.tasks
  finally:
    qa_tasks.register_qa_tasks(None)
  assert isinstance(seqio.get_mixture_or_task('mrqa_drop_v001').source, seqio.TfdsDataSource)


def test_mrqa_tasks_read_tfds_test_split_as_validation(mock_tfds):
  rows = [dict(row, context_tokens={'tokens': ['x'], 'offsets': [0]})
          for row in qa_tasks.flatten_mrqa_contexts(MRQA_CONTEXTS, 'DROP')]
  with mock_tfds(rows, 'mrqa', 'test'):
    _check_mrqa(_examples('mrqa_drop_v001'))


def test_registry_names_and_sources():
  squad = seqio.get_mixture_or_task(qa_tasks.SQUAD_TASK)
  assert squad.source.tfds_dataset.name == 'squad/v1.1:3.0.0'
  for name, (config, _) in qa_tasks.MRQA_DATASETS.items():
    task = seqio.get_mixture_or_task(f'mrqa_{name}_v001')
    assert task.source.tfds_dataset.name == f'mrqa/{config}:1.0.0'
    assert list(task.splits) == ['validation']
    mixture = seqio.get_mixture_or_task(f'squad_to_{name}')
    assert {t.name for t in mixture.tasks} == {qa_tasks.SQUAD_TASK, task.name}
  assert len(seqio.get_mixture_or_task('squad_to_mrqa').tasks) == 7


def test_registration_is_idempotent():
  importlib.reload(qa_tasks)  # Registers again: no duplicate-name error.
  assert qa_tasks.SQUAD_TASK in seqio.TaskRegistry.names()
