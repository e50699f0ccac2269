"""Training batches through SeqIO, as T5X makes them.

`seqio.get_dataset` with the encoder-decoder feature converter (no packing:
prompt tuning does not pack) gives batches with the keys
encoder_input_tokens, decoder_input_tokens, decoder_target_tokens and
decoder_loss_weights. Each host reads its own shard and makes
BATCH_SIZE / process_count examples. The order is fixed by the seed, so a
resumed run skips the batches it already consumed and sees exactly the same
data as an uninterrupted one.
"""
import importlib
from typing import Iterator, Mapping, Optional, Tuple

import jax
import numpy as np
import seqio

from prompt_tuning.gin_utils import ConfigurationError

Batch = Mapping[str, np.ndarray]


def import_task_module(module: Optional[str]) -> None:
  """Imports MIXTURE_OR_TASK_MODULE (which registers tasks), if given."""
  if module:
    try:
      importlib.import_module(module)
    except ImportError as e:
      raise ConfigurationError(
          f'MIXTURE_OR_TASK_MODULE={module!r} cannot be imported: {e}') from e


def get_task(name: str) -> seqio.DatasetProviderBase:
  """The registered task or mixture `name`, or an error listing what exists."""
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError as e:
    known = sorted(seqio.TaskRegistry.names()) + sorted(seqio.MixtureRegistry.names())
    shown = ', '.join(known[:20]) + (', ...' if len(known) > 20 else '')
    raise ConfigurationError(
        f'Unknown MIXTURE_OR_TASK_NAME {name!r}. Registered ({len(known)}): '
        f'{shown or "none"}. Set MIXTURE_OR_TASK_MODULE to the module that '
        'registers it.') from e


def check_vocabulary(task: seqio.DatasetProviderBase, vocab_size: int) -> None:
  """Fails if a task's vocabulary has more ids than the model has embeddings."""
  for name, feature in task.output_features.items():
    size = feature.vocabulary.vocab_size
    if size > vocab_size:
      raise ValueError(
          f'The vocabulary of feature {name!r} ({size} ids) does not match the '
          f'model, whose embedding has {vocab_size} rows.')


def train_batches(task_name: str, task_feature_lengths: Mapping[str, int],
                  batch_size: int, *, seed: int, skip_batches: int = 0,
                  shuffle: bool = True, use_cached: bool = False,
                  split: str = 'train', shard: Optional[Tuple[int, int]] = None
                  ) -> Iterator[Batch]:
  """An endless iterator of this host's numpy batches.

  Args:
    batch_size: the global batch size; each host makes its share.
    seed: fixes shuffling (and any random preprocessing).
    skip_batches: batches this host already consumed (resumption).
    shard: (index, count) of the data shard this host reads, from the
      device mesh (`Partitioner.data_shard`); default one shard per process.
  """
  index, hosts = shard if shard is not None else (jax.process_index(), jax.process_count())
  if batch_size % hosts:
    raise ValueError(f'BATCH_SIZE={batch_size} is not divisible by the number of '
                     f'data shards ({hosts}).')
  dataset = seqio.get_dataset(
      task_name, task_feature_lengths=dict(task_feature_lengths),
      feature_converter=seqio.EncDecFeatureConverter(pack=False),
      dataset_split=split, use_cached=use_cached, shuffle=shuffle, num_epochs=None,
      shard_info=seqio.ShardInfo(index=index, num_shards=hosts),
      seed=seed, batch_size=batch_size // hosts)
  if skip_batches:
    dataset = dataset.skip(skip_batches)
  return dataset.as_numpy_iterator()
