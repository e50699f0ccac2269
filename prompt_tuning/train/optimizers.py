"""Optimizers of the paper and of T5 fine-tuning, as optax transformations.

The optimizer only ever sees the trainable collections, so its state exists
only for them: for a 100-token prompt, one [100, d] second-moment estimate.

T5X's Adafactor decays its second moment with the *global* step, which a
prompt-tuning run restores from the pretrained checkpoint (1,100,000 for the
lm100k models): decay = 1 - (step + 1)^-0.8 is then almost 1 from the first
update. optax counts from 0, so reproducing T5X needs
`decay_offset = -base_step`; `t5x_step_offset=True` (the default) does that.

Learning-rate schedules, also on the global step: 'constant' (the paper's
prompt tuning, T5 fine-tuning) and 'rsqrt_decay' (T5 pre-training and LM
adaptation: learning_rate / sqrt(max(step, warmup_steps)), i.e. 0.01 for the
first 10,000 steps, 0.001 at step 1,000,000).
"""
import dataclasses
from typing import Optional

import jax.numpy as jnp
import optax

SCHEDULES = ('constant', 'rsqrt_decay')


@dataclasses.dataclass(frozen=True)
class Adafactor:
  """Adafactor settings; `build(base_step)` makes the optax transformation.

  Defaults are the paper's prompt-tuning settings: constant learning rate 0.3,
  decay rate 0.8, weight decay 1e-5 (not scaled by the learning rate), no
  parameter scaling, update clipping 1.0, no momentum, epsilon 1e-30,
  factoring only for matrices whose smaller dimension is >= 128.
  """
  learning_rate: float = 0.3
  decay_rate: float = 0.8
  weight_decay_rate: Optional[float] = 1e-5
  multiply_by_parameter_scale: bool = False
  clipping_threshold: Optional[float] = 1.0
  momentum: Optional[float] = None
  epsilon: float = 1e-30
  factored: bool = True
  min_dim_size_to_factor: int = 128
  t5x_step_offset: bool = True
  schedule: str = 'constant'
  warmup_steps: int = 10_000

  def __post_init__(self):
    if self.schedule not in SCHEDULES:
      raise ValueError(f'Unknown learning-rate schedule {self.schedule!r}; one of {SCHEDULES}.')

  def build(self, base_step: int = 0) -> optax.GradientTransformation:
    """The transformation for a run whose pretrained checkpoint is at `base_step`."""
    learning_rate = self.learning_rate
    if self.schedule == 'rsqrt_decay':
      # optax counts updates from 0; the schedule runs on the global step.
      learning_rate = lambda count: self.learning_rate * jnp.reciprocal(
          jnp.sqrt(jnp.maximum(count + base_step, self.warmup_steps).astype(jnp.float32)))
    return optax.adafactor(
        learning_rate=learning_rate,
        decay_rate=self.decay_rate,
        decay_offset=-base_step if self.t5x_step_offset else 0,
        multiply_by_parameter_scale=self.multiply_by_parameter_scale,
        clipping_threshold=self.clipping_threshold,
        momentum=self.momentum,
        weight_decay_rate=self.weight_decay_rate,
        eps=self.epsilon,
        factored=self.factored,
        min_dim_size_to_factor=self.min_dim_size_to_factor,
    )

  def learning_rate_at(self, step: int) -> float:
    """The learning rate of the update that takes global step `step - 1` to `step`."""
    if self.schedule == 'rsqrt_decay':
      return self.learning_rate / max(step - 1, self.warmup_steps) ** 0.5
    return self.learning_rate

