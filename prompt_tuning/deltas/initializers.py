"""Prompt initializers: where the P prompt vectors start from.

Every initializer is a callable

    init(rng, shape, embedding) -> prompt

with `shape` = (length, embed), `embedding` the frozen token-embedding table
[vocab, embed] of the backbone and `prompt` float32 [length, embed]. Calls are
traceable (jit-able) in `rng` and `embedding`; python-side work (reading a
file, tokenizing label strings) happens once, when the initializer is built.

The paper's three initializations (Lester et al., 2021):

  * `random_uniform()`: uniform in [-0.5, 0.5].
  * `sampled_vocab()`: rows of the embedding table of tokens drawn from the
    5,000 most frequent pieces (the first 5,000 ids of the T5 vocabulary).
  * `class_labels(labels, vocabulary)`: one position per class, the mean of
    the label's sub-token embeddings; the other positions sampled vocabulary.

Beyond the paper: `text` (the embedding of a string, tiled or cut to the
length), `from_file` (a released or SPoT-style transferred prompt, .npy) and
`original_code_uniform` (what the released code actually drew).

Initializers are small frozen dataclasses so that they compare equal, hash
(they are defaults of Flax module fields) and print readably in logs.
"""
import dataclasses
import math
import os
import warnings
from typing import Callable, Optional, Protocol, Sequence, Tuple

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Shape = Tuple[int, int]
Initializer = Callable[[Array, Shape, Array], Array]


class Vocabulary(Protocol):
  """What the string-based initializers need of a vocabulary (seqio's have it)."""

  def encode(self, s: str) -> Sequence[int]:
    ...


def default_vocabulary_path() -> str:
  """The T5 SentencePiece model shipped in `prompt_tuning/assets`.

  Gin cannot name a file relative to a package, so gin files call this.
  """
  package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return os.path.join(package, 'assets', 't5_sentencepiece.model')


def _require(value, argument: str, macro: str, example: str) -> None:
  """Fails naming the gin macro when a gin file left it `%gin.REQUIRED`.

  `gin_utils.parse_gin` and `gin.finalize()` catch such macros; a config
  parsed some other way would hand us gin's sentinel as the value.
  """
  if value is gin.REQUIRED:
    raise ValueError(f'The prompt initializer needs `{argument}`: set the gin macro '
                     f'{macro}, e.g. --gin.{macro}={example}')


def _check_shape(shape: Shape) -> Tuple[int, int]:
  if len(shape) != 2:
    raise ValueError(f'A prompt has shape [length, embed]; got shape {tuple(shape)}.')
  return int(shape[0]), int(shape[1])


def _check_embedding(shape: Shape, embedding: Array) -> None:
  if embedding.ndim != 2 or embedding.shape[1] != shape[1]:
    raise ValueError(f'The embedding table {tuple(embedding.shape)} does not match '
                     f'the prompt shape {tuple(shape)}: expected [vocab, {shape[1]}].')


def _encode(vocabulary: Vocabulary, text: str) -> Tuple[int, ...]:
  # seqio returns lists, other vocabularies numpy arrays: normalize to ints.
  return tuple(int(i) for i in vocabulary.encode(text))


# -- random ------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RandomUniform:
  """Uniform in [-scale, scale], float32."""
  scale: float = 0.5

  def __call__(self, rng: Array, shape: Shape, embedding: Optional[Array] = None) -> Array:
    """-> [length, embed]; `embedding` is unused."""
    del embedding
    return jax.random.uniform(rng, _check_shape(shape), jnp.float32,
                              -self.scale, self.scale)


@dataclasses.dataclass(frozen=True)
class OriginalCodeUniform:
  """flax's `nn.initializers.uniform(scale)`: uniform in [0, scale), float32."""
  scale: float = 0.5

  def __call__(self, rng: Array, shape: Shape, embedding: Optional[Array] = None) -> Array:
    """-> [length, embed]; `embedding` is unused."""
    del embedding
    # Call flax itself so the draws are bit-identical to the original code's.
    return nn.initializers.uniform(self.scale)(rng, _check_shape(shape), jnp.float32)


def random_uniform(scale: float = 0.5) -> RandomUniform:
  """Uniform in [-scale, scale]: the paper's "random uniform [-0.5, 0.5]"."""
  return RandomUniform(scale)


