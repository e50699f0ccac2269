"""The train state and the train step: gradients for the trainable variables only.

A run names what it trains as path patterns (`deltas.paths`): prompt tuning
`prompt/.*`, model tuning `params/.*`, norm tuning `params/.*/scale`.
Everything else is frozen: it is an input of the step, never differentiated,
never updated, and the optimizer holds no state for it. Because the frozen
weights are not inputs of `jax.grad`, XLA computes no gradient for them at
all (only activations' gradients flow through them).
"""
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from prompt_tuning.deltas.base import AUXILIARY_LOSSES
from prompt_tuning.deltas.paths import merge
from prompt_tuning.model import contract
from prompt_tuning.model.losses import (compute_weighted_cross_entropy,
                                        get_loss_normalizing_factor_and_weights)

Variables = Dict[str, Any]
Batch = Mapping[str, jax.Array]


class TrainState(flax.struct.PyTreeNode):
  """What a step reads and writes.

  Attributes:
    step: global step (int32 scalar); starts at the pretrained checkpoint's
      step, as in T5X, so TRAIN_STEPS is absolute.
    frozen: the variables not trained, e.g. {'params': backbone}.
    trainable: those trained, e.g. {'prompt': {'prompt': {'prompt': [P, d]}}};
      a tree with the leaves `frozen` lacks (norm tuning: a few `params` leaves).
    opt_state: optimizer state of `trainable` only.
  """
  step: jax.Array
  frozen: Variables
  trainable: Variables
  opt_state: optax.OptState

  @property
  def variables(self) -> Variables:
    return merge(self.frozen, self.trainable)


