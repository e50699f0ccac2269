"""Delta-only checkpoints (Orbax), in T5X's `MODEL_DIR/checkpoint_<step>/` layout.

A checkpoint holds every variable that is not the frozen base, and nothing
else, for every method alike:

    checkpoint_<step>/
      state/      Orbax pytree: step; trainable (the variables trained, by
                  path: the prompt, or all of `params` in model tuning);
                  frozen_delta (the deltas' variables not trained, when there
                  are any); opt_state (the optimizer state of `trainable`)
      metadata/   JSON: base checkpoint path + fingerprint + step, data
                  position, the deltas' configuration (`deltas`), the trained
                  path patterns (`trainable`), the backbone's `model_config`
      prompt.npy  what the deltas export (`Delta.export`), e.g. the prompt

Checkpoints written before deltas existed (metadata with
`trainable_collections` and no `deltas`) read the same way: the loader
infers their prompt from its shape.

An XXL prompt checkpoint is megabytes, not the 44 GB a full T5X checkpoint
takes. The frozen backbone is re-read from the base checkpoint on resume and
must have the recorded fingerprint. Orbax writes each step into a temporary
directory and renames it when complete, so an interrupted save never replaces
a good checkpoint; the .npy is written the same way (temporary file, rename).
A run stopped between the two leaves a complete checkpoint without its .npy:
the trainer rewrites it from the checkpoint's state when it resumes.

A resumed run takes the newest checkpoint that restores (`restore_newest`);
damaged newer ones (a truncated state file, garbled metadata, an empty
folder) are reported one line each and renamed to
`unreadable_checkpoint_<step>-<UTC time>`, kept for inspection but out of the
way of the steps the run saves again.
"""
import hashlib
import io
import os
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax.traverse_util import flatten_dict, unflatten_dict



