"""The training loop, T5X's order of things in one readable function.

1. Lock MODEL_DIR for the life of the run (`run_dir.RunLock`).
2. Resume from the newest checkpoint in MODEL_DIR that restores (damaged newer
   ones are reported and set aside), else start from the pretrained
   INITIAL_CHECKPOINT_PATH with a freshly initialized delta.
3. Loop to TRAIN_STEPS (absolute, counting the pretrained checkpoint's steps),
   logging and saving periodically; save once more at the end. Once the first
   step has run, record the effective gin configuration (MODEL_DIR/config.gin
   and a timestamped copy per attempt). SIGTERM / SIGINT stop the loop at the
   next step boundary, saved (`preemption`).
"""
import contextlib
import dataclasses
import functools
import os
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
from absl import logging
from clu import metric_writers

from prompt_tuning import console
from prompt_tuning import gin_utils
from prompt_tuning.data import lookup
from prompt_tuning.data.metrics import mean_metric
from prompt_tuning.deltas import paths
from prompt_tuning.model import contract, finite, load_pretrained
from prompt_tuning.model.checkpoints import (DeltaCheckpointer, FingerprintMismatchError,
                                             fingerprint)
from prompt_tuning.model.param_shapes import check_params
from prompt_tuning.train import data
from prompt_tuning.train import evaluation
from prompt_tuning.train import faults
from prompt_tuning.train import partitioning
from prompt_tuning.train import preemption
from prompt_tuning.train import run_dir
from prompt_tuning.train.best import BestCheckpointTracker
from prompt_tuning.train.method import Method
from prompt_tuning.train.step import TrainState, make_train_step


def _dummy_batch(model: nn.Module, task_feature_lengths: Mapping[str, int]):
  return contract.of(model).init_args(task_feature_lengths)


def initialize_variables(model: nn.Module, params: Dict[str, Any], rng: jax.Array,
                         task_feature_lengths: Mapping[str, int],
                         partitioner: Optional[partitioning.Partitioner] = None
                         ) -> Dict[str, Any]:
  """The pretrained `params` plus every other collection the model declares.

  The extra collections (the prompt, LoRA, ...) are created by applying the
  model with the pretrained params and those collections mutable: their
  initializers then see the real embedding table, which sampled-vocabulary
  and class-label inits need. With a `partitioner`, every variable comes
  back placed on its mesh by its logical axes (the params first, so the
  initialization itself runs sharded).
  """
  batch = _dummy_batch(model, task_feature_lengths)
  abstract = jax.eval_shape(lambda: model.init(rng, *batch))
  extra = [c for c in abstract if c != 'params']
  shardings = partitioner.variable_shardings(abstract) if partitioner else None
  if partitioner:
    params = partitioner.place(params, shardings['params'])
  if not extra:
    return {'params': params}
  fn = lambda p, r: nn.unbox(model.apply({'params': p}, *batch, mutable=extra,
                                         rngs={'params': r})[1])
  init = (partitioner.partition(fn, out_shardings={c: shardings[c] for c in extra})
          if partitioner else jax.jit(fn))
  return {'params': params, **init(params, rng)}


def _loss_per_token(metrics: Mapping[str, Any]) -> float:
  return float(metrics['loss']) / max(float(metrics['weight_sum']), 1.0)


def _log_progress(step, start_step, train_steps, metrics, seconds, steps_done, tokens,
                  examples_seen, learning_rate, writer) -> None:
  weight = max(float(metrics['weight_sum']), 1.0)
  scalars = {
      'loss': float(metrics['loss']) / weight,          # per target token
      'z_loss': float(metrics['z_loss']) / weight,
      'accuracy': float(metrics['correct']) / weight,
      'grad_norm': float(metrics['grad_norm']),
      'learning_rate': learning_rate,
      'steps_per_second': steps_done / seconds,
      'tokens_per_second': tokens / seconds,
      'examples_seen': examples_seen,
  }
  if 'auxiliary_loss' in metrics:  # a delta's own term, inside `loss` (intrinsic prompts)
    scalars['auxiliary_loss'] = float(metrics['auxiliary_loss']) / weight
  writer.write_scalars(step, scalars)
  remaining = (train_steps - step) * seconds / max(steps_done, 1)
  logging.info(
      'step %d/%d (%.1f%%)  loss %.4f  acc %.3f  lr %g  %.2f steps/s  %s tokens/s  '
      '%s examples  ETA %s', step, train_steps,
      100 * (step - start_step) / max(train_steps - start_step, 1), scalars['loss'],
      scalars['accuracy'], learning_rate, scalars['steps_per_second'],
      f'{scalars["tokens_per_second"]:,.0f}', f'{examples_seen:,}',
      time.strftime('%H:%M:%S', time.gmtime(remaining)), extra=console.REPLACED_BY_BAR)


