"""Reader for T5X's Orbax checkpoints (T5X HEAD's default format).

    checkpoint_<step>/
      _CHECKPOINT_METADATA        Orbax's CheckpointManager record
      state/                      a PyTree item: {'target': params tree,
        _METADATA, manifest.ocdbt, ...     'state': {'step', 'param_states'}}
      dataset/                    the data iterator (may be empty)

Only `target` (and, on request, the optimizer state) is read, as float32
numpy on the host, so any mesh the checkpoint was written on loads here.

A T5X run that trained a delta through `prompt_tuning.interop.t5x` holds the
backbone and the delta side by side in `target`: the backbone under T5X's
names (token_embedder, encoder, decoder) and each delta's collection beside
them (`target/prompt/prompt/prompt` [P, d]). `split_target` separates them.
"""
import os
import posixpath
from typing import Any, Dict, Tuple

import numpy as np

from prompt_tuning.model import checkpoints
from prompt_tuning.model.param_shapes import CheckpointError

STATE_ITEM = 'state'
METADATA_FILE = '_METADATA'
# The backbone's top-level modules; anything else in `target` is a delta's.
BACKBONE_KEYS = ('token_embedder', 'encoder', 'decoder')


def _exists(path: str) -> bool:
  if '://' not in path:
    return os.path.exists(path)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.io.gfile.exists(path)


def is_t5x_orbax(path: str) -> bool:
  """Whether `path` is a T5X Orbax `checkpoint_<step>` (state/_METADATA, no metadata/)."""
  path = path.rstrip('/')
  return (_exists(posixpath.join(path, STATE_ITEM, METADATA_FILE)) and
          not _exists(posixpath.join(path, 'metadata')))


def read_t5x_orbax(path: str, *, read_optimizer_state: bool = False,
                   shardings: Any = None) -> Dict[str, Any]:
  """Reads a T5X Orbax checkpoint's parameters.

  Args:
    path: the `checkpoint_<step>` directory (local or gs://).
    read_optimizer_state: also read the optimizer state.
    shardings: None, or `jax.sharding.Sharding`s for (part of) the target
      tree, e.g. the backbone's: those arrays come back as global jax.Arrays
      that each process restores only its shards of.

  Returns:
    The 'target' tree (nested dicts of float32 numpy arrays), or with
    `read_optimizer_state` {'target': tree, 'state': {'step': int,
    'param_states': tree}}, as `t5x_checkpoint.read_t5x_checkpoint`.

  Raises:
    CheckpointError: naming the path when it is not readable as one.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  directory = posixpath.join(path.rstrip('/'), STATE_ITEM)
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    metadata = checkpointer.metadata(directory)
    metadata = getattr(metadata, 'item_metadata', metadata)
    metadata = dict(getattr(metadata, 'tree', metadata))
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f'{path} is not a readable T5X Orbax checkpoint: {e}') from e
  if 'target' not in metadata:
    raise CheckpointError(f'{path}/state holds {sorted(metadata)}, not a T5X train state '
                          "({'target': ..., 'state': ...}).")
  wanted = {k: metadata[k] for k in ('target', 'state')
            if k in metadata and (k == 'target' or read_optimizer_state)}
  try:
    tree = checkpoints.restore_pytree(directory, wanted,
                                      {'target': shardings} if shardings else None)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f'cannot read {directory}: {type(e).__name__}: {e}') from e
  as_float = lambda x: x if isinstance(x, jax.Array) else np.asarray(x, np.float32)
  target = jax.tree_util.tree_map(as_float, _plain(tree['target']))
  if not read_optimizer_state:
    return target
  state = _plain(tree.get('state') or {})
  return {'target': target,
          'state': {'step': int(np.asarray(state.get('step', 0))),
                    'param_states': jax.tree_util.tree_map(
                        as_float, state.get('param_states') or {})}}


def t5x_orbax_step(path: str) -> int:
  """The optimizer step of a T5X Orbax checkpoint."""
  return read_t5x_orbax(path, read_optimizer_state=True)['state']['step']


def _plain(tree: Any) -> Any:
  """Nested dicts (Orbax may hand back FrozenDicts or other mappings)."""
  if hasattr(tree, 'items'):
    return {k: _plain(v) for k, v in tree.items()}
  return tree


def split_target(target: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """T5X `target` -> (backbone params, {collection: tree} of the deltas beside it)."""
  backbone = {k: v for k, v in target.items() if k in BACKBONE_KEYS}
  deltas = {k: v for k, v in target.items() if k not in BACKBONE_KEYS}
  return backbone, deltas


__all__ = ['BACKBONE_KEYS', 'is_t5x_orbax', 'read_t5x_orbax', 'split_target',
           't5x_orbax_step']