def fingerprint(params: Dict[str, Any], sample: int = 4096) -> str:
  """A cheap identity of a parameter tree: names, shapes and sampled values.

  Hashing all of an 11B-parameter model would take minutes; the first and a
  strided sample of `sample` values per array tell checkpoints apart.
  """
  digest = hashlib.sha256()
  for path, value in sorted(flatten_dict(params, sep='/').items()):
    stride = max(1, int(np.prod(np.shape(value))) // sample)
    digest.update(f'{path}:{tuple(np.shape(value))};'.encode())
    digest.update(np.ascontiguousarray(_sampled(value, stride, sample)).tobytes())
  return digest.hexdigest()[:16]


def _sampled(value: Any, stride: int, sample: int) -> np.ndarray:
  """Every `stride`-th value of the flattened array, the first `sample` of them, float32.

  A placed jax.Array is sampled on its devices and only the sample comes to
  the host (the whole array may not fit, or live on other hosts).
  """
  if isinstance(value, jax.Array):
    mesh = getattr(value.sharding, 'mesh', None)
    replicated = (jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
                  if mesh is not None else None)
    take = jax.jit(lambda x: x.astype(np.float32).reshape(-1)[::stride][:sample],
                   out_shardings=replicated)
    return np.asarray(take(value))
  return np.asarray(value, np.float32).reshape(-1)[::stride][:sample]


class FingerprintMismatchError(ValueError):
  """The base checkpoint differs from the one the delta was trained on."""


class StateShapeError(ValueError):
  """A checkpoint holds variables of other shapes than the configuration expects."""


def _key_name(key: Any) -> str:
  for attribute in ('key', 'name', 'idx'):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def _shapes_by_path(tree: Any) -> Dict[str, Tuple[int, ...]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(_key_name(k) for k in path): tuple(leaf.shape)
          for path, leaf in leaves if hasattr(leaf, 'shape')}


def _check_saved_shapes(state_dir: str, abstract_state: Any) -> None:
  """Raises StateShapeError naming the variables whose saved shape differs.

  Checked on Orbax's metadata before any array is read: a mismatch found by
  the restore itself leaves Orbax's background reads to print tracebacks at
  exit, and its message ("set strict=False") is about its own API.
  """
  saved = ocp.StandardCheckpointer().metadata(state_dir)
  saved = _shapes_by_path(dict(getattr(saved, 'item_metadata', saved).tree))
  wanted = _shapes_by_path(abstract_state)
  differ = [f'{path} saved {list(saved[path])}, configured {list(shape)}'
            for path, shape in sorted(wanted.items())
            if path in saved and saved[path] != shape]
  if differ:
    more = f' and {len(differ) - 3} more' if len(differ) > 3 else ''
    raise StateShapeError('; '.join(differ[:3]) + more)


class DeltaCheckpointer:
  """Saves and restores the trainable delta of a run under `model_dir`."""

  def __init__(self, model_dir: str, keep: Optional[int] = 3):
    # Orbax needs absolute paths; a relative MODEL_DIR is relative to the cwd.
    self.model_dir = model_dir if '://' in model_dir else os.path.abspath(model_dir)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, step_prefix='checkpoint', create=True,
        enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.model_dir, options=options,
                                          item_names=('state', 'metadata'))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self):
    return self._manager.all_steps()

  def step_dir(self, step: int) -> str:
    return os.path.join(self.model_dir, f'checkpoint_{step}')

  def save(self, step: int, state: Dict[str, Any], metadata: Dict[str, Any],
           export: Optional[Callable[[str], Any]] = None) -> None:
    """Writes `state` (a pytree of arrays) and JSON `metadata` as checkpoint_<step>.

    `export(directory)` then writes the deltas' files into it (process 0).
    """
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(metadata)),
        force=True)
    self._manager.wait_until_finished()
    if export is not None and jax.process_index() == 0:
      export(self.step_dir(step))

  def restore(self, step: int, abstract_state: Any) -> Tuple[Any, Dict[str, Any]]:
    """(state, metadata) of checkpoint_<step>, shaped like `abstract_state`."""
    _check_saved_shapes(os.path.join(self.step_dir(step), 'state'), abstract_state)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        metadata=ocp.args.JsonRestore()))
    return restored['state'], dict(restored['metadata'])

  def metadata(self, step: int) -> Dict[str, Any]:
    restored = self._manager.restore(step, args=ocp.args.Composite(
        metadata=ocp.args.JsonRestore()))
    return dict(restored['metadata'])

  def restore_newest(self, abstract_for: Callable[[Dict[str, Any]], Any]
                     ) -> Optional[Tuple[int, Any, Dict[str, Any]]]:
    """(step, state, metadata) of the newest checkpoint that restores; None if there is none.

    `abstract_for(metadata)` gives the state's shapes for a checkpoint (it may
    raise to refuse one, e.g. on another base model: that error propagates).
    Newer checkpoints that do not restore are logged one line each, with
    why, and set aside (renamed, never deleted). When checkpoints exist but
    none restores, that is an error listing every reason, and nothing moves:
    the cause is then more likely a changed configuration than damage.
    """
    skipped, last_error = [], None
    for step in sorted(self.all_steps(), reverse=True):
      try:
        metadata = self.metadata(step)
      except Exception as e:  # pylint: disable=broad-except
        skipped.append((step, f'its metadata does not read ({_one_line(e)})'))
        last_error = e
        continue
      abstract = abstract_for(metadata)
      try:
        state, _ = self.restore(step, abstract)
      except Exception as e:  # pylint: disable=broad-except
        skipped.append((step, f'its state does not restore ({_one_line(e)})'))
        last_error = e
        continue
      for bad, why in skipped:
        aside = self._set_aside(bad)
        logging.warning('Skipped checkpoint_%d: %s; kept as %s.', bad, why, aside)
      if skipped:
        self._manager.reload()
      return step, state, metadata
    if skipped:
      from prompt_tuning.model.param_shapes import CheckpointError  # pylint: disable=g-import-not-at-top
      reasons = '; '.join(f'checkpoint_{s}: {why}' for s, why in skipped)
      raise CheckpointError(
          f'No checkpoint in {self.model_dir} restores ({reasons}). If the configuration '
          'changed since they were written, restore it or use a new MODEL_DIR.') from last_error
    return None

  def _set_aside(self, step: int) -> str:
    """Renames checkpoint_<step> out of Orbax's sight (process 0); returns the new path."""
    stamp = time.strftime('%Y%m%d-%H%M%S', time.gmtime())
    target = os.path.join(self.model_dir, f'unreadable_checkpoint_{step}-{stamp}')
    if jax.process_index() == 0:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      tf.io.gfile.rename(self.step_dir(step), target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f'set_aside_checkpoint_{step}')
    return target

  def delete(self, step: int) -> None:
    self._manager.delete(step)

  def close(self) -> None:
    self._manager.close()


