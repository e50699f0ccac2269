"""Intrinsic prompt tuning (Qin et al., "Exploring Universal Intrinsic Task Subspace").

Two stages, two deltas, each at prompt tuning's site (the prompt joins the
embedded encoder input):

1. Multi-task subspace finding (MSF), `IntrinsicSubspaceFinding`: T prompts
   [P, d] from ordinary prompt tuning, one per task, are auto-encoded,

       z = encoder(flat(prompt))                        Linear(P * d -> d_I), no activation
       reconstruction = decoder(z)                      Linear(d_I -> d) - tanh - Linear(d -> P * d)

   and each example (its task from its first input token, <extra_id_i> for
   task i, as `multitask.MultiTaskPrompt`) is served its task's
   reconstruction. The loss is the task loss through the frozen model plus
   alpha * MSE(reconstruction, prompt) (alpha = 200, the paper's).
2. Intrinsic subspace tuning (IST), `IntrinsicPrompt`: a new task's prompt is
   decoder(z); only z [d_I] is trained (from N(0, 0.02^2)), the decoder is
   MSF's, frozen, and there is no reconstruction loss.

    msf = IntrinsicSubspaceFinding(sources=['rte/prompt.npy', 'boolq/prompt.npy'],
                                   intrinsic_dim=5)       # markers <extra_id_0>, <extra_id_1>
    # ... train on a marked mixture (data.task_markers); the checkpoint exports
    # intrinsic_decoder.npz and intrinsic_task<i>.npy (each task's reconstruction).
    ist = IntrinsicPrompt(decoder='/runs/msf')            # or '.../intrinsic_decoder.npz'
    model = Transformer(config, deltas=(ist,))           # trains z; exports prompt.npy

Variables, in Flax's [in, out] layout (torch's nn.Linear weight transposed):

    MSF (collection and module `name`, 'intrinsic'):
      source_prompts  [T, P, d]    frozen (kept in the checkpoint's frozen_delta)
      encoder_kernel  [P * d, d_I]   encoder_bias [d_I]     trained
      hidden_kernel   [d_I, d]       hidden_bias  [d]       trained
      output_kernel   [d, P * d]     output_bias  [P * d]   trained
    IST (collection and module `name`, 'prompt'):
      z               [d_I]        trained
      hidden_*, output_*           frozen, MSF's decoder
    IST served (`materialize`): prompt [P, d], exactly a `PromptTuning`'s
      variables, so serving, banks and `prompt.npy` are prompt tuning's own
      (a `PromptTuning(length=P)` serves them too). MSF serves through its
      auto-encoder (no bank).

The reconstruction term is sown as an auxiliary loss
(`base.sow_auxiliary_loss`): alpha * MSE of each example's task, counted once
per target token. The paper's task loss is a mean over target tokens; ours
(T5X's) is a sum unless a loss normalizing factor divides it, so the term is
summed the same way and alpha keeps its meaning. Only `prompt_tuning.train`'s
step adds it (real T5X's trainer does not).

The source prompts and an IST decoder are constants of the initialization
computation, and every weight is replicated (T5-Base, P = 100: the output
kernel is 59M floats).
"""
import dataclasses
import io
import os
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.deltas import base
from prompt_tuning.deltas import initializers
from prompt_tuning.deltas import multitask
from prompt_tuning.deltas import records
from prompt_tuning.deltas.p_tuning import StandardNormal
from prompt_tuning.deltas.prompt import PromptTuning
from prompt_tuning.model import checkpoints

Array = jax.Array
COLLECTION = 'intrinsic'
DECODER_LEAVES = ('hidden_kernel', 'hidden_bias', 'output_kernel', 'output_bias')
ALPHA = 200.0
Z_STDDEV = 0.02
# Every weight is replicated (see the module docstring).
_AXES = {1: ('intrinsic_out',), 2: ('intrinsic_in', 'intrinsic_out'),
         3: ('tasks', 'prompt', 'prompt_embed')}
_RULES = tuple((axis, None) for axis in ('intrinsic_in', 'intrinsic_out', 'tasks', 'prompt',
                                         'prompt_embed'))


