"""The variables inference runs on: a delta checkpoint, a prompt file, or a bank of them.

    loader = VariableLoader(model, initial_checkpoint_path=None)
    loaded = loader.checkpoint('/runs/rte/checkpoint_1103000')  # or a MODEL_DIR (latest)
    loaded = loader.members(['/prompts/rte.npy'])               # needs INITIAL_CHECKPOINT_PATH
    loaded = loader.members(['a.npy', 'b.npy', '/runs/rte'])    # a bank of 3: an ensemble
    logits = loaded.model.apply(loaded.variables, ...)

Every checkpoint loads the same way, whatever its method: the model is
rebuilt from the deltas the checkpoint records (on the configured
backbone), and the variables are the frozen base merged with the
checkpoint's delta. A delta checkpoint holds only what training changed,
so the base is read from the checkpoint its metadata names, or from
INITIAL_CHECKPOINT_PATH when that is given (the base moved, or is mounted
elsewhere); either way it must have the fingerprint recorded at training
time. A model-tuning checkpoint holds the whole backbone and needs no base.
A bare `.npy` prompt records no base, so INITIAL_CHECKPOINT_PATH is required
for it. Checkpoints written before deltas existed load too (their prompt is
recognised by its path).

Checkpoints of real T5X runs (`python -m t5x.train` with gin/t5x/, Orbax or
legacy format) load the same way: they hold the whole backbone with each
delta's collection beside it in `target` (`prompt_tuning.interop.t5x`). The
backbone is theirs; the deltas are the configured model's of the same
collection, or, for a prompt, rebuilt from its shape.
"""
import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
from absl import logging

from prompt_tuning.deltas import PromptTuning, paths
from prompt_tuning.deltas import prompt as prompt_lib
from prompt_tuning.deltas.records import recorded_deltas
from prompt_tuning.gin_utils import ConfigurationError
from prompt_tuning.infer import bank as bank_lib
from prompt_tuning.model import checkpoints
from prompt_tuning.model import contract
from prompt_tuning.model import load_pretrained
from prompt_tuning.model import pretrained
from prompt_tuning.model.finite import check_finite
from prompt_tuning.model.param_shapes import check_params, expected_shapes, flatten_tree

Variables = Dict[str, Any]


@dataclasses.dataclass
class Loaded:
  """What inference needs.

  Attributes:
    model: the backbone with the loaded deltas attached.
    variables: {'params': backbone, <delta collections>: ...}, served
      (materialized); with a bank, the first member's.
    bank: the bank's per-example leaves stacked [N, ...] (`infer.bank`) when
      several members were given (an ensemble), else None.
    step: the checkpoint's step (None for prompt files).
    source: what was loaded, for logs.
  """
  model: nn.Module
  variables: Variables
  bank: Optional[Variables]
  step: Optional[int]
  source: str


def merged(model: nn.Module, variables: Variables) -> Tuple[nn.Module, Variables]:
  """The model without its mergeable deltas (LoRA, IA3, ...), those folded into `params`.

  Serves the same outputs with no delta overhead; the other deltas stay attached.
  """
  kept = []
  for delta in model.deltas:
    if delta.mergeable:
      variables = delta.merge(variables)
    else:
      kept.append(delta)
  return contract.build(model.config, kept), variables


def _materialize(deltas: Sequence[Any], variables: Variables) -> Variables:
  for delta in deltas:
    variables = delta.materialize(variables)
  return variables


