"""A LAMA-style knowledge probe of the demo world: P-tuning's setting ("GPT Understands, Too").

A fact (subject, relation, object) of the demo world (`demo_world.py`,
seed 0) becomes a cloze whose answer is the object: the LM reads the inputs
and must continue with the object. Every fact is in the pre-training corpus
(`demo_world_lm`), as LAMA's facts are in its LMs' pre-training data; the
probe asks whether a prompt can get them out.

Relations: city, job, pet, colour (`RELATIONS`). For each, the 48 people are
split by a fixed seeded shuffle (one per relation) into 24 train, 8
validation and 16 test people (`SPLIT_SIZES`); a split's examples are its
people's facts, one per person, in the shuffled order.

Importing this module registers, for each relation r, four seqio tasks
(`task_name(r, form)`), all with inputs WITHOUT EOS (a decoder-only LM
continues 'Anna lives in' with 'Paris'; an EOS between them would end the
text) and targets = the object word + EOS:

| form | inputs for Anna, city |
|---|---|
| `demo_probe_<r>_manual` | 'Anna lives in' (the corpus's plainest fact sentence, object cut off) |
| `demo_probe_<r>_subject` | 'Anna' |
| `demo_probe_<r>_p_tuning` | '<extra_id_0> <extra_id_1> <extra_id_2> Anna <extra_id_3> <extra_id_4> <extra_id_5>' |
| `demo_probe_<r>_p_tuning_anchor` | as p_tuning, then 'lives in' |

The manual prompts (`MANUAL_PROMPTS`) are the first paraphrase of each
relation in `demo_world._FACTS` cut before the object: '{n} lives in',
'{n} works as a', '{n} has a', 'The favourite colour of {n} is'. The corpus
also writes '{n} has a house in {v}' (city) and '{n} has a job as a {v}'
(job), so 'Anna has a' is ambiguous for the pet relation, the kind of
weakness of manual prompts P-tuning's paper reports.

The p_tuning forms are P-tuning's GPT template (3, 3, 0): 3 pseudo tokens,
the subject, 3 pseudo tokens, the answer slot, written into the text as
`deltas.templates.as_text` writes a template (a test checks they agree):
pseudo position k is the T5 sentinel '<extra_id_k>' (id 32099 - k), whose
embedding `deltas.PTuningInText` replaces. The anchor form adds the manual
prompt's words after the name (`ANCHORS`) before the answer slot. The
colour prompt has its name in the middle, so its anchor is taken from the
corpus's subject-first paraphrase '{n} likes {v} best.': 'likes'.

Metric: precision@1 (`precision_at_1`, percent), as LAMA: the first word of
the greedy decode, stripped of punctuation, equals the object exactly (case
as the corpus writes it: 'Paris', 'baker'). LAMA keeps single-token objects
only; here every object is kept. In the T5 vocabulary every object is one
SentencePiece piece except Athens ('▁At' 'hen' 's'), Warsaw ('▁War' 'saw'),
baker ('▁bake' 'r'), painter ('▁paint' 'er') and parrot ('▁par' 'rot');
for those the first decoded word must be the whole object. Chance is 1/12
for city and job and 1/8 for pet and colour.

Mixtures `demo_probe_<form>` hold the four relations of a form (each
relation's metrics are reported on their own). `TASK_FEATURE_LENGTHS`
fits every example of every form (longest inputs in tokens: manual 8,
subject 3, p_tuning 9, p_tuning_anchor 13; longest targets 4 with EOS,
Athens); targets get room for a few more decoded tokens so that the first
word of a greedy decode is whole.
"""
import functools
import random
import string
from typing import Dict, List, Optional, Sequence, Tuple

import seqio
import tensorflow as tf

from prompt_tuning.data import demo_world
from prompt_tuning.data import task_utils
from prompt_tuning.data import vocab as vocab_lib

WORLD_SEED = 0
RELATIONS = ('city', 'job', 'pet', 'colour')
SPLIT_SIZES = {'train': 24, 'validation': 8, 'test': 16}
MANUAL, SUBJECT, P_TUNING, P_TUNING_ANCHOR = 'manual', 'subject', 'p_tuning', 'p_tuning_anchor'
FORMS = (MANUAL, SUBJECT, P_TUNING, P_TUNING_ANCHOR)
MANUAL_PROMPTS = {
    'city': '{n} lives in',
    'job': '{n} works as a',
    'pet': '{n} has a',
    'colour': 'The favourite colour of {n} is',
}
# The relation words after the name, for the anchor template.
ANCHORS = {'city': 'lives in', 'job': 'works as a', 'pet': 'has a', 'colour': 'likes'}
P_TUNING_TEMPLATE = '[P:3] {inputs} [P:3]'  # P-tuning's GPT template (3, 3, 0)
TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 8}
METRIC = 'precision_at_1'


def task_name(relation: str, form: str) -> str:
  """'demo_probe_<relation>_<form>'."""
  if relation not in RELATIONS:
    raise ValueError(f'Unknown relation {relation!r}; one of {RELATIONS}.')
  if form not in FORMS:
    raise ValueError(f'Unknown form {form!r}; one of {FORMS}.')
  return f'demo_probe_{relation}_{form}'


