"""The variables inference runs on: a delta checkpoint, a prompt file, or a prompt bank.

    loader = VariableLoader(model, initial_checkpoint_path=None)
    loaded = loader.checkpoint('/runs/rte/checkpoint_1103000')  # or a MODEL_DIR (latest)
    loaded = loader.prompts(['/prompts/rte.npy'])               # needs INITIAL_CHECKPOINT_PATH
    loaded = loader.prompts(['a.npy', 'b.npy', '/runs/rte'])    # a bank [3, P, d]: an ensemble
    logits = loaded.model.apply(loaded.variables, ...)

A delta checkpoint holds only what training changed, so the frozen backbone
is read from the base checkpoint its metadata names, or from
INITIAL_CHECKPOINT_PATH when that is given (the base moved, or is mounted
elsewhere). Either way the backbone must have the fingerprint recorded at
training time: a prompt is meaningless on another model. A bare `.npy`
prompt records no base, so INITIAL_CHECKPOINT_PATH is required for it.
"""
import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

import flax.linen as nn
import numpy as np
from absl import logging

from prompt_tuning.gin_utils import ConfigurationError
from prompt_tuning.infer import prompt_bank
from prompt_tuning.model import load_pretrained
from prompt_tuning.model import pretrained
from prompt_tuning.model.param_shapes import check_params
from prompt_tuning.model.t5 import Transformer
from prompt_tuning.prompts.prompt import PromptTransformer
from prompt_tuning.train import checkpoints

Variables = Dict[str, Any]


@dataclasses.dataclass
class Loaded:
  """What inference needs.

  Attributes:
    model: the configured model, its prompt length set to the loaded prompt's.
    variables: {'params': backbone, 'prompt': ..., ...}; with a bank, the
      'prompt' is the bank's first prompt (each pass replaces it).
    prompt_bank: [num_prompts, length, embed] when several prompts were
      given (an ensemble), else None.
    step: the checkpoint's step (None for prompt files).
    source: what was loaded, for logs.
  """
  model: nn.Module
  variables: Variables
  prompt_bank: Optional[np.ndarray]
  step: Optional[int]
  source: str


def fit_model(model: nn.Module, prompt_length: Optional[int]) -> nn.Module:
  """`model` with the loaded prompt's length (or without a prompt when none was loaded).

  The length is a property of the prompt, so inference takes it from the
  prompt instead of making PROMPT_LENGTH repeat it.
  """
  if prompt_length is None:
    if isinstance(model, PromptTransformer):
      logging.info('No prompt was loaded (a model-tuning checkpoint): running the plain '
                   'Transformer.')
      return Transformer(model.config)
    return model
  if not hasattr(model, 'prompt_length'):
    # Applied to a model without a prompt, the prompt would be silently ignored.
    raise ConfigurationError(
        f'A prompt was loaded but MODEL ({type(model).__name__}) reads none; '
        'use @prompt.PromptTransformer() (as gin/runs/eval.gin and infer.gin do).')
  if prompt_length != model.prompt_length:
    logging.info('Prompt length %d (from the loaded prompt; the configuration said %d).',
                 prompt_length, model.prompt_length)
    return model.clone(prompt_length=prompt_length)
  return model


