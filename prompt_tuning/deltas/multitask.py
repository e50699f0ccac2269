"""Multi-task prompts: a shared prompt and one prompt per task, combined per example.

    model = Transformer(config, deltas=(MultiTaskPrompt(num_tasks=3, length=20,
                                                        combination='add'),))

As google-research/prompt-tuning's `extended/multitask_prompts.py`: the task
travels with the example as the first input token, a marker. Task i's marker
is T5's sentinel <extra_id_i>, id `marker_base - i` (32099 - i in the T5
vocabulary); `prompt_tuning.data.task_markers` adds it to a task's inputs and
builds marked mixtures. The marker stays in the input. Per example, the
shared prompt [P, H_s] and its task's variables make its prompt [P', d],
which is joined in front of the embedded input as in prompt tuning:

  * 'add':             shared [P, d] + task [P, d]                 -> [P, d]
  * 'concat':          [shared [P, d]; task [P_t, d]] (length)     -> [P + P_t, d]
  * 'concat_features': [shared [P, d - H_t], task [P, H_t]]        -> [P, d]
  * 'project':         shared [P, H_s] @ kernel_t [H_s, d] + bias_t -> [P, d]

Variables (collection 'multitask_prompt', module 'multitask_prompt'):
`shared` [P, H_s]; `tasks` [T, P_t, H_t] (add, concat, concat_features) or
`task_kernel` [T, H_s, d] and `task_bias` [T, d] (project). In a bank every
leaf gains a leading per-example axis. `export` writes each task's combined
prompt, `<name>_task<i>.npy` [P', d], the form SPoT and `infer` read.

A marker outside [0, num_tasks) is an error raised from the computation
(a host callback) and gives that example a NaN prompt, so it is never
served a wrong task's prompt.
"""
import dataclasses
import io
import os
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.deltas import base
from prompt_tuning.deltas import combine
from prompt_tuning.deltas import initializers
from prompt_tuning.deltas.prompt import NotRecorded
from prompt_tuning.model import checkpoints
from prompt_tuning.model.sites import Site

Array = jax.Array
COLLECTION = 'multitask_prompt'
COMBINATIONS = ('add', 'concat', 'concat_features', 'project')
T5_FIRST_SENTINEL = 32099  # <extra_id_0> in the T5 vocabulary; <extra_id_i> is 32099 - i
_TASK_INIT_SCALE = 0.01  # the reference's uniform init of task variables
# Logical axes; all small and replicated (see `logical_axis_rules`).
_TASK_AXES = {'tasks': ('tasks', 'prompt', 'prompt_embed'),
              'task_kernel': ('tasks', 'prompt_embed', 'task_embed'),
              'task_bias': ('tasks', 'prompt_embed')}


def combined_prompts(combination: str, shared: Array, task_variables: Mapping[str, Array]
                     ) -> Array:
  """Each selected task's prompt from the shared prompt and its variables.

  Args:
    combination: one of COMBINATIONS.
    shared: [P, H_s], or [b, P, H_s] in a bank.
    task_variables: the selected tasks' variables with a leading axis t (one
      row per example, or per task when exporting): 'tasks' [t, P_t, H_t], or
      'task_kernel' [t, H_s, d] and 'task_bias' [t, d].

  Returns:
    [t, P', d].
  """
  if combination == 'project':
    kernel, bias = task_variables['task_kernel'], task_variables['task_bias']
    equation = 'bph,bhd->bpd' if shared.ndim == 3 else 'ph,bhd->bpd'
    return jnp.einsum(equation, shared, kernel) + bias[:, None, :]
  tasks = task_variables['tasks']
  shared = jnp.broadcast_to(shared, tasks.shape[:1] + shared.shape[-2:])
  if combination == 'add':
    return shared + tasks
  axis = 1 if combination == 'concat' else 2
  return jnp.concatenate([shared, tasks], axis=axis)


