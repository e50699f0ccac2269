"""Reader for legacy T5X checkpoints (msgpack + tensorstore zarr arrays).

A legacy checkpoint is a directory `checkpoint_<step>/` holding a msgpack file
`checkpoint` written by flax serialization:

  {'version': 3,
   'optimizer': {'target': <param tree>,
                 'state': {'step': int, 'param_states': <tree>}}}

Each leaf is either an inline array (small ones) or a tensorstore spec dict
naming a zarr array directory beside the msgpack file, e.g.
`target.encoder.layers_0.mlp.wi_0.kernel/`. The spec's path is relative to the
checkpoint directory and sits either in `kvstore.path` (current writers, with
the non-tensorstore driver 'gfile') or at the top level of the spec (older
writers). We always resolve it against the directory we were given, so a
checkpoint copied from GCS to local disk (or back) still loads.

Everything is returned as numpy float32, whatever dtype (e.g. bfloat16) the
checkpoint stores.
"""
import os
import posixpath
import re
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np

from prompt_tuning.model import shard_reads
from prompt_tuning.model.config import DecoderOnlyConfig, T5Config
from prompt_tuning.model.param_shapes import CheckpointError
from prompt_tuning.model.param_shapes import check_params
from prompt_tuning.model.param_shapes import is_decoder_only_tree
from prompt_tuning.model.param_shapes import unflatten_tree

MSGPACK_NAME = 'checkpoint'
_LAYER_RE = re.compile(r'^layers_(\d+)$')


def _is_remote(path: str) -> bool:
  return '://' in path


def _read_bytes(path: str) -> bytes:
  """Reads a whole file; local paths avoid importing TensorFlow."""
  if not _is_remote(path):
    with open(path, 'rb') as f:
      return f.read()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(path, 'rb') as f:
    return f.read()


def _isdir(path: str) -> bool:
  if not _is_remote(path):
    return os.path.isdir(path)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.io.gfile.isdir(path)


def _split_path(path: str) -> Tuple[str, str]:
  """Returns (checkpoint_dir, msgpack_file) for a directory or the file."""
  path = path.rstrip('/')
  if posixpath.basename(path) == MSGPACK_NAME and not _isdir(path):
    return posixpath.dirname(path) or '.', path
  return path, posixpath.join(path, MSGPACK_NAME)


def _load_contents(path: str) -> Tuple[str, str, Dict[str, Any]]:
  """Reads and decodes the msgpack file; returns (dir, file, contents)."""
  # Imported here so that `import t5x_checkpoint` stays cheap.
  from flax import serialization  # pylint: disable=g-import-not-at-top

  ckpt_dir, msgpack_file = _split_path(path)
  try:
    data = _read_bytes(msgpack_file)
  except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
    raise CheckpointError(
        f'{path} is not a legacy T5X checkpoint: there is no readable '
        f"'{MSGPACK_NAME}' msgpack file at {msgpack_file} ({e})") from e
  except Exception as e:  # gfile raises its own NotFoundError etc.
    raise CheckpointError(f'cannot read {msgpack_file}: {e}') from e
  if not data:
    raise CheckpointError(f'T5X checkpoint file {msgpack_file} is empty')
  try:
    contents = serialization.msgpack_restore(data)
  except Exception as e:  # msgpack raises ValueError, ExtraData, TypeError...
    raise CheckpointError(
        f'T5X checkpoint file {msgpack_file} is truncated or corrupt '
        f'({len(data)} bytes): {type(e).__name__}: {e}') from e
  optimizer = contents.get('optimizer') if isinstance(contents, dict) else None
  if not isinstance(optimizer, dict) or not isinstance(
      optimizer.get('target'), dict):
    keys = sorted(contents) if isinstance(contents, dict) else type(contents)
    raise CheckpointError(
        f'{msgpack_file} is msgpack but not a legacy T5X checkpoint: expected '
        f"{{'optimizer': {{'target': ...}}}}, found top-level {keys}")
  return ckpt_dir, msgpack_file, contents


def _is_spec(node: Any) -> bool:
  return isinstance(node, dict) and isinstance(node.get('driver'), str)


