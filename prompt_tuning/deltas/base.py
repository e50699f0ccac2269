"""The Delta spec: what every method (prompt, LoRA, adapters, ...) says about itself.

A delta is a small frozen dataclass. The backbone takes a tuple of them,
`Transformer(config, deltas=(PromptTuning(length=100), ...))`, and they
compose: each one keeps to its own variable collection and its own sites.
What a delta declares:

    kind                 its name in checkpoints and the registry ('prompt')
    collection           its variable collection (never 'params')
    trainable_patterns() path regexes it trains (see `paths`); by default its
                         whole collection; BitFit / norm tuning add `params/...`
    logical_axis_rules() (logical name, mesh axis) pairs for its variables' axes
    sites                the site names it attaches to (`model/sites.py`)
    setup(root)          creates modules that must live at the model's root
    intercept(...)       its handler at those sites
    materialize(vars)    trained -> served variables (identity by default)
    merge(vars)          (`mergeable` ones) folded into `params` for serving
    export(vars, dir)    files for other tools, e.g. prompt.npy
    bank_leaves()        {path regex: rank of the served leaf}: leaves that
                         take a leading per-example axis in a bank
    to_config()          JSON that `from_config` rebuilds the delta from

A delta may also add a term to the training loss (intrinsic prompt tuning's
reconstruction loss): `sow_auxiliary_loss` from its modules.

A new method is a module in this package with one such class, registered
with `@register`, and a gin file in gin/methods/.
"""
import dataclasses
import functools
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Sequence, Tuple, Type

import flax.linen as nn
import numpy as np

from prompt_tuning.model.param_shapes import flatten_tree, unflatten_tree
from prompt_tuning.model.sites import Site

Variables = Dict[str, Any]
# The collection a delta's modules sow auxiliary training losses into.
AUXILIARY_LOSSES = 'losses'
LogicalAxisRules = Tuple[Tuple[str, Any], ...]

_REGISTRY: Dict[str, Type['Delta']] = {}


def register(cls: Type['Delta']) -> Type['Delta']:
  """Class decorator: makes `cls` loadable by its `kind` from a checkpoint's record."""
  if not cls.kind:
    raise ValueError(f'{cls.__name__} has no kind.')
  _REGISTRY[cls.kind] = cls
  return cls


def registered() -> Dict[str, Type['Delta']]:
  """{kind: class} of every delta imported so far (see `prompt_tuning.deltas`)."""
  return dict(_REGISTRY)


@dataclasses.dataclass(frozen=True)
class Delta:
  """The interface; subclasses are frozen dataclasses (hashable module fields)."""
  kind: ClassVar[str] = ''
  sites: ClassVar[Tuple[str, ...]] = ()
  # Whether `merge` can fold the trained delta into the backbone's `params`.
  mergeable: ClassVar[bool] = False

  @property
  def collection(self) -> str:
    raise NotImplementedError

  def trainable_patterns(self) -> Tuple[str, ...]:
    return (f'{self.collection}/.*',)

  def logical_axis_rules(self) -> LogicalAxisRules:
    return ()

  def setup(self, root: nn.Module) -> None:
    """Called in the root model's `setup`; assign root-level modules on `root`."""
    del root

  def intercept(self, site: Site, next_fun: Callable[..., Any], args: tuple, kwargs: dict,
                module: nn.Module) -> Any:
    """The handler at `site` (one of `sites`): call `next_fun` and change its result."""
    raise NotImplementedError

  def no_variables_hint(self) -> str:
    """Why this delta might have created no variables (said when it did not)."""
    return 'its targets match nothing in this model'

  def materialize(self, variables: Variables) -> Variables:
    """Trained variables -> served ones (e.g. a prompt encoder collapsed to its prompt)."""
    return variables

  def merge(self, variables: Variables) -> Variables:
    """`variables` with the delta folded into `params` and its own collection gone.

    The plain backbone then serves what the model with the delta served,
    with no overhead. Only for `mergeable` deltas.
    """
    raise NotImplementedError(f'{type(self).__name__} cannot be merged into the backbone.')

  def export(self, variables: Variables, directory: str) -> List[str]:
    """Writes files other tools read into `directory`; returns their paths."""
    del variables, directory
    return []

  def bank_leaves(self) -> Dict[str, int]:
    return {}

  def to_config(self) -> Dict[str, Any]:
    """The kind and the fields, as JSON. A delta with fields JSON cannot hold
    (initializers, functions) overrides this and `from_config`."""
    return {'kind': self.kind, **dataclasses.asdict(self)}

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> 'Delta':
    fields = {k: v for k, v in config.items() if k != 'kind'}
    return cls(**fields)


