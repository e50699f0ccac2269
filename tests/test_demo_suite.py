"""The demo suite: many tasks, registered lazily, splits that share no input,
labels that are the world's truth (re-derived here from the input text and
the world's records, not from the generators), and IPT's seen/unseen splits."""
import collections
import importlib
import re

import pytest
import seqio

from prompt_tuning.data import demo_suite
from prompt_tuning.data import demo_world
from prompt_tuning.data import vocab

WORLD = demo_world.make_world(0)
TASKS = demo_suite.TASKS
SPLITS = tuple(demo_suite.SUITE_SIZES)
VALUES = {'city': demo_world.CITIES, 'job': demo_world.JOBS, 'pet': demo_world.PETS,
          'colour': demo_world.COLOURS}
# Closed-book tasks about one person: each split asks about its own people.
CLOSED_BOOK = [t for t in TASKS if t.split('_')[0] in VALUES and 'passage' not in t
               and 'entailment' not in t]


def _rows(task, split):
  columns = demo_suite.examples(task, split)
  return [dict(zip(columns, values)) for values in zip(*columns.values())]


def _input(task, row):
  return ' '.join(f'{key}: {row[key]}' for key in TASKS[task].features)


def test_registering_generates_nothing_and_all_tasks_and_the_mixture_exist():
  module = importlib.reload(demo_suite)  # a fresh example cache, registered again
  assert module.examples.cache_info().currsize == 0
  names = [n for n in seqio.TaskRegistry.names() if n.startswith('demo_suite_')]
  assert len(names) == len(TASKS) >= 24
  for form in ('taskless_demo_suite_genre', 'taskless_demo_suite_genre_sentinel'):
    assert form in seqio.TaskRegistry.names()
  mixture = seqio.get_mixture_or_task('demo_suite')
  assert sorted(t.name for t in mixture.tasks) == sorted(names)
  assert len({TASKS[t].format for t in TASKS}) >= 5


def test_splits_share_no_input_and_closed_book_splits_share_no_person():
  for task in TASKS:
    inputs = {split: {_input(task, row) for row in _rows(task, split)} for split in SPLITS}
    assert not inputs['train'] & inputs['validation'], task
    assert not inputs['train'] & inputs['test'], task
    assert not inputs['validation'] & inputs['test'], task
  for task in CLOSED_BOOK:
    people = {split: {n for row in _rows(task, split) for n in _names(_input(task, row))}
              for split in SPLITS}
    assert not people['train'] & (people['validation'] | people['test']), task
    assert not people['validation'] & people['test'], task


def test_labels_are_balanced_enough():
  for task, spec in TASKS.items():
    for split in SPLITS:
      counts = collections.Counter(row['label'] for row in _rows(task, split))
      largest = max(counts.values()) / sum(counts.values())
      assert largest < (0.6 if len(spec.labels) == 2 else 0.4), (task, split, counts)


def _words(text):
  return re.findall(r'[A-Za-z]+', text)


def _names(text):
  return [w for w in _words(text) if w in demo_world.NAMES]


def _claim(text):
  """(name, attribute, value) of a yes/no question or a hypothesis."""
  [name] = _names(text)
  [(attribute, value)] = [(a, v) for a, values in VALUES.items() for v in values
                          if v in _words(text)]
  return name, attribute, value


def _genre(text):
  """The kind of a document, from its form alone."""
  if text.startswith('Dear '):
    return 'letter'
  if '?' in text:
    return 'quiz'
  if any(day in _words(text) for day in demo_world.DAYS):
    return 'story'
  assert ' is a friend of ' in text, text
  return 'profile'


def _true_label(task, row):
  """The label of `row` from the world's records and the input's words."""
  relation = task.split('_')[0]
  if task == 'genre':
    return _genre(row['text'])
  if task == 'friends_yes_no':
    first, second = _names(row['question'])
    return 'yes' if second in WORLD.friends[first] else 'no'
  if task == 'same_city':
    first, second = _names(row['question'])
    return 'yes' if WORLD.person(first).city == WORLD.person(second).city else 'no'
  if task.endswith('entailment'):
    name, attribute, value = _claim(row['hypothesis'])
    assert attribute == relation and WORLD.person(name).value(attribute) in _words(row['premise'])
    return 'entailment' if WORLD.person(name).value(attribute) == value else 'not_entailment'
  if task.endswith('yes_no'):
    name, attribute, value = _claim(row['question'])
    assert attribute == relation
    if 'passage' in row:  # the passage states the fact asked about
      assert WORLD.person(name).value(attribute) in _words(row['passage'])
    return 'yes' if WORLD.person(name).value(attribute) == value else 'no'
  if task.endswith('pick_person'):
    [value] = [v for v in VALUES[relation] if v in _words(row['question'])]
    first, second = re.fullmatch(r'\(A\) (\w+) \(B\) (\w+)', row['options']).groups()
    holders = [WORLD.person(n).value(relation) == value for n in (first, second)]
    assert sum(holders) == 1, row
    return 'A' if holders[0] else 'B'
  [name] = _names(row['question'])  # choice, answer, passage_answer
  value = WORLD.person(name).value(relation)
  if 'options' in row:
    options = row['options'].split(', ')
    assert len(set(options)) == 4 and value in options and set(options) <= set(VALUES[relation])
  if 'passage' in row:
    assert value in _words(row['passage'])
  return value