# Weights a layer uses in float32 whatever the activation dtype (T5X's
# logits projection): casting them would change the logits, so they stay.
_USED_IN_FLOAT32 = ('logits_dense',)


def cast_frozen(frozen: Dict[str, Any], dtype: str) -> Dict[str, Any]:
  """`frozen` with the backbone's ('params') floating leaves in `dtype`, sharding kept.

  Layers cast every weight to the activation dtype before using it, so with
  activations in `dtype` nothing the step computes changes; only the stored
  copy shrinks (half for bfloat16 against float32). The weights of layers
  that compute in float32 (`_USED_IN_FLOAT32`) keep their dtype.
  """
  dtype = jnp.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise gin_utils.ConfigurationError(
        f"FROZEN_PARAM_DTYPE must be a floating dtype such as 'bfloat16', not {dtype}.")
  if 'params' not in frozen:
    return frozen

  def cast(path, x):
    names = [getattr(key, 'key', str(key)) for key in path]
    keep = any(name in _USED_IN_FLOAT32 for name in names)
    if keep or not jnp.issubdtype(x.dtype, jnp.floating):
      return x
    if isinstance(x, jax.ShapeDtypeStruct):  # an abstract plan (tools/memory_report.py)
      return jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding)
    return x.astype(dtype)

  return {**frozen, 'params': jax.tree_util.tree_map_with_path(cast, frozen['params'])}