def _kvstore_for(ckpt_dir: str, relative: str) -> Any:
  """The tensorstore kvstore of an array directory inside `ckpt_dir`."""
  path = posixpath.join(ckpt_dir, relative)  # An absolute `relative` wins.
  match = re.fullmatch(r'gs://([^/]+)/?(.*)', path, re.DOTALL)
  if match:
    return {'driver': 'gcs', 'bucket': match.group(1),
            'path': match.group(2).rstrip('/') + '/'}
  if _is_remote(path):
    return path.rstrip('/') + '/'  # Other schemes: tensorstore's URL form.
  return {'driver': 'file', 'path': os.path.abspath(path)}


def _resolve_spec(ckpt_dir: str, spec: Mapping[str, Any]) -> Dict[str, Any]:
  """Rewrites a stored spec so tensorstore can open it from `ckpt_dir`."""
  spec = dict(spec)
  kvstore = spec.pop('kvstore', None)
  top_path = spec.pop('path', None)
  kv_path = kvstore.get('path') if isinstance(kvstore, dict) else None
  # Older writers: relative path at the top level, kvstore without a path.
  parts = [p for p in (kv_path, top_path) if p]
  if not parts:
    raise CheckpointError(f'tensorstore spec without a path: {spec}')
  spec['kvstore'] = _kvstore_for(ckpt_dir, posixpath.join(*parts))
  # With T5X's null fill value every chunk is written, so a missing chunk
  # file means a damaged copy: fail instead of silently reading zeros.
  spec['fill_missing_data_reads'] = False
  return spec


# Bytes of decoded chunks a load keeps for reuse (`_open_arrays`).
CHUNK_CACHE_BYTES = 64 << 20


def _open_arrays(ckpt_dir: str, specs: Dict[str, Dict[str, Any]],
                 source: str) -> Dict[str, shard_reads.LazyArray]:
  """Opens {name: spec} concurrently (metadata only); returns {name: LazyArray}."""
  import tensorstore as ts  # pylint: disable=g-import-not-at-top

  # A small chunk cache: neighbouring devices' regions often share a chunk,
  # and reads issued together for the same chunk then fetch it once
  # (without it, each region read its own copy of the chunk).
  context = ts.Context({'cache_pool': {'total_bytes_limit': CHUNK_CACHE_BYTES}})
  resolved = {name: _resolve_spec(ckpt_dir, s) for name, s in specs.items()}
  # Issue every open before waiting on any: an XXL checkpoint has hundreds
  # of arrays and tensorstore overlaps their I/O.
  opens = {name: ts.open(s, read=True, context=context)
           for name, s in resolved.items()}
  arrays, errors = {}, []
  for name, future in opens.items():
    try:
      store = future.result()
      if store.fill_value is not None:
        # A real fill value allows absent chunks (they equal the fill value).
        lenient = dict(resolved[name], fill_missing_data_reads=True)
        store = ts.open(lenient, read=True, context=context).result()
      # A region read is a tensorstore future: only the chunks it overlaps
      # are fetched and decoded.
      arrays[name] = shard_reads.LazyArray(
          tuple(store.shape), lambda region, s=store: s[region].read())
    except Exception as e:  # tensorstore reports everything as ValueError
      errors.append(f'{name}: {shard_reads.short_error(e)}')
  if errors:
    raise CheckpointError(
        f'cannot read {len(errors)} array(s) of T5X checkpoint {source}:\n' +
        '\n'.join(f'  {line}' for line in sorted(errors)))
  return arrays


def _to_numpy(leaf: Any) -> Any:
  """Inline leaves: floating arrays become float32, the rest stay as is."""
  array = np.asarray(leaf)
  if array.dtype.kind in 'iub':
    return array
  return array.astype(np.float32)


def _lazy_tree(ckpt_dir: str, tree: Dict[str, Any],
               source: str) -> Dict[str, Any]:
  """`tree` with every leaf a LazyArray: spec leaves opened, inline ones in memory."""
  specs, inline = {}, {}

  def walk(node, path):
    for key, value in node.items():
      child = path + (str(key),)
      if _is_spec(value):
        specs['/'.join(child)] = value
      elif isinstance(value, dict):
        walk(value, child)
      else:
        inline['/'.join(child)] = shard_reads.in_memory(_to_numpy(value))

  walk(tree, ())
  flat = dict(inline)
  flat.update(_open_arrays(ckpt_dir, specs, source))
  return unflatten_tree(flat)


