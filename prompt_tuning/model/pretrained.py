"""Loads a pretrained backbone from whatever format `INITIAL_CHECKPOINT_PATH` names.

Accepted, detected from what is on disk:

  * a T5X checkpoint: a `checkpoint_<step>` directory in T5X's Orbax format
    (`state/_METADATA`, T5X HEAD's default) or the legacy one (the
    `checkpoint` msgpack file + zarr arrays), or that msgpack file itself. A
    checkpoint of a T5X run that trained a delta (`gin/t5x/`) holds the
    delta beside the backbone; only the backbone is returned here
    (`prompt_tuning.infer.loading` loads both);
  * a directory of `checkpoint_<step>` subdirectories (a T5X model dir): the
    highest step is loaded;
  * a Hugging Face T5 folder: config.json with model.safetensors (possibly
    sharded) or pytorch_model.bin;
  * a Hugging Face GPT-2 folder: the same files, config.json's `model_type`
    'gpt2' (`gpt2_checkpoint`; an unsupported GPT-2 option is a one-line
    error naming it);
  * a checkpoint of this project's own runs that trained `params` (pretrain,
    LM adaptation, model tuning): `MODEL_DIR/checkpoint_<step>` with Orbax
    `state/` and `metadata/`, or its MODEL_DIR. A prompt-only (delta)
    checkpoint is refused with the name of its base model.

The result is always (config, params): a T5Config (or DecoderOnlyConfig, or
GPT2Config) and params the T5X-named tree of float32 arrays, checked against the shapes the configuration implies: numpy, read
whole, or, given target shardings, global jax.Arrays that each process reads
only its devices' regions of (`shard_reads`).
"""
import json
import os
import posixpath
import re
from typing import Any, Dict, List, Tuple

import jax
import numpy as np

from prompt_tuning.model import checkpoints
from prompt_tuning.model import gpt2_checkpoint
from prompt_tuning.model import hf_checkpoint
from prompt_tuning.model import shard_reads
from prompt_tuning.model import t5x_checkpoint
from prompt_tuning.model import t5x_orbax
from prompt_tuning.model.config import DecoderOnlyConfig, T5Config
from prompt_tuning.model.finite import check_finite
from prompt_tuning.model.gpt2 import GPT2Config
from prompt_tuning.model.param_shapes import CheckpointError
from prompt_tuning.model.param_shapes import check_params

_STEP_DIR_RE = re.compile(r'^checkpoint_(\d+)$')
# Files and folders of an Orbax checkpoint that is neither T5X's nor ours.
_ORBAX_MARKERS = ('_CHECKPOINT_METADATA', '_METADATA', 'manifest.ocdbt',
                  'state')
ACCEPTED = (
    'a T5X checkpoint_<step> directory, Orbax (state/_METADATA) or legacy '
    '(msgpack `checkpoint` file + zarr arrays), or the legacy `checkpoint` '
    'file; a directory of checkpoint_<step> subdirectories (the latest is used); a Hugging Face T5 '
    'or GPT-2 folder (config.json + model.safetensors[.index.json] or pytorch_model.bin); '
    'a checkpoint_<step> of this project\'s pretrain/lm_adapt/model_tune runs')


def _gfile():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.io.gfile


def _exists(path: str) -> bool:
  return _gfile().exists(path) if '://' in path else os.path.exists(path)


def _isdir(path: str) -> bool:
  return _gfile().isdir(path) if '://' in path else os.path.isdir(path)


def _listdir(path: str) -> List[str]:
  names = _gfile().listdir(path) if '://' in path else os.listdir(path)
  return sorted(name.rstrip('/') for name in names)


def latest_t5x_checkpoint(model_dir: str) -> str:
  """The `checkpoint_<step>` subdirectory of `model_dir` with the top step."""
  steps = {int(m.group(1)): name
           for name in _listdir(model_dir)
           if (m := _STEP_DIR_RE.match(name))
           and _isdir(posixpath.join(model_dir, name))}
  if not steps:
    raise CheckpointError(f'no checkpoint_<step> directory in {model_dir}')
  return posixpath.join(model_dir, steps[max(steps)])


