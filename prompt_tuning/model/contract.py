"""The model contract: what the step, evaluation, decoding and rank classification
need from a backbone, once per architecture (as T5X's `BaseModel` subclasses).

    arch = contract.of(model)              # EncoderDecoder() or DecoderOnly()
    converter = arch.feature_converter()   # seqio, unpacked by default
    logits = arch.logits(model, variables, batch)             # loss inputs
    scores = arch.score(model, variables, *[batch[k] for k in arch.score_features])
    step, cache, start = arch.prefill(model, variables, *predict_arrays, max_decode_length=T)

| | EncoderDecoder (`t5.Transformer`) | DecoderOnly (`decoder_only.DecoderOnlyLM`, `gpt2.GPT2LM`) |
|---|---|---|
| features | `EncDecFeatureConverter` | `DecoderFeatureConverter` (inputs + targets: prefix LM features) |
| predict_features | encoder_input_tokens [b, L] | decoder_input_tokens, decoder_causal_attention [b, L + T] |
| score_features | + decoder_target_tokens [b, T] | + decoder_target_tokens, decoder_loss_weights |
| rank context | the encoding, once per example | the prefilled cache, once per example; labels fed through copies |
| prefill | encode once | one pass over BOS + (prompt) + inputs fills the cache |

Decoding starts from `start` [b] (enc-dec: id 0; decoder-only: each
example's last input token, whose output is the first target, as T5X) and
each step feeds one token: `step(tokens [n, 1], cache) -> (logits [n, V], cache)`.
Predictions are the T target positions only.

`feature_converter_for(model, task)` is the converter a run uses: the
architecture's, except that a task on a vocabulary whose id 0 is a token
(GPT-2's) gets `gpt2_features.GPT2DecoderFeatureConverter` (loss weights
from lengths, GPT-2's BOS) and is refused, in one line, by a model that is
not `GPT2LM` or has fewer ids than the vocabulary.

`build(config)` picks the backbone from the config's type: `T5Config` ->
`Transformer`, `DecoderOnlyConfig` -> `DecoderOnlyLM`, `GPT2Config` ->
`GPT2LM`; both decoder-only backbones are `DecoderOnlyBackbone`s, which is
what `DecoderOnly` relies on.
"""
import dataclasses
from typing import Any, Callable, Dict, Mapping, Sequence, Tuple

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import seqio

from prompt_tuning.model import gpt2_features
from prompt_tuning.model.config import DecoderOnlyConfig
from prompt_tuning.model.decoder_only import DecoderOnlyBackbone, DecoderOnlyLM
from prompt_tuning.model.gpt2 import GPT2Config, GPT2LM
from prompt_tuning.model.losses import sequence_scores
from prompt_tuning.model.t5 import Transformer

Array = jax.Array
Variables = Dict[str, Any]
Batch = Mapping[str, Array]
StepFn = Callable[[Array, Any], Tuple[Array, Any]]


def _repeat(x: Any, times: int) -> Any:
  """Every leaf with a batch axis [b, ...] -> [b * times, ...] (rows repeated in place)."""
  if times == 1:
    return x
  return jax.tree_util.tree_map(lambda a: jnp.repeat(a, times, axis=0) if a.ndim else a, x)


def _empty_cache(model: nn.Module, *init_args: Array, **init_kwargs) -> Any:
  """The 'cache' collection the model creates for these shapes, zeros."""
  cache = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *init_args, decode=True,
                                            **init_kwargs))['cache']
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), cache)


def _label_matrix(label_tokens: Sequence[Sequence[int]]) -> np.ndarray:
  """Label ids (EOS included) -> [labels, longest] zero-padded."""
  targets = np.zeros((len(label_tokens), max(len(t) for t in label_tokens)), np.int32)
  for i, ids in enumerate(label_tokens):
    targets[i, :len(ids)] = ids
  return targets