class VariableLoader:
  """Loads checkpoints and prompt files onto one frozen backbone, read once.

  Args:
    model: the configured model (its `config` checks the backbone's shapes).
    initial_checkpoint_path: the backbone, overriding the checkpoints'
      recorded base; required for `.npy` prompts.
  """

  def __init__(self, model: nn.Module, initial_checkpoint_path: Optional[str] = None):
    self.model = model
    self.initial_checkpoint_path = initial_checkpoint_path
    self._bases: Dict[str, Tuple[Any, str]] = {}

  def load(self, checkpoint_path: Optional[str] = None,
           prompt_files: Optional[Sequence[str]] = None) -> Loaded:
    """CHECKPOINT_PATH (its latest checkpoint) or PROMPT_FILES, exactly one of them."""
    if (checkpoint_path is None) == (not prompt_files):
      raise ConfigurationError(
          'Set exactly one of CHECKPOINT_PATH (a checkpoint, a model directory or a '
          '.npy prompt) and PROMPT_FILES (a list of prompts to ensemble).')
    if prompt_files:
      return self.prompts(prompt_files)
    if checkpoint_path.endswith('.npy'):
      return self.prompts([checkpoint_path])
    return self.checkpoint(checkpoint_path)

  def base(self, path: str, expected_fingerprint: Optional[str] = None,
           trained: str = '') -> Any:
    """The backbone params at `path`, checked against the model and the fingerprint.

    Args:
      expected_fingerprint: the fingerprint the delta was trained with.
      trained: what was trained on it (named in errors).

    Raises:
      FileNotFoundError: the base is not there.
      checkpoints.FingerprintMismatchError: it is another model.
    """
    if path not in self._bases:
      if not pretrained._exists(path):  # pylint: disable=protected-access
        hint = (f' ({trained} records it as its base; if it moved, set '
                'INITIAL_CHECKPOINT_PATH to its new place)') if trained else ''
        raise FileNotFoundError(f'The base checkpoint {path} does not exist{hint}.')
      logging.info('Loading the frozen model from %s', path)
      _, params = load_pretrained(path)
      check_params(self.model.config, params, path)
      self._bases[path] = (params, checkpoints.fingerprint(params))
    params, found = self._bases[path]
    if expected_fingerprint is not None and found != expected_fingerprint:
      raise checkpoints.FingerprintMismatchError(
          f'{trained} was trained on a base model with fingerprint {expected_fingerprint}, '
          f'but {path} has fingerprint {found}: it is a different model. Point '
          'INITIAL_CHECKPOINT_PATH at the checkpoint the prompt was trained on.')
    return params

  def _delta(self, path: str) -> Tuple[str, Dict[str, Any], Dict[str, Any]]:
    """(checkpoint directory, trainable collections, metadata) of a checkpoint."""
    directory = checkpoints.resolve_checkpoint(path)
    return directory, checkpoints.read_trainable(directory), checkpoints.read_metadata(directory)

  def _base_for(self, directory: str, metadata: Dict[str, Any]) -> Any:
    path = self.initial_checkpoint_path or metadata.get('base_checkpoint')
    if not path:
      raise ConfigurationError(f'{directory} names no base checkpoint; set '
                               'INITIAL_CHECKPOINT_PATH.')
    return self.base(path, metadata.get('base_fingerprint'), directory)

  def checkpoint(self, path: str) -> Loaded:
    """A delta checkpoint (`checkpoint_<step>`, or a directory's latest) on its base."""
    directory, trainable, metadata = self._delta(path)
    if 'params' in trainable:
      # Model tuning: the checkpoint holds the whole backbone.
      variables = dict(trainable)
    else:
      variables = {'params': self._base_for(directory, metadata), **trainable}
    length = (checkpoints.single_prompt(trainable['prompt']).shape[0]
              if 'prompt' in trainable else None)
    return Loaded(fit_model(self.model, length), variables, None,
                  checkpoints.checkpoint_step(directory), directory)

  def prompts(self, paths: Sequence[str]) -> Loaded:
    """Prompts from `.npy` files and/or checkpoints; two or more make a bank.

    Raises:
      ValueError: the prompts do not all have one shape.
      ConfigurationError: only `.npy` files and no INITIAL_CHECKPOINT_PATH.
    """
    paths = list(paths)
    prompts: List[np.ndarray] = []
    params = None
    for path in paths:
      if path.endswith('.npy'):
        prompts.append(checkpoints.load_npy(path))
        continue
      directory, trainable, metadata = self._delta(path)
      if set(trainable) != {'prompt'}:
        raise ValueError(f'{directory} holds {sorted(trainable)}, not a prompt alone; '
                         'only prompts can be ensembled.')
      prompts.append(checkpoints.single_prompt(trainable['prompt']))
      # Every checkpoint must have been trained on the same backbone.
      params = self._base_for(directory, metadata)
    shapes = [tuple(np.shape(p)) for p in prompts]
    if len(set(shapes)) > 1:
      listing = ', '.join(f'{path} {shape}' for path, shape in zip(paths, shapes))
      raise ValueError(f'The prompts to ensemble must have one shape [length, embed]; '
                       f'got {listing}.')
    if any(len(shape) != 2 for shape in shapes):
      raise ValueError(f'A prompt file holds [length, embed]; got shapes {shapes}.')
    if params is None:
      if not self.initial_checkpoint_path:
        raise ConfigurationError(
            'A .npy prompt records no base model: set INITIAL_CHECKPOINT_PATH to the '
            'checkpoint it was trained on.')
      params = self.base(self.initial_checkpoint_path)
    bank = prompt_bank.stack_prompts(prompts)
    variables = prompt_bank.with_prompts({'params': params}, bank[0])
    step = (checkpoints.checkpoint_step(checkpoints.resolve_checkpoint(paths[0]))
            if len(paths) == 1 and not paths[0].endswith('.npy') else None)
    return Loaded(fit_model(self.model, shapes[0][0]), variables,
                  bank if len(bank) > 1 else None, step, ', '.join(paths))