@gin.configurable
def train(*,
          model_dir: str = gin.REQUIRED,
          method: Method = gin.REQUIRED,
          mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
          train_steps: int = gin.REQUIRED,
          batch_size: int = gin.REQUIRED,
          initial_checkpoint_path: Optional[str] = gin.REQUIRED,
          mixture_or_task_module: Optional[str] = None,
          random_seed: int = 0,
          use_cached_tasks: bool = False,
          shuffle: bool = True,
          checkpoint_period: int = 1000,
          keep_checkpoints: Optional[int] = 3,
          log_period: int = 100,
          z_loss: float = 1e-4,
          label_smoothing: float = 0.0,
          loss_normalizing_factor: Optional[float] = None,
          num_microbatches: Optional[int] = None,
          frozen_param_dtype: Optional[str] = None,
          eval_period: Optional[int] = None,
          eval_steps: int = 20,
          run_eval_before_training: bool = False,
          inference_evaluator: Optional[Any] = None,
          partitioner: Optional[partitioning.Partitioner] = None,
          delta_init: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None
          ) -> TrainState:
  """Trains what `method` trains (its deltas, or the paths it names); returns the final state.

  Every `eval_period` steps (at a save): teacher-forced validation loss over
  `eval_steps` batches, and, given an `inference_evaluator`
  (`prompt_tuning.infer.evaluation.InferenceEvaluator`), the task's metrics;
  the checkpoint with the best mean metric is also kept in MODEL_DIR/best/
  (the paper's early stopping).

  Reliability (tests/test_reliability.py): MODEL_DIR is locked while the run
  lives; SIGTERM / SIGINT save at the next step boundary and return; resume
  takes the newest checkpoint that restores; config.gin is written once a step
  has run; the best checkpoint survives a kill at any point (`best`).

  `run_eval_before_training` (T5X's): evaluate once before the first step,
  e.g. to see what the untuned prompt scores.

  `partitioner` (default: data parallelism over every device) places the
  variables, optimizer state and batches on its ('data', 'model') mesh.
  `num_microbatches` (T5X's): accumulate each step's gradient over that many
  slices of the batch, one update per batch (less activation memory).
  `frozen_param_dtype` (e.g. 'bfloat16'): the frozen backbone's floating
  parameters are stored in that dtype (`cast_frozen`); the fingerprint is
  taken before, from the checkpoint's values.
  `delta_init` (e.g. `deltas.assignment.RestoreDelta`, SPoT): replaces the
  deltas' initial values when the run starts fresh (not when it resumes).
  """
  partitioner = partitioner or partitioning.Partitioner()
  partitioner.add_rules(method.logical_axis_rules())
  model = method.model
  if num_microbatches and batch_size % num_microbatches:
    raise gin_utils.ConfigurationError(
        f'BATCH_SIZE {batch_size} is not divisible by NUM_MICROBATCHES {num_microbatches}.')
  lookup.import_task_module(mixture_or_task_module)
  task = lookup.get_task(mixture_or_task_name)
  lookup.check_vocabulary(task, model.config.vocab_size)

  with (_locked(model_dir), preemption.StopRequest() as stop,
        console.bar('Training') as progress_bar):
    checkpointer = DeltaCheckpointer(model_dir, keep=keep_checkpoints)
    fresh = not checkpointer.all_steps()

    rng = jax.random.PRNGKey(random_seed)
    params = _initial_params(method, initial_checkpoint_path, random_seed, task_feature_lengths,
                             partitioner)
    base = {'base_checkpoint': initial_checkpoint_path,
            'base_fingerprint': fingerprint(params),
            'base_step': _base_step(initial_checkpoint_path) if initial_checkpoint_path else 0}
    variables = initialize_variables(model, params, rng, task_feature_lengths, partitioner)
    if delta_init is not None and fresh:
      variables = delta_init(variables)
    frozen, trainable = method.split(variables)
    if frozen_param_dtype:
      frozen = cast_frozen(frozen, frozen_param_dtype)
    del params, variables  # the float32 backbone is not kept beside its cast

    optimizer = method.optimizer
    built = {}

    def initial_state(base_step: int):
      # (tx, state): the optimizer's schedule counts from the base checkpoint's step.
      if base_step not in built:
        tx = optimizer.build(base_step)
        built[base_step] = tx, TrainState(
            step=partitioner.place(np.asarray(base_step, np.int32), partitioner.replicated),
            frozen=frozen, trainable=trainable,
            opt_state=partitioner.init_optimizer_state(tx, trainable))
      return built[base_step]

    def abstract_for(recorded: Dict[str, Any]):
      _check_base(recorded, base, initial_checkpoint_path)
      return partitioning.abstract_shapes(saved_state(initial_state(recorded['base_step'])[1]))

    # The newest checkpoint that restores, straight into each array's sharding
    # (Orbax reshards if the mesh changed); damaged newer ones are set aside.
    resumed = checkpointer.restore_newest(abstract_for)
    if resumed:
      base['base_step'] = resumed[2]['base_step']
    tx, state = initial_state(base['base_step'])
    if resumed:
      restored = resumed[1]
      state = state.replace(step=restored['step'], trainable=restored['trainable'],
                            opt_state=restored['opt_state'],
                            frozen=paths.merge(state.frozen, restored.get('frozen_delta', {})))
      logging.info('Resumed from %s at step %d', checkpointer.step_dir(resumed[0]),
                   int(state.step))

    def export(directory: str, variables=None) -> List[str]:
      # The deltas' files (prompt.npy, ...): from their variables, never the backbone's.
      variables = state.variables if variables is None else variables
      delta_variables = {c: v for c, v in variables.items() if c != 'params'}
      return method.export(jax.device_get(delta_variables), directory)

    if resumed:
      _repair_exports(checkpointer.step_dir(resumed[0]), state.variables, export)

    start_step = int(state.step)
    consumed = start_step - base['base_step']
    if start_step >= train_steps:
      logging.warning('Nothing to train: the run is at step %d and TRAIN_STEPS=%d '
                      '(absolute, counting the pretrained checkpoint\'s %d steps).',
                      start_step, train_steps, base['base_step'])
    data_shard = partitioner.data_shard(batch_size)  # (index, count) of this host's rows
    batches = data.train_batches(mixture_or_task_name, task_feature_lengths, batch_size,
                                 seed=random_seed, skip_batches=consumed, shuffle=shuffle,
                                 use_cached=use_cached_tasks, shard=data_shard,
                                 feature_converter=contract.feature_converter_for(
                                     model, mixture_or_task_name))
    step_fn = make_train_step(model, tx, random_seed, partitioner=partitioner,
                              state_shardings=partitioning.shardings_of(state), z_loss=z_loss,
                              label_smoothing=label_smoothing,
                              loss_normalizing_factor=loss_normalizing_factor,
                              num_microbatches=num_microbatches)
    writer = metric_writers.create_default_writer(
        os.path.join(model_dir, 'train'), just_logging=jax.process_index() > 0)

    teacher_forced = (evaluation.TeacherForcedEvaluator(
        model, mixture_or_task_name, task_feature_lengths, batch_size, eval_steps)
        if eval_period else None)
    best = BestCheckpointTracker(model_dir) if eval_period and inference_evaluator else None
    if best and best.step is not None:
      _repair_exports(best.checkpointer.step_dir(best.step), state.variables, export,
                      lambda: _restore_variables(best.checkpointer, best.step, state))
    if inference_evaluator and inference_evaluator.log_dir is None:
      inference_evaluator = dataclasses.replace(
          inference_evaluator, log_dir=os.path.join(model_dir, 'inference_eval'))

    def evaluate(step: int) -> None:
      with partitioner.context():  # activation constraints bind on the mesh
        _evaluate(step)

    def _evaluate(step: int) -> None:
      faults.crash_point('evaluation_started')
      scalars = teacher_forced.evaluate(state.variables)
      logging.info('step %d training_eval: %s', step, scalars)
      eval_writer.write_scalars(step, scalars)
      if inference_evaluator:
        results = inference_evaluator.evaluate(model, state.variables, step)
        score = mean_metric(results)
        logging.info('step %d inference_eval: %s (mean %.4f)', step, results, score)
        if best.improves(score):
          best.update(step, score, results, lambda to, extra: to.save(
              step, saved_state(state), {**metadata(step), **extra}, export))
      if jax.process_index() == 0:
        run_dir.write_evaluated_step(model_dir, step)

    eval_writer = metric_writers.create_default_writer(
        os.path.join(model_dir, 'training_eval', mixture_or_task_name),
        just_logging=jax.process_index() > 0)

    def metadata(step: int) -> Dict[str, Any]:
      return {**base, 'data_batches_consumed': step - base['base_step'], **method.record()}

    def save(step: int) -> None:
      checkpointer.save(step, saved_state(state), metadata(step),
                        lambda d: (faults.crash_point('checkpoint_committed'), export(d)))
      logging.info('Saved %s', checkpointer.step_dir(step))

    progress_bar.set_total(train_steps - start_step)
    if run_eval_before_training and eval_period:
      evaluate(start_step)
    elif (eval_period and resumed and (start_step % eval_period == 0 or start_step == train_steps)
          and (run_dir.evaluated_step(model_dir) or 0) < start_step):
      # The run stopped after saving this step but before its evaluation
      # finished; at TRAIN_STEPS that evaluation is the run's result.
      logging.info('Step %d was saved but not evaluated; evaluating it now.', start_step)
      evaluate(start_step)
    window_start, window_steps, window_tokens = time.perf_counter(), 0, 0
    saved_step = start_step  # the step of the newest checkpoint on disk
    config_recorded = False
    for step in range(start_step, train_steps):
      if stop.requested():  # every host stops at the same step boundary
        if step > saved_step:
          save(step)
        logging.warning('Stopped by %s at step %d: %s; rerun the same command to resume.',
                        stop.signal_name or 'a signal on another host', step,
                        f'saved {checkpointer.step_dir(step)}' if step > start_step else
                        'no step was trained, the run stays where it was')
        break
      tokens_before = window_tokens
      batch = next(batches)
      state, metrics = step_fn(state, partitioner.global_batch(batch))
      window_steps += 1
      window_tokens += contract.of(model).input_tokens(batch) * data_shard[1]
      # Read at the next step (`Bar.advance`): the loop keeps one step in flight.
      progress_bar.advance(tokens=window_tokens - tokens_before,
                           loss=functools.partial(_loss_per_token, metrics))
      done = step + 1
      log_now = done % log_period == 0 or done == train_steps
      save_now = done % checkpoint_period == 0 or done == train_steps
      eval_now = eval_period and (done % eval_period == 0 or done == train_steps)
      if not config_recorded and jax.process_index() == 0:
        # Only now, once the configuration has run a step: a rerun that fails
        # on a bad value keeps the record of how the checkpoints were trained.
        run_dir.write_config_record(model_dir)
        run_dir.write_parameter_counts(model_dir, state.trainable, state.frozen)
      config_recorded = True
      if log_now:
        loss = float(metrics['loss'])
        if not np.isfinite(loss):
          raise FloatingPointError(_divergence_message(loss, done, state, metrics,
                                                       checkpointer.latest_step()))
        _log_progress(done, start_step, train_steps, metrics,
                      time.perf_counter() - window_start, window_steps, window_tokens,
                      (done - base['base_step']) * batch_size,
                      optimizer.learning_rate_at(done), writer)
        window_start, window_steps, window_tokens = time.perf_counter(), 0, 0
      if save_now:
        if not np.isfinite(float(metrics['loss'])):
          raise FloatingPointError(f'The loss is not finite at step {done}; not saving.')
        save(done)
        saved_step = done
      if eval_now:
        evaluate(done)
      faults.step_pause()
    writer.flush()
    eval_writer.flush()
    checkpointer.close()
    return state