def original_code_uniform(scale: float = 0.5) -> OriginalCodeUniform:
  """Uniform in [0, scale): what the released google-research code drew.

  The paper states [-0.5, 0.5], but the released code used flax's
  `nn.initializers.uniform(0.5)`, whose range is [0, 0.5). Use this to
  reproduce runs of that code; `random_uniform` follows the paper.
  """
  return OriginalCodeUniform(scale)


# -- sampled vocabulary --------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SampledVocab:
  """Embedding rows of tokens drawn from the first `population_size` ids."""
  population_size: int = 5000

  def __call__(self, rng: Array, shape: Shape, embedding: Array) -> Array:
    """[vocab, embed] table -> [length, embed] rows, distinct when possible."""
    length, _ = _check_shape(shape)
    _check_embedding(shape, embedding)
    if self.population_size < 1:
      raise ValueError(f'population_size must be positive, got {self.population_size}.')
    # A table smaller than the population (tiny test models) is used whole.
    population = min(self.population_size, embedding.shape[0])
    replace = length > population
    if replace:
      warnings.warn(f'Sampling {length} prompt vectors from a vocabulary population '
                    f'of {population}: some tokens are drawn more than once.')
    ids = jax.random.choice(rng, population, (length,), replace=replace)
    return jnp.take(embedding, ids, axis=0).astype(jnp.float32)


def sampled_vocab(population_size: int = 5000) -> SampledVocab:
  """Rows of the frozen embedding table for tokens sampled from ids [0, N).

  The T5 SentencePiece ids are ordered by frequency, so the first 5,000 ids
  are the paper's "5,000 most common tokens". Sampling is without
  replacement, or with replacement (and a warning) when the prompt is longer
  than the population.
  """
  return SampledVocab(population_size)


# -- class labels ----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ClassLabels:
  """Position i is the mean embedding of label i's tokens; the rest `fallback`."""
  labels: Tuple[str, ...]
  token_ids: Tuple[Tuple[int, ...], ...]
  fallback: Initializer

  def __call__(self, rng: Array, shape: Shape, embedding: Array) -> Array:
    """[vocab, embed] table -> [length, embed]."""
    length, _ = _check_shape(shape)
    _check_embedding(shape, embedding)
    if len(self.labels) > length:
      raise ValueError(f'{len(self.labels)} class labels do not fit a prompt of '
                       f'length {length}: {list(self.labels)}')
    top = max(max(ids) for ids in self.token_ids) if self.token_ids else -1
    if top >= embedding.shape[0]:
      raise ValueError(f'Label token id {top} is outside the embedding table '
                       f'({embedding.shape[0]} rows): wrong vocabulary?')
    # The whole prompt comes from the fallback, so its draws do not depend on
    # how many labels there are; the label rows then overwrite the front.
    prompt = self.fallback(rng, shape, embedding).astype(jnp.float32)
    if not self.labels:
      return prompt
    rows = jnp.stack([jnp.mean(jnp.take(embedding, np.array(ids), axis=0)
                               .astype(jnp.float32), axis=0)
                      for ids in self.token_ids])
    return prompt.at[:len(self.labels)].set(rows)


def class_labels(labels: Sequence[str], vocabulary: Vocabulary,
                 fallback: Initializer = SampledVocab()) -> ClassLabels:
  """The paper's class-label initialization.

  Each label is tokenized with the model's vocabulary and its sub-token
  embeddings averaged; label i fills prompt position i (in the given order,
  from position 0) and the remaining positions come from `fallback`
  (sampled vocabulary by default, as in the paper).

  Args:
    labels: the class strings as they appear in the targets, e.g.
      ['entailment', 'not_entailment'].
    vocabulary: the model's vocabulary (a `seqio.Vocabulary`, or anything
      with `encode(str) -> list[int]`).
    fallback: the initializer for the positions after the labels.

  Raises:
    TypeError: `labels` is a single string.
    ValueError: a label tokenizes to nothing (at construction), or there are
      more labels than prompt positions (when called).
  """
  _require(labels, 'labels', 'CLASS_LABELS', '"[\'positive\', \'negative\']"')
  if isinstance(labels, str):
    raise TypeError(f'class_labels takes a list of label strings, got the string '
                    f'{labels!r}.')
  labels = tuple(labels)
  token_ids = tuple(_encode(vocabulary, label) for label in labels)
  for label, ids in zip(labels, token_ids):
    if not ids:
      raise ValueError(f'The class label {label!r} tokenizes to no tokens.')
  return ClassLabels(labels, token_ids, fallback)


