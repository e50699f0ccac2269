"""Evaluating saved checkpoints or prompts on a task: the work of `python -m prompt_tuning.eval`.

As `t5x.eval`: CHECKPOINT_PATH names one checkpoint, or a directory whose
every `checkpoint_<step>` is evaluated in step order. Each evaluation appends
one line `{"step": ..., metric: ...}` to EVAL_OUTPUT_DIR/<task>-metrics.jsonl
(the file the train loop writes under MODEL_DIR/inference_eval), writes the
predictions to EVAL_OUTPUT_DIR/<task>-<step>.jsonl and TensorBoard scalars.
PROMPT_FILES instead evaluates one prompt or, given several, their ensemble.
"""
import contextlib
from typing import Any, Dict, Iterator, Optional, Sequence

import flax.linen as nn
import gin
from absl import logging

from prompt_tuning.data import lookup
from prompt_tuning.gin_utils import ConfigurationError
from prompt_tuning.infer import bank as bank_lib
from prompt_tuning.infer import loading
from prompt_tuning.infer.evaluation import InferenceEvaluator
from prompt_tuning.model import checkpoints

Results = Dict[str, Dict[str, float]]


def _sources(loader: loading.VariableLoader, checkpoint_path: Optional[str],
             prompt_files: Optional[Sequence[str]]) -> Iterator[loading.Loaded]:
  """Each thing to evaluate, loaded one at a time (a directory may hold many)."""
  if checkpoint_path is not None and not prompt_files and not checkpoint_path.endswith('.npy'):
    for path in checkpoints.all_checkpoints(checkpoint_path):
      yield loader.checkpoint(path)
  else:
    yield loader.load(checkpoint_path, prompt_files)


@gin.configurable
def evaluate_checkpoints(*, model: nn.Module = gin.REQUIRED,
                         evaluator: InferenceEvaluator = gin.REQUIRED,
                         checkpoint_path: Optional[str] = None,
                         prompt_files: Optional[Sequence[str]] = None,
                         initial_checkpoint_path: Optional[str] = None,
                         mixture_or_task_module: Optional[str] = None,
                         merge_deltas: bool = False,
                         partitioner: Optional[Any] = None
                         ) -> Dict[Optional[int], Results]:
  """Evaluates every checkpoint (or the prompt ensemble); returns {step: {task: metrics}}.

  Args:
    model: the configured model (MODEL): the backbone; the deltas are
      rebuilt from each checkpoint's record.
    evaluator: the task, split, batch size, decoding or rank classification,
      and the output directory (its `log_dir`, EVAL_OUTPUT_DIR).
    checkpoint_path: a `checkpoint_<step>`, a directory of them (all are
      evaluated), MODEL_DIR/best, or a `.npy` prompt.
    prompt_files: instead of `checkpoint_path`: prompts (`.npy` files or
      checkpoints); two or more are evaluated as one ensemble.
    initial_checkpoint_path: the frozen model, overriding the one recorded in
      the checkpoints (its fingerprint must still match); needed for `.npy`.
    mixture_or_task_module: the module that registers the task.
    merge_deltas: fold LoRA / IA3 deltas into the backbone before evaluating.
    partitioner: the training mesh and rules (a `train.partitioning.Partitioner`,
      from gin): the backbone is read shard by shard onto it and every pass
      runs there, as in training. None: one device.

  Prompt files carry no step; their line in the metrics file has step -1.
  """
  if not evaluator.log_dir:
    raise ConfigurationError('Set EVAL_OUTPUT_DIR, where the metrics are written.')
  lookup.import_task_module(mixture_or_task_module)
  lookup.check_vocabulary(lookup.get_task(evaluator.task_name), model.config.vocab_size)
  loader = loading.VariableLoader(model, initial_checkpoint_path, merge=merge_deltas,
                                  partitioner=partitioner)
  results: Dict[Optional[int], Results] = {}
  for loaded in _sources(loader, checkpoint_path, prompt_files):
    ensemble = '' if loaded.bank is None else f' (ensemble of {bank_lib.size(loaded.bank)})'
    logging.info('Evaluating %s%s on %s/%s', loaded.source, ensemble, evaluator.task_name,
                 evaluator.split)
    # The activations' constraints bind to the mesh while the passes trace.
    with partitioner.context() if partitioner else contextlib.nullcontext():
      results[loaded.step] = evaluator.evaluate(loaded.model, loaded.variables, loaded.step,
                                                loaded.bank)
    logging.info('step %s: %s', loaded.step, results[loaded.step])
  logging.info('Metrics written to %s', evaluator.log_dir)
  return results