@dataclasses.dataclass(frozen=True)
class EncoderDecoder:
  """T5.1.1 (`t5.Transformer`): T5X's `EncoderDecoderModel`."""
  name = 'encoder_decoder'
  predict_features = ('encoder_input_tokens',)
  score_features = ('encoder_input_tokens', 'decoder_target_tokens')

  def feature_converter(self, pack: bool = False) -> seqio.FeatureConverter:
    return seqio.EncDecFeatureConverter(pack=pack)

  def logits(self, model: nn.Module, variables: Variables, batch: Batch, **apply_kwargs):
    """Teacher-forced logits [b, T, V] (with `mutable`: (logits, mutated))."""
    return model.apply(variables, batch['encoder_input_tokens'], batch['decoder_input_tokens'],
                       batch['decoder_target_tokens'], **apply_kwargs)

  def init_args(self, feature_lengths: Mapping[str, int]) -> Tuple[Array, ...]:
    """Arguments of `model.init` for one example of the task's lengths."""
    ones = lambda key: jnp.ones((1, feature_lengths[key]), jnp.int32)
    return ones('inputs'), ones('targets'), ones('targets')

  def input_tokens(self, batch: Mapping[str, np.ndarray]) -> int:
    """Non-padding tokens the model reads in `batch` (throughput)."""
    return int(np.sum(batch['encoder_input_tokens'] > 0) +
               np.sum(batch['decoder_target_tokens'] > 0))

  def score(self, model: nn.Module, variables: Variables, encoder_input_tokens: Array,
            decoder_target_tokens: Array) -> Array:
    """Sum of target log-likelihoods per example [b] (T5X's `score_batch`)."""
    decoder_input_tokens = jnp.concatenate(
        [jnp.zeros_like(decoder_target_tokens[:, :1]), decoder_target_tokens[:, :-1]], 1)
    logits = model.apply(variables, encoder_input_tokens, decoder_input_tokens,
                         decoder_target_tokens)
    return sequence_scores(logits, decoder_target_tokens)

  def rank_context(self, model: nn.Module, variables: Variables, encoder_input_tokens: Array,
                   label_length: int = 0) -> Tuple[Array, Array]:
    """The encoding [b, L', d], computed once for every label, with its tokens."""
    del label_length  # the decoder has its own positions
    return model.apply(variables, encoder_input_tokens, method=Transformer.encode), \
        encoder_input_tokens

  def label_scores(self, model: nn.Module, variables: Variables, context: Tuple[Array, Array],
                   label_tokens: Sequence[Sequence[int]]) -> Array:
    """Scores [b, labels] of every label against the shared encoding.

    `variables`' per-example leaves are already repeated once per label
    (rows [b * labels], example-major).
    """
    encoded, tokens = context
    labels, batch = len(label_tokens), tokens.shape[0]
    targets = jnp.tile(jnp.asarray(_label_matrix(label_tokens)), (batch, 1))
    decoder_inputs = jnp.concatenate([jnp.zeros_like(targets[:, :1]), targets[:, :-1]], 1)
    logits = model.apply(variables, jnp.repeat(encoded, labels, axis=0),
                         jnp.repeat(tokens, labels, axis=0), decoder_inputs, targets,
                         method=Transformer.decode)
    return sequence_scores(logits, targets).reshape(batch, labels)

  def prefill(self, model: nn.Module, variables: Variables, encoder_input_tokens: Array, *,
              max_decode_length: int, copies: int = 1) -> Tuple[StepFn, Any, Array]:
    """Encodes once; (step, empty cache, start ids 0) for b * copies rows."""
    batch = encoder_input_tokens.shape[0] * copies
    encoded = model.apply(variables, encoder_input_tokens, method=Transformer.encode)
    encoded, tokens = _repeat(encoded, copies), _repeat(encoder_input_tokens, copies)
    placeholder = jnp.zeros((batch, max_decode_length), jnp.int32)
    cache = _empty_cache(model, tokens, placeholder, placeholder,
                         max_decode_length=max_decode_length)
    frozen = {k: v for k, v in variables.items() if k != 'cache'}

    def step(step_tokens, cache):
      logits, mutated = model.apply(
          {**frozen, 'cache': cache}, encoded, tokens, step_tokens, decode=True,
          max_decode_length=max_decode_length, method=Transformer.decode, mutable=['cache'])
      return logits[:, 0], mutated['cache']

    return step, cache, jnp.zeros((batch,), jnp.int32)