NPY_MAGIC = b'\x93NUMPY'


def _one_line(error: BaseException, limit: int = 200) -> str:
  """An exception as one short line (Orbax's messages run over many)."""
  text = ' '.join(str(error).split())
  text = text if len(text) <= limit else text[:limit] + '...'
  return f'{type(error).__name__}: {text}'


def load_npy(path: str) -> np.ndarray:
  """A .npy file, local or on a remote filesystem (gs://...), checked to be finite.

  Raises:
    FileNotFoundError: no file at `path`.
    ConfigurationError: the file is not in .npy format (numpy would call it
      a pickle problem).
    finite.NonFiniteError: it holds NaN or infinite values.
  """
  if '://' in path:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    with tf.io.gfile.GFile(path, 'rb') as f:
      data = f.read()
  else:
    if not os.path.isfile(path):
      raise FileNotFoundError(f'The prompt file {path} does not exist.')
    with open(path, 'rb') as f:
      data = f.read()
  array = parse_npy(data, path)
  from prompt_tuning.model.finite import check_finite  # pylint: disable=g-import-not-at-top
  check_finite(array, path)
  return array


def parse_npy(data: bytes, path: str) -> np.ndarray:
  """The array in .npy bytes; anything else is refused by name, never unpickled."""
  if not data.startswith(NPY_MAGIC):
    from prompt_tuning.gin_utils import ConfigurationError  # pylint: disable=g-import-not-at-top
    raise ConfigurationError(
        f'{path} is not a .npy file (it starts with {data[:8]!r}); a prompt file is '
        'written by numpy.save (e.g. a checkpoint\'s prompt.npy).')
  return np.load(io.BytesIO(data), allow_pickle=False)


def atomic_write(path: str, data: bytes) -> None:
  """Writes `data` to `path` through a temporary file and a rename."""
  if '://' in path:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tmp = path + '.tmp'
    with tf.io.gfile.GFile(tmp, 'wb') as f:
      f.write(data)
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'wb') as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _isdir(path: str) -> bool:
  if '://' in path:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.io.gfile.isdir(path)
  return os.path.isdir(path)


def checkpoint_step(path: str) -> int:
  """The step of a `checkpoint_<step>` directory (from its name)."""
  name = os.path.basename(path.rstrip('/'))
  prefix, _, step = name.partition('_')
  if prefix != 'checkpoint' or not step.isdigit():
    raise ValueError(f'{path} is not a checkpoint_<step> directory.')
  return int(step)


def all_checkpoints(path: str) -> List[str]:
  """`checkpoint_<step>` itself, or every checkpoint in a directory in step order."""
  path = path.rstrip('/')
  if '://' not in path:
    path = os.path.abspath(path)  # Orbax reads absolute paths only
  if os.path.basename(path).startswith('checkpoint_'):
    if not _isdir(path):
      raise FileNotFoundError(f'The checkpoint {path} does not exist.')
    return [path]
  steps = DeltaCheckpointer(path, keep=None).all_steps() if _isdir(path) else []
  if not steps:
    what = 'holds no checkpoint_<step>' if _isdir(path) else 'does not exist'
    raise FileNotFoundError(f'{path} is neither a checkpoint_<step> directory nor a '
                            f'model directory holding one: it {what}.')
  return [os.path.join(path, f'checkpoint_{step}') for step in sorted(steps)]


def resolve_checkpoint(path: str) -> str:
  """`checkpoint_<step>` itself, or the latest one inside a MODEL_DIR."""
  return all_checkpoints(path)[-1]


def read_metadata(path: str) -> Dict[str, Any]:
  """The JSON metadata (base checkpoint and fingerprint, ...) of a checkpoint."""
  directory = os.path.join(resolve_checkpoint(path), 'metadata')
  return dict(ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(directory))


