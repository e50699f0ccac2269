"""Checkpoint arrays read by region: whole into this host, or shard by shard onto a mesh.

A reader (legacy T5X zarr through tensorstore, safetensors) describes each
stored array as a `LazyArray`: its shape and a function that reads any
rectangular region of it as float32 numpy. Then either

    params = read_whole(tree, source)             # numpy, every array whole (tools, export)
    params = place(tree, shardings, source)       # jax.Arrays laid out on a mesh

`place` builds each array with `jax.make_array_from_callback`: a process
reads only the regions its own devices hold, each distinct region once
however many of its devices replicate it. A host of a model-parallel mesh
thus holds its share of the backbone, never all of it (T5.1.1 XXL is 44 GB
in float32), as T5X restores through tensorstore. Reads are issued ahead of
placement, with at most `max_pending_bytes` read and not yet placed; NaN
and infinity are counted in each region as it is read.
"""
import collections
import dataclasses
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.model.finite import non_finite_count, report_non_finite
from prompt_tuning.model.param_shapes import CheckpointError, flatten_tree, unflatten_tree

Region = Tuple[slice, ...]
# What `LazyArray.read` returns: numpy, or a future of it (tensorstore's).
RegionRead = Any
# Read-ahead of `place`: regions read and not yet on their devices. Host
# memory beyond the model's own share stays near this (plus the chunks being
# decoded); `tools/memory_report.py --load` measures it.
DEFAULT_PENDING_BYTES = 256 << 20


@dataclasses.dataclass(frozen=True)
class LazyArray:
  """A stored array not read yet.

  Attributes:
    shape: its full shape, e.g. (32128, 4096).
    read: region (one slice per dimension, bounded) -> its values, numpy or
      a future with `.result()`; converted to float32 by the caller.
  """
  shape: Tuple[int, ...]
  read: Callable[[Region], RegionRead]

  @property
  def nbytes(self) -> int:
    """Bytes as float32, the dtype everything is loaded in."""
    return int(np.prod(self.shape)) * 4


def in_memory(array: np.ndarray) -> LazyArray:
  """A LazyArray over values already read (inline msgpack leaves, a torch pickle)."""
  array = np.asarray(array)
  return LazyArray(tuple(array.shape), lambda region: array[region])


def full_region(shape: Tuple[int, ...]) -> Region:
  return tuple(slice(0, n) for n in shape)


def _region_key(region: Region, shape: Tuple[int, ...]) -> Tuple[Tuple[int, int], ...]:
  """((start, stop), ...) with every bound explicit: equal regions, equal keys."""
  return tuple(s.indices(n)[:2] for s, n in zip(region, shape))


def _bounded(key: Tuple[Tuple[int, int], ...]) -> Region:
  return tuple(slice(start, stop) for start, stop in key)


def short_error(error: Exception) -> str:
  # Tensorstore appends the whole JSON spec; the array name says enough.
  return str(error).split(' [tensorstore_spec=')[0]


def as_float32(value: RegionRead) -> np.ndarray:
  """A read region (numpy or a future of it) as contiguous numpy; floats as float32."""
  if hasattr(value, 'result'):
    value = value.result()
  array = np.asarray(value)
  return array if array.dtype.kind in 'iub' else np.ascontiguousarray(array, np.float32)


def _raise_errors(errors: List[str], source: str) -> None:
  if errors:
    raise CheckpointError(f'cannot read {len(errors)} array(s) of {source}:\n' +
                          '\n'.join(f'  {line}' for line in sorted(errors)))


def read_whole(tree: Mapping[str, Any], source: str) -> Dict[str, Any]:
  """Every LazyArray of `tree` read whole, concurrently: float32 numpy.

  Raises:
    CheckpointError: listing every array that cannot be read.
  """
  flat = flatten_tree(tree)
  pending, errors = {}, []
  for path, leaf in flat.items():  # issue every read before waiting on any
    try:
      pending[path] = leaf.read(full_region(leaf.shape))
    except Exception as e:  # pylint: disable=broad-except
      errors.append(f'{path}: {short_error(e)}')
  out = {}
  for path, value in pending.items():
    try:
      out[path] = as_float32(value)
    except Exception as e:  # pylint: disable=broad-except
      errors.append(f'{path}: {short_error(e)}')
  _raise_errors(errors, source)
  return unflatten_tree(out)


def local_regions(shape: Tuple[int, ...], sharding: jax.sharding.Sharding
                  ) -> List[Tuple[Tuple[int, int], ...]]:
  """The distinct regions this process's devices hold of an array, in device order."""
  seen = {}
  for index in sharding.addressable_devices_indices_map(tuple(shape)).values():
    seen.setdefault(_region_key(index, shape), None)
  return list(seen)


def _owned_regions(shape: Tuple[int, ...], sharding: jax.sharding.Sharding
                   ) -> List[Tuple[Tuple[int, int], ...]]:
  """The regions whose first holder (in device order) is one of this process's devices.

  Every region has exactly one owner among the processes, so counts over
  owned regions sum across processes without counting a replica twice.
  """
  owners = {}
  for device, index in sharding.devices_indices_map(tuple(shape)).items():
    owners.setdefault(_region_key(index, shape), device.process_index)
  return [key for key, process in owners.items() if process == jax.process_index()]