def _inputs_part(decoder_input_tokens: Array, causal_attention: Array) -> Tuple[Array, Array]:
  """(BOS + inputs [b, L] with the targets zeroed, number of input tokens n [b]).

  `decoder_causal_attention` covers BOS and the n inputs (n + 1 positions):
  position n holds the last input token, whose output is the first target.
  """
  ca = causal_attention.astype(decoder_input_tokens.dtype)
  return decoder_input_tokens * ca, jnp.sum(ca, axis=1) - 1


@dataclasses.dataclass(frozen=True)
class DecoderOnly:
  """A decoder-only backbone (`DecoderOnlyLM`, `GPT2LM`): T5X's `DecoderOnlyModel`.

  Examples with inputs and targets are one sequence [BOS, inputs, targets]
  whose loss covers the targets only (seqio's `decoder_loss_weights`).
  """
  name = 'decoder_only'
  predict_features = ('decoder_input_tokens', 'decoder_causal_attention')
  score_features = ('decoder_input_tokens', 'decoder_target_tokens',
                    'decoder_causal_attention', 'decoder_loss_weights')

  def feature_converter(self, pack: bool = False) -> seqio.FeatureConverter:
    return seqio.DecoderFeatureConverter(pack=pack)

  def logits(self, model: nn.Module, variables: Variables, batch: Batch, **apply_kwargs):
    return model.apply(variables, batch['decoder_input_tokens'], batch['decoder_target_tokens'],
                       decoder_segment_ids=batch.get('decoder_segment_ids'),
                       decoder_causal_attention=batch.get('decoder_causal_attention'),
                       **apply_kwargs)

  def init_args(self, feature_lengths: Mapping[str, int]) -> Tuple[Array, ...]:
    """One sequence of the inputs' and targets' lengths together (the converter's)."""
    length = feature_lengths['targets'] + feature_lengths.get('inputs', 0)
    return jnp.ones((1, length), jnp.int32), jnp.ones((1, length), jnp.int32)

  def input_tokens(self, batch: Mapping[str, np.ndarray]) -> int:
    return int(np.sum(batch['decoder_target_tokens'] > 0))

  def score(self, model: nn.Module, variables: Variables, decoder_input_tokens: Array,
            decoder_target_tokens: Array, decoder_causal_attention: Array,
            decoder_loss_weights: Array) -> Array:
    """Sum of the target tokens' log-likelihoods [b] (inputs are not scored, as T5X)."""
    logits = model.apply(variables, decoder_input_tokens, decoder_target_tokens,
                         decoder_causal_attention=decoder_causal_attention)
    return sequence_scores(logits, decoder_target_tokens, decoder_loss_weights)

  def rank_context(self, model: nn.Module, variables: Variables, decoder_input_tokens: Array,
                   decoder_causal_attention: Array, label_length: int = 0) -> Tuple[Any, Array]:
    """(the prefilled cache, start tokens [b]): one prefill shared by every label.

    The cache has room for `label_length` more positions than the features.
    """
    cache, start, _ = self._prefill(model, variables, decoder_input_tokens,
                                    decoder_causal_attention, label_length)
    return cache, start

  def label_scores(self, model: nn.Module, variables: Variables, context: Tuple[Any, Array],
                   label_tokens: Sequence[Sequence[int]]) -> Array:
    """Scores [b, labels]: each label's tokens fed through a copy of the shared cache.

    Every (example, label) row continues from its example's prefill, so the
    inputs (and a prompt) run once per example; `variables`' per-example
    leaves are already repeated once per label.
    """
    cache, start = context
    labels, batch = len(label_tokens), start.shape[0]
    matrix = _label_matrix(label_tokens)
    targets = jnp.tile(jnp.asarray(matrix), (batch, 1))  # [b * labels, M]
    # Each label's own length, not ids > 0: id 0 is a token in GPT-2 ('!').
    real = jnp.tile(jnp.asarray(np.arange(matrix.shape[1])[None, :] <
                                np.array([len(t) for t in label_tokens])[:, None]), (batch, 1))
    cache = _repeat(cache, labels)
    length = next(v.shape[1] for k, v in traverse_util.flatten_dict(cache).items()
                  if k[-1] == 'cached_key')
    frozen = {k: v for k, v in variables.items() if k != 'cache'}
    token, total = jnp.repeat(start, labels), 0.0
    for k in range(targets.shape[1]):  # labels are a few tokens: unrolled
      logits, mutated = model.apply({**frozen, 'cache': cache}, token[:, None], None,
                                    decode=True, max_decode_length=length, mutable=['cache'])
      cache = mutated['cache']
      log_probs = jax.nn.log_softmax(logits[:, 0].astype(jnp.float32))
      picked = jnp.take_along_axis(log_probs, targets[:, k:k + 1], axis=1)[:, 0]
      total = total + picked * real[:, k]
      token = targets[:, k]
    return total.reshape(batch, labels)

  def prefill(self, model: nn.Module, variables: Variables, decoder_input_tokens: Array,
              decoder_causal_attention: Array, *, max_decode_length: int, copies: int = 1
              ) -> Tuple[StepFn, Any, Array]:
    """One pass over [BOS, (prompt), inputs] fills the cache; (step, cache, start [b * copies]).

    The cache holds the L + e positions of the features (e: a delta's input
    positions); each example continues at its own index n + e, re-feeding its
    last input token (T5X's prefill), so the first step predicts target 1.
    `max_decode_length` steps fit when it is at most the features' target
    length (L = inputs + targets lengths).
    """
    del max_decode_length  # the features' length bounds it
    cache, start, cache_length = self._prefill(model, variables, decoder_input_tokens,
                                               decoder_causal_attention)
    frozen = {k: v for k, v in variables.items() if k != 'cache'}

    def step(step_tokens, cache):
      logits, mutated = model.apply({**frozen, 'cache': cache}, step_tokens, None,
                                    decode=True, max_decode_length=cache_length,
                                    mutable=['cache'])
      return logits[:, 0], mutated['cache']

    return step, _repeat(cache, copies), _repeat(start, copies)

  def _prefill(self, model: nn.Module, variables: Variables, decoder_input_tokens: Array,
               decoder_causal_attention: Array, room: int = 0) -> Tuple[Any, Array, int]:
    """(cache [b, L + e + room, ...] filled up to each n + e, start [b], its length)."""
    inputs, n = _inputs_part(decoder_input_tokens, decoder_causal_attention)
    frozen = {k: v for k, v in variables.items() if k != 'cache'}
    valid = decoder_causal_attention > 0
    # The method by name: a backbone may extend it (GPT-2 checks its positions there).
    extra = jax.eval_shape(lambda: model.apply(
        frozen, inputs, valid, method='embed_decoder_inputs_attached'))[0].shape[1]
    extra -= inputs.shape[1]
    cache_length = inputs.shape[1] + extra + room
    cache = _empty_cache(model, jnp.ones((inputs.shape[0], cache_length), jnp.int32), None,
                         max_decode_length=cache_length)
    # The padding mask of the prefill is the inputs region, BOS included (as T5X).
    _, mutated = model.apply({**frozen, 'cache': cache}, inputs, decoder_causal_attention,
                             decoder_causal_attention=decoder_causal_attention, prefill=True,
                             mutable=['cache'])
    flat = traverse_util.flatten_dict(mutated['cache'])
    index = (n + extra).astype(jnp.int32)
    flat = {k: index if k[-1] == 'cache_index' else v for k, v in flat.items()}
    start = jnp.take_along_axis(inputs, n[:, None], axis=1)[:, 0]
    return traverse_util.unflatten_dict(flat), start, cache_length


