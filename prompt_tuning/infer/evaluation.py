"""Inference evaluation, T5X's "inference_eval": decode or rank-classify, then metrics.

`InferenceEvaluator` runs `seqio.Evaluator` over the task's validation split:
decode (or rank-classify), postprocess, the task's metrics; results go to
`<log_dir>/<task>-metrics.jsonl`, TensorBoard and the log. Given a bank of
deltas it evaluates their ensemble in one pass per batch (majority vote).

It takes the model and its variables at call time, so the same object serves
every evaluation of a training run (the trainer calls it), the eval CLI and
the infer CLI.
"""
import dataclasses
import functools
import re
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning import console
from prompt_tuning.data import vocab as vocab_lib
from prompt_tuning.infer import bank as bank_lib
from prompt_tuning.infer import predict
from prompt_tuning.infer import truncation
from prompt_tuning.model import contract
from prompt_tuning.model import gpt2_features

Variables = Dict[str, Any]


def to_host(x: Any) -> np.ndarray:
  """A (global) array as numpy on every process.

  On a multi-host mesh an output may be spread over other hosts' devices;
  it is gathered (every host runs the same evaluation).
  """
  if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def padded_batches(dataset: tf.data.Dataset, batch_size: int
                   ) -> Iterator[Tuple[np.ndarray, Dict[str, np.ndarray], int]]:
  """(indices, features, real rows) of an enumerated dataset, last batch padded.

  Padding rows repeat row 0 so every batch has one shape (one compilation).
  On a terminal a progress bar counts the examples and the tokens the model
  reads (`console.bar`).
  """
  total = int(dataset.cardinality())  # seqio's evaluation datasets know it
  with console.bar('Inference', total if total >= 0 else None) as progress_bar:
    for indices, features in dataset.batch(batch_size).as_numpy_iterator():
      real = len(indices)
      read = features.get('encoder_input_tokens', features.get('decoder_input_tokens'))
      tokens = int(np.sum(read > 0)) if read is not None else 0
      if real < batch_size:
        pad = lambda x: np.concatenate([x, np.repeat(x[:1], batch_size - real, 0)], 0)
        features = {k: pad(v) for k, v in features.items()}
      yield indices, features, real
      progress_bar.advance(real, tokens=tokens)


