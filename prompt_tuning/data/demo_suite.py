"""The demo suite: 31 small tasks over the demo world, for many-task studies.

Importing this module registers, for each task of `demo_suite_tasks.TASKS`
(generated in memory from seed 0, lazily: a task's data is made the first
time it is read), `demo_suite_<task>` in the three forms of `task_utils`
(T5, taskless, sentinel), and the mixture `demo_suite` of all of them at
equal rates (in the same forms). See every task, its format, labels and an
example with

    python -m prompt_tuning.data.demo_suite
    python tools/show_tasks.py --module prompt_tuning.data.demo_suite \
      --task taskless_demo_suite_job_choice      # a task's examples, tokenized

Inputs are (Super)GLUE's: the task's name, then its fields, e.g.
'city_yes_no question: does Anna live in Paris?' -> 'yes', or
'job_choice question: what is the job of Ben? options: pilot, cook, nurse,
baker' -> 'pilot'. Every task is scored by rank classification over
`labels(name)` (accuracy); a generation-style task's labels are its
relation's value set (e.g. the 12 cities). A study binds, as
gin/demo/genre_task.gin does for the genre task:

    MIXTURE_OR_TASK_NAME = 'taskless_demo_suite_city_yes_no'
    MIXTURE_OR_TASK_MODULE = 'prompt_tuning.data.demo_suite'
    CLASS_LABELS = ['no', 'yes']       # labels('demo_suite_city_yes_no')
    TASK_FEATURE_LENGTHS = {'inputs': 120, 'targets': 8}   # SUITE_LENGTHS

Seen/unseen task splits, as in Intrinsic Prompt Tuning (Qin et al., 2021),
in `SPLITS` (names of the T5 form; `task_split` gives other forms):

  random     a fixed seeded shuffle: 23 tasks seen, 8 unseen
  by_format  the paper's classification -> non-classification split: seen
             are the classification formats (yes_no, entailment, pick_person,
             genre; 19 tasks), unseen the generation-style ones, whose
             answers are entity values (multiple_choice, short_answer; 12)

For IPT's subspace finding, each split's seen tasks in the taskless form are
also a marked mixture, `demo_suite_<split>_seen` (task i's inputs start with
the marker <extra_id_i>, i in the order of `task_split(split, TASKLESS)[0]`;
see `task_markers`).
"""
import functools
import random
from typing import Dict, List, Tuple

import seqio
import tensorflow as tf

from prompt_tuning.data import demo_world
from prompt_tuning.data import metrics
from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors
from prompt_tuning.data import task_markers
from prompt_tuning.data import task_utils
from prompt_tuning.data.demo_suite_tasks import TASKS

WORLD_SEED = 0
PREFIX = 'demo_suite'
SUITE_SIZES = {'train': 2_000, 'validation': 500, 'test': 500}
# Lengths that fit every example, as demo_tasks' (the longest input is 115
# tokens with EOS, the longest target 6; tests/test_demo_suite.py checks all).
SUITE_LENGTHS = {'inputs': 120, 'targets': 8}


def task_name(task: str, form: str = task_utils.T5) -> str:
  """The registered name of suite task `task` (e.g. 'city_yes_no') in `form`."""
  return task_utils.form_name(f'{PREFIX}_{task}', form)


def _short_name(name: str) -> str:
  """'city_yes_no' from its registered name in any form, or itself."""
  for form in task_utils.ALL_FORMS:
    for task in TASKS:
      if name in (task, task_name(task, form)):
        return task
  raise ValueError(f'{name!r} is not a task of the demo suite; one of {sorted(TASKS)}.')


def labels(name: str) -> List[str]:
  """The label strings of a suite task (registered name in any form, or short name)."""
  return list(TASKS[_short_name(name)].labels)


def _split_tasks() -> Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]]:
  shuffled = sorted(TASKS)
  random.Random(f'demo-suite-{WORLD_SEED}-task-split').shuffle(shuffled)
  seen = round(0.75 * len(shuffled))
  classification = [t for t in TASKS if TASKS[t].classification]
  generation = [t for t in TASKS if not TASKS[t].classification]
  return {'random': (tuple(sorted(shuffled[:seen])), tuple(sorted(shuffled[seen:]))),
          'by_format': (tuple(classification), tuple(generation))}


# Split name -> (seen, unseen) registered task names in the T5 form.
SPLITS = {kind: tuple(tuple(task_name(t) for t in part) for part in parts)
          for kind, parts in _split_tasks().items()}


def task_split(kind: str, form: str = task_utils.T5) -> Tuple[List[str], List[str]]:
  """(seen, unseen) registered task names of split `kind` ('random', 'by_format')."""
  if kind not in SPLITS:
    raise ValueError(f'Unknown task split {kind!r}; one of {sorted(SPLITS)}.')
  seen, unseen = SPLITS[kind]
  return ([task_utils.form_name(n, form) for n in seen],
          [task_utils.form_name(n, form) for n in unseen])


@functools.lru_cache(maxsize=None)
def examples(task: str, split: str) -> Dict[str, List]:
  """Column-wise rows of suite task `task` (short name) for `split`, made once."""
  rows = TASKS[task].generate(demo_world.make_world(WORLD_SEED), split, SUITE_SIZES[split])
  return {key: [row[key] for row in rows] for key in rows[0]}


def _source(task: str) -> seqio.FunctionDataSource:
  def dataset_fn(split: str, shuffle_files: bool, seed=None) -> tf.data.Dataset:
    del shuffle_files, seed  # one in-memory "file"; seqio shuffles examples
    return tf.data.Dataset.from_tensor_slices(examples(task, split))
  return seqio.FunctionDataSource(dataset_fn, splits=list(SUITE_SIZES))


def register() -> None:
  """(Re-)registers every suite task in the three forms, and the mixture."""
  for task in TASKS.values():
    task_utils.add_forms(
        task_name(task.name),
        _source(task.name),
        [functools.partial(preprocessors.glue, benchmark_name=task.name,
                           label_names=task.labels, feature_names=task.features)],
        postprocessors.class_id_postprocessor(task.labels), [metrics.accuracy])
  task_utils.add_mixture_forms(PREFIX, {task_name(t): 1.0 for t in TASKS})
  for kind in SPLITS:
    task_markers.add_marked_mixture(f'{PREFIX}_{kind}_seen',
                                    task_split(kind, task_utils.TASKLESS)[0])


def describe() -> None:
  """Prints each task's name, format, labels and a validation example."""
  world = demo_world.make_world(WORLD_SEED)
  for kind, (seen, unseen) in SPLITS.items():
    print(f'split {kind}: {len(seen)} seen, {len(unseen)} unseen: {", ".join(unseen)}')
  for task in TASKS.values():
    style = 'classification' if task.classification else 'generation-style'
    labels_text = ', '.join(task.labels)
    print(f'\n{task_name(task.name)}  [{task.format}, {style}]  labels: {labels_text}')
    [row] = task.generate(world, 'validation', 1)
    fields = ' '.join(f'{key}: {row[key]}' for key in task.features)
    print(f'  {task.name} {fields} -> {task.labels[row["label"]]}')


register()

if __name__ == '__main__':
  describe()