ENCODER_DECODER = EncoderDecoder()
DECODER_ONLY = DecoderOnly()


def of(model: nn.Module):
  """The architecture of `model` (a `Transformer`, a `DecoderOnlyLM` or a `GPT2LM`)."""
  if isinstance(model, DecoderOnlyBackbone):
    return DECODER_ONLY
  if isinstance(model, Transformer):
    return ENCODER_DECODER
  raise TypeError(f'{type(model).__name__} is neither a Transformer nor a decoder-only backbone '
                  '(DecoderOnlyLM, GPT2LM): the model contract (prompt_tuning/model/contract.py) '
                  'knows those.')


def build(config: Any, deltas: Sequence[Any] = ()) -> nn.Module:
  """The backbone `config` describes, with `deltas` attached."""
  if isinstance(config, GPT2Config):
    return GPT2LM(config, deltas=tuple(deltas))
  if isinstance(config, DecoderOnlyConfig):
    return DecoderOnlyLM(config, deltas=tuple(deltas))
  return Transformer(config, deltas=tuple(deltas))


def task_vocabulary(task_name: str) -> Any:
  """The targets vocabulary of a task or mixture (its tasks' must agree on id 0)."""
  tasks = seqio.get_subtasks(seqio.get_mixture_or_task(task_name))
  vocabularies = [t.output_features['targets'].vocabulary for t in tasks]
  kinds = {gpt2_features.zero_is_token(v) for v in vocabularies}
  if len(kinds) > 1:
    raise ValueError(f'Mixture {task_name!r} mixes a GPT-2 vocabulary (id 0 a token) with one '
                     'whose id 0 is padding: its tasks need different feature converters; '
                     'mix tasks of one vocabulary.')
  return vocabularies[0]