def _describe(names: List[str]) -> str:
  shown = ', '.join(names[:12]) + (', ...' if len(names) > 12 else '')
  return f'[{shown}]' if names else 'an empty directory'


def detect_format(path: str) -> Tuple[str, str]:
  """What `path` holds: ('t5x' | 't5x_orbax', checkpoint), ('hf', folder) or ('ours', dir).

  Raises:
    CheckpointError: saying what was found and which formats are accepted.
  """
  return _detect(path, model_dir_ok=True)


def _detect(path: str, model_dir_ok: bool) -> Tuple[str, str]:
  path = path.rstrip('/') or '/'
  if not _exists(path):
    raise CheckpointError(f'{path} does not exist; expected {ACCEPTED}')
  if not _isdir(path):
    name = posixpath.basename(path)
    if name == t5x_checkpoint.MSGPACK_NAME:
      return 't5x', path
    if name in (hf_checkpoint.CONFIG_NAME,) + hf_checkpoint.WEIGHT_NAMES:
      return 'hf', posixpath.dirname(path) or '.'
    raise CheckpointError(f'{path} is a file of unknown format; expected '
                          f'{ACCEPTED}')
  names = _listdir(path)
  if 'state' in names and 'metadata' in names:
    return 'ours', path
  if t5x_orbax.is_t5x_orbax(path):
    return 't5x_orbax', path
  orbax = [m for m in _ORBAX_MARKERS if m in names]
  if orbax:
    raise CheckpointError(
        f'{path} is an Orbax checkpoint (found {orbax}); load_pretrained '
        f'reads {ACCEPTED}. Restore Orbax checkpoints with the training '
        'checkpoint manager, or convert them with tools/')
  if t5x_checkpoint.MSGPACK_NAME in names:
    return 't5x', path
  if hf_checkpoint.CONFIG_NAME in names:
    if '://' in path:
      raise CheckpointError(f'{path}: Hugging Face folders are read from '
                            'local disk; copy it locally first')
    return 'hf', path
  weights = [n for n in names if n in hf_checkpoint.WEIGHT_NAMES]
  if weights:
    raise CheckpointError(f'{path} holds Hugging Face weights {weights} but '
                          f'no {hf_checkpoint.CONFIG_NAME}')
  if model_dir_ok and any(_STEP_DIR_RE.match(n) for n in names):
    return _detect(latest_t5x_checkpoint(path), model_dir_ok=False)
  raise CheckpointError(
      f'{path} holds no pretrained model: found {_describe(names)}; '
      f'expected {ACCEPTED}')


def load_pretrained(path: str, shardings: Any = None) -> Tuple[Any, Dict[str, Any]]:
  """Loads a pretrained backbone (T5, decoder-only, GPT-2) from any accepted format.

  Args:
    path: see the module docstring for what is accepted.
    shardings: None: every array is read whole into this process (tools,
      export). A tree like the params of `jax.sharding.Sharding`s (e.g.
      `Partitioner.variable_shardings(...)['params']`): every array comes as
      a global jax.Array, and each process reads only the regions its own
      devices hold (legacy T5X zarr through tensorstore, safetensors by
      slice, Orbax by its sharded restore; a PyTorch pickle is read whole).

  Returns:
    (config, params): the configuration read from (or implied by) the
    checkpoint, and the T5X parameter tree as float32 arrays (numpy, or
    jax.Arrays with `shardings`), e.g. token_embedder/embedding [vocab, embed].

  Raises:
    CheckpointError: the path holds nothing loadable, or its arrays are
      unreadable, do not fit together, or hold NaN or infinite values
      (`finite.NonFiniteError`).
  """
  kind, resolved = detect_format(path)
  if kind in ('t5x', 't5x_orbax'):
    params, _ = read_t5x_target(kind, resolved, shardings)
    config = t5x_checkpoint.config_from_t5x_params(params, source=resolved)
  elif kind == 'ours':
    config, params = _load_own_checkpoint(resolved, shardings)
  elif hf_model_type(resolved) == 'gpt2':
    config, params = gpt2_checkpoint.read_hf_gpt2(resolved)
    if shardings is not None:  # read whole (GPT-2 sizes fit a host), then placed
      params = _place_whole(params, shardings)
  elif shardings is None:
    config, params = hf_checkpoint.read_hf_t5(resolved)
  else:
    config, lazy = hf_checkpoint.open_hf_t5(resolved)
    params = shard_reads.place(lazy, shardings, resolved)
  check_params(config, params, resolved)
  if shardings is None:
    check_finite(params, resolved)
  elif kind in ('t5x_orbax', 'ours'):  # the region readers check as they read
    shard_reads.check_finite_placed(params, resolved)
  return config, params


