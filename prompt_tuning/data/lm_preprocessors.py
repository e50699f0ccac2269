"""Token preprocessors for the self-supervised objectives: prefix LM and span corruption.

Both follow the rules of the T5 library's `prefix_lm` and `span_corruption`.
They run after `seqio.preprocessors.tokenize` on a task whose 'targets' holds
a tokenized document (int32 ids, shape [length]), and they emit
{'inputs': int32 [n], 'targets': int32 [m]} without EOS. The task adds EOS with
`seqio.preprocessors.append_eos_after_trim`.

Prefix LM (the paper's "LM adaptation"):
  each non-empty document -> one random chunk of at most 65,536 tokens ->
  split into consecutive pieces of `sequence_length['inputs'] - 1` tokens (one
  slot is kept for EOS; the last piece may be shorter) -> each piece is cut at a
  uniformly random point: inputs = tokens[:k], targets = tokens[k:], k uniform in
  [1, len - 1]. A piece of one token gives empty inputs. The chunk length comes
  from the inputs length, as in T5, so the targets feature should be at least as
  long (e.g. 512 / 512).

Span corruption (T5 pre-training):
  each non-empty document -> one random chunk of at most 65,536 tokens ->
  chunks of 128 documents concatenated -> split into pieces of `tokens_length`
  tokens (568 for inputs 512 at density 0.15, mean span 3; see
  `random_spans_helper`) -> a noise mask with exactly
  round(n * 0.15) noise tokens in max(1, round(noise / 3)) spans, spans
  alternating non-noise, noise, ..., starting with non-noise and ending with
  noise -> inputs: each noise span replaced by one sentinel; targets: each
  non-noise span replaced by one sentinel. Sentinels count down from
  <extra_id_0> (id 32099), so the k-th noise span is <extra_id_k> in both.
  Example: tokens [a b c d e f g h], mask [0 0 1 1 0 0 0 1] ->
  inputs [a b S0 e f g S1], targets [S0 c d S1 h]. Because the random mask
  ends with noise, targets never end with a sentinel; a mask that ends with
  non-noise (only a hand-made one) gives a final sentinel.

Randomness: every random choice is a stateless op keyed by the per-example
seeds that seqio hands to `map_over_dataset(num_seeds=1)` stages, so
`get_dataset(seed=...)` is reproducible. The seeded stages, their order (chunk,
split, denoise) and how each splits its seed follow the T5 library, so the same
seqio seed should select the same chunks, cut points and masks.
"""
import functools
from typing import Callable, Mapping, Optional, Sequence, Tuple

import seqio
import tensorflow as tf

from prompt_tuning.data import vocab as vocab_lib

MAX_CHUNK_LENGTH = 65536  # T5's cap on the tokens taken from one document.
CONCAT_BATCH_SIZE = 128  # Documents concatenated before splitting (span corruption).