class VariableLoader:
  """Loads checkpoints and prompt files onto one frozen backbone, read once.

  Args:
    model: the configured model: its `config` is the backbone (dtype, remat;
      checked against the checkpoints' shapes); a prompt delta among its
      `deltas` says how `.npy` prompts are placed (prefix by default).
    initial_checkpoint_path: the backbone, overriding the checkpoints'
      recorded base; required for `.npy` prompts.
    merge: fold mergeable deltas (LoRA, IA3) into the backbone (`merged`) when
      loading a checkpoint, for serving with no delta overhead.
    partitioner: a `prompt_tuning.train.partitioning.Partitioner` (gin passes
      it; infer does not import train): the backbone is read shard by shard
      onto its mesh with the training layout (`load_pretrained(path,
      shardings)`), the deltas and a bank are replicated on it. None: numpy.
  """

  def __init__(self, model: nn.Module, initial_checkpoint_path: Optional[str] = None,
               merge: bool = False, partitioner: Optional[Any] = None):
    self.model = model
    self.initial_checkpoint_path = initial_checkpoint_path
    self.merge = merge
    self.partitioner = partitioner
    self._bases: Dict[str, Tuple[Any, str]] = {}

  def load(self, checkpoint_path: Optional[str] = None,
           prompt_files: Optional[Sequence[str]] = None) -> Loaded:
    """CHECKPOINT_PATH (its latest checkpoint) or PROMPT_FILES, exactly one of them."""
    if (checkpoint_path is None) == (not prompt_files):
      raise ConfigurationError(
          'Set exactly one of CHECKPOINT_PATH (a checkpoint, a model directory or a '
          '.npy prompt) and PROMPT_FILES (a list of prompts to ensemble).')
    if prompt_files:
      return self.members(prompt_files)
    if checkpoint_path.endswith('.npy'):
      return self.members([checkpoint_path])
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
      _, params = load_pretrained(path, self._param_shardings())
      check_params(self.model.config, params, path)
      self._bases[path] = (params, checkpoints.fingerprint(params))
    params, found = self._bases[path]
    if expected_fingerprint is not None and found != expected_fingerprint:
      raise checkpoints.FingerprintMismatchError(
          f'{trained} was trained on a base model with fingerprint {expected_fingerprint}, '
          f'but {path} has fingerprint {found}: it is a different model. Point '
          'INITIAL_CHECKPOINT_PATH at the checkpoint the delta was trained on.')
    return params

  def _holds_backbone(self, delta: Variables) -> bool:
    """Whether `delta` has every backbone parameter (a model-tuning checkpoint)."""
    expected = flatten_tree(expected_shapes(self.model.config))
    return set(expected) <= set(flatten_tree(delta.get('params', {})))

  def _read_t5x(self, kind: str, directory: str
                ) -> Tuple[str, Variables, Tuple[Any, ...], Any]:
    """`_read` for a T5X checkpoint: its backbone, and the deltas trained beside it."""
    params, trained = pretrained.read_t5x_target(kind, directory)
    check_params(self.model.config, params, directory)
    check_finite({'params': params, **trained}, directory)
    deltas = []
    for collection, tree in trained.items():
      configured = [d for d in self.model.deltas if d.collection == collection]
      if configured:
        deltas.append(configured[0])
      elif collection == prompt_lib.COLLECTION:
        configured = [d for d in self.model.deltas if isinstance(d, PromptTuning)]
        deltas.append(PromptTuning(
            length=int(np.shape(tree['prompt']['prompt'])[0]),
            init=prompt_lib.NotRecorded(directory),
            combine=configured[0].combine if configured else PromptTuning.combine))
      else:
        raise ConfigurationError(
            f'{directory} (a T5X checkpoint) holds the delta collection {collection!r}; '
            'configure that delta (the gin/methods/ file the T5X run used) to load it.')
    return directory, _materialize(deltas, dict(trained)), tuple(deltas), params

  def _read(self, path: str) -> Tuple[str, Variables, Tuple[Any, ...], Any]:
    """(directory, served delta variables, deltas, base params or None) of a checkpoint."""
    try:
      kind, resolved = pretrained.detect_format(path)
    except pretrained.CheckpointError:
      kind = None
    if kind in ('t5x', 't5x_orbax'):
      return self._read_t5x(kind, resolved)
    directory = checkpoints.resolve_checkpoint(path)
    metadata = checkpoints.read_metadata(directory)
    delta = checkpoints.read_delta(directory)
    check_finite(delta, directory)  # the base is checked when it is loaded
    deltas = recorded_deltas(metadata, delta)
    if self._holds_backbone(delta):
      params = None
    else:
      base = self.initial_checkpoint_path or metadata.get('base_checkpoint')
      if not base:
        raise ConfigurationError(f'{directory} names no base checkpoint; set '
                                 'INITIAL_CHECKPOINT_PATH.')
      params = self.base(base, metadata.get('base_fingerprint'), directory)
    return directory, _materialize(deltas, delta), deltas, params

  def checkpoint(self, path: str) -> Loaded:
    """A checkpoint (`checkpoint_<step>`, or a directory's latest) on its base."""
    directory, delta, deltas, params = self._read(path)
    variables = delta if params is None else paths.merge({'params': params}, delta)
    model = contract.build(self.model.config, deltas)
    if self.merge:
      model, variables = merged(model, variables)
    return self._placed(Loaded(model, variables, None, checkpoints.checkpoint_step(directory),
                               directory))

  def _npy_prompt(self, path: str) -> Tuple[Variables, Tuple[Any, ...]]:
    prompt = checkpoints.load_npy(path)
    if np.ndim(prompt) != 2:
      raise ValueError(f'A prompt file holds [length, embed]; {path} holds shape '
                       f'{np.shape(prompt)}.')
    configured = [d for d in self.model.deltas if isinstance(d, PromptTuning)]
    delta = PromptTuning(length=int(prompt.shape[0]), init=prompt_lib.NotRecorded(path),
                         combine=configured[0].combine if configured else PromptTuning.combine)
    return delta.with_prompt({}, np.asarray(prompt, np.float32)), (delta,)

  def members(self, sources: Sequence[str]) -> Loaded:
    """Deltas from `.npy` prompts and/or checkpoints; two or more make a bank.

    Raises:
      ValueError: the members are not one method of one shape.
      ConfigurationError: only `.npy` files and no INITIAL_CHECKPOINT_PATH.
    """
    sources = list(sources)
    loaded: List[Tuple[Variables, Tuple[Any, ...]]] = []
    params = None
    for path in sources:
      if path.endswith('.npy'):
        loaded.append(self._npy_prompt(path))
        continue
      directory, delta, deltas, base = self._read(path)
      if base is None:
        raise ValueError(f'{directory} holds a whole model (model tuning); only deltas '
                         'on a shared frozen model can be ensembled.')
      loaded.append((delta, deltas))
      params = base  # every member must have been trained on the same backbone
    configs = [[d.to_config() for d in deltas] for _, deltas in loaded]
    shapes = [{p: np.shape(v) for p, v in flatten_tree(delta).items()} for delta, _ in loaded]
    if len(sources) > 1 and any(s != shapes[0] for s in shapes):
      listing = ', '.join(f'{path} ' + ' '.join(map(str, s.values()))
                          for path, s in zip(sources, shapes))
      raise ValueError(f'The members of an ensemble must have one shape; got {listing}.')
    if any(c != configs[0] for c in configs):
      raise ValueError(f'The members of an ensemble must be one method; got {configs}.')
    if params is None:
      if not self.initial_checkpoint_path:
        raise ConfigurationError(
            'A .npy prompt records no base model: set INITIAL_CHECKPOINT_PATH to the '
            'checkpoint it was trained on.')
      params = self.base(self.initial_checkpoint_path)
    deltas = loaded[0][1]
    model = contract.build(self.model.config, deltas)
    step = (checkpoints.checkpoint_step(checkpoints.resolve_checkpoint(sources[0]))
            if len(sources) == 1 and not sources[0].endswith('.npy') else None)
    first = paths.merge({'params': params}, loaded[0][0])
    if len(loaded) == 1:
      return self._placed(Loaded(model, first, None, step, sources[0]))
    shared, stacked = bank_lib.stack([delta for delta, _ in loaded], deltas)
    variables = paths.merge({'params': params}, shared, bank_lib.member(stacked, 0))
    return self._placed(Loaded(model, variables, stacked, step, ', '.join(sources)))

  def _param_shardings(self) -> Optional[Any]:
    """The backbone's shardings under the partitioner's rules (as training), or None."""
    if self.partitioner is None:
      return None
    backbone = contract.build(self.model.config)
    lengths = {'inputs': 8, 'targets': 8}
    abstract = jax.eval_shape(lambda: backbone.init(
        jax.random.PRNGKey(0), *contract.of(backbone).init_args(lengths)))
    return self.partitioner.variable_shardings(abstract)['params']

  def _placed(self, loaded: Loaded) -> Loaded:
    """`loaded` on the partitioner's mesh: params by the rules, deltas and bank replicated.

    A merged delta (LoRA folded into the kernels) has changed `params`, so
    they are placed again by their shardings.
    """
    if self.partitioner is None:
      return loaded
    shardings = self._param_shardings()
    replicate = lambda tree: self.partitioner.place(
        tree, jax.tree_util.tree_map(lambda _: self.partitioner.replicated, tree))
    variables = {c: (self.partitioner.place(v, shardings) if c == 'params' else replicate(v))
                 for c, v in loaded.variables.items()}
    bank = None if loaded.bank is None else replicate(loaded.bank)
    return dataclasses.replace(loaded, variables=variables, bank=bank)


__all__ = ['Loaded', 'VariableLoader', 'merged']
