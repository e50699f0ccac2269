"""Predicting or scoring a whole split to JSON lines: the work of `python -m prompt_tuning.infer`.

As `t5x.infer`, two modes:

* `predict`: decode every example (greedy, beam search or sampling, see
  `predict.DecodingConfig`); each line holds the input text, the prediction,
  the postprocessed prediction when the task has a postprocessor, and the
  target. With several prompts (a bank), every example runs once per member
  in the same pass and the prediction is their majority vote.
* `score`: the log-likelihood of each example's target (summed over target
  tokens, T5X's `score_batch`); with several prompts, the mean over them.

One line per example, in the dataset's order, in
INFER_OUTPUT_DIR/<task>-<split>-<mode>.jsonl (one file per task of a
mixture). A file appears only once it is complete.
"""
import contextlib
import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Dict, Iterable, Iterator, Mapping, Optional, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
import seqio
import tensorflow as tf
from absl import logging

from prompt_tuning.data import lookup
from prompt_tuning.gin_utils import ConfigurationError
from prompt_tuning.infer import bank as bank_lib
from prompt_tuning.infer import loading
from prompt_tuning.infer import predict
from prompt_tuning.infer import truncation
from prompt_tuning.infer.evaluation import padded_batches
from prompt_tuning.model import contract
from prompt_tuning.model import gpt2_features

MODES = ('predict', 'score')


def _text(example: Mapping[str, Any], feature: str, vocabulary: seqio.Vocabulary) -> str:
  """The example's text for `feature`: the pretokenized string, else the decoded ids."""
  raw = example.get(f'{feature}_pretokenized')
  if raw is not None:
    return raw.decode('utf-8') if isinstance(raw, bytes) else str(raw)
  return vocabulary.decode(np.asarray(example[feature]).tolist())


def _jsonable(value: Any) -> Any:
  """json.dumps' fallback for what postprocessors return (numpy values, bytes)."""
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, bytes):
    return value.decode('utf-8', 'replace')
  return str(value)


def _make_run(mode: str, model: nn.Module, max_length: int,
              decoding: predict.DecodingConfig, rows_per_pass: Optional[int] = None) -> Callable:
  """The jitted pass, `bank` None or a stacked bank of N (an ensemble: rows [b * N]).

  predict: (variables, bank, rng, *predict_features) -> tokens [b(*N), max_length];
  score: (variables, bank, *score_features) -> scores [b(*N)] (`model.contract`'s
  features, e.g. encoder_input_tokens [b, L] and decoder_target_tokens [b, T]).
  """
  if mode == 'predict':
    def run(variables, bank, rng, *features):
      fn = lambda v, *x: predict.decode(model, v, x, max_length, decoding, rng)
      return bank_lib.run_ensemble(fn, variables, bank, *features, rows_per_pass=rows_per_pass)
  else:
    def run(variables, bank, *features):
      fn = lambda v, *x: predict.score(model, v, *x)
      return bank_lib.run_ensemble(fn, variables, bank, *features, rows_per_pass=rows_per_pass)
  return jax.jit(run)


