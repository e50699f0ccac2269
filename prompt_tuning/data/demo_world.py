"""A small world and the English-like text written about it: the embedded demo's data.

Everything is a pure function of a seed, so the corpus, the tasks and every
model trained on them can be rebuilt bit for bit on any machine:

  world = make_world(seed=0)      # 48 people, their city, job, pet, colour, friends
  corpus(world, 'train', 20_000)  # documents, one string each
  boolq_examples(world, 'train', 4_000)
  rte_examples(world, 'train', 4_000)

The world is fixed by its seed; what varies between documents is which
people they talk about, in which words, and the events (meetings, visits,
gifts) they report. The corpus mixes five kinds of document, as web text
mixes kinds of page:

  profile   "Anna lives in Paris. She works as a baker. ..."
  story     "On Monday, Anna visited Ben in Rome. Ben is a pilot. ..."
  letter    "Dear Ben, I am writing from Paris, where I work as a baker. ..."
  faq       "Does Anna live in Paris? Yes, she does. Is Anna a pilot? No, ..."
  quiz      "Anna lives in Paris. ... Ben has a cat. does Ben have a dog? no."

Half the corpus's documents also name their kind ("A letter: Dear Ben, ..."
or "... This is a story."), the way web pages carry titles and section
names: that is where a model pre-trained on the corpus learns the genre
task's label words. The genre task's texts never name their kind.

The classification tasks, in (Super)GLUE's feature layout: two ask about the
facts a passage states, one about the kind of document:

  BoolQ-like  {passage, question, label 0=no 1=yes}
  RTE-like    {premise, hypothesis, label 0=entailment 1=not_entailment}
  genre       {text, label: profile, story, letter, quiz (balanced)}

Each task example draws a passage about 2-3 people (the facts in it are the
world's), and a question or hypothesis about one of them that is true or
false with probability 1/2, so the majority-class baseline is 50%. False
claims swap in another value of the same attribute, so the words alone do
not give the answer away; the passage does.
"""
import dataclasses
import random
from typing import Callable, Dict, List, Tuple

NAMES = (
    'Anna', 'Ben', 'Clara', 'David', 'Emma', 'Frank', 'Grace', 'Henry', 'Julia',
    'Jack', 'Laura', 'Leo', 'Maria', 'Max', 'Nina', 'Oscar', 'Paula', 'Peter',
    'Rosa', 'Sam', 'Sara', 'Tom', 'Vera', 'Victor', 'Alice', 'Bob', 'Carol',
    'Daniel', 'Eva', 'Felix', 'Hanna', 'Hugo', 'Ida', 'Jonas', 'Kate', 'Lucas',
    'Mia', 'Noah', 'Olga', 'Paul', 'Ruth', 'Simon', 'Tina', 'Uma', 'Walter',
    'Zoe', 'Adam', 'Lisa')
SHE = frozenset(('Anna', 'Clara', 'Emma', 'Grace', 'Julia', 'Laura', 'Maria', 'Nina',
                 'Paula', 'Rosa', 'Sara', 'Vera', 'Alice', 'Carol', 'Eva', 'Hanna',
                 'Ida', 'Kate', 'Mia', 'Olga', 'Ruth', 'Tina', 'Uma', 'Zoe', 'Lisa'))
CITIES = ('Paris', 'London', 'Berlin', 'Rome', 'Madrid', 'Vienna', 'Dublin', 'Oslo',
          'Lisbon', 'Prague', 'Athens', 'Warsaw')
JOBS = ('doctor', 'teacher', 'farmer', 'baker', 'painter', 'pilot', 'nurse', 'singer',
        'lawyer', 'writer', 'cook', 'driver')
PETS = ('cat', 'dog', 'horse', 'parrot', 'rabbit', 'goat', 'fish', 'turtle')
COLOURS = ('red', 'blue', 'green', 'yellow', 'black', 'white', 'orange', 'purple')
DAYS = ('Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday', 'Sunday')
GIFTS = ('a book', 'a cake', 'a lamp', 'a hat', 'a letter', 'some flowers', 'a map',
         'a clock')