# (length, seeds) -> bool [length]; seeds is a sequence of int [2] seeds.
NoiseMaskFn = Callable[[tf.Tensor, Sequence[tf.Tensor]], tf.Tensor]
# (tokens, noise_mask) -> int32 [n].
TokensFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def random_spans_helper(inputs_length: int,
                        noise_density: float = 0.15,
                        mean_noise_span_length: float = 3.0,
                        extra_tokens_per_span_inputs: int = 1,
                        extra_tokens_per_span_targets: int = 1) -> Tuple[int, int]:
  """Raw tokens per example, and the targets length, for a wanted inputs length.

  Lengths count the EOS that is appended afterwards. The raw length is the
  largest one whose corrupted inputs still fit in `inputs_length`
  (568 -> inputs 512 / targets 114 at density 0.15, mean span length 3).

  Returns:
    (tokens_length, targets_length).
  """

  def corrupted_lengths(tokens_length: int) -> Tuple[int, int]:
    # Python's round (half to even) as in T5; spans count without the floor of 1.
    num_noise = int(round(tokens_length * noise_density))
    num_spans = int(round(num_noise / mean_noise_span_length))
    return (tokens_length - num_noise + num_spans * extra_tokens_per_span_inputs + 1,
            num_noise + num_spans * extra_tokens_per_span_targets + 1)

  tokens_length = inputs_length - 1
  while corrupted_lengths(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  _, targets_length = corrupted_lengths(tokens_length)
  # T5's adjustment: at density 0.5, keep targets no longer than the (round) inputs.
  if noise_density == 0.5 and targets_length > inputs_length:
    tokens_length -= 1
    targets_length -= 1
  return tokens_length, targets_length


# ----------------------------------------------------------------- masks

def _random_segmentation(num_items: tf.Tensor, num_segments: tf.Tensor,
                         seed: tf.Tensor) -> tf.Tensor:
  """Lengths (int32 [num_segments], all >= 1, sum num_items) of a uniform random split."""
  # Choose num_segments - 1 of the num_items - 1 gaps as boundaries: the gaps
  # whose rank in a random permutation is below num_segments - 1.
  ranks = tf.argsort(tf.random.stateless_uniform([num_items - 1], seed=seed))
  is_boundary = tf.cast(ranks < num_segments - 1, tf.int32)
  segment_ids = tf.cumsum(tf.concat([[0], is_boundary], axis=0))
  return tf.math.bincount(segment_ids, minlength=num_segments, maxlength=num_segments)


def random_spans_noise_mask(length: tf.Tensor, seeds: Sequence[tf.Tensor],
                            noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0) -> tf.Tensor:
  """T5's span mask: bool [length], True for noise.

  num_noise = round(length * density) clipped to [1, length - 1];
  num_spans = max(1, round(num_noise / mean_noise_span_length)). Non-noise and
  noise spans alternate, non-noise first, and every split of the counts into
  spans is equally likely. Lengths below 2 are computed as 2 and truncated.
  """
  if noise_density == 0.0:
    return tf.zeros([length], tf.bool)
  original_length = length
  length = tf.maximum(length, 2)
  num_noise = tf.cast(tf.round(tf.cast(length, tf.float32) * noise_density), tf.int32)
  num_noise = tf.minimum(tf.maximum(num_noise, 1), length - 1)
  num_spans = tf.cast(tf.round(tf.cast(num_noise, tf.float32) / mean_noise_span_length),
                      tf.int32)
  num_spans = tf.maximum(num_spans, 1)
  noise_lengths = _random_segmentation(num_noise, num_spans, seeds[0])
  nonnoise_lengths = _random_segmentation(length - num_noise, num_spans, seeds[1])
  span_lengths = tf.reshape(tf.stack([nonnoise_lengths, noise_lengths], axis=1), [-1])
  span_index = tf.repeat(tf.range(2 * num_spans), span_lengths)
  return tf.equal(span_index % 2, 1)[:original_length]


def random_prefix_mask(length: tf.Tensor, seeds: Sequence[tf.Tensor]) -> tf.Tensor:
  """bool [length], True on a prefix of k tokens, k uniform in [1, length - 1].

  For length 1 the prefix is empty.
  """
  longest = length - 1
  prefix_length = tf.random.stateless_uniform(
      [], minval=tf.minimum(longest, 1), maxval=longest + 1, dtype=tf.int32,
      seed=seeds[0])
  return tf.range(length) < prefix_length


# ----------------------------------------------------- inputs / targets

def noise_span_to_unique_sentinel(tokens: tf.Tensor, noise_mask: tf.Tensor,
                                  first_sentinel: int) -> tf.Tensor:
  """Replaces the k-th run of noise tokens by `first_sentinel - k`."""
  previous_is_noise = tf.concat([[False], noise_mask[:-1]], axis=0)
  span_starts = tf.logical_and(noise_mask, tf.logical_not(previous_is_noise))
  sentinels = first_sentinel + 1 - tf.cumsum(tf.cast(span_starts, tokens.dtype))
  tokens = tf.where(span_starts, sentinels, tokens)
  return tf.boolean_mask(tokens, tf.logical_not(tf.logical_and(noise_mask, previous_is_noise)))


def nonnoise_span_to_unique_sentinel(tokens: tf.Tensor, noise_mask: tf.Tensor,
                                     first_sentinel: int) -> tf.Tensor:
  return noise_span_to_unique_sentinel(tokens, tf.logical_not(noise_mask), first_sentinel)


def corrupt_spans(tokens: tf.Tensor, noise_mask: tf.Tensor,
                  first_sentinel: int = 32099) -> Tuple[tf.Tensor, tf.Tensor]:
  """Span corruption of one sequence under a given mask: (inputs, targets)."""
  return (noise_span_to_unique_sentinel(tokens, noise_mask, first_sentinel),
          nonnoise_span_to_unique_sentinel(tokens, noise_mask, first_sentinel))


def _keep_marked(tokens: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
  return tf.boolean_mask(tokens, mask)


def _drop_marked(tokens: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
  return tf.boolean_mask(tokens, tf.logical_not(mask))


# ------------------------------------------------------ dataset stages

def select_random_chunk(dataset: tf.data.Dataset, max_length: int = MAX_CHUNK_LENGTH,
                        feature_key: str = 'targets') -> tf.data.Dataset:
  """Drops empty documents; keeps one random aligned chunk of <= max_length tokens.

  The chunk is one of the ceil(n / max_length) pieces [i * max_length, ...),
  chosen uniformly. Only `feature_key` is kept.
  """

  @seqio.map_over_dataset(num_seeds=1)
  def chunk(features, seed):
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed))
    tokens = features[feature_key]
    num_chunks = (tf.size(tokens) + max_length - 1) // max_length
    start = max_length * tf.random.stateless_uniform(
        [], maxval=num_chunks, dtype=tf.int32, seed=seeds[1])
    return {feature_key: tokens[start:start + max_length]}

  return chunk(dataset.filter(lambda x: tf.size(x[feature_key]) > 0))


def reduce_concat_tokens(dataset: tf.data.Dataset, batch_size: int = CONCAT_BATCH_SIZE,
                         feature_key: str = 'targets') -> tf.data.Dataset:
  """Concatenates the tokens of each `batch_size` consecutive documents."""
  dataset = dataset.map(lambda x: {feature_key: x[feature_key]})
  dataset = dataset.ragged_batch(batch_size)
  return dataset.map(lambda x: {feature_key: x[feature_key].flat_values})


def split_tokens(dataset: tf.data.Dataset, max_tokens_per_segment: int,
                 feature_key: str = 'targets') -> tf.data.Dataset:
  """Splits each sequence into consecutive pieces of `max_tokens_per_segment` tokens."""
  length = max_tokens_per_segment

  # The seed is unused; taking one keeps the seeds of later stages as in T5.
  @seqio.map_over_dataset(num_seeds=1)
  def split(features, seed):
    del seed
    tokens = features[feature_key]
    num_pieces = (tf.size(tokens) + length - 1) // length
    padded = tf.pad(tokens, [[0, num_pieces * length - tf.size(tokens)]])
    return {'pieces': tf.reshape(padded, [num_pieces, length]),
            'lengths': tf.minimum(length, tf.size(tokens) - length * tf.range(num_pieces))}

  dataset = split(dataset.filter(lambda x: tf.size(x[feature_key]) > 0)).unbatch()
  return dataset.map(lambda x: {feature_key: x['pieces'][:x['lengths']]})


def denoise(dataset: tf.data.Dataset, noise_mask_fn: NoiseMaskFn, inputs_fn: TokensFn,
            targets_fn: TokensFn) -> tf.data.Dataset:
  """Draws a mask over 'targets' and derives the new inputs and targets from it."""

  @seqio.map_over_dataset(num_seeds=1)
  def corrupt(features, seed):
    # Six seeds as in T5: the mask uses the first two.
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 6))
    tokens = features['targets']
    mask = noise_mask_fn(tf.size(tokens), seeds[:2])
    return {'inputs': inputs_fn(tokens, mask), 'targets': targets_fn(tokens, mask)}

  return corrupt(dataset)


