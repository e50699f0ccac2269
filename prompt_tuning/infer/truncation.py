"""Examples longer than TASK_FEATURE_LENGTHS: counted, reported, or refused.

SeqIO cuts every feature to its length without a word, so a model can be
evaluated on inputs it never saw in full while the output echoes the whole
text. Inference reads the examples untrimmed, records each one's original
length, and trims them itself (the same slice SeqIO applies); evaluation
counts the over-length examples of each task once. REFUSE_TRUNCATION=True
turns the report into an error.
"""
from typing import Any, Dict, Mapping, Optional

import numpy as np
import seqio
import tensorflow as tf
from absl import logging

from prompt_tuning.gin_utils import ConfigurationError

# The features whose length TASK_FEATURE_LENGTHS bounds.
FEATURES = ('inputs', 'targets')


def trim(dataset: tf.data.Dataset, lengths: Mapping[str, int]) -> tf.data.Dataset:
  """`dataset` with each feature cut to its length, as seqio's trim_output_features."""
  def fn(example):
    return {k: (v[:lengths[k]] if k in lengths and k in FEATURES else v)
            for k, v in example.items()}
  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def over_length(example: Mapping[str, Any], lengths: Mapping[str, int]) -> Dict[str, int]:
  """{feature: original length} of the features of `example` longer than allowed."""
  return {k: int(np.size(example[k])) for k in FEATURES
          if k in example and k in lengths and np.size(example[k]) > lengths[k]}


def refuse(where: str, cut: Mapping[str, int], lengths: Mapping[str, int]) -> None:
  """Raises the error REFUSE_TRUNCATION=True asks for."""
  listing = ', '.join(f'{k} has {n} tokens (TASK_FEATURE_LENGTHS[{k!r}] = {lengths[k]})'
                      for k, n in cut.items())
  raise ConfigurationError(f'{where}: {listing}, and REFUSE_TRUNCATION is True; raise '
                           'TASK_FEATURE_LENGTHS or set REFUSE_TRUNCATION=False to cut it.')


def count_over_length(task: seqio.Task, lengths: Mapping[str, int], split: str, *,
                      use_cached: bool = False, num_examples: Optional[int] = None,
                      refuse_truncation: bool = False) -> int:
  """How many examples of `task`'s split exceed `lengths` (logged; an error if refused)."""
  dataset = task.get_dataset(dict(lengths), split=split, shuffle=False, num_epochs=1,
                             use_cached=use_cached, trim_output_features=False)
  if num_examples is not None:
    dataset = dataset.take(num_examples)
  keep = [k for k in FEATURES if k in dataset.element_spec and k in lengths]
  dataset = dataset.map(lambda ex: {k: tf.size(ex[k]) for k in keep})
  count, total = 0, 0
  for index, sizes in enumerate(dataset.as_numpy_iterator()):
    cut = {k: int(n) for k, n in sizes.items() if n > lengths[k]}
    total += 1
    if cut:
      if refuse_truncation:
        refuse(f'{task.name}/{split} example {index}', cut, lengths)
      count += 1
  if count:
    logging.warning('%s/%s: %d of %d examples are longer than TASK_FEATURE_LENGTHS %s and '
                    'are cut (REFUSE_TRUNCATION=True refuses them).', task.name, split,
                    count, total, dict(lengths))
  return count


__all__ = ['count_over_length', 'over_length', 'refuse', 'trim']