ATTRIBUTES = ('city', 'job', 'pet', 'colour')
SPLITS = ('train', 'validation', 'test')
BOOLQ_LABELS = ('no', 'yes')
GENRES = ('profile', 'story', 'letter', 'quiz')
RTE_LABELS = ('entailment', 'not_entailment')


@dataclasses.dataclass(frozen=True)
class Person:
  name: str
  city: str
  job: str
  pet: str
  colour: str

  @property
  def pronoun(self) -> str:
    return 'she' if self.name in SHE else 'he'

  def value(self, attribute: str) -> str:
    return getattr(self, attribute)


@dataclasses.dataclass(frozen=True)
class World:
  seed: int
  people: Tuple[Person, ...]
  friends: Dict[str, Tuple[str, ...]]

  def person(self, name: str) -> Person:
    return next(p for p in self.people if p.name == name)


def make_world(seed: int = 0) -> World:
  """48 people with a city, job, pet and favourite colour, and 2-3 friends each."""
  rng = random.Random(f'demo-world-{seed}')
  people = tuple(Person(name, rng.choice(CITIES), rng.choice(JOBS), rng.choice(PETS),
                        rng.choice(COLOURS)) for name in NAMES)
  friends: Dict[str, set] = {name: set() for name in NAMES}
  for name in NAMES:
    while len(friends[name]) < 2:
      other = rng.choice(NAMES)
      if other != name:
        friends[name].add(other)
        friends[other].add(name)
  return World(seed, people, {k: tuple(sorted(v)) for k, v in friends.items()})


# Paraphrases of each fact, as (template, uses the name) pairs: `{n}` the
# name (or the pronoun when the person was just mentioned), `{v}` the value.
_FACTS = {
    'city': ('{n} lives in {v}.', '{n} has a house in {v}.', '{n} is living in {v}.',
             'The home of {n} is in {v}.', '{n} lives in the city of {v}.'),
    'job': ('{n} works as a {v}.', '{n} is a {v}.', '{n} has a job as a {v}.',
            'By trade, {n} is a {v}.', '{n} earns a living as a {v}.'),
    'pet': ('{n} has a {v}.', '{n} owns a {v}.', '{n} keeps a {v} as a pet.',
            'The pet of {n} is a {v}.', '{n} looks after a {v} at home.'),
    'colour': ('The favourite colour of {n} is {v}.', '{n} likes {v} best.',
               '{n} loves the colour {v}.', 'Of all colours, {n} prefers {v}.'),
}
# Yes/no questions (for the faq documents and the BoolQ-like task).
_QUESTIONS = {
    'city': ('does {n} live in {v}?', 'is the home of {n} in {v}?'),
    'job': ('is {n} a {v}?', 'does {n} work as a {v}?'),
    'pet': ('does {n} have a {v}?', 'is the pet of {n} a {v}?'),
    'colour': ('is the favourite colour of {n} {v}?', 'does {n} like {v} best?'),
}
_ANSWERS = {True: ('Yes, {p} does.', 'Yes.', 'Yes, that is right.'),
            False: ('No, {p} does not.', 'No.', 'No, that is wrong.')}
VALUES = {'city': CITIES, 'job': JOBS, 'pet': PETS, 'colour': COLOURS}


def fact_sentence(rng: random.Random, person: Person, attribute: str, pronoun: bool) -> str:
  subject = person.pronoun if pronoun else person.name
  template = rng.choice(_FACTS[attribute])
  if pronoun and not template.startswith('{n}'):
    subject = person.name  # "The pet of she" is not English
  text = template.format(n=subject, v=person.value(attribute))
  return text[0].upper() + text[1:]


