"""The demo suite's task generators: many small tasks over the demo world.

Each task is a pure function `generate(world, split, n) -> rows`, a row being
(Super)GLUE's layout: text fields, 'label' (an index in the task's label
list) and 'idx'. Formats, by what the target is:

  classification (targets are fixed words)
    yes_no           'does Anna live in Paris?' -> no / yes, closed-book or
                       over a passage (also friends, same city)
    entailment       premise passage, hypothesis sentence -> entailment /
                       not_entailment
    pick_person      'which of them is a pilot?' '(A) Anna (B) Ben' -> A / B
    genre            which kind of document a text is -> profile / story / ...
  generation-style (targets are entity values: a city, job, pet or colour)
    multiple_choice  'where does Anna live?' 'Paris, Rome, Oslo, Vienna' -> Paris
    short_answer     'what is the job of Anna?' -> baker, closed-book or
                       over a passage

Every task is rank-classifiable: a generation-style task's labels are its
relation's whole value set (the 12 cities, ...), so a multiple-choice
question is ranked over all 12 cities, not only its 4 options.

Splits never share an input. Closed-book tasks ask each split about its own
people (24 / 12 / 12 of the 48, a fixed shuffle), so no fact a test question
needs was ever a training label; the model can know it only from the corpus.
With 12 people, their validation and test splits repeat inputs. The other
tasks give each input text (or, for friends, each pair of people) to one
split by its hash, and each split draws until it has an input of its own.
Truth values and labels are drawn before the inputs, so classes stay
balanced.
"""
import dataclasses
import functools
import hashlib
import random
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from prompt_tuning.data import demo_world
from prompt_tuning.data.demo_world import Person, World

# The world's own sentence makers, so that the suite's text is the corpus's,
# paraphrases included.
from prompt_tuning.data.demo_world import VALUES  # attribute -> its value set (e.g. the 12 cities)
from prompt_tuning.data.demo_world import document_of_kind, example_rng, fact_sentence
from prompt_tuning.data.demo_world import other_value, passage_about_people, question_about

Row = Dict
Generator = Callable[[World, str, int], List[Row]]
YES_NO = demo_world.BOOLQ_LABELS
CLASSIFICATION_FORMATS = ('yes_no', 'entailment', 'pick_person', 'genre')
# How many of the 48 people each split's closed-book questions are about.
PEOPLE_PER_SPLIT = {'train': 24, 'validation': 12, 'test': 12}

_WH_QUESTIONS = {
    'city': ('where does {n} live?', 'in which city does {n} live?'),
    'job': ('what is the job of {n}?', 'what does {n} work as?'),
    'pet': ('what pet does {n} have?', 'which animal does {n} keep as a pet?'),
    'colour': ('what is the favourite colour of {n}?', 'which colour does {n} like best?'),
}
_WHICH_OF_THEM = {'city': 'which of them lives in {v}?', 'job': 'which of them is a {v}?',
                  'pet': 'which of them has a {v}?', 'colour': 'which of them likes {v} best?'}


@dataclasses.dataclass(frozen=True)
class SuiteTask:
  """One task: `name` (also its input prefix), format, labels, text fields in order."""
  name: str
  format: str
  labels: Tuple[str, ...]
  features: Tuple[str, ...]
  generate: Generator

  @property
  def classification(self) -> bool:
    return self.format in CLASSIFICATION_FORMATS


def people_of(world: World, split: str) -> Tuple[Person, ...]:
  """The people a split's closed-book questions are about (disjoint across splits)."""
  people = list(world.people)
  random.Random(f'demo-suite-{world.seed}-people').shuffle(people)
  start = 0
  for name, count in PEOPLE_PER_SPLIT.items():
    if name == split:
      return tuple(people[start:start + count])
    start += count
  raise ValueError(f'Unknown split {split!r}; one of {tuple(PEOPLE_PER_SPLIT)}.')


def split_of(world: World, key: str) -> str:
  """The split owning an input (by `key`): 70% train, 15% validation, 15% test."""
  bucket = int(hashlib.sha256(f'{world.seed}-{key}'.encode()).hexdigest()[:8], 16) % 100
  return 'train' if bucket < 70 else 'validation' if bucket < 85 else 'test'


