"""Training batches through SeqIO, as T5X makes them.

`seqio.get_dataset` with the encoder-decoder feature converter (no packing:
prompt tuning does not pack) gives batches with the keys
encoder_input_tokens, decoder_input_tokens, decoder_target_tokens and
decoder_loss_weights. Each host reads its own shard and makes
BATCH_SIZE / process_count examples. The order is fixed by the seed, so a
resumed run skips the batches it already consumed and sees exactly the same
data as an uninterrupted one.
"""
from typing import Iterator, Mapping, Optional, Tuple

import jax
import numpy as np
import seqio

Batch = Mapping[str, np.ndarray]
# Prompt tuning does not pack (T5X's `pack=False` for these runs).
FEATURE_CONVERTER = seqio.EncDecFeatureConverter(pack=False)


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
      feature_converter=FEATURE_CONVERTER,
      dataset_split=split, use_cached=use_cached, shuffle=shuffle, num_epochs=None,
      shard_info=seqio.ShardInfo(index=index, num_shards=hosts),
      seed=seed, batch_size=batch_size // hosts)
  if skip_batches:
    dataset = dataset.skip(skip_batches)
  return dataset.as_numpy_iterator()