def _profile(rng: random.Random, person: Person, max_facts: int = 4
             ) -> Tuple[List[str], List[str]]:
  """2 to `max_facts` facts about `person`, the name first, then mostly pronouns.

  Returns:
    (sentences, the attributes they state).
  """
  attributes = rng.sample(ATTRIBUTES, rng.randint(2, max_facts))
  return [fact_sentence(rng, person, a, pronoun=i > 0 and rng.random() < 0.6)
          for i, a in enumerate(attributes)], attributes


def other_value(rng: random.Random, person: Person, attribute: str) -> str:
  return rng.choice([v for v in VALUES[attribute] if v != person.value(attribute)])


def question_about(rng: random.Random, person: Person, attribute: str, truth: bool) -> str:
  value = person.value(attribute) if truth else other_value(rng, person, attribute)
  return rng.choice(_QUESTIONS[attribute]).format(n=person.name, v=value)


# How the corpus names a document's kind, before or after its text.
_KIND_HEADINGS = ('A {kind}: ', 'The {kind}: ')
_KIND_ENDINGS = (' This is a {kind}.', ' That was a {kind}.', ' (a {kind})')


def document_of_kind(rng: random.Random, world: World, kind: str) -> str:
  """A document of `kind` (one of GENRES or 'faq'), not naming its kind."""
  person = rng.choice(world.people)
  if kind == 'profile':
    sentences = _profile(rng, person)[0]
    friend = world.person(rng.choice(world.friends[person.name]))
    sentences.append(f'{person.name} is a friend of {friend.name}.')
    sentences += _profile(rng, friend)[0]
  elif kind == 'story':
    friend = world.person(rng.choice(world.friends[person.name]))
    day = rng.choice(DAYS)
    sentences = [rng.choice((
        f'On {day}, {person.name} visited {friend.name} in {friend.city}.',
        f'On {day}, {person.name} travelled to {friend.city} to see {friend.name}.',
        f'{person.name} and {friend.name} met in {friend.city} on {day}.'))]
    sentences.append(rng.choice((
        f'{person.name} brought {rng.choice(GIFTS)}.',
        f'They talked about the {friend.pet} of {friend.name}.',
        f'They had lunch and talked for hours.')))
    sentences += _profile(rng, friend)[0] + _profile(rng, person)[0]
  elif kind == 'letter':
    friend = world.person(rng.choice(world.friends[person.name]))
    sentences = [f'Dear {friend.name},',
                 f'I am writing from {person.city}, where I work as a {person.job}.',
                 rng.choice((f'My {person.pet} says hello.',
                             f'I painted my door {person.colour}, my favourite colour.',
                             f'I hope your {friend.pet} is well.')),
                 f'Come and visit me in {person.city} soon.',
                 f'Your friend, {person.name}']
  elif kind == 'quiz':  # a reading exercise: facts, then questions on them
    passage, stated = passage_about_people(rng, world)
    sentences = [passage]
    for person, attribute in rng.sample(stated, min(len(stated), rng.randint(1, 3))):
      truth = rng.random() < 0.5
      answer = rng.choice(('yes.', 'Yes.') if truth else ('no.', 'No.'))
      sentences += [question_about(rng, person, attribute, truth), answer]
  else:  # faq
    sentences = []
    for _ in range(rng.randint(2, 4)):
      attribute, truth = rng.choice(ATTRIBUTES), rng.random() < 0.5
      question = question_about(rng, person, attribute, truth)
      answer = rng.choice(_ANSWERS[truth]).format(p=person.pronoun)
      if not truth and rng.random() < 0.5:
        answer += ' ' + fact_sentence(rng, person, attribute, pronoun=True)
      if rng.random() < 0.5:  # half the askers write in lower case, as on the web
        question = question[0].upper() + question[1:]
      sentences += [question, answer]
  return ' '.join(sentences)


def example_rng(world: World, purpose: str, split: str) -> random.Random:
  if split not in SPLITS:
    raise ValueError(f'Unknown split {split!r}; one of {SPLITS}.')
  return random.Random(f'demo-world-{world.seed}-{purpose}-{split}')


