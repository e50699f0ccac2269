"""Teacher-forced evaluation, T5X's "training_eval": validation loss and token accuracy.

Inference evaluation (decoding, rank classification, the task's metrics) is
`prompt_tuning.infer.evaluation.InferenceEvaluator`, which the trainer is
given (gin) and calls with the model and variables.
"""
from typing import Any, Dict, Mapping

import flax.linen as nn
import jax
import numpy as np
import seqio

from prompt_tuning.model import contract
from prompt_tuning.train.step import batch_loss

Variables = Dict[str, Any]


class TeacherForcedEvaluator:
  """Validation loss and token accuracy, summed over `steps` batches."""

  def __init__(self, model: nn.Module, task_name: str, feature_lengths: Mapping[str, int],
               batch_size: int, steps: int, split: str = 'validation'):
    self.task_name, self.steps, self.batch_size = task_name, steps, batch_size
    # Batched here, not by seqio (which drops the remainder): a split smaller
    # than a batch still counts; its last batch is padded with empty rows
    # (loss weight 0), so every batch has the shape the mesh divides.
    self._dataset = seqio.get_dataset(
        task_name, dict(feature_lengths), contract.feature_converter_for(model, task_name),
        dataset_split=split, shuffle=False, num_epochs=1).batch(batch_size)
    self._loss = jax.jit(lambda v, b: batch_loss(model, v, b)[1])

  def evaluate(self, variables: Variables) -> Dict[str, float]:
    totals: Dict[str, float] = {}
    for i, batch in enumerate(self._dataset.as_numpy_iterator()):
      if i >= self.steps:
        break
      short = self.batch_size - len(next(iter(batch.values())))
      batch = {k: np.pad(v, [(0, short)] + [(0, 0)] * (v.ndim - 1)) for k, v in batch.items()}
      for k, v in self._loss(variables, batch).items():
        totals[k] = totals.get(k, 0.0) + float(v)
    weight = max(totals.get('weight_sum', 0.0), 1.0)
    return {'loss': totals.get('loss', 0.0) / weight,
            'accuracy': totals.get('correct', 0.0) / weight}
