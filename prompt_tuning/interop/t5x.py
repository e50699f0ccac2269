"""Our backbone and deltas as a module real T5X trains (`python -m t5x.train`).

    module = T5XTransformer(config, deltas=(PromptTuning(length=100),))
    model = t5x.models.EncoderDecoderModel(module=module, ...)   # see gin/t5x/

T5X drives a Flax module through its own call signature (segment ids,
positions, `enable_dropout`, `decode`) and its `encode` / `decode` methods,
trains the `params` collection only, and reads every parameter's logical axes
from a `params_axes` collection (`flax.linen.partitioning` style: the leaf
`<name>_axes` holding `AxisMetadata(names)`) for Adafactor's factoring and
for partitioning. Our `Transformer` keeps each delta's variables in the
delta's own collection ('prompt', 'lora', ...), boxed with logical axes.

`T5XTransformer` bridges the two: its `params` are the backbone's tree
(T5X's own names, so T5X's pretrained checkpoints restore into it) with each
delta's collection beside it under `params/<collection>/...` (the prompt is
`params/prompt/prompt/prompt` [P, d]). On every call the tree is split back
into `{'params': backbone, <collection>: ...}` and our `Transformer` runs on
it, so the numerics are exactly our model's. The gin helpers below
(`trainable_filter`, `restore_assignment_map`, `logical_axis_rules`,
`logical_factor_rules`) derive T5X's freezing, restoring, partitioning and
factoring settings from the deltas, so a method file only names its deltas.

Packed examples (segment ids / positions) are refused: a prompt cannot be
shared by examples packed into one row.

Importing this module checks that the installed T5X has every interface the
adapter and gin/t5x/ rely on, and fails with one line naming the missing one.
"""
import importlib
import re
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
from flax import traverse_util
import jax

from prompt_tuning.deltas import base as deltas_base
from prompt_tuning.model.config import T5Config
from prompt_tuning.model.t5 import Transformer

Array = jax.Array

# (module, attribute) pairs the adapter and gin/t5x/ use; a T5X whose
# interfaces differ fails at import with the first one missing.
REQUIRED_INTERFACES = (
    ('t5x.models', 'EncoderDecoderModel'),
    ('t5x.optimizers', 'MultiOptimizer'),
    ('t5x.adafactor', 'Adafactor'),
    ('t5x.adafactor', 'FactorDim'),
    ('t5x.adafactor', 'standard_logical_factor_rules'),
    ('t5x.partitioning', 'standard_logical_axis_rules'),
    ('t5x.partitioning', 'PjitPartitioner'),
    ('t5x.utils', 'RestoreCheckpointConfig'),
    ('t5x.utils', 'DatasetConfig'),
    ('t5x.utils', 'create_learning_rate_scheduler'),
    ('flax.traverse_util', 'ModelParamTraversal'),
    ('flax.linen.partitioning', 'AxisMetadata'),
    ('flax.linen.partitioning', 'get_axis_names'),
)
# RestoreCheckpointConfig fields the method files bind.
_RESTORE_FIELDS = ('assignment_map', 'fallback_to_scratch')


def check_t5x() -> None:
  """Raises ImportError, one line, naming the first T5X interface that is missing."""
  for module_name, attribute in REQUIRED_INTERFACES:
    try:
      module = importlib.import_module(module_name)
    except ImportError as e:
      raise ImportError(
          f'prompt_tuning.interop.t5x needs {module_name} ({e}); install T5X as '
          '../shared/t5x/README.md says.') from None
    if not hasattr(module, attribute):
      raise ImportError(
          f'This T5X has no {module_name}.{attribute}, which prompt_tuning.interop.t5x '
          'and gin/t5x/ use; install the T5X of ../shared/t5x (commit cc342d4).')
  fields = getattr(importlib.import_module('t5x.utils').RestoreCheckpointConfig,
                   '__dataclass_fields__', {})
  for field in _RESTORE_FIELDS:
    if field not in fields:
      raise ImportError(
          f'This T5X has no t5x.utils.RestoreCheckpointConfig.{field}, which '
          'gin/t5x/ methods bind; install the T5X of ../shared/t5x (commit cc342d4).')


check_t5x()
from flax.linen import partitioning as flax_partitioning  # pylint: disable=g-import-not-at-top
from t5x import adafactor as t5x_adafactor  # pylint: disable=g-import-not-at-top


def _collections(deltas: Sequence[Any]) -> Tuple[str, ...]:
  return tuple(d.collection for d in deltas)


def to_params(variables: Mapping[str, Any], deltas: Sequence[Any]) -> Dict[str, Any]:
  """Our variables {'params': backbone, <collection>: ...} -> T5X's `params` tree."""
  params = dict(variables['params'])
  for collection in _collections(deltas):
    if collection in params:
      raise ValueError(f'The backbone has a top-level module named {collection!r}, which '
                       'is where that delta\'s variables go in T5X\'s params; rename one.')
    if collection in variables:
      params[collection] = variables[collection]
  return params