def corpus(world: World, split: str, num_documents: int) -> List[str]:
  """`num_documents` documents (strings of 3-12 sentences) about `world`."""
  rng = example_rng(world, 'corpus', split)
  documents = []
  for _ in range(num_documents):
    kind = rng.choice(('profile', 'story', 'letter', 'faq', 'quiz', 'quiz'))
    text = document_of_kind(rng, world, kind)
    if rng.random() < 0.5:
      if rng.random() < 0.5:
        text = rng.choice(_KIND_HEADINGS).format(kind=kind) + text
      else:
        text += rng.choice(_KIND_ENDINGS).format(kind=kind)
    documents.append(text)
  return documents


def passage_about_people(rng: random.Random, world: World) -> Tuple[str, List[Tuple[Person, str]]]:
  """2-3 facts about each of 2-3 people: (text, the stated (person, attribute) pairs)."""
  sentences, stated = [], []
  for person in rng.sample(world.people, rng.randint(2, 3)):
    facts, attributes = _profile(rng, person, max_facts=3)
    sentences += facts
    stated += [(person, a) for a in attributes]
  return ' '.join(sentences), stated


def _claims(world: World, purpose: str, split: str, num_examples: int,
            make: Callable[[random.Random, str, Person, str, bool], Dict]) -> List[Dict]:
  """`make(rng, passage, person, attribute, truth)` for random stated facts, with 'idx'."""
  rng = example_rng(world, purpose, split)
  examples = []
  for idx in range(num_examples):
    passage, stated = passage_about_people(rng, world)
    person, attribute = rng.choice(stated)
    examples.append({**make(rng, passage, person, attribute, rng.random() < 0.5),
                     'idx': idx})
  return examples


def boolq_examples(world: World, split: str, num_examples: int) -> List[Dict]:
  """BoolQ-like: {'passage', 'question', 'label' (1 = yes), 'idx'}."""
  def make(rng, passage, person, attribute, truth):
    return {'passage': passage, 'question': question_about(rng, person, attribute, truth),
            'label': int(truth)}
  return _claims(world, 'boolq', split, num_examples, make)


def rte_examples(world: World, split: str, num_examples: int) -> List[Dict]:
  """RTE-like: {'premise', 'hypothesis', 'label' (0 = entailment), 'idx'}."""
  def make(rng, passage, person, attribute, truth):
    claimed = person if truth else dataclasses.replace(
        person, **{attribute: other_value(rng, person, attribute)})
    return {'premise': passage, 'hypothesis': fact_sentence(rng, claimed, attribute, pronoun=False),
            'label': 0 if truth else 1}
  return _claims(world, 'rte', split, num_examples, make)


def kind_pair_examples(world: World, split: str, num_examples: int, kinds: Tuple[str, str]
                       ) -> List[Dict]:
  """Which of two kinds (of GENRES) a document is: {'text', 'label' (index in kinds), 'idx'}.

  The genre task narrowed to two kinds: tasks of one skill, with labels in
  common with genre's, for SPoT transfer.
  """
  if len(kinds) != 2 or not set(kinds) <= set(GENRES) or kinds[0] == kinds[1]:
    raise ValueError(f'kinds must be two different kinds of {GENRES}, got {kinds}.')
  rng = example_rng(world, f'genre_{kinds[0]}_{kinds[1]}', split)
  examples = []
  for idx in range(num_examples):
    label = rng.randrange(2)
    examples.append({'text': document_of_kind(rng, world, kinds[label]), 'label': label, 'idx': idx})
  return examples


def genre_examples(world: World, split: str, num_examples: int) -> List[Dict]:
  """Genre classification, one document: {'text', 'label' (index in GENRES), 'idx'}."""
  rng = example_rng(world, 'genre', split)
  examples = []
  for idx in range(num_examples):
    label = rng.randrange(len(GENRES))
    examples.append({'text': document_of_kind(rng, world, GENRES[label]), 'label': label, 'idx': idx})
  return examples