def sow_auxiliary_loss(module: nn.Module, name: str, per_example: Any) -> None:
  """Adds `per_example` [b], a term per target token, to the training loss.

  `prompt_tuning.train.step.batch_loss` applies the model with the collection
  AUXILIARY_LOSSES mutable and adds sum_i per_example[i] * (example i's target
  weight sum), divided by the loss normalizing factor if one is given: as if
  every target token's loss carried its example's term. T5X's loss is a sum
  over target tokens, so a coefficient chosen against a per-token mean loss
  (a paper's) keeps its meaning, and microbatches sum to the whole batch.
  Nothing is sown while the model is initialized (no 'losses' variables) or
  when the collection is not mutable (evaluation by other callers, decoding).
  """
  if not module.is_initializing():
    module.sow(AUXILIARY_LOSSES, name, per_example)


def along_rows(vector: Any) -> Any:
  """A vector [d] as it is, or a bank's per-example vectors [b, d] as [b, 1, d].

  Either broadcasts against activations [b, l, d].
  """
  return vector if vector.ndim == 1 else vector[:, None, :]


def module_leaves(variables: Variables, collection: str, leaf: str) -> Dict[str, np.ndarray]:
  """{module path: array} of `collection`'s leaves named `leaf`.

  E.g. module_leaves(v, 'lora', 'lora_a') = {'encoder/layers_0/attention/query': [in, r], ...}.
  """
  flat = flatten_tree(variables.get(collection, {}))
  suffix = f'/{leaf}'
  return {path[:-len(suffix)]: np.asarray(value) for path, value in flat.items()
          if path.endswith(suffix)}


def with_kernels(variables: Variables, collection: str, kernels: Mapping[str, Any]
                 ) -> Variables:
  """`variables` without `collection`, params/<path>/kernel replaced by `kernels[path]`.

  What a `merge` returns once it has folded its delta into those kernels.
  """
  params = flatten_tree(variables['params'])
  for path, kernel in kernels.items():
    params[f'{path}/kernel'] = kernel
  merged = {c: v for c, v in variables.items() if c != collection}
  merged['params'] = unflatten_tree(params)
  return merged


def kernel_at(variables: Variables, path: str) -> np.ndarray:
  """The backbone kernel [in, out] of the projection at module path `path`."""
  return np.asarray(functools.reduce(lambda node, key: node[key], path.split('/'),
                                     variables['params'])['kernel'])


def delta_from_config(config: Mapping[str, Any]) -> Delta:
  """The delta a checkpoint recorded; an unknown kind names the registered ones."""
  kind = config.get('kind')
  if kind not in _REGISTRY:
    raise ValueError(f'A checkpoint records a delta of kind {kind!r}, which is not '
                     f'registered here (registered: {sorted(_REGISTRY)}).')
  return _REGISTRY[kind].from_config(config)


def trainable_patterns(deltas: Sequence[Delta]) -> Tuple[str, ...]:
  """Every delta's trainable patterns, in order, without repeats."""
  patterns: List[str] = []
  for delta in deltas:
    patterns += [p for p in delta.trainable_patterns() if p not in patterns]
  return tuple(patterns)


def logical_axis_rules(deltas: Sequence[Delta]) -> LogicalAxisRules:
  rules: List[Tuple[str, Any]] = []
  for delta in deltas:
    rules += [tuple(r) for r in delta.logical_axis_rules() if tuple(r) not in rules]
  return tuple(rules)


def check_deltas(deltas: Sequence[Delta]) -> None:
  """Deltas must not share a collection (one delta's variables are its own)."""
  seen: Dict[str, Delta] = {}
  for delta in deltas:
    if delta.collection == 'params':
      raise ValueError(f'{type(delta).__name__} uses the collection "params", which is the '
                       'backbone\'s; a delta keeps its variables in its own collection.')
    if delta.collection in seen:
      raise ValueError(f'Two deltas use the collection {delta.collection!r}: '
                       f'{seen[delta.collection]} and {delta}. Give one another name.')
    seen[delta.collection] = delta


def export_all(deltas: Sequence[Delta], variables: Variables, directory: str) -> List[str]:
  """Every delta's exports of `variables` (materialized) into `directory`."""
  written: List[str] = []
  for delta in deltas:
    written += delta.export(delta.materialize(variables), directory)
  return written


__all__ = ['AUXILIARY_LOSSES', 'Delta', 'along_rows', 'check_deltas', 'delta_from_config',
           'export_all', 'kernel_at', 'logical_axis_rules', 'module_leaves', 'register',
           'registered', 'sow_auxiliary_loss', 'trainable_patterns', 'with_kernels']