@contextlib.contextmanager
def _locked(model_dir: str) -> Iterator[None]:
  """Holds MODEL_DIR's run lock (taken by process 0; every host learns the outcome)."""
  lock = run_dir.RunLock(model_dir)
  error = None
  if jax.process_index() == 0:
    tf.io.gfile.makedirs(model_dir)
    try:
      lock.acquire()
    except run_dir.RunDirectoryLocked as e:
      error = e
  if preemption.any_host(error is not None):
    raise error or run_dir.RunDirectoryLocked(
        f'MODEL_DIR {model_dir} is in use by another run (see process 0\'s log).')
  try:
    yield
  finally:
    lock.release()


def _check_base(recorded: Dict[str, Any], base: Dict[str, Any],
                initial_checkpoint_path: Optional[str]) -> None:
  """Refuses to resume a checkpoint trained on another base model."""
  if recorded['base_fingerprint'] != base['base_fingerprint']:
    raise FingerprintMismatchError(
        f'The checkpoints in MODEL_DIR were trained on {recorded["base_checkpoint"]} '
        f'(fingerprint {recorded["base_fingerprint"]}), but INITIAL_CHECKPOINT_PATH '
        f'{initial_checkpoint_path} has fingerprint {base["base_fingerprint"]}.')


def _repair_exports(directory: str, variables: Dict[str, Any],
                    export: Callable[..., List[str]],
                    restore: Optional[Callable[[], Dict[str, Any]]] = None) -> None:
  """Rewrites a complete checkpoint's missing export files (prompt.npy, ...) from its state.

  A run stopped between a checkpoint's commit and its export leaves it
  without them. Which files a checkpoint should hold is what exporting
  `variables` writes (the same names at every step); `restore()` gives the
  checkpoint's own variables when `variables` are not its (the best one).
  """
  if jax.process_index() > 0:
    return
  with tempfile.TemporaryDirectory() as scratch:
    expected = [os.path.basename(p) for p in export(scratch, variables)]
  missing = [n for n in expected if not tf.io.gfile.exists(os.path.join(directory, n))]
  if missing:
    export(directory, restore() if restore else variables)
    logging.warning('Rewrote %s in %s from its state (the run had stopped before '
                    'writing them).', ', '.join(missing), directory)


