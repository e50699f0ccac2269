"""Teacher-forced evaluation, T5X's "training_eval": validation loss and token accuracy.

Inference evaluation (decoding, rank classification, the task's metrics) is
`prompt_tuning.infer.evaluation.InferenceEvaluator`, which the trainer is
given (gin) and calls with the model and variables.
"""
from typing import Any, Dict, Mapping

import flax.linen as nn
import jax
import seqio

from prompt_tuning.model import contract
from prompt_tuning.train.step import batch_loss

Variables = Dict[str, Any]


class TeacherForcedEvaluator:
  """Validation loss and token accuracy, summed over `steps` batches."""

  def __init__(self, model: nn.Module, task_name: str, feature_lengths: Mapping[str, int],
               batch_size: int, steps: int, split: str = 'validation'):
    self.task_name, self.steps = task_name, steps
    self._dataset = seqio.get_dataset(
        task_name, dict(feature_lengths), contract.feature_converter_for(model, task_name),
        dataset_split=split,
        shuffle=False, num_epochs=1, batch_size=batch_size)
    self._loss = jax.jit(lambda v, b: batch_loss(model, v, b)[1])

  def evaluate(self, variables: Variables) -> Dict[str, float]:
    totals: Dict[str, float] = {}
    for i, batch in enumerate(self._dataset.as_numpy_iterator()):
      if i >= self.steps:
        break
      for k, v in self._loss(variables, batch).items():
        totals[k] = totals.get(k, 0.0) + float(v)
    weight = max(totals.get('weight_sum', 0.0), 1.0)
    return {'loss': totals.get('loss', 0.0) / weight,
            'accuracy': totals.get('correct', 0.0) / weight}
