"""Partitioning by logical axes over a ('data', 'model') device mesh, as T5X does.

Every parameter carries T5X's logical axis names (see `model/layers.py`) and
the main activations are constrained with `nn.with_logical_constraint`. The
rules below map those names onto the two mesh axes:

    'data'   the batch is split over it (data parallelism); parameters are
             replicated along it (T5X's 1-D parameter partitioning), or
             split along `embed` with PARAMETER_PARTITIONING_DIMS=2
    'model'  vocab, mlp, heads and joined_kv are split over it (model
             parallelism); its size is NUM_PARTITIONS

    partitioner = Partitioner(num_partitions=2)   # 8 devices -> mesh 4 x 2
    shardings = partitioner.variable_shardings(jax.eval_shape(model.init, ...))
    params = partitioner.place(numpy_params, shardings['params'])
    step = partitioner.partition(fn, out_shardings=...)   # jit on the mesh
    batch = partitioner.global_batch(this_hosts_numpy_batch)

The same code runs on one CPU (mesh 1 x 1), on virtual CPU devices, on a
GPU box and on a multi-host pod (`jax.distributed`); XLA's SPMD partitioner
inserts every collective, nothing here communicates by hand.
"""
import contextlib
import functools
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import gin
import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

LogicalAxisRules = Tuple[Tuple[str, Optional[str]], ...]
MESH_AXES = ('data', 'model')

# T5X's `standard_logical_axis_rules(activation_partitioning_dims,
# parameter_partitioning_dims)`, keyed by those two numbers. Flax gives an
# array dimension the first rule of its name whose mesh axis the array does
# not use yet, so with 2-D partitioning 'embed' goes to 'model' where 'model'
# is free (activations [batch, length, embed]; norm scales) and to 'data'
# where it is not (parameters [vocab, embed], [embed, mlp]).
_PARTITIONED_RULES = {
    (1, 1): (('batch', 'data'), ('vocab', 'model'), ('embed', None), ('mlp', 'model'),
             ('heads', 'model'), ('kv', None), ('joined_kv', 'model')),
    (2, 1): (('batch', 'data'), ('vocab', 'model'), ('mlp', 'model'), ('heads', 'model'),
             ('kv', None), ('joined_kv', 'model'), ('embed', 'model')),
    (1, 2): (('batch', 'data'), ('vocab', 'model'), ('mlp', 'model'), ('heads', 'model'),
             ('kv', None), ('joined_kv', 'model'), ('embed', 'data')),
    (2, 2): (('batch', 'data'), ('vocab', 'model'), ('mlp', 'model'), ('heads', 'model'),
             ('kv', None), ('joined_kv', 'model'), ('embed', 'model'), ('embed', 'data')),
}
# The names T5X always replicates, after the partitioned ones.
_REPLICATED_RULES = (('relpos_buckets', None), ('abspos_buckets', None), ('length', None),
                     ('layers', None), ('stack', None), ('mlp_activations', None))
T5X_LOGICAL_AXIS_RULES: LogicalAxisRules = _PARTITIONED_RULES[1, 1] + _REPLICATED_RULES


def standard_logical_axis_rules(activation_partitioning_dims: int = 1,
                                parameter_partitioning_dims: int = 1,
                                additional_rules: Sequence[Tuple[str, Optional[str]]] = ()
                                ) -> LogicalAxisRules:
  """T5X's default rules for 1-D or 2-D partitioning, then `additional_rules` (the deltas').

  `parameter_partitioning_dims=2` also splits the parameters' `embed` over
  'data' (ZeRO-3-like: each data-parallel replica holds a slice of every
  weight, gathered when used); `activation_partitioning_dims=2` splits the
  activations' `embed` over 'model'. Later rules only add names or fallbacks.
  """
  dims = (activation_partitioning_dims, parameter_partitioning_dims)
  if dims not in _PARTITIONED_RULES:
    raise ValueError(f'activation_partitioning_dims={dims[0]} and parameter_partitioning_dims='
                     f'{dims[1]}: each must be 1 or 2 (as in T5X).')
  return (_PARTITIONED_RULES[dims] + _REPLICATED_RULES +
          tuple(tuple(rule) for rule in additional_rules))