def hf_model_type(folder: str) -> str:
  """config.json's `model_type` in a Hugging Face folder ('t5' when absent, as T5's)."""
  path = os.path.join(folder, hf_checkpoint.CONFIG_NAME)
  try:
    with open(path) as f:
      return json.load(f).get('model_type', 't5')
  except (OSError, ValueError) as e:
    raise CheckpointError(f'cannot read Hugging Face config {path}: {e}') from e


def _place_whole(params: Dict[str, Any], shardings: Any) -> Dict[str, Any]:
  """numpy arrays -> global jax.Arrays; each process places only its devices' regions."""
  return jax.tree_util.tree_map(
      lambda x, s: jax.make_array_from_callback(x.shape, s, lambda index: np.asarray(x[index])),
      params, shardings)


def read_t5x_target(kind: str, path: str, shardings: Any = None
                    ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """(backbone params, {collection: tree} of deltas trained beside it) of a T5X checkpoint.

  `kind` is detect_format's: 't5x' (legacy) or 't5x_orbax'. With `shardings`
  (a tree like the backbone) the backbone comes as global jax.Arrays read
  shard by shard; the deltas are always numpy.
  """
  if kind == 't5x_orbax':
    return t5x_orbax.split_target(t5x_orbax.read_t5x_orbax(path, shardings=shardings))
  if shardings is None:
    return t5x_orbax.split_target(t5x_checkpoint.read_t5x_checkpoint(path))
  backbone, deltas = t5x_orbax.split_target(t5x_checkpoint.open_t5x_checkpoint(path))
  # The shapes fit together before a byte of the arrays is read.
  t5x_checkpoint.config_from_t5x_params(backbone, source=path)
  return (shard_reads.place(backbone, shardings, path),
          shard_reads.read_whole(deltas, path))


def _load_own_checkpoint(path: str, shardings: Any = None) -> Tuple[T5Config, Dict[str, Any]]:
  """The `params` of a checkpoint written by this project's trainer (on any mesh)."""
  try:
    metadata = checkpoints.read_metadata(path)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f'{path}: unreadable metadata/ ({e})') from e
  try:
    params = checkpoints.read_params(path, shardings)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f'{path}: unreadable state/ ({e})') from e
  if params is None:
    trained = metadata.get('trainable', metadata.get('trainable_collections', []))
    raise CheckpointError(
        f'{path} is a delta checkpoint (it trained {trained}); it holds no '
        f'backbone. Its base model is {metadata.get("base_checkpoint")}; give '
        'that as the pretrained model and this checkpoint as the delta.')
  fields = metadata['model_config']
  # A decoder-only record has T5X's decoder-only `num_layers`, a GPT-2 one HF's `n_layer`.
  config_class = (GPT2Config if 'n_layer' in fields else
                  DecoderOnlyConfig if 'num_layers' in fields else T5Config)
  return config_class(**fields), params


__all__ = ['ACCEPTED', 'CheckpointError', 'detect_format', 'hf_model_type',
           'latest_t5x_checkpoint', 'load_pretrained', 'read_t5x_target']