class MultiTaskPromptModule(nn.Module):
  """The shared and per-task variables; called with the task index of each example."""
  delta: 'MultiTaskPrompt'

  @nn.compact
  def __call__(self, embedding: Array, task_index: Array) -> Array:
    """Embedding table [vocab, d], task_index [b] -> prompts [b, P', d] (float32).

    An index out of range is reported (`check_task_index`) and clipped here;
    the caller blanks that example's prompt.
    """
    d = embedding.shape[-1]
    spec = self.delta
    if not self.has_variable(spec.name, 'shared') and not self.is_mutable_collection(spec.name):
      raise ValueError(f"No multi-task prompt: pass variables['{spec.name}'], or create it "
                       "with model.init(...).")
    shapes = spec.shapes(d)

    def shared_init():
      full = spec.init(self.make_rng('params'), (spec.length, d), embedding)
      return full[:, :shapes['shared'][1]]

    def task_init(name):
      if name == 'task_kernel':
        eye = jnp.eye(shapes['shared'][1], d, dtype=jnp.float32)  # each task starts at `shared`
        return lambda: jnp.broadcast_to(eye, shapes[name])
      if name == 'task_bias':
        return lambda: jnp.zeros(shapes[name], jnp.float32)
      return lambda: jax.random.uniform(self.make_rng('params'), shapes[name], jnp.float32,
                                        -_TASK_INIT_SCALE, _TASK_INIT_SCALE)

    shared = self.variable(spec.name, 'shared', nn.with_logical_partitioning(
        shared_init, ('prompt', 'prompt_embed'))).value
    task_variables = {
        name: self.variable(spec.name, name, nn.with_logical_partitioning(
            task_init(name), _TASK_AXES[name])).value
        for name, shape in shapes.items() if name != 'shared'}
    if shared.shape[-2:] != shapes['shared']:
      raise ValueError(f'The shared prompt has shape {shared.shape} but this model expects '
                       f'{shapes["shared"]}.')
    if spec.check_task_index and not self.is_mutable_collection(spec.name):
      # Not while the variables are created: initialization runs on dummy tokens.
      jax.debug.callback(check_task_index, task_index, spec.num_tasks, spec.marker_base)
    task_index = jnp.clip(task_index, 0, spec.num_tasks - 1)
    banked = shared.ndim == 3
    rows = jnp.arange(task_index.shape[0])
    selected = {name: (v[rows, task_index] if banked else v[task_index])
                for name, v in task_variables.items()}
    return combined_prompts(spec.combination, shared, selected)