def restore_state_on_host(directory: str) -> Dict[str, Any]:
  """An Orbax `state/` directory, whole, onto this process's first device.

  The target names the device, so a checkpoint written on another topology
  (a multi-host mesh, say) reads back here; without one Orbax insists on the
  saved mesh.
  """
  checkpointer = ocp.StandardCheckpointer()
  saved = checkpointer.metadata(directory)
  saved = getattr(saved, 'item_metadata', saved)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), dict(saved.tree))
  return checkpointer.restore(directory, target)


def read_delta(path: str) -> Dict[str, Any]:
  """Every non-base variable stored in a checkpoint (or a MODEL_DIR's latest), as numpy.

  That is the trained variables and the deltas' frozen ones, merged into one
  variables tree (e.g. {'prompt': {'prompt': {'prompt': [P, d]}}}).
  """
  state = restore_state_on_host(os.path.join(resolve_checkpoint(path), 'state'))
  state = jax.tree_util.tree_map(np.asarray, state)
  variables = flatten_dict(state.get('frozen_delta', {}))
  variables.update(flatten_dict(state['trainable']))
  return unflatten_dict(variables)


def _key_path(path: Any) -> str:
  return '/'.join(_key_name(k) for k in path)


def restore_pytree(directory: str, wanted: Any, shardings: Optional[Any] = None) -> Any:
  """Part of an Orbax pytree checkpoint, floats as float32.

  Args:
    directory: the item's directory (`checkpoint_<step>/state`).
    wanted: the part to read: nested dicts of the checkpoint's own metadata
      leaves (Orbax's `metadata(...)` tree, pruned).
    shardings: nested dicts of `jax.sharding.Sharding`s by the same paths,
      for some or all leaves; those leaves come back as global jax.Arrays
      that each process restores only its own shards of (Orbax reads by
      region through tensorstore), the others as whole numpy.
  """
  flat_shardings = {_key_path(p): s for p, s in
                    jax.tree_util.tree_flatten_with_path(shardings or {})[0]}

  def args_for(path, meta):
    sharding = flat_shardings.get(_key_path(path))
    if sharding is None:
      return ocp.RestoreArgs(restore_type=np.ndarray)
    return ocp.ArrayRestoreArgs(sharding=sharding, global_shape=tuple(meta.shape),
                                dtype=np.float32)

  restore_args = jax.tree_util.tree_map_with_path(args_for, wanted)
  tree = ocp.PyTreeCheckpointer().restore(directory, args=ocp.args.PyTreeRestore(
      item=wanted, restore_args=restore_args, partial_restore=True))
  as_float = lambda x: (x if isinstance(x, jax.Array) or np.asarray(x).dtype.kind in 'iub'
                        else np.asarray(x, np.float32))
  return jax.tree_util.tree_map(as_float, tree)


def state_metadata(directory: str) -> Dict[str, Any]:
  """The metadata tree of an Orbax pytree item (nested dicts of array metadata)."""
  saved = ocp.PyTreeCheckpointer().metadata(directory)
  saved = getattr(saved, 'item_metadata', saved)
  return _plain(getattr(saved, 'tree', saved))


def _plain(tree: Any) -> Any:
  """Nested dicts (Orbax may hand back FrozenDicts or other mappings)."""
  if hasattr(tree, 'items'):
    return {k: _plain(v) for k, v in tree.items()}
  return tree


def read_params(path: str, shardings: Optional[Any] = None) -> Optional[Dict[str, Any]]:
  """The trained `params` of a checkpoint (pretrain, LM adaptation, model tuning), or None.

  Whole float32 numpy, or with `shardings` (a tree like the params) global
  jax.Arrays restored shard by shard (`restore_pytree`).
  """
  directory = os.path.join(resolve_checkpoint(path), 'state')
  metadata = state_metadata(directory)
  params = metadata.get('trainable', {}).get('params')
  if params is None:
    return None
  restored = restore_pytree(directory, {'trainable': {'params': params}},
                            {'trainable': {'params': shardings}} if shardings else None)
  return restored['trainable']['params']