def _rows(world: World, task: str, split: str, n: int,
          make: Callable[[random.Random, int], Tuple[Row, Optional[str]]],
          num_labels: int = 2) -> List[Row]:
  """`n` rows of `make(rng, label) -> (row, key)`, balanced, keys in `split`.

  `label` is drawn uniformly from range(num_labels) before the input, and
  `make` is called again until the key's split is `split`; a key of None
  needs no check (the input is about the split's own people). A row that
  has a 'label' keeps it: the generation-style tasks' label is a fact of
  the person drawn, not drawn itself.
  """
  rng = example_rng(world, f'suite-{task}', split)
  rows = []
  for idx in range(n):
    label = rng.randrange(num_labels)
    while True:
      row, key = make(rng, label)
      if key is None or split_of(world, key) == split:
        break
    rows.append({'label': label, **row, 'idx': idx})
  return rows


def _passage_about(rng: random.Random, world: World, attribute: str) -> Tuple[str, Person]:
  """A passage of 2-3 people and one of them whose `attribute` it states."""
  while True:
    passage, stated = passage_about_people(rng, world)
    people = [person for person, a in stated if a == attribute]
    if people:
      return passage, rng.choice(people)


def _by_value(rng: random.Random, people: Sequence[Person], attribute: str) -> Person:
  """One of `people`, by a value of `attribute` drawn uniformly from theirs.

  Drawn uniformly, a value that 4 of a split's 12 people hold would be the
  label of a third of its examples; drawn by value, every value they hold
  (5 to 11 of them) is the label about equally often.
  """
  value = rng.choice(sorted({p.value(attribute) for p in people}))
  return rng.choice([p for p in people if p.value(attribute) == value])


def _claimed(rng: random.Random, person: Person, attribute: str, truth: bool) -> Person:
  """`person`, or a copy with another value of `attribute` when the claim is false."""
  if truth:
    return person
  other = other_value(rng, person, attribute)
  return dataclasses.replace(person, **{attribute: other})


def yes_no(world: World, split: str, n: int, attribute: str) -> List[Row]:
  """Closed-book {'question'}: 'does Anna live in Paris?' about the split's people."""
  people = people_of(world, split)
  def make(rng, label):
    question = question_about(rng, rng.choice(people), attribute, bool(label))
    return {'question': question}, None
  return _rows(world, f'{attribute}_yes_no', split, n, make)


def passage_yes_no(world: World, split: str, n: int, attribute: str) -> List[Row]:
  """{'passage', 'question'}: the question about a fact the passage states."""
  def make(rng, label):
    passage, person = _passage_about(rng, world, attribute)
    question = question_about(rng, person, attribute, bool(label))
    return {'passage': passage, 'question': question}, passage + question
  return _rows(world, f'{attribute}_passage_yes_no', split, n, make)


def entailment(world: World, split: str, n: int, attribute: str) -> List[Row]:
  """{'premise', 'hypothesis'}, label 0 = entailment, 1 = not_entailment."""
  def make(rng, label):
    premise, person = _passage_about(rng, world, attribute)
    claimed = _claimed(rng, person, attribute, truth=label == 0)
    hypothesis = fact_sentence(rng, claimed, attribute, pronoun=False)
    return {'premise': premise, 'hypothesis': hypothesis}, premise + hypothesis
  return _rows(world, f'{attribute}_entailment', split, n, make)


def multiple_choice(world: World, split: str, n: int, attribute: str) -> List[Row]:
  """Closed-book {'question', 'options'}: 4 values, one the person's; label its index."""
  people, values = people_of(world, split), VALUES[attribute]
  def make(rng, unused_label):
    person = _by_value(rng, people, attribute)
    value = person.value(attribute)
    options = [value] + rng.sample([v for v in values if v != value], 3)
    rng.shuffle(options)
    return {'question': rng.choice(_WH_QUESTIONS[attribute]).format(n=person.name),
            'options': ', '.join(options), 'label': values.index(value)}, None
  return _rows(world, f'{attribute}_choice', split, n, make)


def short_answer(world: World, split: str, n: int, attribute: str) -> List[Row]:
  """Closed-book {'question'}: 'what is the job of Anna?', label the value's index."""
  people, values = people_of(world, split), VALUES[attribute]
  def make(rng, unused_label):
    person = _by_value(rng, people, attribute)
    return {'question': rng.choice(_WH_QUESTIONS[attribute]).format(n=person.name),
            'label': values.index(person.value(attribute))}, None
  return _rows(world, f'{attribute}_answer', split, n, make)


def passage_short_answer(world: World, split: str, n: int, attribute: str) -> List[Row]:
  """{'passage', 'question'}: the value the passage states, label its index."""
  values = VALUES[attribute]
  def make(rng, unused_label):
    passage, person = _passage_about(rng, world, attribute)
    question = rng.choice(_WH_QUESTIONS[attribute]).format(n=person.name)
    return ({'passage': passage, 'question': question,
             'label': values.index(person.value(attribute))}, passage + question)
  return _rows(world, f'{attribute}_passage_answer', split, n, make)