def weight_shapes(intrinsic_dim: int, length: int, width: int) -> Dict[str, Tuple[int, ...]]:
  """{leaf: shape} of the auto-encoder: the encoder (MSF only), then the decoder."""
  return {'encoder_kernel': (length * width, intrinsic_dim), 'encoder_bias': (intrinsic_dim,),
          'hidden_kernel': (intrinsic_dim, width), 'hidden_bias': (width,),
          'output_kernel': (width, length * width), 'output_bias': (length * width,)}


def encode(weights: Mapping[str, Array], prompts: Array) -> Array:
  """Prompts [..., P, d] -> z [..., d_I]."""
  flat = prompts.reshape(prompts.shape[:-2] + (-1,))
  return flat @ weights['encoder_kernel'] + weights['encoder_bias']


def decode(weights: Mapping[str, Array], z: Array, length: int) -> Array:
  """z [..., d_I] -> prompts [..., P, d]."""
  hidden = jnp.tanh(z @ weights['hidden_kernel'] + weights['hidden_bias'])
  flat = hidden @ weights['output_kernel'] + weights['output_bias']
  return flat.reshape(flat.shape[:-1] + (length, -1))


@dataclasses.dataclass(frozen=True, eq=False)
class Fixed:
  """Values a delta keeps as frozen variables (source prompts, a decoder), and their origin.

  A delta field, so hashed by identity (arrays are not hashable). Rebuilt
  from a checkpoint's record (`from_record`), `arrays` is None: the
  checkpoint's variables hold the values, and initialization gives zeros.
  """
  shapes: Mapping[str, Tuple[int, ...]]
  origin: str
  arrays: Optional[Mapping[str, np.ndarray]] = dataclasses.field(default=None, repr=False)

  def initializer(self, leaf: str) -> Callable[[], Array]:
    if self.arrays is None:
      return lambda: jnp.zeros(self.shapes[leaf], jnp.float32)
    return lambda: jnp.asarray(self.arrays[leaf], jnp.float32)

  def record(self) -> Dict[str, Any]:
    return {'origin': self.origin, 'shapes': {k: list(v) for k, v in self.shapes.items()}}

  @classmethod
  def from_record(cls, record: Mapping[str, Any]) -> 'Fixed':
    return cls({k: tuple(v) for k, v in record['shapes'].items()}, record['origin'])


def source_prompts(prompts: Union[Sequence[Any], np.ndarray]) -> Fixed:
  """T prompts [P, d] of one shape: .npy paths and/or arrays, or one array [T, P, d]."""
  if isinstance(prompts, str) or getattr(prompts, 'ndim', 3) != 3:
    prompts = [prompts]  # one prompt; an array [T, P, d] iterates over its T prompts
  named = [(p, initializers.from_file(p).array) if isinstance(p, str)
           else (f'<array {i}>', np.asarray(p)) for i, p in enumerate(prompts)]
  if not named:
    raise ValueError('No source prompts: give SOURCE_PROMPTS, the T per-task prompt .npy '
                     'files [P, d] that prompt tuning exported.')
  if len({a.shape for _, a in named}) != 1 or named[0][1].ndim != 2:
    raise ValueError('The source prompts must be [P, d] of one shape; got ' +
                     ', '.join(f'{n} {a.shape}' for n, a in named) + '.')
  array = np.stack([a for _, a in named]).astype(np.float32)
  origin = ', '.join(n for n, _ in named)
  return Fixed({'source_prompts': array.shape}, origin, {'source_prompts': array})


