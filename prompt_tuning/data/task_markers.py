"""Task markers: the task index carried by each example, for multi-task prompts.

    names = add_marked_mixture('boolq_relations', ['taskless_demo_world_boolq_city',
                                                   'taskless_demo_world_boolq_job'])
    # -> registers taskless_demo_world_boolq_city_task0, ..._job_task1 and the mixture

Each example's inputs start with its task's marker, T5's sentinel
<extra_id_i> for task i (id `marker_base - i`, 32099 - i in the T5
vocabulary), as google-research/prompt-tuning's multi-task prompts expect;
`deltas.MultiTaskPrompt` reads it back. The marker is added after
tokenization, before `append_eos_after_trim`, so inputs keep their EOS when
the feature converter trims them. A marked task is its task with that one
step added; evaluating it gives the task's own metrics.
"""
from typing import Dict, Optional, Sequence

import seqio
import tensorflow as tf

from prompt_tuning.data import task_utils

T5_FIRST_SENTINEL = 32099  # <extra_id_0>; <extra_id_i> is 32099 - i


def add_task_marker(dataset: tf.data.Dataset, marker: int) -> tf.data.Dataset:
  """Prepends token `marker` to every example's tokenized 'inputs'."""
  def mark(example):
    inputs = example['inputs']
    return {**example, 'inputs': tf.concat([tf.constant([marker], inputs.dtype), inputs], 0)}
  return dataset.map(mark, num_parallel_calls=tf.data.AUTOTUNE)


def marker(index: int, marker_base: int = T5_FIRST_SENTINEL) -> int:
  """The marker token of task `index`."""
  if index < 0 or index > marker_base:
    raise ValueError(f'No marker for task index {index} (markers count down from '
                     f'{marker_base}).')
  return marker_base - index


def marked_task_name(task: str, index: int) -> str:
  return f'{task}_task{index}'


def add_marked_task(task: str, index: int, marker_base: int = T5_FIRST_SENTINEL) -> str:
  """Registers `task` with task `index`'s marker on its inputs; returns the new name."""
  original = seqio.get_mixture_or_task(task)
  if not isinstance(original, seqio.Task):
    raise ValueError(f'{task} is a mixture; mark each of its tasks (add_marked_mixture).')
  steps = list(original.preprocessors)
  position = next((i for i, step in enumerate(steps)
                   if step is seqio.preprocessors.append_eos_after_trim), len(steps))
  step = lambda dataset: add_task_marker(dataset, marker(index, marker_base))
  steps.insert(position, step)
  name = marked_task_name(task, index)
  task_utils.add_task(name, original.source, steps, original.postprocessor,
                      original.metric_fns)
  return name


def add_marked_mixture(name: str, tasks: Sequence[str],
                       rates: Optional[Sequence[float]] = None,
                       marker_base: int = T5_FIRST_SENTINEL) -> Dict[str, str]:
  """Registers each of `tasks` marked with its position, and their mixture `name`.

  Args:
    name: the mixture's name.
    tasks: task names; the i-th is task i of a `MultiTaskPrompt(num_tasks=len(tasks))`.
    rates: mixing rates (default: equal).
    marker_base: the marker of task 0.

  Returns:
    {task: its marked task's name}.
  """
  if not tasks:
    raise ValueError(f'The marked mixture {name} needs at least one task.')
  rates = [1.0] * len(tasks) if rates is None else list(rates)
  if len(rates) != len(tasks):
    raise ValueError(f'{len(rates)} rates for {len(tasks)} tasks in mixture {name}.')
  marked = {task: add_marked_task(task, i, marker_base) for i, task in enumerate(tasks)}
  task_utils.add_mixture(name, list(zip(marked.values(), rates)))
  return marked


__all__ = ['T5_FIRST_SENTINEL', 'add_marked_mixture', 'add_marked_task', 'add_task_marker',
           'marked_task_name', 'marker']