def pick_person(world: World, split: str, n: int, attribute: str) -> List[Row]:
  """Closed-book {'question', 'options'}: '(A) Anna (B) Ben', label 0 = A, 1 = B."""
  people = people_of(world, split)
  def make(rng, label):
    person = rng.choice(people)
    other = rng.choice([p for p in people if p.value(attribute) != person.value(attribute)])
    pair = (person, other) if label == 0 else (other, person)
    return {'question': _WHICH_OF_THEM[attribute].format(v=person.value(attribute)),
            'options': f'(A) {pair[0].name} (B) {pair[1].name}'}, None
  return _rows(world, f'{attribute}_pick_person', split, n, make)


def friends_yes_no(world: World, split: str, n: int) -> List[Row]:
  """Closed-book {'question'}: 'are Anna and Ben friends?'; each pair in one split."""
  def make(rng, label):
    name = rng.choice(demo_world.NAMES)
    others = [o for o in demo_world.NAMES if o != name and
              (o in world.friends[name]) == bool(label)]
    pair = [name, rng.choice(others)]
    rng.shuffle(pair)
    question = rng.choice(('are {} and {} friends?', 'is {} a friend of {}?')).format(*pair)
    return {'question': question}, 'friends-' + '-'.join(sorted(pair))
  return _rows(world, 'friends_yes_no', split, n, make)


def same_city(world: World, split: str, n: int) -> List[Row]:
  """{'passage', 'question'}: 'do Anna and Ben live in the same city?'.

  The passage states both cities and one more fact of each, among the facts
  of a third person, in a random order.
  """
  # A person alone in their city has nobody to share it with.
  sharing = [p for p in world.people
             if any(o != p and o.city == p.city for o in world.people)]
  def make(rng, label):
    person = rng.choice(sharing if label else world.people)
    other = rng.choice([p for p in world.people
                        if p != person and (p.city == person.city) == bool(label)])
    third = rng.choice([p for p in world.people if p not in (person, other)])
    facts = []
    for p in (person, other, third):
      for a in ('city', rng.choice(('job', 'pet', 'colour'))):
        facts.append(fact_sentence(rng, p, a, pronoun=False))
    rng.shuffle(facts)
    pair = [person.name, other.name]
    rng.shuffle(pair)
    question = rng.choice(('do {} and {} live in the same city?',
                           'are the homes of {} and {} in the same city?')).format(*pair)
    passage = ' '.join(facts)
    return {'passage': passage, 'question': question}, passage + question
  return _rows(world, 'same_city', split, n, make)


def genre(world: World, split: str, n: int) -> List[Row]:
  """{'text'}: one document, label its index in GENRES (demo_world_genre's task)."""
  def make(rng, label):
    text = document_of_kind(rng, world, demo_world.GENRES[label])
    return {'text': text}, text
  return _rows(world, 'genre', split, n, make, num_labels=len(demo_world.GENRES))


def _attribute_tasks(a: str) -> List[SuiteTask]:
  """The seven tasks asking about attribute `a` (one of demo_world.ATTRIBUTES)."""
  values = VALUES[a]
  per = lambda generate: functools.partial(generate, attribute=a)
  return [
      SuiteTask(f'{a}_yes_no', 'yes_no', YES_NO, ('question',), per(yes_no)),
      SuiteTask(f'{a}_passage_yes_no', 'yes_no', YES_NO, ('passage', 'question'),
                per(passage_yes_no)),
      SuiteTask(f'{a}_entailment', 'entailment', demo_world.RTE_LABELS,
                ('premise', 'hypothesis'), per(entailment)),
      SuiteTask(f'{a}_pick_person', 'pick_person', ('A', 'B'), ('question', 'options'),
                per(pick_person)),
      SuiteTask(f'{a}_choice', 'multiple_choice', values, ('question', 'options'),
                per(multiple_choice)),
      SuiteTask(f'{a}_answer', 'short_answer', values, ('question',), per(short_answer)),
      SuiteTask(f'{a}_passage_answer', 'short_answer', values, ('passage', 'question'),
                per(passage_short_answer)),
  ]


_TASKS = [task for a in demo_world.ATTRIBUTES for task in _attribute_tasks(a)] + [
    SuiteTask('friends_yes_no', 'yes_no', YES_NO, ('question',), friends_yes_no),
    SuiteTask('same_city', 'yes_no', YES_NO, ('passage', 'question'), same_city),
    SuiteTask('genre', 'genre', demo_world.GENRES, ('text',), genre)]
# The suite's 31 tasks by name (the name is also the input's first word).
TASKS: Dict[str, SuiteTask] = {task.name: task for task in _TASKS}