def _restore_variables(checkpointer: DeltaCheckpointer, step: int,
                       like: TrainState) -> Dict[str, Any]:
  """The variables of checkpoint `step`, with `like`'s structure."""
  restored, _ = checkpointer.restore(step, partitioning.abstract_shapes(saved_state(like)))
  return like.replace(trainable=restored['trainable'],
                      frozen=paths.merge(like.frozen, restored.get('frozen_delta', {}))
                      ).variables


def _divergence_message(loss: float, step: int, state: TrainState, metrics: Mapping[str, Any],
                        latest: Optional[int]) -> str:
  """What a non-finite loss says: where, what went non-finite, what was kept.

  Bases, delta checkpoints and prompt files are checked when loaded, so by
  now it is the training itself that diverged.
  """
  bad = {path: count for path, value in paths.flatten_tree(jax.device_get(state.trainable)).items()
         if (count := finite.non_finite_count(value))}
  kept = (f'the last good checkpoint is kept (step {latest})' if latest is not None
          else 'no checkpoint was saved yet')
  return (f'The loss is {loss} at step {step} (grad_norm {float(metrics["grad_norm"])}; '
          f'non-finite trained variables: {bad or "none"}); {kept}. Lower the learning '
          'rate or check the data.')


def saved_state(state: TrainState) -> Dict[str, Any]:
  """What a checkpoint holds: every variable but the frozen base, and the optimizer state.

  The deltas' variables that are not trained (an intrinsic decoder frozen in
  a second stage, say) go under 'frozen_delta', only when there are any.
  """
  saved = {'step': state.step, 'trainable': state.trainable, 'opt_state': state.opt_state}
  frozen_delta = {c: v for c, v in state.frozen.items() if c != 'params'}
  if frozen_delta:
    saved['frozen_delta'] = frozen_delta
  return saved


