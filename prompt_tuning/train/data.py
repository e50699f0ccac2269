"""Training batches through SeqIO, as T5X makes them.

`seqio.get_dataset` with the model's feature converter (`model.contract`:
encoder-decoder or decoder-only; no packing by default, prompt tuning does
not pack) gives batches with its keys, e.g. encoder_input_tokens,
decoder_input_tokens, decoder_target_tokens and decoder_loss_weights. Each
host reads its own shard and makes BATCH_SIZE / process_count examples. The
order is fixed by the seed, so a resumed run skips the batches it already
consumed and sees exactly the same data as an uninterrupted one.
"""
from typing import Iterator, Mapping, Optional, Tuple

import jax
import numpy as np
import seqio

Batch = Mapping[str, np.ndarray]


def train_batches(task_name: str, task_feature_lengths: Mapping[str, int],
                  batch_size: int, *, seed: int, skip_batches: int = 0,
                  shuffle: bool = True, use_cached: bool = False,
                  split: str = 'train', shard: Optional[Tuple[int, int]] = None,
                  feature_converter: Optional[seqio.FeatureConverter] = None
                  ) -> Iterator[Batch]:
  """An endless iterator of this host's numpy batches.

  Args:
    batch_size: the global batch size; each host makes its share.
    seed: fixes shuffling (and any random preprocessing).
    skip_batches: batches this host already consumed (resumption).
    shard: (index, count) of the data shard this host reads, from the
      device mesh (`Partitioner.data_shard`); default one shard per process.
    feature_converter: the model's (`contract.of(model).feature_converter()`);
      default the encoder-decoder one, unpacked.
  """
  index, hosts = shard if shard is not None else (jax.process_index(), jax.process_count())
  if batch_size % hosts:
    raise ValueError(f'BATCH_SIZE={batch_size} is not divisible by the number of '
                     f'data shards ({hosts}).')
  dataset = seqio.get_dataset(
      task_name, task_feature_lengths=dict(task_feature_lengths),
      feature_converter=feature_converter or seqio.EncDecFeatureConverter(pack=False),
      dataset_split=split, use_cached=use_cached, shuffle=shuffle, num_epochs=None,
      shard_info=seqio.ShardInfo(index=index, num_shards=hosts),
      seed=seed, batch_size=batch_size // hosts)
  if skip_batches:
    dataset = dataset.skip(skip_batches)
  return dataset.as_numpy_iterator()