@dataclasses.dataclass
class InferenceEvaluator:
  """Runs seqio's Evaluator with our decoding (or rank classification).

  `evaluate` takes the model and variables at call time, and optionally a
  bank of deltas to ensemble.

  Attributes:
    rank_classification_labels: when set, every label string is scored and
      the best one is the prediction, instead of free decoding.
  """
  task_name: str
  feature_lengths: Mapping[str, int]
  batch_size: int
  log_dir: Optional[str] = None
  split: str = 'validation'
  decoding: predict.DecodingConfig = predict.DecodingConfig()
  rank_classification_labels: Optional[Sequence[str]] = None
  num_examples: Optional[int] = None
  use_cached: bool = False
  refuse_truncation: bool = False

  @functools.cached_property
  def over_length(self) -> Dict[str, int]:
    """{task: examples longer than feature_lengths}, counted once and logged.

    seqio cuts them silently; with `refuse_truncation` (REFUSE_TRUNCATION) the
    first one is an error instead.
    """
    provider = seqio.get_mixture_or_task(self.task_name)
    return {task.name: truncation.count_over_length(
        task, self.feature_lengths, self.split, use_cached=self.use_cached,
        num_examples=self.num_examples, refuse_truncation=self.refuse_truncation)
            for task in seqio.get_subtasks(provider)}

  @functools.cached_property
  def _evaluators(self) -> Dict[str, seqio.Evaluator]:
    return {}

  def _evaluator(self, model: nn.Module) -> seqio.Evaluator:
    """seqio's Evaluator with the model's feature converter (unpacked: one example
    per row, in the dataset's order), made once per architecture.

    Built on first use: gin constructs this object before the run imports
    MIXTURE_OR_TASK_MODULE, which registers the task.
    """
    arch = contract.of(model)
    if arch.name in self._evaluators:
      return self._evaluators[arch.name]
    loggers = ()
    if self.log_dir and jax.process_index() == 0:  # every host evaluates, one writes
      tf.io.gfile.makedirs(self.log_dir)  # seqio's JSON logger does not create it
      loggers = (seqio.PyLoggingLogger, seqio.JSONLogger, seqio.TensorBoardLogger)
    self._evaluators[arch.name] = seqio.Evaluator(
        self.task_name, contract.feature_converter_for(model, self.task_name),
        eval_split=self.split,
        use_cached=self.use_cached, sequence_length=dict(self.feature_lengths),
        num_examples=self.num_examples, logger_cls=loggers, log_dir=self.log_dir)
    return self._evaluators[arch.name]

  def evaluate(self, model: nn.Module, variables: Variables, step: Optional[int] = None,
               bank: Optional[Variables] = None) -> Dict[str, Dict[str, float]]:
    """{task: {metric: value}} for every task of the mixture.

    Args:
      bank: the stacked leaves [N, ...] of N deltas to ensemble (`infer.bank`):
        every example is run once per member in the same pass, predictions
        are the majority vote of the N (ties: the lowest-numbered member's),
        scores the mean.
    """
    _ = self.over_length  # counted (and logged) on the first evaluation only
    metrics, _ = self._evaluator(model).evaluate(
        compute_metrics=True, step=step,
        predict_fn=self._make_predict_fn(model, variables, bank),
        score_fn=self._make_score_fn(model, variables, bank))
    results = metrics.result() if hasattr(metrics, 'result') else metrics
    # Keep the scalars (metrics may also return text or histograms).
    return {task: {k: float(getattr(v, 'value', v)) for k, v in values.items()
                   if isinstance(getattr(v, 'value', v), (int, float, np.number))}
            for task, values in results.items()}

  def _label_tokens(self) -> List[List[int]]:
    """Each label's target ids with EOS; '<extra_id_k>' in a label is sentinel k.

    SentencePiece alone would spell a sentinel out piece by piece, so the
    sentinel form's labels ('<extra_id_0> entailment') are split around them.
    GPT-2's BPE (no sentinels) encodes each label whole and unstripped: ' yes'
    and 'yes' are different tokens there, and the label must be the target's.
    """
    vocabulary = seqio.get_mixture_or_task(self.task_name).output_features['targets'].vocabulary
    if gpt2_features.zero_is_token(vocabulary):
      return [vocabulary.encode(label) + [vocabulary.eos_id]
              for label in self.rank_classification_labels]
    def encode(label: str) -> List[int]:
      ids = []
      for part in re.split(r'(<extra_id_\d+>)', label):
        sentinel = re.fullmatch(r'<extra_id_(\d+)>', part)
        if sentinel:
          ids.append(vocab_lib.sentinel_id(int(sentinel[1]), vocabulary))
        elif part.strip():
          ids.extend(vocabulary.encode(part.strip()))
      return ids + [vocabulary.eos_id]
    return [encode(label) for label in self.rank_classification_labels]

  def _jitted(self, model: nn.Module, kind: str) -> Callable:
    labels = (tuple(map(tuple, self._label_tokens())) if kind == 'rank' else None)
    vocabulary = contract.task_vocabulary(self.task_name)
    decoding = dataclasses.replace(
        self.decoding, eos_id=gpt2_features.decoding_eos(vocabulary, self.decoding.eos_id))
    args = (model, kind, self.feature_lengths['targets'], decoding, labels)
    try:
      return _compiled(*args)
    except TypeError:  # a model with unhashable fields: compile for this call only
      return _compiled.__wrapped__(*args)

  def _make_predict_fn(self, model, variables, bank=None):
    arch = contract.of(model)
    if self.rank_classification_labels:
      # Padded to the longest label: seqio stacks a task's predictions into one
      # array, and decoding stops at each label's EOS before the padding.
      labels = self._label_tokens()
      width = max(map(len, labels))
      labels = [ids + [0] * (width - len(ids)) for ids in labels]
      run = self._jitted(model, 'rank')
      to_tokens = lambda picked: [labels[i] for i in picked]
    else:
      run = self._jitted(model, 'decode')
      to_tokens = lambda tokens: [list(row) for row in tokens]
    copies = 1 if bank is None else bank_lib.size(bank)

    def predict_fn(dataset, model_feature_shapes=None):
      del model_feature_shapes
      out = []
      for indices, features, real in padded_batches(dataset, self.batch_size):
        result = to_host(run(variables, bank, *[features[k] for k in arch.predict_features]))
        if copies > 1:
          result = bank_lib.vote_rows(result, copies)
        out.extend(zip(indices.tolist(), to_tokens(result[:real].tolist())))
      return out

    return predict_fn

  def _make_score_fn(self, model, variables, bank=None):
    arch = contract.of(model)
    run = self._jitted(model, 'score')
    copies = 1 if bank is None else bank_lib.size(bank)

    def score_fn(dataset, model_feature_shapes=None):
      del model_feature_shapes
      out = []
      for indices, features, real in padded_batches(dataset, self.batch_size):
        scores = to_host(run(variables, bank, *[features[k] for k in arch.score_features]))
        scores = scores.reshape(-1, copies).mean(axis=1)  # the mean over members
        out.extend(zip(indices.tolist(), scores[:real].tolist()))
      return out

    return score_fn


@functools.lru_cache(maxsize=32)
def _compiled(model: nn.Module, kind: str, max_length: int, decoding: predict.DecodingConfig,
              labels: Optional[Tuple[Tuple[int, ...], ...]]) -> Callable:
  """`fn(variables, bank, tokens, *per_example)` jitted once per model and kind.

  Cached: a run evaluates the same model many times (every EVAL_PERIOD, or
  every checkpoint of a directory) and compiles once; linen modules hash and
  compare by their fields. `bank` is None or a stacked bank (an ensemble,
  see `InferenceEvaluator.evaluate`).
  """
  # The arrays are the architecture's predict (or score) features, in order.
  if kind == 'rank':
    fn = lambda v, *x: predict.rank_classify(model, v, x, labels)
  elif kind == 'decode':
    fn = lambda v, *x: predict.decode(model, v, x, max_length, decoding)
  else:
    fn = lambda v, *x: predict.score(model, v, *x)
  return jax.jit(functools.partial(bank_lib.run_ensemble, fn))