def _add_eos_slots(output_features: Mapping[str, seqio.Feature], key: str) -> int:
  feature = output_features.get(key)
  return 1 if feature is not None and feature.add_eos else 0


def _required_length(sequence_length: Optional[Mapping[str, int]], key: str,
                     objective: str) -> int:
  if not sequence_length or sequence_length.get(key) is None:
    raise ValueError(f'{objective} needs sequence_length[{key!r}] (the task feature '
                     f'lengths), got {sequence_length!r}.')
  return int(sequence_length[key])


def _first_sentinel(output_features: Mapping[str, seqio.Feature]) -> int:
  vocabulary = output_features['targets'].vocabulary
  if 'inputs' in output_features and output_features['inputs'].vocabulary != vocabulary:
    raise ValueError('The objectives build inputs from the tokenized targets; the inputs '
                     'and targets features must share one vocabulary.')
  return vocab_lib.sentinel_id(0, vocabulary)


def prefix_lm(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
              output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
  """The LM-adaptation objective (T5's `prefix_lm`); see the module docstring."""
  chunk_length = (_required_length(sequence_length, 'inputs', 'prefix_lm')
                  - _add_eos_slots(output_features, 'inputs'))
  _first_sentinel(output_features)  # Only for the shared-vocabulary check.
  dataset = select_random_chunk(dataset)
  dataset = split_tokens(dataset, chunk_length)
  return denoise(dataset, random_prefix_mask, inputs_fn=_keep_marked,
                 targets_fn=_drop_marked)


def span_corruption(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                    output_features: Mapping[str, seqio.Feature],
                    noise_density: float = 0.15, mean_noise_span_length: float = 3.0,
                    merge_examples_to_reduce_padding: bool = True) -> tf.data.Dataset:
  """T5's pre-training objective; see the module docstring."""
  inputs_length = _required_length(sequence_length, 'inputs', 'span_corruption')
  tokens_length, targets_length = random_spans_helper(
      inputs_length, noise_density, mean_noise_span_length)
  if _required_length(sequence_length, 'targets', 'span_corruption') < targets_length:
    raise ValueError(
        f'Span corruption with inputs length {inputs_length} makes targets of '
        f'{targets_length} tokens; sequence_length["targets"] is '
        f'{sequence_length["targets"]}.')
  first_sentinel = _first_sentinel(output_features)
  max_spans = max(1, round(round(tokens_length * noise_density) / mean_noise_span_length))
  extra_ids = getattr(output_features['targets'].vocabulary, 'extra_ids', None)
  if extra_ids is not None and max_spans > extra_ids:
    # Beyond the sentinels, T5 would silently reuse ordinary vocabulary ids.
    raise ValueError(f'Up to {max_spans} noise spans per example but the vocabulary '
                     f'has only {extra_ids} sentinels; lower the inputs length.')
  dataset = select_random_chunk(dataset)
  if merge_examples_to_reduce_padding:
    dataset = reduce_concat_tokens(dataset)
  dataset = split_tokens(dataset, tokens_length)
  noise_mask_fn = functools.partial(
      random_spans_noise_mask, noise_density=noise_density,
      mean_noise_span_length=mean_noise_span_length)
  return denoise(
      dataset, noise_mask_fn,
      inputs_fn=functools.partial(noise_span_to_unique_sentinel,
                                  first_sentinel=first_sentinel),
      targets_fn=functools.partial(nonnoise_span_to_unique_sentinel,
                                   first_sentinel=first_sentinel))


@seqio.map_over_dataset
def text_line_to_example(line: tf.Tensor) -> Mapping[str, tf.Tensor]:
  """A line of a text file (tf.string scalar) -> {'text': line}: one document."""
  return {'text': line}