def _global_sum(counts: np.ndarray) -> np.ndarray:
  """Per-process counts [n] summed over the processes (a tiny all-gather)."""
  if jax.process_count() == 1:
    return counts
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(counts)).reshape(
      jax.process_count(), -1).sum(0)


def _issue(path: str, leaf: LazyArray, sharding: jax.sharding.Sharding
           ) -> Tuple[str, LazyArray, jax.sharding.Sharding, Dict[Any, RegionRead], int]:
  regions = local_regions(leaf.shape, sharding)
  reads = {key: leaf.read(_bounded(key)) for key in regions}
  size = sum(int(np.prod([b - a for a, b in key])) * 4 for key in regions)
  return path, leaf, sharding, reads, size


def place(tree: Mapping[str, Any], shardings: Mapping[str, Any], source: str,
          max_pending_bytes: Optional[int] = None) -> Dict[str, Any]:
  """Every LazyArray of `tree` as a global float32 jax.Array with its sharding.

  Args:
    tree: nested dicts of LazyArrays, e.g. a checkpoint's params.
    shardings: the same tree of `jax.sharding.Sharding`s (e.g.
      `Partitioner.variable_shardings(...)['params']`).
    source: the checkpoint, named in errors.
    max_pending_bytes: read-ahead: regions read but not yet placed on their
      devices stay under this (one array's regions always go ahead);
      default `DEFAULT_PENDING_BYTES` as it is when called.

  Every region is checked for NaN and infinity as it is read (on the host,
  where the values already are); the counts are summed over the processes,
  so every host fails alike.

  Raises:
    CheckpointError: `shardings` does not cover `tree`, or a region cannot be read.
    finite.NonFiniteError: an array holds NaN or infinite values.
  """
  if max_pending_bytes is None:
    max_pending_bytes = DEFAULT_PENDING_BYTES
  flat, flat_shardings = flatten_tree(tree), flatten_tree(shardings)
  missing = sorted(set(flat) - set(flat_shardings))
  if missing:
    raise CheckpointError(f'{source}: no sharding given for {missing[:10]}'
                          f'{" ..." if len(missing) > 10 else ""}')
  queue: collections.deque = collections.deque()
  pending_bytes, out, non_finite = 0, {}, {}
  todo: Iterator[str] = iter(flat)
  exhausted = False
  while queue or not exhausted:
    while not exhausted and (not queue or pending_bytes < max_pending_bytes):
      path = next(todo, None)
      if path is None:
        exhausted = True
        break
      try:
        queue.append(_issue(path, flat[path], flat_shardings[path]))
      except Exception as e:  # pylint: disable=broad-except
        _raise_errors([f'{path}: {short_error(e)}'], source)
      pending_bytes += queue[-1][-1]
    if not queue:
      break
    path, leaf, sharding, reads, size = queue.popleft()
    try:
      values = {key: as_float32(value) for key, value in reads.items()}
    except Exception as e:  # pylint: disable=broad-except
      _raise_errors([f'{path}: {short_error(e)}'], source)
    non_finite[path] = sum(non_finite_count(values[key])
                           for key in _owned_regions(leaf.shape, sharding))
    out[path] = jax.make_array_from_callback(
        leaf.shape, sharding, lambda index, v=values, s=leaf.shape: v[_region_key(index, s)])
    pending_bytes -= size
  counts = _global_sum(np.asarray(list(non_finite.values()), np.int64))
  report_non_finite({p: int(c) for p, c in zip(non_finite, counts) if c},
                    {p: int(np.prod(flat[p].shape)) for p in flat}, source)
  return unflatten_tree(out)


def count_non_finite(tree: Mapping[str, Any]) -> Dict[str, int]:
  """{path: NaN and infinite values} of placed float arrays, counted where they live.

  Every process gets the same counts (a reduction over the global arrays), so
  every host fails alike on a damaged checkpoint.
  """
  flat = {p: x for p, x in flatten_tree(tree).items() if jnp.issubdtype(x.dtype, jnp.floating)}
  if not flat:
    return {}
  first = next(iter(flat.values()))
  replicated = jax.sharding.NamedSharding(first.sharding.mesh, jax.sharding.PartitionSpec()) \
      if isinstance(first.sharding, jax.sharding.NamedSharding) else None
  count = jax.jit(lambda t: {p: jnp.sum(~jnp.isfinite(x)) for p, x in t.items()},
                  out_shardings=replicated)
  return {p: int(c) for p, c in count(flat).items()}


def check_finite_placed(tree: Mapping[str, Any], source: str) -> None:
  """`finite.check_finite` for placed jax.Arrays: nothing is gathered to the host."""
  counts = count_non_finite(tree)
  sizes = {p: int(np.prod(x.shape)) for p, x in flatten_tree(tree).items()}
  report_non_finite({p: c for p, c in counts.items() if c}, sizes, source)


__all__ = ['LazyArray', 'as_float32', 'check_finite_placed', 'count_non_finite', 'full_region',
           'in_memory', 'local_regions', 'place', 'read_whole', 'short_error']