def from_params(params: Mapping[str, Any], deltas: Sequence[Any]) -> Dict[str, Any]:
  """T5X's `params` tree -> our variables {'params': backbone, <collection>: ...}."""
  collections = _collections(deltas)
  variables = {'params': {k: v for k, v in params.items() if k not in collections}}
  for collection in collections:
    if collection in params:
      variables[collection] = params[collection]
  return variables


def _axes_collection(boxed: Mapping[str, Any]) -> Dict[str, Any]:
  """Boxed params -> T5X's params_axes: leaf `<name>_axes` = AxisMetadata(names)."""
  flat = traverse_util.flatten_dict(boxed, is_leaf=lambda _, x: isinstance(x, nn.Partitioned))
  axes = {}
  for path, leaf in flat.items():
    if not isinstance(leaf, nn.Partitioned):
      raise ValueError(f'params/{"/".join(path)} has no logical axes; T5X\'s Adafactor and '
                       'partitioner need them: create it with nn.with_logical_partitioning.')
    axes[path[:-1] + (f'{path[-1]}_axes',)] = flax_partitioning.AxisMetadata(
        names=tuple(leaf.names))
  return traverse_util.unflatten_dict(axes)


def _refuse_packing(**features: Optional[Array]) -> None:
  given = sorted(k for k, v in features.items() if v is not None)
  if given:
    raise ValueError(
        f'T5XTransformer got {", ".join(given)}: packed examples are not supported (a '
        'prompt cannot be shared by packed examples); set train/utils.DatasetConfig.pack '
        '= False (gin/t5x/runs/prompt_tune.gin does).')


class T5XTransformer(nn.Module):
  """`Transformer(config, deltas)` behind T5X's module interface.

  Attributes:
    config: the backbone's shape and numerics (gin/models/t5_1_1/*.gin's
      MODEL_CONFIG).
    deltas: our deltas (`prompt_tuning.deltas`); their variables live in
      `params/<collection>/...`.
  """
  config: T5Config
  deltas: Tuple[Any, ...] = ()

  def _model(self) -> Transformer:
    # parent=None: a free-standing model applied functionally, not a child.
    return Transformer(self.config, tuple(self.deltas), parent=None)

  def _run(self, method: Callable[..., Any], *args, enable_dropout: bool = False,
           **kwargs) -> Any:
    """Runs `method` of our Transformer on this module's variables, mapped."""
    model = self._model()
    if self.is_initializing() and not self.has_variable('params', 'token_embedder'):
      # Build our variables, then register them in T5X's layout.
      boxed = model.init({'params': self.make_rng('params')}, *args,
                         enable_dropout=False, method=method, **kwargs)
      unexpected = set(boxed) - {'params', *_collections(self.deltas)}
      if unexpected:
        raise ValueError(f'Collections {sorted(unexpected)} are not params or a delta\'s; '
                         'T5X would not train or checkpoint them as such.')
      boxed_params = to_params(boxed, self.deltas)
      for name, tree in boxed_params.items():
        self.put_variable('params', name, nn.unbox(tree))
      for name, tree in _axes_collection(boxed_params).items():
        self.put_variable('params_axes', name, tree)
    variables = from_params(self.variables['params'], self.deltas)
    mutable = ['cache'] if self.is_mutable_collection('cache') else []
    if 'cache' in self.variables or mutable:
      variables['cache'] = self.variables.get('cache', {})
    if self.is_initializing():
      # As in our own init: the deltas see they are being created, so checks on
      # real inputs (a multi-task prompt's task markers) skip T5X's dummy tokens.
      mutable += sorted(_collections(self.deltas))
    mutable = mutable or False
    rngs = {'dropout': self.make_rng('dropout')} if enable_dropout else {}
    out = model.apply(variables, *args, enable_dropout=enable_dropout, method=method,
                      rngs=rngs, mutable=mutable, **kwargs)
    if mutable:
      out, state = out
      for name, tree in state.get('cache', {}).items():
        self.put_variable('cache', name, tree)
    return out

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Array, encoder_segment_ids: Optional[Array] = None,
               decoder_segment_ids: Optional[Array] = None,
               encoder_positions: Optional[Array] = None,
               decoder_positions: Optional[Array] = None, *, enable_dropout: bool = True,
               decode: bool = False, max_decode_length: Optional[int] = None) -> Array:
    """Tokens [b, l], [b, t], [b, t] -> logits [b, t, vocab] (float32)."""
    _refuse_packing(encoder_segment_ids=encoder_segment_ids,
                    decoder_segment_ids=decoder_segment_ids,
                    encoder_positions=encoder_positions, decoder_positions=decoder_positions)
    return self._run(Transformer.__call__, encoder_input_tokens, decoder_input_tokens,
                     decoder_target_tokens, enable_dropout=enable_dropout, decode=decode,
                     max_decode_length=max_decode_length)

  def encode(self, encoder_input_tokens: Array, encoder_segment_ids: Optional[Array] = None,
             enable_dropout: bool = True) -> Array:
    """Tokens [b, l] -> encoded [b, l', d] (l' = l + prompt length for prompts)."""
    _refuse_packing(encoder_segment_ids=encoder_segment_ids)
    return self._run(Transformer.encode, encoder_input_tokens, enable_dropout=enable_dropout)

  def decode(self, encoded: Array, encoder_input_tokens: Array, decoder_input_tokens: Array,
             decoder_target_tokens: Optional[Array] = None,
             encoder_segment_ids: Optional[Array] = None,
             decoder_segment_ids: Optional[Array] = None,
             decoder_positions: Optional[Array] = None, enable_dropout: bool = True,
             decode: bool = False, max_decode_length: Optional[int] = None) -> Array:
    """Logits [b, t, vocab]; with `decode=True` t is 1 and the 'cache' collection is used.

    No `prefill` argument, so T5X's decoders start from an empty cache.
    """
    _refuse_packing(encoder_segment_ids=encoder_segment_ids,
                    decoder_segment_ids=decoder_segment_ids, decoder_positions=decoder_positions)
    return self._run(Transformer.decode, encoded, encoder_input_tokens, decoder_input_tokens,
                     decoder_target_tokens, enable_dropout=enable_dropout, decode=decode,
                     max_decode_length=max_decode_length)