def feature_converter_for(model: nn.Module, task_name: str, pack: bool = False
                          ) -> seqio.FeatureConverter:
  """The feature converter of `model` (`of(model)`'s) on task or mixture `task_name`.

  A vocabulary whose id 0 is padding (T5's SentencePiece) gets the
  architecture's seqio converter, unchanged. One whose id 0 is a token
  (GPT2Vocabulary) gets `GPT2DecoderFeatureConverter` with the vocabulary's
  BOS, after checking that the model can read it: ValueError (one line)
  unless the model is a `GPT2LM` (the others mask every id 0 as padding)
  with at least the vocabulary's ids.
  """
  arch = of(model)
  vocabulary = task_vocabulary(task_name)
  if not gpt2_features.zero_is_token(vocabulary):
    return arch.feature_converter(pack)
  if not isinstance(model, GPT2LM):
    raise ValueError(f'Task {task_name!r} is on {vocabulary}, whose id 0 is a token, which '
                     f'{type(model).__name__} masks as padding: use a GPT-2 model '
                     '(gin/models/gpt2/) or a task on the T5 vocabulary.')
  if model.config.vocab_size < vocabulary.vocab_size:
    raise ValueError(f'Task {task_name!r} is on {vocabulary} ({vocabulary.vocab_size} ids) '
                     f'but the model has vocab_size {model.config.vocab_size}: use a model '
                     f'with at least {vocabulary.vocab_size} (gin/models/gpt2/gpt2.gin for '
                     "GPT-2's 50257) or the model's own tokenizer.")
  return gpt2_features.GPT2DecoderFeatureConverter(vocabulary.bos_id, pack=pack)


def for_config(config: Any):
  """The architecture a model config builds (`DecoderOnlyConfig`, `GPT2Config` or `T5Config`)."""
  return DECODER_ONLY if isinstance(config, (DecoderOnlyConfig, GPT2Config)) else ENCODER_DECODER


__all__ = ['DECODER_ONLY', 'DecoderOnly', 'ENCODER_DECODER', 'EncoderDecoder', 'build',
           'feature_converter_for', 'for_config', 'of', 'task_vocabulary']