def _materialize(ckpt_dir: str, tree: Dict[str, Any],
                 source: str) -> Dict[str, Any]:
  """Replaces spec leaves of `tree` by the arrays they describe (float32 numpy)."""
  return shard_reads.read_whole(_lazy_tree(ckpt_dir, tree, source),
                                f'T5X checkpoint {source}')


def open_t5x_checkpoint(path: str) -> Dict[str, Any]:
  """The 'target' tree of a legacy T5X checkpoint as LazyArrays, nothing read yet.

  `shard_reads.read_whole` reads it whole, `shard_reads.place` shard by shard.
  """
  ckpt_dir, msgpack_file, contents = _load_contents(path)
  return _lazy_tree(ckpt_dir, contents['optimizer']['target'], msgpack_file)


def read_t5x_checkpoint(path: str, *,
                        read_optimizer_state: bool = False) -> Dict[str, Any]:
  """Reads the parameters of a legacy T5X checkpoint.

  Args:
    path: the `checkpoint_<step>` directory or the `checkpoint` file in it;
      local or any scheme tf.io.gfile and tensorstore understand (gs://).
    read_optimizer_state: also read the optimizer's slots.

  Returns:
    The 'target' parameter tree (nested dicts of float32 numpy arrays), or,
    with `read_optimizer_state`, {'target': tree, 'state': {'step': int,
    'param_states': tree}} with the slots as stored (T5X keeps unused
    Adafactor slots as (1,) zeros).

  Raises:
    CheckpointError: naming the path (and the array) that cannot be read.
  """
  ckpt_dir, msgpack_file, contents = _load_contents(path)
  optimizer = contents['optimizer']
  target = _materialize(ckpt_dir, optimizer['target'], msgpack_file)
  if not read_optimizer_state:
    return target
  state = optimizer.get('state') or {}
  return {
      'target': target,
      'state': {
          'step': int(np.asarray(state.get('step', 0))),
          'param_states': _materialize(
              ckpt_dir, state.get('param_states') or {}, msgpack_file),
      },
  }


def t5x_step(path: str) -> int:
  """The optimizer step stored in a legacy T5X checkpoint."""
  _, msgpack_file, contents = _load_contents(path)
  state = contents['optimizer'].get('state')
  if not isinstance(state, dict) or 'step' not in state:
    raise CheckpointError(f'{msgpack_file} has no optimizer/state/step')
  return int(np.asarray(state['step']))


def _layer_count(stack: Mapping[str, Any], name: str, source: str) -> int:
  indices = sorted(int(m.group(1)) for m in map(_LAYER_RE.match, stack) if m)
  if indices != list(range(len(indices))):
    raise CheckpointError(
        f'{source}: {name} layers are not numbered 0..n-1: {indices}')
  return len(indices)


