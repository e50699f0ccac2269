"""A tuning method: the backbone with its deltas, what it trains, and the optimizer.

    method = Method(config, deltas=(PromptTuning(length=100),))   # prompt tuning
    method = Method(config, trainable=('params/.*',),              # model tuning
                    optimizer=Adafactor(learning_rate=1e-3, ...))
    frozen, trainable = method.split(variables)

The trainer, `bench/train_step.py` and `tools/memory_report.py` all build
their model, trainable split and optimizer from this one object; a run's
gin file binds it (gin/runs/base.gin, gin/methods/).
"""
import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import flax.linen as nn
import gin

from prompt_tuning import deltas as deltas_lib
from prompt_tuning import gin_utils
from prompt_tuning.deltas import paths
from prompt_tuning.model import contract
from prompt_tuning.model.config import DecoderOnlyConfig, T5Config
from prompt_tuning.model.param_shapes import flatten_tree
from prompt_tuning.train.optimizers import Adafactor

Variables = Dict[str, Any]


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Method:
  """What a run tunes and how.

  Attributes:
    model_config: the backbone (MODEL_CONFIG): a `T5Config` builds T5.1.1, a
      `DecoderOnlyConfig` the decoder-only LM.
    deltas: the methods attached to it (DELTAS), e.g. (PromptTuning(),).
    trainable: path patterns of the trained variables (TRAINABLE); None
      trains each delta's own (`Delta.trainable_patterns`). Model tuning is
      ('params/.*',), norm tuning ('params/.*/scale',).
    optimizer: its settings; `build(base_step)` gives the transformation.
  """
  model_config: Union[T5Config, DecoderOnlyConfig]
  deltas: Sequence[deltas_lib.Delta] = ()
  trainable: Optional[Sequence[str]] = None
  optimizer: Adafactor = Adafactor()

  def __post_init__(self):
    # Gin hands lists; the model needs hashable fields.
    object.__setattr__(self, 'deltas', tuple(self.deltas))
    if self.trainable is not None:
      object.__setattr__(self, 'trainable', tuple(self.trainable))
    deltas_lib.check_deltas(self.deltas)
    if not self.trainable_patterns:
      raise ValueError('The method trains nothing: give DELTAS (e.g. gin/methods/prompt.gin) '
                       "or TRAINABLE path patterns (model tuning: ['params/.*']).")
    paths.compile_patterns(self.trainable_patterns)

  @property
  def model(self) -> nn.Module:
    """The backbone of `model_config` (T5.1.1 or decoder-only) with the deltas."""
    return contract.build(self.model_config, self.deltas)

  @property
  def trainable_patterns(self) -> Tuple[str, ...]:
    if self.trainable is not None:
      return self.trainable
    return deltas_lib.trainable_patterns(self.deltas)

  def logical_axis_rules(self) -> Tuple[Tuple[str, Any], ...]:
    return deltas_lib.logical_axis_rules(self.deltas)

  def split(self, variables: Variables) -> Tuple[Variables, Variables]:
    """(frozen, trainable) by the trainable patterns; one that matches nothing is an error."""
    for delta in self.deltas:
      wants = [p for p in delta.trainable_patterns() if p.startswith(f'{delta.collection}/')]
      if wants and delta.collection not in variables:
        raise ValueError(f'{type(delta).__name__} created no variables: '
                         f'{delta.no_variables_hint()}.')
    return paths.partition(variables, self.trainable_patterns)

  def trains_every(self, abstract_variables: Variables, collection: str) -> bool:
    """Whether every leaf of `collection` in `abstract_variables` is trained."""
    compiled = paths.compile_patterns(self.trainable_patterns)
    leaves = flatten_tree({collection: abstract_variables[collection]})
    return all(paths.matches(path, compiled) for path in leaves)

  def record(self) -> Dict[str, Any]:
    """What a checkpoint's metadata records to rebuild the model and the split."""
    return {'deltas': [d.to_config() for d in self.deltas],
            'trainable': list(self.trainable_patterns),
            'model_config': dataclasses.asdict(self.model_config)}

  def export(self, variables: Variables, directory: str) -> List[str]:
    """The deltas' files (e.g. prompt.npy) for `variables` in `directory`."""
    return deltas_lib.export_all(self.deltas, variables, directory)


def from_run_files(run_files: Sequence[str], model_config: T5Config,
                   bindings: Sequence[str] = ()) -> Method:
  """The method gin run files configure (deltas, trained paths, optimizer), on `model_config`.

  `bench/` and `tools/` take prompt tuning's and model tuning's settings from
  the run files themselves (e.g. gin/runs/prompt_tune.gin), so they measure
  what a run trains. Replaces the process's gin configuration.
  """
  placeholders = ['MODEL_DIR = None', 'MIXTURE_OR_TASK_NAME = None',
                  'INITIAL_CHECKPOINT_PATH = None', 'MODEL_CONFIG = @config.T5Config()']
  gin.clear_config()
  gin_utils.parse_gin(run_files, placeholders + list(bindings))
  method = gin_utils.macro('METHOD')
  gin.clear_config()
  return dataclasses.replace(method, model_config=model_config)


__all__ = ['Method', 'from_run_files']