# -- text ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Text:
  """The embeddings of a fixed token sequence, tiled or cut to the length."""
  text: str
  token_ids: Tuple[int, ...]

  def __call__(self, rng: Array, shape: Shape, embedding: Array) -> Array:
    """[vocab, embed] table -> [length, embed]; `rng` is unused."""
    del rng
    length, _ = _check_shape(shape)
    _check_embedding(shape, embedding)
    if max(self.token_ids) >= embedding.shape[0]:
      raise ValueError(f'Token id {max(self.token_ids)} of {self.text!r} is outside '
                       f'the embedding table ({embedding.shape[0]} rows).')
    repeats = math.ceil(length / len(self.token_ids))
    ids = np.tile(np.array(self.token_ids), repeats)[:length]
    return jnp.take(embedding, ids, axis=0).astype(jnp.float32)


def text(text: str, vocabulary: Vocabulary) -> Text:  # pylint: disable=redefined-outer-name
  """A prompt that starts as the embedded `text`.

  Position i holds the embedding of token i mod n of the n tokens of `text`:
  a short text is repeated until the prompt is full, a long one cut.

  Raises:
    ValueError: `text` tokenizes to nothing.
  """
  _require(text, 'text', 'PROMPT_TEXT', '"\'Is the review positive?\'"')
  token_ids = _encode(vocabulary, text)
  if not token_ids:
    raise ValueError(f'The prompt text {text!r} tokenizes to no tokens.')
  return Text(text, token_ids)


# -- from a file ---------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class FromArray:
  """A fixed [length, embed] array (a trained prompt, e.g. for SPoT transfer)."""
  array: np.ndarray
  source: str = '<array>'

  def __call__(self, rng: Array, shape: Shape, embedding: Optional[Array] = None) -> Array:
    """-> the array as float32 [length, embed]; `rng` and `embedding` are unused."""
    del rng, embedding
    shape = _check_shape(shape)
    if tuple(self.array.shape) != shape:
      raise ValueError(f'The prompt in {self.source} has shape {tuple(self.array.shape)} '
                       f'but the model\'s prompt has shape {shape} [length, embed].')
    return jnp.asarray(self.array, jnp.float32)


def from_file(path: str) -> FromArray:
  """A prompt read from a .npy file holding [length, embed].

  This is the format of the released prompts and of `tools/` exports. The
  file is read here, once; its shape is checked against the model's prompt
  when the initializer is called.

  Raises:
    FileNotFoundError: no file at `path`.
    ValueError: the file is not a readable .npy array of rank 2.
  """
  _require(path, 'path', 'PROMPT_FILE', "/path/to/prompt.npy")
  from etils import epath  # pylint: disable=g-import-not-at-top  (gs:// and local)
  file = epath.Path(path)
  if not file.exists():
    raise FileNotFoundError(f'No prompt file at {path}.')
  from prompt_tuning.model import checkpoints  # pylint: disable=g-import-not-at-top
  from prompt_tuning.model.finite import check_finite  # pylint: disable=g-import-not-at-top
  data = file.read_bytes()
  try:
    # No pickles: a prompt is plain numbers and a file may come from anywhere.
    array = checkpoints.parse_npy(data, str(path))
  except ValueError as e:  # not a .npy file at all (a ConfigurationError): say so
    raise type(e)(f'Could not read a prompt from {path}: {e}') from e
  except Exception as e:  # numpy raises several types for a damaged file
    raise ValueError(f'Could not read a prompt from {path} as a .npy array: {e}') from e
  if not isinstance(array, np.ndarray) or array.ndim != 2:
    shape = getattr(array, 'shape', None)
    raise ValueError(f'The prompt file {path} holds shape {shape}; a prompt file '
                     'holds one array [length, embed].')
  if not np.issubdtype(array.dtype, np.floating):
    raise ValueError(f'The prompt file {path} holds {array.dtype}, not floats.')
  check_finite(array, str(path))  # a NaN prompt would only show as a NaN loss later
  return FromArray(array, source=str(path))


__all__ = [
    'ClassLabels', 'FromArray', 'Initializer', 'OriginalCodeUniform', 'RandomUniform',
    'SampledVocab', 'Text', 'Vocabulary', 'class_labels', 'default_vocabulary_path',
    'from_file', 'original_code_uniform', 'random_uniform', 'sampled_vocab', 'text',
]
