"""The T5X loss: cross-entropy summed over target tokens, plus z-loss.

    loss_t = logsumexp(logits_t) - <targets_t, logits_t> + z * logsumexp(logits_t)^2

summed over non-padding targets (no mean, unless a loss normalizing factor is
given), as T5X's `compute_weighted_cross_entropy`. The z-loss term pulls the
softmax normaliser towards 1 and has its own gradient.
"""
from typing import Mapping, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
# T5X's SpecialLossNormalizingFactor names: factors computed from the batch.
SPECIAL_LOSS_NORMALIZING_FACTORS = ('NUM_REAL_TARGET_TOKENS', 'NUM_TOTAL_TARGET_TOKENS',
                                    'AVERAGE_PER_SEQUENCE')


@jax.custom_vjp
def cross_entropy_with_logits(logits: Array, targets: Array, z_loss: float
                              ) -> Tuple[Array, Array]:
  """Per-token (loss incl. z-loss, z-loss alone) for soft targets.

  Args:
    logits: [..., vocab] float32.
    targets: [..., vocab] target distribution (one-hot or smoothed).
    z_loss: coefficient of logsumexp(logits)^2.

  Returns:
    Two arrays of shape [...].
  """
  loss, z, _ = _cross_entropy_forward(logits, targets, z_loss)
  return loss, z


def _cross_entropy_forward(logits, targets, z_loss):
  max_logit = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  shifted = logits - max_logit
  sum_exp = jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True)
  log_z = jnp.squeeze(jnp.log(sum_exp) + max_logit, -1)
  log_softmax = shifted - jnp.log(sum_exp)
  loss = -jnp.sum(targets * log_softmax, axis=-1)
  z = z_loss * jnp.square(log_z)
  return loss + z, z, (log_softmax, log_z)


def _cross_entropy_fwd(logits, targets, z_loss):
  loss, z, (log_softmax, log_z) = _cross_entropy_forward(logits, targets, z_loss)
  # Keep the softmax only: the gradient needs nothing else, which saves a
  # [batch, length, vocab] buffer over plain autodiff.
  return (loss, z), (jnp.exp(log_softmax), targets, log_z, z_loss)


def _cross_entropy_bwd(residuals, cotangents):
  softmax, targets, log_z, z_loss = residuals
  g_loss = cotangents[0]  # the z output is reported, not differentiated
  g_logits = (softmax - targets + 2 * z_loss * log_z[..., None] * softmax)
  g_logits = g_logits * g_loss[..., None]
  g_targets = -jnp.log(jnp.clip(softmax, 1e-30)) * g_loss[..., None]
  return g_logits.astype(softmax.dtype), g_targets, None


cross_entropy_with_logits.defvjp(_cross_entropy_fwd, _cross_entropy_bwd)


def compute_weighted_cross_entropy(
    logits: Array, targets: Array, weights: Optional[Array] = None,
    label_smoothing: float = 0.0, z_loss: float = 1e-4,
    loss_normalizing_factor: Optional[float] = None) -> Tuple[Array, Array, Array]:
  """T5X's training loss over a batch.

  Args:
    logits: [batch, length, vocab] float32.
    targets: [batch, length] int token ids.
    weights: [batch, length] loss weights; defaults to `targets > 0`.
    label_smoothing: mass spread over the other vocab entries.
    z_loss: coefficient of the auxiliary z-loss (1e-4 in T5X).
    loss_normalizing_factor: divide the per-token losses by this.

  Returns:
    (total loss, total z-loss, sum of weights), scalars.
  """
  if weights is None:
    weights = (targets > 0)
  weights = weights.astype(jnp.float32)
  vocab = logits.shape[-1]
  confidence = 1.0 - label_smoothing
  low_confidence = label_smoothing / (vocab - 1)
  # The entropy of the smoothed target: subtracting it makes a perfect
  # prediction score 0, as in T5X.
  normalizing_constant = -(
      confidence * jnp.log(confidence) +
      (vocab - 1) * low_confidence * jnp.log(low_confidence + 1e-20))
  soft_targets = jax.nn.one_hot(targets, vocab, dtype=logits.dtype)
  soft_targets = soft_targets * (confidence - low_confidence) + low_confidence
  loss, z = cross_entropy_with_logits(logits, soft_targets, z_loss)
  loss = (loss - normalizing_constant) * weights
  z = z * weights
  if loss_normalizing_factor is not None:
    loss, z = loss / loss_normalizing_factor, z / loss_normalizing_factor
  return jnp.sum(loss), jnp.sum(z), jnp.sum(weights)


def get_loss_normalizing_factor_and_weights(
    loss_normalizing_factor: Union[float, str, None], batch: Mapping[str, Array]
) -> Tuple[Union[float, Array, None], Optional[Array]]:
  """T5X's function of that name: (factor, loss weights) for a batch.

  A number (or None) passes through with the batch's `decoder_loss_weights`.
  A name from `SPECIAL_LOSS_NORMALIZING_FACTORS` is computed from `batch`:
  the sum of the loss weights (NUM_REAL_TARGET_TOKENS), batch * target length
  (NUM_TOTAL_TARGET_TOKENS), or, for AVERAGE_PER_SEQUENCE, weights divided by
  each sequence's own sum and the factor their total (unpacked batches only).
  It depends on the whole batch: gradient accumulation computes it once on
  the full batch and gives it to every microbatch (T5X computes it per
  microbatch, which weights microbatches unequally).
  """
  weights = batch.get('decoder_loss_weights')
  if loss_normalizing_factor is None or not isinstance(loss_normalizing_factor, str):
    return loss_normalizing_factor, weights
  name = loss_normalizing_factor.upper()
  targets = batch['decoder_target_tokens']
  weights = (targets > 0 if weights is None else weights).astype(jnp.float32)
  if name == 'NUM_REAL_TARGET_TOKENS':
    return jnp.sum(weights), weights
  if name == 'NUM_TOTAL_TARGET_TOKENS':
    return float(np.prod(targets.shape)), weights
  if name == 'AVERAGE_PER_SEQUENCE':
    if 'decoder_segment_ids' in batch:
      raise NotImplementedError('AVERAGE_PER_SEQUENCE on packed batches is not supported.')
    weights = jnp.nan_to_num(weights / jnp.sum(weights, axis=-1, keepdims=True),
                             nan=0.0, posinf=0.0, neginf=0.0)
    return jnp.sum(weights), weights
  raise ValueError(f'Unknown loss_normalizing_factor {loss_normalizing_factor!r}: give a '
                   f'number or one of {SPECIAL_LOSS_NORMALIZING_FACTORS}.')


def sequence_scores(logits: Array, targets: Array, weights: Optional[Array] = None
                    ) -> Array:
  """Sum of target-token log-likelihoods per example, [batch] (T5X's score_batch)."""
  if weights is None:
    weights = targets > 0
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  token = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  return jnp.sum(token * weights.astype(jnp.float32), axis=-1)