def _records(task: seqio.Task, mode: str, loaded: loading.Loaded, *,
             feature_lengths: Mapping[str, int], batch_size: int, split: str,
             decoding: predict.DecodingConfig, use_cached: bool, seed: int,
             num_examples: Optional[int], refuse_truncation: bool = False,
             rows_per_pass: Optional[int] = None) -> Iterator[Dict[str, Any]]:
  """One task's output lines, in the dataset's order.

  Each line says whether the example was cut to TASK_FEATURE_LENGTHS
  (`truncated`, with `original_lengths` when it was); a non-finite score is
  written as null (JSON has no NaN) and counted in a warning.
  """
  lengths = dict(feature_lengths)
  # Untrimmed, so each example's original length is known; trimmed below
  # exactly as seqio would have.
  dataset = task.get_dataset(lengths, split=split, shuffle=False, num_epochs=1,
                             use_cached=use_cached, trim_output_features=False)
  if num_examples is not None:
    dataset = dataset.take(num_examples)
  # The feature converter maps example by example, so its rows stay aligned
  # with the examples (which keep the text).
  arch = contract.of(loaded.model)
  model_dataset = contract.feature_converter_for(loaded.model, task.name)(
      truncation.trim(dataset, lengths), lengths).enumerate()
  examples = dataset.as_numpy_iterator()
  inputs_vocab = task.output_features['inputs'].vocabulary
  targets_vocab = task.output_features['targets'].vocabulary
  decoding = dataclasses.replace(
      decoding, eos_id=gpt2_features.decoding_eos(targets_vocab, decoding.eos_id))
  run = _make_run(mode, loaded.model, lengths['targets'], decoding, rows_per_pass)
  bank = loaded.bank
  copies = 1 if bank is None else bank_lib.size(bank)
  base_rng = jax.random.PRNGKey(seed)

  count, start, truncated, non_finite = 0, time.perf_counter(), 0, 0
  for number, (_, features, real) in enumerate(padded_batches(model_dataset, batch_size)):
    if mode == 'predict':
      out = np.asarray(run(loaded.variables, bank, jax.random.fold_in(base_rng, number),
                           *[features[k] for k in arch.predict_features]))
      out = bank_lib.vote_rows(out, copies) if copies > 1 else out
    else:
      out = np.asarray(run(loaded.variables, bank, *[features[k] for k in arch.score_features]))
      out = out.reshape(-1, copies).mean(axis=1)  # the mean over prompts
    cut_in_batch = 0
    for row in range(real):
      example = next(examples)
      cut = truncation.over_length(example, lengths)
      if cut and refuse_truncation:
        truncation.refuse(f'{task.name}/{split} example {count + row}', cut, lengths)
      cut_in_batch += bool(cut)
      record = {'inputs': _text(example, 'inputs', inputs_vocab)}
      if mode == 'predict':
        record['prediction'] = targets_vocab.decode(out[row].tolist())
        if task.postprocessor is not None:
          record['postprocessed_prediction'] = task.postprocess_fn(
              record['prediction'], example=example, is_target=False)
        record['targets'] = _text(example, 'targets', targets_vocab)
      else:
        record['targets'] = _text(example, 'targets', targets_vocab)
        score = float(out[row])
        non_finite += not math.isfinite(score)
        record['score'] = score if math.isfinite(score) else None
      record['truncated'] = bool(cut)
      if cut:
        record['original_lengths'] = cut
      yield record
    if cut_in_batch:
      logging.warning('%s batch %d: %d of %d examples longer than TASK_FEATURE_LENGTHS %s '
                      'were cut', task.name, number, cut_in_batch, real, lengths)
    truncated += cut_in_batch
    count += real
    if number % 10 == 9:
      logging.info('%s: %d examples, %.1f examples/s', task.name, count,
                   count / (time.perf_counter() - start))
  if truncated:
    logging.warning('%s: %d of %d examples were cut to TASK_FEATURE_LENGTHS (their lines '
                    'say "truncated": true; REFUSE_TRUNCATION=True refuses them).',
                    task.name, truncated, count)
  if non_finite:
    logging.warning('%s: %d of %d scores are not finite (NaN or infinite); written as null.',
                    task.name, non_finite, count)


def _write_jsonl(path: str, records: Iterable[Dict[str, Any]]) -> int:
  """Writes the records to `path` (through a temporary file); returns how many."""
  count, tmp = 0, f'{path}.tmp'
  try:
    with tf.io.gfile.GFile(tmp, 'w') as f:
      for record in records:
        # allow_nan=False: JSON has no NaN; scores are checked before this.
        f.write(json.dumps(record, default=_jsonable, allow_nan=False) + '\n')
        count += 1
  except BaseException:
    if tf.io.gfile.exists(tmp):  # no half-written file left behind
      tf.io.gfile.remove(tmp)
    raise
  tf.io.gfile.rename(tmp, path, overwrite=True)
  return count