@base.register
@dataclasses.dataclass(frozen=True)
class MultiTaskPrompt(base.Delta):
  """A shared prompt plus per-task prompts, the task read from each example's marker.

  Attributes:
    num_tasks: T, the number of tasks (markers 0 ... T - 1).
    length: P, the shared prompt's length.
    combination: how shared and task prompts combine (COMBINATIONS).
    task_length: P_t for 'concat' (default P).
    task_features: H_t for 'concat_features' (default d // 2); the shared
      prompt then has d - H_t features.
    marker_base: the id of task 0's marker; task i's is marker_base - i.
    init: the shared prompt's initializer (sampled vocabulary, as SPoT).
    check_task_index: raise (from a host callback) on a marker out of range.
    name: the collection and module name.
  """
  kind: ClassVar[str] = 'multitask_prompt'
  sites: ClassVar[Tuple[str, ...]] = ('encoder_input', 'encoder_mask')

  num_tasks: int = 2
  length: int = 100
  combination: str = 'add'
  task_length: Optional[int] = None
  task_features: Optional[int] = None
  marker_base: int = T5_FIRST_SENTINEL
  init: initializers.Initializer = initializers.SampledVocab()
  check_task_index: bool = True
  name: str = COLLECTION

  def __post_init__(self):
    if self.combination not in COMBINATIONS:
      raise ValueError(f'Unknown multi-task combination {self.combination!r}; one of '
                       f'{COMBINATIONS}.')
    if self.num_tasks < 1 or self.length < 1:
      raise ValueError(f'num_tasks and length must be at least 1, got {self.num_tasks} '
                       f'and {self.length}.')
    if self.task_length is not None and self.combination != 'concat':
      raise ValueError("task_length is for combination='concat' only.")
    if self.task_features is not None and self.combination != 'concat_features':
      raise ValueError("task_features is for combination='concat_features' only.")

  @property
  def collection(self) -> str:
    return self.name

  @property
  def prompt_length(self) -> int:
    """P', the combined prompt's length."""
    return self.length + ((self.task_length or self.length)
                          if self.combination == 'concat' else 0)

  def shapes(self, d: int) -> Dict[str, Tuple[int, ...]]:
    """{variable: shape} for model width d."""
    t, p = self.num_tasks, self.length
    if self.combination == 'add':
      return {'shared': (p, d), 'tasks': (t, p, d)}
    if self.combination == 'concat':
      return {'shared': (p, d), 'tasks': (t, self.task_length or p, d)}
    if self.combination == 'concat_features':
      task_features = self.task_features or d // 2
      if not 0 < task_features < d:
        raise ValueError(f'task_features must be in [1, {d - 1}] for width {d}, got '
                         f'{task_features}.')
      return {'shared': (p, d - task_features), 'tasks': (t, p, task_features)}
    return {'shared': (p, d), 'task_kernel': (t, d, d), 'task_bias': (t, d)}

  def logical_axis_rules(self) -> base.LogicalAxisRules:
    return (('prompt', None), ('prompt_embed', None), ('tasks', None), ('task_embed', None))

  def setup(self, root: nn.Module) -> None:
    setattr(root, self.name, MultiTaskPromptModule(self))

  def task_index(self, tokens: Array) -> Array:
    """[b, l] tokens -> [b] task indices from the first token."""
    return self.marker_base - tokens[:, 0].astype(jnp.int32)

  def intercept(self, site: Site, next_fun: Callable[..., Any], args: tuple, kwargs: dict,
                module: nn.Module) -> Any:
    tokens = args[0] if args else kwargs['encoder_input_tokens']
    if site.name == 'encoder_mask':
      return combine.combined_mask(combine.prefix, next_fun(*args, **kwargs),
                                   self.prompt_length, tokens)
    embedded, mask = next_fun(*args, **kwargs)
    index = self.task_index(tokens)
    prompts = getattr(module, self.name)(module.token_embedder.embedding, index)
    valid = (index >= 0) & (index < self.num_tasks)
    prompts = jnp.where(valid[:, None, None], prompts, jnp.nan)
    return combine.prefix(prompts, embedded, mask, tokens)

  def task_prompts(self, variables: base.Variables) -> np.ndarray:
    """Every task's combined prompt, [T, P', d]."""
    leaves = variables[self.collection][self.name]
    if np.ndim(leaves['shared']) != 2:
      raise ValueError('A bank of multi-task prompts has no single set of task prompts.')
    task_variables = {k: v for k, v in leaves.items() if k != 'shared'}
    return np.asarray(combined_prompts(self.combination, jnp.asarray(leaves['shared']),
                                       task_variables))

  def export(self, variables: base.Variables, directory: str) -> List[str]:
    """`<name>_task<i>.npy` [P', d] per task, each written atomically."""
    written = []
    for i, prompt in enumerate(self.task_prompts(variables)):
      path = os.path.join(directory, f'{self.name}_task{i}.npy')
      buffer = io.BytesIO()
      np.save(buffer, prompt)
      checkpoints.atomic_write(path, buffer.getvalue())
      written.append(path)
    return written

  def bank_leaves(self) -> Dict[str, int]:
    return {f'{self.collection}/{self.name}/shared': 2,
            f'{self.collection}/{self.name}/(tasks|task_kernel)': 3,
            f'{self.collection}/{self.name}/task_bias': 2}

  def to_config(self) -> Dict[str, Any]:
    config = {'kind': self.kind, **{f.name: getattr(self, f.name)
                                    for f in dataclasses.fields(self) if f.name != 'init'}}
    # For the reader only (a rebuilt delta's values are loaded), as PromptTuning.
    config['init'] = (self.init.description if isinstance(self.init, NotRecorded)
                      else repr(self.init))
    return config

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> 'MultiTaskPrompt':
    fields = {k: v for k, v in config.items() if k not in ('kind', 'init')}
    return cls(init=NotRecorded(config.get('init', '')), **fields)


def check_task_index(index: np.ndarray, num_tasks: int, marker_base: int) -> None:
  """Raises if a task index [batch] (from the first input token) is outside the tasks."""
  index = np.asarray(index)
  bad = index[(index < 0) | (index >= num_tasks)]
  if bad.size:
    raise ValueError(
        f'An example\'s first token {marker_base - int(bad[0])} is task index {int(bad[0])}, '
        f'outside the {num_tasks} tasks of the multi-task prompt: mark inputs with '
        'prompt_tuning.data.task_markers (task i: token marker_base - i).')


__all__ = ['COMBINATIONS', 'MultiTaskPrompt', 'MultiTaskPromptModule', 'T5_FIRST_SENTINEL',
           'check_task_index', 'combined_prompts']
