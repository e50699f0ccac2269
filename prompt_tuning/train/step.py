"""The train state and the train step: gradients for the trainable collections only.

A run names its trainable collections: prompt tuning `('prompt',)`, model
tuning `('params',)`. Everything else is frozen: it is an input of the step,
never differentiated, never updated, and the optimizer holds no state for it.
Because the frozen weights are not inputs of `jax.grad`, XLA computes no
gradient for them at all (only activations' gradients flow through them).
"""
from typing import Any, Callable, Dict, Mapping, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from prompt_tuning.model.losses import compute_weighted_cross_entropy

Variables = Dict[str, Any]
Batch = Mapping[str, jax.Array]


class TrainState(flax.struct.PyTreeNode):
  """What a step reads and writes.

  Attributes:
    step: global step (int32 scalar); starts at the pretrained checkpoint's
      step, as in T5X, so TRAIN_STEPS is absolute.
    frozen: collections that are not trained, e.g. {'params': backbone}.
    trainable: collections that are, e.g. {'prompt': {'prompt': {'prompt': [P, d]}}}.
    opt_state: optimizer state of `trainable` only.
  """
  step: jax.Array
  frozen: Variables
  trainable: Variables
  opt_state: optax.OptState

  @property
  def variables(self) -> Variables:
    return {**self.frozen, **self.trainable}


def split_variables(variables: Variables, trainable_collections: Sequence[str]
                    ) -> Tuple[Variables, Variables]:
  """(frozen, trainable) by collection name; an unknown name is an error."""
  missing = [c for c in trainable_collections if c not in variables]
  if missing:
    raise ValueError(f'Trainable collections {missing} are not among the model\'s '
                     f'collections {sorted(variables)}.')
  trainable = {c: v for c, v in variables.items() if c in trainable_collections}
  frozen = {c: v for c, v in variables.items() if c not in trainable_collections}
  return frozen, trainable


def batch_loss(model: nn.Module, variables: Variables, batch: Batch, *,
               dropout_rng: jax.Array = None, z_loss: float = 1e-4,
               label_smoothing: float = 0.0, loss_normalizing_factor: float = None
               ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """T5X's loss on a batch of the encoder-decoder feature converter's keys.

  Args:
    batch: encoder_input_tokens [b, l], decoder_input_tokens [b, t],
      decoder_target_tokens [b, t], optionally decoder_loss_weights [b, t].
    dropout_rng: enables dropout when given.

  Returns:
    (loss, metrics) with metrics summed over the batch: loss, z_loss,
    weight_sum (number of target tokens) and correct (argmax hits).
  """
  targets = batch['decoder_target_tokens']
  logits = model.apply(
      variables, batch['encoder_input_tokens'], batch['decoder_input_tokens'], targets,
      enable_dropout=dropout_rng is not None,
      rngs={'dropout': dropout_rng} if dropout_rng is not None else None)
  weights = batch.get('decoder_loss_weights')
  if weights is None:
    weights = targets > 0
  loss, z, weight_sum = compute_weighted_cross_entropy(
      logits, targets, weights, label_smoothing, z_loss, loss_normalizing_factor)
  correct = jnp.sum((jnp.argmax(logits, -1) == targets) * weights)
  return loss, {'loss': loss, 'z_loss': z, 'weight_sum': weight_sum,
                'correct': correct.astype(jnp.float32)}


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, seed: int,
                    **loss_kwargs) -> Callable[[TrainState, Batch], Tuple[TrainState, Dict]]:
  """A jitted `step(state, batch) -> (state, metrics)`.

  Dropout randomness is `fold_in(PRNGKey(seed), step)`, so a resumed run
  draws exactly what an uninterrupted one would. The trainable variables and
  optimizer state are donated (updated in place); the frozen ones are not.
  """
  base_rng = jax.random.PRNGKey(seed)

  def update(step, trainable, opt_state, frozen, batch):
    dropout_rng = jax.random.fold_in(base_rng, step)

    def loss_fn(trainable):
      return batch_loss(model, {**frozen, **trainable}, batch, dropout_rng=dropout_rng,
                        **loss_kwargs)

    grads, metrics = jax.grad(loss_fn, has_aux=True)(trainable)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    metrics['grad_norm'] = optax.global_norm(grads)
    return step + 1, trainable, opt_state, metrics

  jitted = jax.jit(update, donate_argnums=(1, 2))

  def step_fn(state: TrainState, batch: Batch) -> Tuple[TrainState, Dict]:
    step, trainable, opt_state, metrics = jitted(
        state.step, state.trainable, state.opt_state, state.frozen, dict(batch))
    return state.replace(step=step, trainable=trainable, opt_state=opt_state), metrics

  return step_fn