def config_from_t5x_params(params: Mapping[str, Any], *,
                           source: str = 'the given parameters',
                           **overrides) -> T5Config:
  """Derives the T5Config whose tree `params` is, from the array shapes.

  Sizes come from the checkpoint, never from defaults: vocab and width from
  token_embedder/embedding [vocab, embed]; heads and position buckets from
  encoder/relpos_bias/rel_embedding [heads, buckets]; head_dim from the query
  kernel [embed, heads * head_dim]; mlp_dim from the first input kernel;
  layer counts from the `layers_<i>` names. One `wi` means the original
  T5's ReLU MLP, `wi_0`/`wi_1` the gated GELU of T5.1.1; no
  `decoder/logits_dense` means logits via the embedding.

  Args:
    params: the parameter tree.
    source: where it came from, for error messages.
    **overrides: T5Config fields the shapes cannot tell, e.g.
      relative_attention_max_distance (default 128), dropout_rate, dtype.

  Returns:
    The configuration, checked against every shape with `check_params`.
  """
  if is_decoder_only_tree(params):
    return _decoder_only_config(params, source, **overrides)
  try:
    vocab, emb_dim = params['token_embedder']['embedding'].shape
    encoder, decoder = params['encoder'], params['decoder']
    heads, buckets = encoder['relpos_bias']['rel_embedding'].shape
    layer = encoder['layers_0']
    kv = layer['attention']['query']['kernel'].shape[1]
    mlp = layer['mlp']
  except (KeyError, TypeError, ValueError, AttributeError) as e:
    raise CheckpointError(
        f'{source} does not look like T5 parameters: cannot find {e} '
        f'(top-level keys: {sorted(params)})') from e
  if 'wi' in mlp:
    activations, mlp_dim = ('relu',), mlp['wi']['kernel'].shape[1]
  elif 'wi_0' in mlp:
    n = len([k for k in mlp if k.startswith('wi_')])
    if n != 2:
      raise CheckpointError(
          f'{source}: {n} MLP input projections; only the gated pair '
          "('gelu', 'linear') and the single 'wi' (relu) are understood; "
          'pass mlp_activations=... to say which')
    activations, mlp_dim = ('gelu', 'linear'), mlp['wi_0']['kernel'].shape[1]
  else:
    raise CheckpointError(f'{source}: encoder MLP has no wi/wi_0 kernel: '
                          f'{sorted(mlp)}')
  if kv % heads:
    raise CheckpointError(
        f'{source}: query width {kv} is not a multiple of {heads} heads')
  fields = dict(
      vocab_size=int(vocab), emb_dim=int(emb_dim), num_heads=int(heads),
      head_dim=int(kv // heads), mlp_dim=int(mlp_dim),
      mlp_activations=activations,
      num_encoder_layers=_layer_count(encoder, 'encoder', source),
      num_decoder_layers=_layer_count(decoder, 'decoder', source),
      logits_via_embedding='logits_dense' not in decoder,
      relative_attention_num_buckets=int(buckets),
      relative_attention_max_distance=128)
  fields.update(overrides)
  config = T5Config(**fields)
  check_params(config, params, source)
  return config


def _decoder_only_config(params: Mapping[str, Any], source: str,
                         **overrides) -> DecoderOnlyConfig:
  """The `DecoderOnlyConfig` a T5X decoder-only tree's shapes imply (checked)."""
  decoder = params['decoder']
  try:
    vocab, emb_dim = decoder['token_embedder']['embedding'].shape
    heads, buckets = decoder['relpos_bias']['rel_embedding'].shape
    layer = decoder['layers_0']
    kv = layer['self_attention']['query']['kernel'].shape[1]
    mlp = layer['mlp']
  except (KeyError, TypeError, ValueError, AttributeError) as e:
    raise CheckpointError(f'{source} does not look like T5X decoder-only parameters: cannot '
                          f'find {e} (decoder keys: {sorted(decoder)})') from e
  gated = 'wi_0' in mlp
  fields = dict(
      vocab_size=int(vocab), emb_dim=int(emb_dim), num_heads=int(heads),
      head_dim=int(kv // heads), mlp_dim=int(mlp['wi_0' if gated else 'wi']['kernel'].shape[1]),
      mlp_activations=('gelu', 'linear') if gated else ('relu',),
      num_layers=_layer_count(decoder, 'decoder', source),
      logits_via_embedding='logits_dense' not in decoder,
      relative_attention_num_buckets=int(buckets))
  fields.update(overrides)
  config = DecoderOnlyConfig(**fields)
  check_params(config, params, source)
  return config


def load_t5x(path: str, **overrides) -> Tuple[T5Config, Dict[str, Any]]:
  """Reads a legacy T5X checkpoint and the configuration its shapes imply."""
  params = read_t5x_checkpoint(path)
  _, msgpack_file = _split_path(path)
  return config_from_t5x_params(params, source=msgpack_file,
                                **overrides), params


__all__: List[str] = [
    'CheckpointError', 'config_from_t5x_params', 'load_t5x',
    'open_t5x_checkpoint', 'read_t5x_checkpoint', 't5x_step'
]