def read_decoder(path: str) -> Fixed:
  """MSF's decoder from its export (`intrinsic_decoder.npz`) or its checkpoint / MODEL_DIR."""
  if path.endswith('.npz'):
    if not os.path.isfile(path):
      raise FileNotFoundError(f'No intrinsic decoder file at {path}.')
    try:
      with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    except Exception as e:  # numpy raises several types for a file that is no .npz
      raise ValueError(f'Could not read an intrinsic decoder from {path}: {e}') from e
  else:
    directory = checkpoints.resolve_checkpoint(path)  # a one-line FileNotFoundError
    variables = checkpoints.read_delta(directory)
    deltas = records.recorded_deltas(checkpoints.read_metadata(directory), variables)
    finders = [d for d in deltas if isinstance(d, IntrinsicSubspaceFinding)]
    if not finders:
      raise ValueError(f'{directory} holds no intrinsic subspace finding (its deltas: '
                       f'{[d.kind for d in deltas]}); give an MSF run or its .npz export.')
    arrays = variables[finders[0].collection][finders[0].name]
  missing = [k for k in DECODER_LEAVES if k not in arrays]
  if missing:
    raise ValueError(f'{path} lacks the intrinsic decoder weights {missing}.')
  arrays = {k: np.asarray(arrays[k], np.float32) for k in DECODER_LEAVES}
  intrinsic_dim, width = np.shape(arrays['hidden_kernel'])
  shapes = {k: tuple(v.shape) for k, v in arrays.items()}
  want = weight_shapes(intrinsic_dim, arrays['output_bias'].size // max(width, 1), width)
  if any(shapes[k] != want[k] for k in DECODER_LEAVES):
    raise ValueError(f'The intrinsic decoder in {path} has shapes {shapes}; a decoder has '
                     'hidden_kernel [d_I, d], hidden_bias [d], output_kernel [d, P*d], '
                     'output_bias [P*d].')
  return Fixed(shapes, path, arrays)


def _weights(module: nn.Module, collection: str, shapes: Mapping[str, Tuple[int, ...]],
             init: Callable[[str], Callable[[], Array]]) -> Dict[str, Array]:
  """Creates (or reads) the leaves `shapes` of `module` in `collection`."""
  return {leaf: module.variable(collection, leaf, nn.with_logical_partitioning(
      init(leaf), _AXES[len(shape)])).value for leaf, shape in shapes.items()}


def _require(module: nn.Module, collection: str, leaf: str) -> None:
  if not module.has_variable(collection, leaf) and not module.is_mutable_collection(collection):
    raise ValueError(f"No intrinsic prompt variables: pass variables['{collection}'], or "
                     "create them with model.init(...).")


def _check_width(what: str, width: int, model_width: int) -> None:
  if width != model_width:
    raise ValueError(f'{what} has width {width} but the model\'s width d is {model_width}.')


class SubspaceFindingModule(nn.Module):
  """MSF's auto-encoder; called with each example's task index -> its reconstruction."""
  delta: 'IntrinsicSubspaceFinding'

  @nn.compact
  def __call__(self, embedding: Array, task_index: Array) -> Array:
    """Embedding table [vocab, d], task_index [b] -> prompts [b, P, d] (float32)."""
    spec, name = self.delta, self.delta.name
    _require(self, name, 'source_prompts')
    num_tasks, length, width = spec.sources.shapes['source_prompts']
    _check_width(f'The source prompts ({spec.sources.origin})', width, embedding.shape[-1])
    sources = self.variable(name, 'source_prompts', nn.with_logical_partitioning(
        spec.sources.initializer('source_prompts'), _AXES[3])).value
    shapes = weight_shapes(spec.intrinsic_dim, length, width)

    def torch_linear(leaf):  # nn.Linear's init: weight and bias U(+-1 / sqrt(fan_in))
      fan_in = shapes[leaf.replace('_bias', '_kernel')][0]
      return lambda: jax.random.uniform(self.make_rng('params'), shapes[leaf], jnp.float32,
                                        -fan_in ** -0.5, fan_in ** -0.5)

    weights = _weights(self, name, shapes, torch_linear)
    reconstructed = decode(weights, encode(weights, sources), length)  # [T, P, d]
    if spec.check_task_index and not self.is_mutable_collection(name):
      jax.debug.callback(multitask.check_task_index, task_index, num_tasks, spec.marker_base)
    task_index = jnp.clip(task_index, 0, num_tasks - 1)
    error = jnp.mean(jnp.square(reconstructed - sources), axis=(1, 2))  # [T]
    base.sow_auxiliary_loss(self, 'reconstruction', spec.alpha * error[task_index])
    return reconstructed[task_index]


@base.register
@dataclasses.dataclass(frozen=True)
class IntrinsicSubspaceFinding(base.Delta):
  """MSF: T frozen prompts auto-encoded through d_I dimensions, each task served its own.

  Attributes:
    sources: the T prompts [P, d]: .npy paths (SOURCE_PROMPTS), arrays, an
      array [T, P, d], or a `Fixed` (`source_prompts`); task i's marker is
      marker_base - i.
    intrinsic_dim: d_I, the subspace's dimension (the paper: 5 to 250).
    alpha: the reconstruction loss's weight (200, the paper's).
    marker_base: the id of task 0's marker (<extra_id_0> in T5's vocabulary).
    check_task_index: raise (from a host callback) on a marker out of range;
      that example's prompt is NaN either way.
    name: the root module's name and the variable collection.
  """
  kind: ClassVar[str] = 'intrinsic_msf'
  sites: ClassVar[Tuple[str, ...]] = ('encoder_input', 'encoder_mask')

  sources: Any = ()
  intrinsic_dim: int = 5
  alpha: float = ALPHA
  marker_base: int = multitask.T5_FIRST_SENTINEL
  check_task_index: bool = True
  name: str = COLLECTION

  # The multi-task prompt's marker handling, as it is: each example's task
  # from its first token, a NaN prompt for a marker out of range. They read
  # num_tasks, prompt_length, marker_base and name.
  task_index = multitask.MultiTaskPrompt.task_index
  intercept = multitask.MultiTaskPrompt.intercept

  def __post_init__(self):
    if self.intrinsic_dim < 1:
      raise ValueError(f'intrinsic_dim (d_I) must be at least 1, got {self.intrinsic_dim}.')
    if not isinstance(self.sources, Fixed):
      object.__setattr__(self, 'sources', source_prompts(self.sources))

  @property
  def collection(self) -> str:
    return self.name

  @property
  def num_tasks(self) -> int:
    return self.sources.shapes['source_prompts'][0]

  @property
  def prompt_length(self) -> int:
    return self.sources.shapes['source_prompts'][1]

  def trainable_patterns(self) -> Tuple[str, ...]:
    return (f'{self.collection}/{self.name}/(encoder|hidden|output)_(kernel|bias)',)

  def logical_axis_rules(self) -> base.LogicalAxisRules:
    return _RULES

  def setup(self, root: nn.Module) -> None:
    setattr(root, self.name, SubspaceFindingModule(self))

  def reconstructed(self, variables: base.Variables) -> np.ndarray:
    """Every task's reconstructed prompt, [T, P, d]."""
    tree = nn.unbox(variables[self.collection][self.name])
    weights = {k: jnp.asarray(v) for k, v in tree.items()}
    return np.asarray(decode(weights, encode(weights, weights['source_prompts']),
                             self.prompt_length))

  def export(self, variables: base.Variables, directory: str) -> List[str]:
    """`<name>_decoder.npz` (DECODER_LEAVES, what IST reads) and `<name>_task<i>.npy` [P, d]."""
    tree = nn.unbox(variables[self.collection][self.name])
    path = os.path.join(directory, f'{self.name}_decoder.npz')
    _write(path, np.savez, **{k: np.asarray(tree[k]) for k in DECODER_LEAVES})
    written = [path]
    for i, prompt in enumerate(self.reconstructed(variables)):
      written.append(os.path.join(directory, f'{self.name}_task{i}.npy'))
      _write(written[-1], np.save, prompt)
    return written

  def to_config(self) -> Dict[str, Any]:
    return {'kind': self.kind, 'sources': self.sources.record(),
            'intrinsic_dim': self.intrinsic_dim, 'alpha': self.alpha,
            'marker_base': self.marker_base, 'check_task_index': self.check_task_index,
            'name': self.name}

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> 'IntrinsicSubspaceFinding':
    fields = {k: v for k, v in config.items() if k not in ('kind', 'sources')}
    return cls(sources=Fixed.from_record(config['sources']), **fields)


class IntrinsicPromptModule(nn.Module):
  """IST's prompt decoder(z) [P, d]; the materialized prompt when present (serving)."""
  delta: 'IntrinsicPrompt'

  @nn.compact
  def __call__(self, embedding: Array) -> Array:
    """The token-embedding table [vocab, d] -> the prompt [P, d] or a bank's [b, P, d]."""
    spec, name = self.delta, self.delta.name
    width = spec.decoder.shapes['hidden_bias'][0]
    _check_width(f'The intrinsic decoder ({spec.decoder.origin})', width, embedding.shape[-1])
    if self.has_variable(name, 'prompt'):  # materialized
      prompt = self.get_variable(name, 'prompt')
      if tuple(prompt.shape[-2:]) != (spec.length, width) or prompt.ndim not in (2, 3):
        raise ValueError(f'The intrinsic prompt has shape {tuple(prompt.shape)} but this '
                         f'model expects {(spec.length, width)} [P, d] (or [b, P, d]).')
      return prompt
    _require(self, name, 'z')
    z = self.variable(name, 'z', nn.with_logical_partitioning(
        lambda: spec.init(self.make_rng('params'), (spec.intrinsic_dim,)), _AXES[1])).value
    weights = _weights(self, name, spec.decoder.shapes, spec.decoder.initializer)
    return decode(weights, z, spec.length)


@base.register
@dataclasses.dataclass(frozen=True)
class IntrinsicPrompt(PromptTuning):
  """IST: prompt tuning whose prompt is decoder(z), z [d_I] trained, the decoder frozen.

  Attributes:
    decoder: MSF's decoder: an MSF checkpoint or MODEL_DIR, its exported
      `intrinsic_decoder.npz` (INTRINSIC_DECODER), or a `Fixed`
      (`read_decoder`). It fixes d_I, P and d.
    length: P; None takes the decoder's (another value is an error).
    init: z's initializer (N(0, 0.02^2), the paper's).
    combine, name: as `PromptTuning`'s ('prompt': served, it is a prompt).
  """
  kind: ClassVar[str] = 'intrinsic_prompt'

  length: Optional[int] = None
  init: initializers.Initializer = StandardNormal(Z_STDDEV)
  decoder: Any = None

  def __post_init__(self):
    if self.decoder is None:
      raise ValueError('IntrinsicPrompt needs the MSF decoder: set INTRINSIC_DECODER to an '
                       'MSF run or its intrinsic_decoder.npz.')
    if not isinstance(self.decoder, Fixed):
      object.__setattr__(self, 'decoder', read_decoder(self.decoder))
    shapes = self.decoder.shapes
    length = shapes['output_bias'][0] // shapes['hidden_bias'][0]
    if self.length not in (None, length):
      raise ValueError(f'The prompt length {self.length} differs from the decoder\'s '
                       f'{length} ({self.decoder.origin}).')
    object.__setattr__(self, 'length', length)
    super().__post_init__()

  @property
  def intrinsic_dim(self) -> int:
    return self.decoder.shapes['hidden_kernel'][0]

  def trainable_patterns(self) -> Tuple[str, ...]:
    return (f'{self.collection}/{self.name}/z',)

  def logical_axis_rules(self) -> base.LogicalAxisRules:
    return _RULES

  def setup(self, root: nn.Module) -> None:
    setattr(root, self.name, IntrinsicPromptModule(self))

  def materialize(self, variables: base.Variables) -> base.Variables:
    """`variables` with this delta's tree holding only the prompt decoder(z) [P, d]."""
    tree = variables.get(self.collection, {}).get(self.name)
    if tree is None or 'prompt' in tree:
      return variables  # nothing of ours, or already served
    weights = {k: jnp.asarray(v) for k, v in nn.unbox(tree).items()}
    prompt = np.asarray(jax.device_get(decode(weights, weights['z'], self.length)), np.float32)
    return self.with_prompt(variables, prompt)

  def to_config(self) -> Dict[str, Any]:
    return {**super().to_config(), 'decoder': self.decoder.record()}

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> 'IntrinsicPrompt':
    prompt = PromptTuning.from_config(config)  # the prompt's own fields
    return cls(length=prompt.length, name=prompt.name, combine=prompt.combine,
               init=prompt.init, decoder=Fixed.from_record(config['decoder']))


def _write(path: str, save: Callable[..., None], *args: Any, **kwargs: Any) -> None:
  """`save(buffer, ...)` (np.save, np.savez) written to `path` atomically."""
  buffer = io.BytesIO()
  save(buffer, *args, **kwargs)
  checkpoints.atomic_write(path, buffer.getvalue())


__all__ = ['ALPHA', 'DECODER_LEAVES', 'Fixed', 'IntrinsicPrompt', 'IntrinsicPromptModule',
           'IntrinsicSubspaceFinding', 'SubspaceFindingModule', 'decode', 'encode',
           'read_decoder', 'source_prompts', 'weight_shapes']