def batch_loss(model: nn.Module, variables: Variables, batch: Batch, *,
               dropout_rng: jax.Array = None, z_loss: float = 1e-4,
               label_smoothing: float = 0.0, loss_normalizing_factor: float = None
               ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """T5X's loss on a batch of the model's feature converter's keys (`model.contract`).

  Args:
    batch: encoder-decoder: encoder_input_tokens [b, l], decoder_input_tokens
      [b, t], decoder_target_tokens [b, t]; decoder-only: decoder_input_tokens,
      decoder_target_tokens, decoder_causal_attention [b, t]; optionally
      decoder_loss_weights [b, t] (decoder-only inputs+targets: the targets).
    dropout_rng: enables dropout when given.
    loss_normalizing_factor: a number, or a T5X special factor's name
      ('NUM_REAL_TARGET_TOKENS', ...) computed from this batch.

  Returns:
    (loss, metrics) with metrics summed over the batch: loss, z_loss,
    weight_sum (number of target tokens) and correct (argmax hits); with a
    delta that sows an auxiliary loss (`deltas.base.sow_auxiliary_loss`,
    intrinsic prompt tuning's reconstruction), also auxiliary_loss, which
    `loss` includes. Without one the computation is T5X's, unchanged.
  """
  targets = batch['decoder_target_tokens']
  logits, sown = contract.of(model).logits(
      model, variables, batch, enable_dropout=dropout_rng is not None,
      rngs={'dropout': dropout_rng} if dropout_rng is not None else None,
      mutable=[AUXILIARY_LOSSES])
  loss_normalizing_factor, weights = get_loss_normalizing_factor_and_weights(
      loss_normalizing_factor, batch)
  if weights is None:
    weights = targets > 0
  loss, z, weight_sum = compute_weighted_cross_entropy(
      logits, targets, weights, label_smoothing, z_loss, loss_normalizing_factor)
  correct = jnp.sum((jnp.argmax(logits, -1) == targets) * weights)
  metrics = {'loss': loss, 'z_loss': z, 'weight_sum': weight_sum,
             'correct': correct.astype(jnp.float32)}
  if sown:
    # Per-example terms per target token: weighted like the token losses.
    per_example = sum(jax.tree_util.tree_leaves(sown))  # [b]
    auxiliary = jnp.sum(per_example * jnp.sum(weights.astype(jnp.float32), axis=-1))
    if loss_normalizing_factor is not None:
      auxiliary = auxiliary / loss_normalizing_factor
    loss = loss + auxiliary
    metrics.update(loss=loss, auxiliary_loss=auxiliary)
  return loss, metrics


def split_microbatches(batch: Batch, num_microbatches: int) -> Dict[str, jax.Array]:
  """[b, ...] arrays -> [num_microbatches, b / num_microbatches, ...].

  Microbatch k holds rows k, k + N, k + 2N, ... (strided, not contiguous): a
  batch sharded over 'data' in contiguous blocks then splits where it lies,
  each device keeping its own rows, as long as b / N is a multiple of the
  'data' axis.
  """
  sizes = {key: x.shape[0] for key, x in batch.items()}
  size = next(iter(sizes.values()))
  if len(set(sizes.values())) != 1:
    raise ValueError(f'The batch arrays disagree on the batch size: {sizes}.')
  if num_microbatches < 1 or size % num_microbatches:
    raise ValueError(f'The batch size {size} is not divisible by num_microbatches='
                     f'{num_microbatches}: give a BATCH_SIZE that is a multiple of '
                     'NUM_MICROBATCHES.')
  return {key: jnp.swapaxes(x.reshape((size // num_microbatches, num_microbatches) +
                                      x.shape[1:]), 0, 1)
          for key, x in batch.items()}


def accumulate_gradients(grad_fn: Callable, trainable: Variables, batch: Batch,
                         rng: jax.Array, num_microbatches: Optional[int]
                         ) -> Tuple[Variables, Dict[str, jax.Array]]:
  """`grad_fn(trainable, batch, rng) -> (grads, summed metrics)`, in microbatches.

  With `num_microbatches` N > 1 the batch is split (`split_microbatches`) and
  a `lax.scan` sums the microbatches' gradients and metrics in float32. The
  loss is a sum over tokens, so the sum of the microbatch gradients is the
  gradient of the whole batch: one optimizer update follows, as with one big
  batch, while only one microbatch's activations are alive at a time.
  Microbatch k's dropout uses `fold_in(rng, k)`. None or 1: one pass, `rng`.
  """
  if not num_microbatches or num_microbatches == 1:
    return grad_fn(trainable, batch, rng)
  microbatches = split_microbatches(batch, num_microbatches)

  def accumulate(total, xs):
    index, microbatch = xs
    result = grad_fn(trainable, microbatch, jax.random.fold_in(rng, index))
    return jax.tree_util.tree_map(jnp.add, total, result), None

  first = jax.tree_util.tree_map(lambda x: x[0], microbatches)
  zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, jnp.float32),
                                 jax.eval_shape(grad_fn, trainable, first, rng))
  total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(num_microbatches), microbatches))
  return total


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, seed: int,
                    partitioner: Any = None, state_shardings: Optional[TrainState] = None,
                    num_microbatches: Optional[int] = None,
                    **loss_kwargs) -> Callable[[TrainState, Batch], Tuple[TrainState, Dict]]:
  """A jitted `step(state, batch) -> (state, metrics)`.

  Dropout randomness is `fold_in(PRNGKey(seed), step)`, so a resumed run
  draws exactly what an uninterrupted one would. The trainable variables and
  optimizer state are donated (updated in place); the frozen ones are not.
  With a `partitioning.Partitioner` the step runs on its mesh: the state
  keeps `state_shardings` (a TrainState of NamedShardings), metrics are
  replicated, and the batch comes as global arrays (`global_batch`).

  `num_microbatches` (T5X's name): accumulate the gradient over that many
  slices of the batch before the one update (`accumulate_gradients`); the
  batch size must be a multiple of it. A loss normalizing factor computed
  from the batch is computed once, on the whole batch.
  """
  base_rng = jax.random.PRNGKey(seed)
  loss_normalizing_factor = loss_kwargs.pop('loss_normalizing_factor', None)

  def update(step, trainable, opt_state, frozen, batch):
    dropout_rng = jax.random.fold_in(base_rng, step)
    factor, weights = get_loss_normalizing_factor_and_weights(loss_normalizing_factor, batch)
    if weights is not None:
      batch = {**batch, 'decoder_loss_weights': weights}

    def grad_fn(trainable, batch, rng):
      loss_fn = lambda t: batch_loss(model, merge(frozen, t), batch, dropout_rng=rng,
                                     loss_normalizing_factor=factor, **loss_kwargs)
      return jax.grad(loss_fn, has_aux=True)(trainable)

    grads, metrics = accumulate_gradients(grad_fn, trainable, batch, dropout_rng,
                                          num_microbatches)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    metrics['grad_norm'] = optax.global_norm(grads)
    return step + 1, trainable, opt_state, metrics

  if partitioner is None:
    jitted = jax.jit(update, donate_argnums=(1, 2))
  else:
    out_shardings = (state_shardings.step, state_shardings.trainable,
                     state_shardings.opt_state, partitioner.replicated)
    jitted = partitioner.partition(update, out_shardings=out_shardings, donate_argnums=(1, 2))

  def step_fn(state: TrainState, batch: Batch) -> Tuple[TrainState, Dict]:
    step, trainable, opt_state, metrics = jitted(
        state.step, state.trainable, state.opt_state, state.frozen, dict(batch))
    return state.replace(step=step, trainable=trainable, opt_state=opt_state), metrics

  # Ahead-of-time: `step_fn.lower(state, batch).compile()` on ShapeDtypeStructs
  # (with shardings) compiles without any real array (tools/memory_report.py).
  step_fn.lower = lambda state, batch: jitted.lower(
      state.step, state.trainable, state.opt_state, state.frozen, dict(batch))
  return step_fn