def _initial_params(method: Method, initial_checkpoint_path: Optional[str], random_seed: int,
                    task_feature_lengths: Mapping[str, int],
                    partitioner: Optional[partitioning.Partitioner] = None) -> Dict[str, Any]:
  """The pretrained backbone, or T5X's random init when pre-training from scratch.

  With a `partitioner` the checkpoint is read shard by shard straight into
  the training layout: each host reads only what its devices hold.
  """
  model = method.model
  init = lambda r: model.init(r, *_dummy_batch(model, task_feature_lengths))
  if initial_checkpoint_path:
    logging.info('Loading the pretrained model from %s', initial_checkpoint_path)
    shardings = (partitioner.variable_shardings(jax.eval_shape(init, jax.random.PRNGKey(0)))
                 ['params'] if partitioner else None)
    _, params = load_pretrained(initial_checkpoint_path, shardings)
    check_params(model.config, params, initial_checkpoint_path)
    return params
  if not method.trains_every(jax.eval_shape(init, jax.random.PRNGKey(0)), 'params'):
    raise gin_utils.ConfigurationError(
        'INITIAL_CHECKPOINT_PATH is None, which means training from scratch, but '
        f'the trainable patterns {list(method.trainable_patterns)} leave (part of) the '
        'randomly initialized backbone frozen. Give a pretrained checkpoint.')
  logging.info('No initial checkpoint: initializing the backbone from scratch '
               '(RANDOM_SEED %d).', random_seed)
  rng = jax.random.fold_in(jax.random.PRNGKey(random_seed), 1)  # not the prompt's key
  return jax.tree_util.tree_map(np.asarray, nn.unbox(jax.jit(init)(rng)['params']))


def _base_step(path: str) -> int:
  """The step of a T5X checkpoint or one of ours (0 for Hugging Face folders)."""
  from prompt_tuning.model import checkpoints, pretrained, t5x_checkpoint  # pylint: disable=g-import-not-at-top
  kind, resolved = pretrained.detect_format(path)
  if kind == 't5x':
    return t5x_checkpoint.t5x_step(resolved)
  return checkpoints.checkpoint_step(resolved) if kind == 'ours' else 0