def mesh_shape_for(num_devices: int, num_partitions: int = 1,
                   mesh_shape: Optional[Sequence[int]] = None) -> Tuple[int, int]:
  """(data, model): `mesh_shape` if given, else (num_devices / num_partitions, num_partitions)."""
  if mesh_shape is not None:
    shape = tuple(int(n) for n in mesh_shape)
    if len(shape) != 2 or np.prod(shape) != num_devices:
      raise ValueError(f'MESH_SHAPE={tuple(mesh_shape)} must be (data, model) with '
                       f'data * model = the {num_devices} devices.')
    return shape
  if num_partitions < 1 or num_devices % num_partitions:
    raise ValueError(f'NUM_PARTITIONS={num_partitions} must divide the number of '
                     f'devices ({num_devices}).')
  return num_devices // num_partitions, num_partitions


def make_mesh(num_partitions: int = 1, mesh_shape: Optional[Sequence[int]] = None,
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A ('data', 'model') mesh over `devices` (all of them by default).

  Devices are laid out in `jax.devices()` order (process by process), so each
  host owns whole rows along 'data' whenever 'model' fits on one host, and
  feeds the batch rows of those devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape_for(len(devices), num_partitions, mesh_shape)
  # Auto axes: shardings are propagated by XLA, as under T5X's pjit (new JAX
  # defaults to explicit axes for jax.make_mesh; older JAX has only auto ones).
  axis_type = getattr(jax.sharding, 'AxisType', None)
  kwargs = {'axis_types': (axis_type.Auto,) * len(MESH_AXES)} if axis_type else {}
  return Mesh(np.asarray(devices, dtype=object).reshape(shape), MESH_AXES, **kwargs)


@gin.configurable
class Partitioner:
  """The mesh, the logical axis rules, and placement of state and batches.

  Attributes (gin): num_partitions (NUM_PARTITIONS, the size of 'model'),
  mesh_shape (MESH_SHAPE, an explicit (data, model); overrides
  num_partitions), activation_partitioning_dims and
  parameter_partitioning_dims (ACTIVATION_PARTITIONING_DIMS,
  PARAMETER_PARTITIONING_DIMS: 1 or 2, T5X's), logical_axis_rules (default:
  `standard_logical_axis_rules(...)` of those two).
  The mesh is built on first use, after `jax.distributed.initialize`. The
  trainer adds the deltas' rules (`add_rules`).
  """

  def __init__(self, num_partitions: int = 1, mesh_shape: Optional[Sequence[int]] = None,
               logical_axis_rules: Optional[Sequence[Tuple[str, Optional[str]]]] = None,
               devices: Optional[Sequence[jax.Device]] = None,
               activation_partitioning_dims: int = 1, parameter_partitioning_dims: int = 1):
    self.num_partitions = num_partitions
    self.mesh_shape = mesh_shape
    self.rules: LogicalAxisRules = tuple(
        tuple(r) for r in (logical_axis_rules if logical_axis_rules is not None
                           else standard_logical_axis_rules(activation_partitioning_dims,
                                                            parameter_partitioning_dims)))
    self._devices = devices

  def add_rules(self, rules: Sequence[Tuple[str, Optional[str]]]) -> None:
    """Appends `rules` not already present (a delta's axes, e.g. the prompt's)."""
    self.rules += tuple(tuple(r) for r in rules if tuple(r) not in self.rules)

  @functools.cached_property
  def mesh(self) -> Mesh:
    mesh = make_mesh(self.num_partitions, self.mesh_shape, self._devices)
    logging.info('Device mesh %s over %d devices on %d processes',
                 dict(mesh.shape), mesh.size, jax.process_count())
    return mesh

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  @property
  def batch_sharding(self) -> NamedSharding:
    """Batch arrays [batch, ...]: rows split over 'data', the rest replicated."""
    return NamedSharding(self.mesh, PartitionSpec('data'))

  @contextlib.contextmanager
  def context(self) -> Iterator[None]:
    """The mesh and the rules, so `nn.with_logical_constraint` binds while tracing."""
    mesh_context = jax.set_mesh(self.mesh) if hasattr(jax, 'set_mesh') else self.mesh
    with mesh_context, nn.logical_axis_rules(self.rules):
      yield

  # -- logical axes -> shardings -------------------------------------------
  def mesh_axes(self, logical_axes: Sequence[Optional[str]]) -> PartitionSpec:
    """('vocab', 'embed') -> PartitionSpec('model', None) under the rules."""
    unknown = [a for a in logical_axes
               if a is not None and a not in {name for name, _ in self.rules}]
    if unknown:
      logging.warning('No partitioning rule for logical axes %s: replicated.', unknown)
    return nn.logical_to_mesh_axes(tuple(logical_axes), self.rules)

  def sharding(self, logical_axes: Sequence[Optional[str]],
               shape: Optional[Sequence[int]] = None, name: str = '') -> NamedSharding:
    """The NamedSharding of an array with `logical_axes` (and `shape`).

    A dimension the mesh axis does not divide (e.g. 6 heads on 4 partitions)
    is replicated instead, with a warning: always correct, only less sparing.
    """
    spec = list(self.mesh_axes(logical_axes))
    if shape is not None:
      spec += [None] * (len(shape) - len(spec))
      for i, (axis, size) in enumerate(zip(spec, shape)):
        parts = int(np.prod([self.mesh.shape[a] for a in
                             ((axis,) if isinstance(axis, str) else axis or ())]))
        if size % parts:
          logging.warning('%s: dimension %d (%d, %s) is not divisible by mesh axis %r '
                          '(%d); replicated.', name or 'array', i, size,
                          logical_axes[i], axis, parts)
          spec[i] = None
    return NamedSharding(self.mesh, PartitionSpec(*spec))

  def variable_shardings(self, abstract_variables: Any) -> Any:
    """Boxed (logically partitioned) variables -> NamedShardings, unboxed tree.

    Args:
      abstract_variables: e.g. `jax.eval_shape(model.init, ...)`: leaves are
        `nn.LogicallyPartitioned` around ShapeDtypeStructs (or plain leaves,
        which are replicated).
    Returns:
      The unboxed tree with a NamedSharding at every leaf, e.g.
      token_embedder/embedding [vocab, embed] -> P('model', None).
    """
    specs = nn.get_partition_spec(abstract_variables)
    values = nn.unbox(abstract_variables)
    paths = {jax.tree_util.keystr(p): v for p, v in
             jax.tree_util.tree_flatten_with_path(values)[0]}
    flat_specs, treedef = jax.tree_util.tree_flatten_with_path(
        specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    shardings = [self.sharding(tuple(spec), np.shape(paths[jax.tree_util.keystr(p)]),
                               jax.tree_util.keystr(p)) for p, spec in flat_specs]
    return jax.tree_util.tree_unflatten(treedef, shardings)

  def optimizer_shardings(self, abstract_opt_state: Any, abstract_params: Any,
                          param_shardings: Any) -> Any:
    """Shardings of an optax state of `abstract_params`.

    Every subtree of the state shaped like the parameter tree (Adafactor's
    `v`, momentum, ...) follows the parameters: a leaf with its parameter's
    shape gets its parameter's sharding. Everything else (step counts,
    Adafactor's factored row/column vectors v_row [rows], v_col [cols], the
    (1,) placeholders) is replicated: O(rows + cols) per matrix.
    """
    params_def = jax.tree_util.tree_structure(abstract_params)
    param_leaves = jax.tree_util.tree_leaves(abstract_params)
    sharding_leaves = jax.tree_util.tree_leaves(param_shardings)

    def mirrors_params(node: Any) -> bool:
      return jax.tree_util.tree_structure(node) == params_def

    def shardings_of(node: Any) -> Any:
      if not mirrors_params(node):
        return self.replicated
      leaves = [s if np.shape(x) == np.shape(p) else self.replicated
                for x, p, s in zip(jax.tree_util.tree_leaves(node), param_leaves,
                                   sharding_leaves)]
      return jax.tree_util.tree_unflatten(params_def, leaves)

    return jax.tree_util.tree_map(shardings_of, abstract_opt_state, is_leaf=mirrors_params)

  def init_optimizer_state(self, tx: Any, params: Any) -> Any:
    """`tx.init(params)` computed on the mesh, born with `optimizer_shardings`.

    `params` are placed jax.Arrays; nothing is materialized on one device.
    """
    abstract = jax.eval_shape(tx.init, params)
    shardings = self.optimizer_shardings(abstract, params, shardings_of(params))
    return self.partition(tx.init, out_shardings=shardings)(params)

  # -- placement -----------------------------------------------------------
  def place(self, tree: Any, shardings: Any) -> Any:
    """Global jax.Arrays with `shardings` from host values every process holds in full.

    Numpy arrays (e.g. a loaded checkpoint) are cut into the shards this
    process's devices need; jax.Arrays are moved (resharded) if necessary.
    """
    def place_one(x, sharding):
      if isinstance(x, jax.Array):
        if x.sharding == sharding:
          return x
        if not x.is_fully_addressable:
          return jax.device_put(x, sharding)
      host = np.asarray(x)
      return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
    return jax.tree_util.tree_map(place_one, tree, shardings)

  def data_shard(self, global_batch_size: int) -> Tuple[int, int]:
    """(index, count) of the slice of the global batch this process feeds.

    Processes whose devices hold the same batch rows (model parallelism
    across hosts) read the same shard, as T5X's data layout does.
    """
    parts = self.mesh.shape['data']
    if global_batch_size % parts:
      raise ValueError(f'BATCH_SIZE={global_batch_size} is not divisible by the size of '
                       f"the mesh's 'data' axis ({parts}; mesh {dict(self.mesh.shape)}).")
    rows = {}
    for device, index in self.batch_sharding.devices_indices_map(
        (global_batch_size,)).items():
      start, stop, _ = index[0].indices(global_batch_size)
      low, high = rows.get(device.process_index, (start, stop))
      rows[device.process_index] = (min(low, start), max(high, stop))
    spans = sorted(set(rows.values()))
    for (_, high), (low, _) in zip(spans, spans[1:]):
      if high > low:
        raise ValueError(f'Processes hold overlapping batch rows {spans}; use a mesh '
                         "whose 'model' axis lies within a host.")
    return spans.index(rows[jax.process_index()]), len(spans)

  def global_batch(self, local_batch: Mapping[str, np.ndarray]) -> dict:
    """This process's numpy rows [local_batch, ...] -> global arrays [batch, ...]."""
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v))
            for k, v in local_batch.items()}

  # -- compilation ---------------------------------------------------------
  def partition(self, fn: Callable, in_shardings: Any = None, out_shardings: Any = None,
                donate_argnums: Sequence[int] = ()) -> Callable:
    """`jax.jit(fn)` with these shardings, traced and run under `context()`.

    `in_shardings=None` takes each input's own placement (committed arrays
    keep theirs); `out_shardings` fixes where results live (None: XLA
    chooses).
    """
    # Passed only when given: under a mesh, an explicit None means replicated.
    kwargs = {name: value for name, value in (('in_shardings', in_shardings),
                                              ('out_shardings', out_shardings))
              if value is not None}
    jitted = jax.jit(fn, donate_argnums=tuple(donate_argnums), **kwargs)

    def in_context(method: Callable) -> Callable:
      @functools.wraps(fn)
      def call(*args, **kw):
        with self.context():
          return method(*args, **kw)
      return call

    call = in_context(jitted)
    call.lower = in_context(jitted.lower)  # for inspecting the compiled program
    return call


def shardings_of(tree: Any) -> Any:
  """The sharding of every (placed) jax.Array of `tree`."""
  return jax.tree_util.tree_map(lambda x: x.sharding, tree)


def abstract_shapes(tree: Any) -> Any:
  """ShapeDtypeStructs of `tree`, with each jax.Array's sharding (for Orbax restores)."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype,
                                     sharding=getattr(x, 'sharding', None)), tree)