def test_labels_are_the_world_s_truth():
  for task, spec in TASKS.items():
    for split in ('validation', 'test'):
      for row in _rows(task, split):
        assert spec.labels[row['label']] == _true_label(task, row), (task, row)
    assert demo_suite.labels(task) == list(spec.labels)


def test_labels_accepts_every_form_and_refuses_others():
  assert demo_suite.labels('taskless_demo_suite_city_yes_no_sentinel') == ['no', 'yes']
  assert demo_suite.labels('demo_suite_city_answer') == list(demo_world.CITIES)
  with pytest.raises(ValueError, match='not a task of the demo suite'):
    demo_suite.labels('demo_world_genre')


def test_seen_and_unseen_are_disjoint_and_cover_the_suite():
  every = {demo_suite.task_name(t) for t in TASKS}
  for kind, (seen, unseen) in demo_suite.SPLITS.items():
    assert not set(seen) & set(unseen) and set(seen) | set(unseen) == every, kind
  seen, unseen = demo_suite.SPLITS['random']
  assert len(seen) == round(0.75 * len(TASKS))
  seen, unseen = demo_suite.SPLITS['by_format']
  assert {TASKS[n[len('demo_suite_'):]].format for n in unseen} == {
      'multiple_choice', 'short_answer'}
  taskless_seen, _ = demo_suite.task_split('by_format', 'taskless')
  assert taskless_seen == ['taskless_' + n for n in seen]


def test_every_example_fits_suite_lengths():
  vocabulary = vocab.get_vocabulary()
  for task, spec in TASKS.items():
    texts = [f'{task} {_input(task, row)}' for split in SPLITS for row in _rows(task, split)]
    longest = max(len(ids) for ids in vocabulary.tokenizer.encode(texts)) + 1  # EOS
    assert longest <= demo_suite.SUITE_LENGTHS['inputs'], task
    for label in spec.labels:
      assert len(vocabulary.encode(label)) + 1 <= demo_suite.SUITE_LENGTHS['targets']


@pytest.mark.parametrize('name', ['demo_suite_genre', 'taskless_demo_suite_job_choice'])
def test_a_seqio_task_gives_tokenized_examples(name):
  task = seqio.get_mixture_or_task(name)
  dataset = task.get_dataset(demo_suite.SUITE_LENGTHS, split='validation', shuffle=False)
  for example in dataset.take(20).as_numpy_iterator():
    assert 0 < len(example['inputs']) <= demo_suite.SUITE_LENGTHS['inputs']
    assert example['targets'][-1] == 1  # EOS
    target = example['targets_pretokenized'].decode()
    assert target in demo_suite.labels(name)
    assert task.postprocess_fn(target) == demo_suite.labels(name).index(target)
  if name.startswith('taskless_'):
    assert example['inputs_pretokenized'].decode().startswith('question: ')
  else:
    assert example['inputs_pretokenized'].decode().startswith('genre text: ')


def test_each_splits_seen_tasks_are_a_marked_mixture_in_split_order():
  for kind in demo_suite.SPLITS:
    seen, _ = demo_suite.task_split(kind, 'taskless')
    mixture = seqio.get_mixture_or_task(f'demo_suite_{kind}_seen')
    assert {t.name for t in mixture.tasks} == {f'{name}_task{i}' for i, name in enumerate(seen)}
  # Task 1 of the random split: its inputs start with <extra_id_1> (32099 - 1).
  name = demo_suite.task_split('random', 'taskless')[0][1]
  task = seqio.get_mixture_or_task(f'{name}_task1')
  example = next(iter(task.get_dataset(demo_suite.SUITE_LENGTHS, split='validation',
                                       shuffle=False)))
  assert int(example['inputs'][0]) == 32098