def mixture_name(form: str) -> str:
  """'demo_probe_<form>': the four relations in `form`."""
  if form not in FORMS:
    raise ValueError(f'Unknown form {form!r}; one of {FORMS}.')
  return f'demo_probe_{form}'


def task_names(forms: Sequence[str] = FORMS) -> List[str]:
  """Every registered probe task of `forms`, relation-major."""
  return [task_name(r, f) for r in RELATIONS for f in forms]


def template(relation: str, form: str) -> Optional[str]:
  """The P-tuning template of a p_tuning form (None for the others)."""
  if form == P_TUNING:
    return P_TUNING_TEMPLATE
  if form == P_TUNING_ANCHOR:
    return f'{P_TUNING_TEMPLATE} {ANCHORS[relation]}'
  return None


def prompt_text(relation: str, form: str, subject: str) -> str:
  """The inputs text of `subject`'s example (no EOS; the object comes next)."""
  task_name(relation, form)  # checks both
  if form == MANUAL:
    return MANUAL_PROMPTS[relation].format(n=subject)
  if form == SUBJECT:
    return subject
  # Written here, not with deltas.templates.as_text: data sits below deltas.
  pseudo = [f'<extra_id_{k}>' for k in range(6)]
  anchor = [ANCHORS[relation]] if form == P_TUNING_ANCHOR else []
  return ' '.join(pseudo[:3] + [subject] + pseudo[3:] + anchor)


def split_people(relation: str, seed: int = WORLD_SEED) -> Dict[str, Tuple[str, ...]]:
  """{split: names}: the 48 people shuffled once per relation, cut 24 / 8 / 16."""
  if relation not in RELATIONS:
    raise ValueError(f'Unknown relation {relation!r}; one of {RELATIONS}.')
  names = list(demo_world.NAMES)
  random.Random(f'demo-probe-{seed}-{relation}').shuffle(names)
  splits, start = {}, 0
  for split, size in SPLIT_SIZES.items():
    splits[split] = tuple(names[start:start + size])
    start += size
  return splits


@functools.lru_cache(maxsize=None)
def facts(relation: str, split: str) -> Tuple[Tuple[str, str], ...]:
  """((subject, object), ...) of `split`'s people for `relation`."""
  people = split_people(relation)
  if split not in people:
    raise ValueError(f'Unknown split {split!r}; one of {tuple(people)}.')
  world = demo_world.make_world(WORLD_SEED)
  return tuple((name, world.person(name).value(relation)) for name in people[split])


def _source(relation: str, form: str) -> seqio.FunctionDataSource:
  def dataset_fn(split: str, shuffle_files: bool, seed=None) -> tf.data.Dataset:
    del shuffle_files, seed  # one in-memory "file"
    rows = facts(relation, split)
    return tf.data.Dataset.from_tensor_slices({
        'inputs': [prompt_text(relation, form, s) for s, _ in rows],
        'targets': [o for _, o in rows],
    })
  return seqio.FunctionDataSource(dataset_fn, splits=list(SPLIT_SIZES))


def output_features() -> Dict[str, seqio.Feature]:
  """T5 vocabulary; inputs without EOS (the LM continues them), targets with."""
  vocabulary = vocab_lib.get_vocabulary()
  return {'inputs': seqio.Feature(vocabulary, add_eos=False),
          'targets': seqio.Feature(vocabulary, add_eos=True)}


def first_word(text, example=None, is_target: bool = False) -> str:
  """The first whitespace-separated word of `text`, punctuation stripped at its ends.

  'Paris. She works' -> 'Paris'; '' -> ''. Case is kept (objects are
  compared as the corpus writes them).
  """
  del example, is_target
  if isinstance(text, bytes):
    text = text.decode('utf-8')
  words = text.split()
  return words[0].strip(string.punctuation) if words else ''


def precision_at_1(targets: Sequence[str], predictions: Sequence[str]) -> Dict[str, float]:
  """Percent of predictions (first words) equal to their object."""
  if len(targets) != len(predictions):
    raise ValueError(f'{len(targets)} targets but {len(predictions)} predictions.')
  if not targets:
    raise ValueError('precision@1 of no examples is undefined.')
  hits = sum(t == p for t, p in zip(targets, predictions))
  return {METRIC: 100 * hits / len(targets)}


def register() -> None:
  """(Re-)registers the 16 probe tasks and the 4 mixtures of a form."""
  for relation in RELATIONS:
    for form in FORMS:
      name = task_name(relation, form)
      if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
      seqio.TaskRegistry.add(
          name, source=_source(relation, form),
          preprocessors=[seqio.preprocessors.tokenize,
                         seqio.CacheDatasetPlaceholder(),
                         seqio.preprocessors.append_eos_after_trim],
          output_features=output_features(), postprocess_fn=first_word,
          metric_fns=[precision_at_1])
  for form in FORMS:
    task_utils.add_mixture(mixture_name(form), [(task_name(r, form), 1.0) for r in RELATIONS])


register()