# -- gin helpers: T5X settings derived from the deltas ---------------------------

def t5x_patterns(deltas: Sequence[Any], trainable: Optional[Sequence[str]] = None
                 ) -> Tuple[str, ...]:
  """Our trained path patterns (`collection/tree`) as regexes over T5X param paths.

  'prompt/.*' stays 'prompt/.*' (the delta's tree sits under params/prompt);
  'params/.*/scale' (the backbone's) becomes '.*/scale'.
  """
  patterns = trainable if trainable is not None else deltas_base.trainable_patterns(deltas)
  return tuple(p[len('params/'):] if p.startswith('params/') else p for p in patterns)


def trainable_filter(deltas: Sequence[Any] = (), trainable: Optional[Sequence[str]] = None
                     ) -> Callable[[str, Any], bool]:
  """A `ModelParamTraversal` filter_fn: True for the paths the deltas train."""
  regexes = [re.compile(p) for p in t5x_patterns(deltas, trainable)]
  if not regexes:
    raise ValueError('No trainable paths: set DELTAS (a gin/t5x/methods/ file) or TRAINABLE.')

  def filter_fn(path: str, _: Any) -> bool:
    return any(r.fullmatch(path.lstrip('/')) for r in regexes)
  return filter_fn


def restore_assignment_map(deltas: Sequence[Any] = (),
                           trainable: Optional[Sequence[str]] = None
                           ) -> Tuple[Tuple[str, None], ...]:
  """RestoreCheckpointConfig.assignment_map: skip what the pretrained checkpoint lacks.

  The deltas' own variables (`target/<collection>/...`) start from their
  initializers; the optimizer state of every trained path starts fresh (a
  pretrained checkpoint's state is for its own optimizer).
  """
  skip = [f'target/{c}/.*' for c in _collections(deltas)]
  skip += [f'state/param_states/{p}' for p in t5x_patterns(deltas, trainable)]
  return tuple((s, None) for s in skip)


def logical_axis_rules(deltas: Sequence[Any] = ()) -> Tuple[Tuple[str, Any], ...]:
  """The deltas' (logical axis, mesh axis) rules, for standard_logical_axis_rules.additional_rules."""
  return tuple(deltas_base.logical_axis_rules(deltas))


class _FactorRules(dict):
  """T5X's logical factor rules; any other axis (a delta's) is not factored."""

  def __missing__(self, key: str) -> Any:
    return t5x_adafactor.FactorDim.NONE


def logical_factor_rules() -> Mapping[str, Any]:
  """Adafactor.logical_factor_rules: T5X's standard ones, deltas' axes unfactored.

  The deltas' variables are small ([P, d], [d, r], [d]); their second moments
  are kept whole, as google-research/prompt-tuning keeps the prompt's.
  """
  return _FactorRules(t5x_adafactor.standard_logical_factor_rules())


__all__ = ['REQUIRED_INTERFACES', 'T5XTransformer', 'check_t5x', 'from_params',
           'logical_axis_rules', 'logical_factor_rules', 'restore_assignment_map',
           't5x_patterns', 'to_params', 'trainable_filter']