@gin.configurable
def infer(*, mode: str = 'predict',
          output_dir: str = gin.REQUIRED,
          model: nn.Module = gin.REQUIRED,
          mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
          batch_size: int = gin.REQUIRED,
          checkpoint_path: Optional[str] = None,
          prompt_files: Optional[Sequence[str]] = None,
          initial_checkpoint_path: Optional[str] = None,
          mixture_or_task_module: Optional[str] = None,
          split: str = 'validation',
          decoding: predict.DecodingConfig = predict.DecodingConfig(),
          use_cached: bool = False,
          seed: int = 0,
          num_examples: Optional[int] = None,
          merge_deltas: bool = False,
          refuse_truncation: bool = False,
          rows_per_pass: Optional[int] = None,
          partitioner: Optional[Any] = None) -> Dict[str, str]:
  """Predicts or scores `split` of every task of the mixture; returns {task: jsonl path}.

  Args:
    mode: 'predict' or 'score'.
    output_dir: INFER_OUTPUT_DIR.
    checkpoint_path: a `checkpoint_<step>`, a MODEL_DIR (its latest),
      MODEL_DIR/best, or a `.npy` prompt.
    prompt_files: instead: prompts (`.npy` or checkpoints); several are an
      ensemble.
    initial_checkpoint_path: the frozen model (required for `.npy` prompts;
      otherwise overrides the base the checkpoint records).
    seed: sampling randomness (batch i uses fold_in(PRNGKey(seed), i)).
    num_examples: only the first examples of each task (all by default).
    merge_deltas: fold LoRA / IA3 deltas into the backbone first (no overhead).
    refuse_truncation: fail on an example longer than `task_feature_lengths`
      instead of cutting it (REFUSE_TRUNCATION).
    rows_per_pass: an ensemble's rows (batch x members) run this many at a
      time inside each compiled pass (`bank.run_selected`; about 4 suits a
      CPU's caches). None: all at once.
    partitioner: the training mesh and rules (a `train.partitioning.Partitioner`,
      from gin): the backbone is read shard by shard onto it and every pass
      runs there, as in training. None: one device.
  """
  if mode not in MODES:
    raise ConfigurationError(f"INFER_MODE must be 'predict' or 'score', not {mode!r}.")
  lookup.import_task_module(mixture_or_task_module)
  provider = lookup.get_task(mixture_or_task_name)
  lookup.check_vocabulary(provider, model.config.vocab_size)
  loaded = loading.VariableLoader(model, initial_checkpoint_path, merge_deltas,
                                  partitioner).load(checkpoint_path, prompt_files)
  ensemble = '' if loaded.bank is None else f' (ensemble of {bank_lib.size(loaded.bank)})'
  logging.info('Inference (%s) with %s%s', mode, loaded.source, ensemble)

  written = {}
  if jax.process_index() == 0:
    tf.io.gfile.makedirs(output_dir)
  # The activations' constraints bind to the mesh while the passes trace.
  with partitioner.context() if partitioner else contextlib.nullcontext():
    for task in seqio.get_subtasks(provider):
      path = os.path.join(output_dir, f'{task.name}-{split}-{mode}.jsonl')
      records = _records(task, mode, loaded, feature_lengths=task_feature_lengths,
                         batch_size=batch_size, split=split, decoding=decoding,
                         use_cached=use_cached, seed=seed, num_examples=num_examples,
                         refuse_truncation=refuse_truncation, rows_per_pass=rows_per_pass)
      # Every host runs the same batches (the model is replicated); one writes.
      if jax.process_index() == 0:
        logging.info('Wrote %d lines to %s', _write_jsonl(path, records), path)
      else:
        for _ in records:
          pass
      written[task.name] = path
  return written
