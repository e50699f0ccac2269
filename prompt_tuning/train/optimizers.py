"""Optimizers of the paper and of T5 fine-tuning, as optax transformations.

The optimizer only ever sees the trainable collections, so its state exists
only for them: for a 100-token prompt, one [100, d] second-moment estimate.

T5X's Adafactor decays its second moment with the *global* step, which a
prompt-tuning run restores from the pretrained checkpoint (1,100,000 for the
lm100k models): decay = 1 - (step + 1)^-0.8 is then almost 1 from the first
update. optax counts from 0, so reproducing T5X needs
`decay_offset = -base_step`; `t5x_step_offset=True` (the default) does that.
"""
import dataclasses
from typing import Optional

import optax


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

  def build(self, base_step: int = 0) -> optax.GradientTransformation:
    """The transformation for a run whose pretrained checkpoint is at `base_step`."""
    return optax.adafactor(
        learning_rate=self.learning_rate,
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
    del step  # constant schedules only, as in the paper
    return self.learning_rate

