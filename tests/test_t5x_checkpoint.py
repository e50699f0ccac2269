"""Legacy T5X checkpoints: the real tiny one, rewritten copies, damaged copies."""
import os
import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import tensorstore as ts
from flax import serialization

from prompt_tuning.model import T5Config, num_parameters
from prompt_tuning.model.param_shapes import (CheckpointError, check_params,
                                              expected_shapes, flatten_tree,
                                              unflatten_tree)
from prompt_tuning.model.pretrained import load_pretrained
from prompt_tuning.model.t5x_checkpoint import (config_from_t5x_params,
                                                read_t5x_checkpoint, t5x_step)


@pytest.fixture(scope='module')
def ckpt(shared_data) -> Path:
  return shared_data / 't5x_t5_1_1_tiny' / 'checkpoint_3'


@pytest.fixture(scope='module')
def params(ckpt):
  return read_t5x_checkpoint(str(ckpt))


def _is_spec(x):
  return isinstance(x, dict) and 'driver' in x


def _flat_raw(tree, prefix=''):
  """Flattens a raw msgpack tree, keeping spec dicts as leaves."""
  out = {}
  for k, v in tree.items():
    path = f'{prefix}/{k}' if prefix else k
    out.update({path: v} if _is_spec(v) or not isinstance(v, dict)
               else _flat_raw(v, path))
  return out


def _raw_target(ckpt_dir: Path):
  raw = serialization.msgpack_restore((ckpt_dir / 'checkpoint').read_bytes())
  return raw, _flat_raw(raw['optimizer']['target'])


def _copy(src: Path, dst: Path) -> Path:
  # The shared data is read-only; the copy must be writable.
  shutil.copytree(src, dst, copy_function=shutil.copyfile)
  for root, _, _ in os.walk(dst):
    os.chmod(root, 0o755)
  return dst


def _rewrite(ckpt_dir: Path, raw):
  (ckpt_dir / 'checkpoint').write_bytes(serialization.msgpack_serialize(raw))


def test_every_array_matches_tensorstore_and_msgpack(ckpt, params):
  _, raw = _raw_target(ckpt)
  ours = flatten_tree(params)
  assert sorted(ours) == sorted(raw)
  n_specs = 0
  for name, leaf in raw.items():
    assert ours[name].dtype == np.float32, name
    if _is_spec(leaf):
      n_specs += 1
      path = ckpt / leaf['kvstore']['path']
      want = ts.open({'driver': 'zarr',
                      'kvstore': {'driver': 'file', 'path': str(path)}}
                     ).result().read().result()
    else:
      want = np.asarray(leaf)
    np.testing.assert_array_equal(ours[name], want, err_msg=name)
  # Kernels and the embedding are zarr arrays; norms and relpos are inline.
  assert (n_specs, len(raw) - n_specs) == (38, 14)


def test_config_inferred_from_shapes(params):
  config = config_from_t5x_params(params)
  assert config == T5Config(
      vocab_size=32128, emb_dim=4, num_heads=2, head_dim=2, mlp_dim=8,
      num_encoder_layers=2, num_decoder_layers=2,
      mlp_activations=('gelu', 'linear'), logits_via_embedding=False,
      relative_attention_num_buckets=4, relative_attention_max_distance=128)
  config = config_from_t5x_params(params, relative_attention_max_distance=64)
  assert config.relative_attention_max_distance == 64


def test_expected_shapes_count_matches_num_parameters():
  for config in (T5Config(), T5Config(mlp_activations=('relu',),
                                      logits_via_embedding=True)):
    sizes = [np.prod(s) for s in flatten_tree(expected_shapes(config)).values()]
    assert sum(sizes) == num_parameters(config)


def test_step_and_optimizer_state(ckpt):
  assert t5x_step(str(ckpt)) == 3
  assert t5x_step(str(ckpt / 'checkpoint')) == 3
  full = read_t5x_checkpoint(str(ckpt), read_optimizer_state=True)
  assert full['state']['step'] == 3
  slots = full['state']['param_states']['token_embedder']['embedding']
  assert slots['v'].shape == (32128, 4) and slots['m'].shape == (1,)


@pytest.mark.parametrize('where', ['dir', 'file', 'model_dir'])
def test_load_pretrained_finds_the_checkpoint(ckpt, params, where):
  path = {'dir': ckpt, 'file': ckpt / 'checkpoint', 'model_dir': ckpt.parent}
  config, loaded = load_pretrained(str(path[where]))
  assert config == config_from_t5x_params(params)
  flat = flatten_tree(loaded)
  assert sorted(flat) == sorted(flatten_tree(params))
  for name, value in flatten_tree(params).items():
    np.testing.assert_array_equal(flat[name], value, err_msg=name)


def test_latest_step_is_picked(ckpt, tmp_path):
  _copy(ckpt, tmp_path / 'checkpoint_3')
  (tmp_path / 'checkpoint_20').mkdir()  # The newest, but empty: it is chosen.
  with pytest.raises(CheckpointError, match='checkpoint_20'):
    load_pretrained(str(tmp_path))


def test_top_level_path_specs_load_identically(ckpt, params, tmp_path):
  copy = _copy(ckpt, tmp_path / 'checkpoint_3')
  raw, flat = _raw_target(copy)
  for i, (name, leaf) in enumerate(sorted(flat.items())):
    if _is_spec(leaf):
      rel = leaf.pop('kvstore')['path']
      # Old writers: path at the top level; on GCS a bucket-only kvstore.
      leaf['kvstore'] = ({'driver': 'file'} if i % 2 else
                         {'driver': 'gcs', 'bucket': 'somewhere'})
      leaf['path'] = rel
  _rewrite(copy, raw)
  loaded = flatten_tree(read_t5x_checkpoint(str(copy)))
  for name, value in flatten_tree(params).items():
    np.testing.assert_array_equal(loaded[name], value, err_msg=name)


def _write_bf16_checkpoint(path: Path, config: T5Config, seed=0):
  """A T5X checkpoint of `config` whose kernels are bfloat16 zarr arrays."""
  rng = np.random.default_rng(seed)
  target, values = {}, {}
  for name, shape in flatten_tree(expected_shapes(config)).items():
    value = rng.normal(size=shape).astype(ml_dtypes.bfloat16)
    values[name] = value.astype(np.float32)
    if name.endswith('kernel') or name.endswith('embedding'):
      rel = 'target.' + name.replace('/', '.')
      spec = {'driver': 'zarr',
              'kvstore': {'driver': 'gfile', 'path': rel},
              'metadata': {'shape': list(shape), 'chunks': list(shape),
                           'dtype': 'bfloat16',
                           'compressor': {'id': 'gzip', 'level': 1}}}
      store = ts.open(dict(spec, kvstore={'driver': 'file',
                                          'path': str(path / rel)}),
                      create=True).result()
      store.write(value).result()
      target[name] = spec
    else:
      target[name] = value  # Inline bfloat16 arrays, too.
  raw = {'version': 3, 'optimizer': {
      'target': unflatten_tree(target),
      'state': {'step': np.int32(7), 'param_states': {}}}}
  (path / 'checkpoint').write_bytes(serialization.msgpack_serialize(raw))
  return values


def test_bfloat16_arrays_load_as_float32(tmp_path):
  config = T5Config(vocab_size=16, emb_dim=4, num_heads=2, head_dim=3,
                    mlp_dim=8, num_encoder_layers=1, num_decoder_layers=3,
                    mlp_activations=('relu',), logits_via_embedding=True,
                    relative_attention_num_buckets=5)
  values = _write_bf16_checkpoint(tmp_path / 'checkpoint_7', config)
  loaded_config, loaded = load_pretrained(str(tmp_path))
  assert loaded_config == config
  assert t5x_step(str(tmp_path / 'checkpoint_7')) == 7
  flat = flatten_tree(loaded)
  assert sorted(flat) == sorted(values)
  for name, value in values.items():
    assert flat[name].dtype == np.float32
    np.testing.assert_array_equal(flat[name], value, err_msg=name)


# Errors: each names the path and, where there is one, the array.


def test_random_directory_is_rejected(tmp_path):
  (tmp_path / 'notes.txt').write_text('hello')
  with pytest.raises(CheckpointError, match='notes.txt') as e:
    load_pretrained(str(tmp_path))
  assert str(tmp_path) in str(e.value) and 'Hugging Face' in str(e.value)
  with pytest.raises(CheckpointError, match='not a legacy T5X checkpoint'):
    read_t5x_checkpoint(str(tmp_path))


def test_orbax_directory_is_named(tmp_path):
  (tmp_path / 'state').mkdir()
  (tmp_path / '_CHECKPOINT_METADATA').write_text('{}')
  with pytest.raises(CheckpointError, match='Orbax'):
    load_pretrained(str(tmp_path))


def test_empty_file(tmp_path):
  (tmp_path / 'checkpoint').write_bytes(b'')
  with pytest.raises(CheckpointError, match='empty') as e:
    load_pretrained(str(tmp_path / 'checkpoint'))
  assert str(tmp_path / 'checkpoint') in str(e.value)


def test_truncated_msgpack(ckpt, tmp_path):
  data = (ckpt / 'checkpoint').read_bytes()
  (tmp_path / 'checkpoint').write_bytes(data[:len(data) // 3])
  with pytest.raises(CheckpointError, match='truncated or corrupt') as e:
    read_t5x_checkpoint(str(tmp_path))
  assert str(tmp_path / 'checkpoint') in str(e.value)


def test_msgpack_that_is_not_t5x(tmp_path):
  (tmp_path / 'checkpoint').write_bytes(
      serialization.msgpack_serialize({'params': {'w': np.zeros(3)}}))
  with pytest.raises(CheckpointError, match="found top-level \\['params'\\]"):
    read_t5x_checkpoint(str(tmp_path))


def test_deleted_array_directory(ckpt, tmp_path):
  copy = _copy(ckpt, tmp_path / 'checkpoint_3')
  shutil.rmtree(copy / 'target.encoder.layers_1.mlp.wo.kernel')
  with pytest.raises(CheckpointError,
                     match='encoder/layers_1/mlp/wo/kernel') as e:
    load_pretrained(str(copy))
  assert 'does not exist' in str(e.value)


def test_corrupted_chunk(ckpt, tmp_path):
  copy = _copy(ckpt, tmp_path / 'checkpoint_3')
  (copy / 'target.decoder.logits_dense.kernel' / '0.3').write_bytes(
      b'not gzip at all' * 10)
  with pytest.raises(CheckpointError, match='decoder/logits_dense/kernel'):
    read_t5x_checkpoint(str(copy))


def test_missing_chunk_is_not_read_as_zeros(ckpt, tmp_path):
  copy = _copy(ckpt, tmp_path / 'checkpoint_3')
  os.remove(copy / 'target.token_embedder.embedding' / '5.0')
  with pytest.raises(CheckpointError, match='token_embedder/embedding') as e:
    read_t5x_checkpoint(str(copy))
  assert 'missing' in str(e.value)


def test_kernel_with_wrong_shape(ckpt, tmp_path):
  copy = _copy(ckpt, tmp_path / 'checkpoint_3')
  raw, flat = _raw_target(copy)
  raw['optimizer']['target']['decoder']['layers_1']['mlp']['wi_1'] = {
      'kernel': np.zeros((4, 9), np.float32)}
  _rewrite(copy, raw)
  with pytest.raises(CheckpointError) as e:
    load_pretrained(str(copy))
  assert ('decoder/layers_1/mlp/wi_1/kernel: got [4, 9], expected [4, 8]'
          in str(e.value))
  assert str(copy) in str(e.value)


def test_check_params_lists_every_problem(params):
  config = config_from_t5x_params(params)
  flat = flatten_tree(params)
  flat['encoder/layers_0/attention/key/kernel'] = np.zeros((4, 6))
  del flat['decoder/decoder_norm/scale']
  flat['decoder/extra/kernel'] = np.zeros(2)
  with pytest.raises(CheckpointError) as e:
    check_params(config, unflatten_tree(flat), 'some/source')
  message = str(e.value)
  assert 'some/source' in message
  assert 'missing (1):\n  decoder/decoder_norm/scale' in message
  assert 'unexpected (1):\n  decoder/extra/kernel' in message
  assert ('encoder/layers_0/attention/key/kernel: got [4, 6], expected [4, 4]'
          in message)


def test_specs_resolve_against_the_checkpoint_dir():
  # No network here: check the rewritten spec for a GCS checkpoint directly.
  from prompt_tuning.model import t5x_checkpoint  # pylint: disable=g-import-not-at-top
  new = {'driver': 'zarr', 'kvstore': {'driver': 'gfile', 'path': 'target.a'}}
  old = {'driver': 'zarr', 'kvstore': {'driver': 'gcs', 'bucket': 'b'},
         'path': 'target.a'}
  for spec in (new, old):
    resolved = t5x_checkpoint._resolve_spec('gs://bkt/runs/checkpoint_9', spec)
    assert resolved['kvstore'] == {'driver': 'gcs', 'bucket': 'bkt',
                                   'path': 'runs/checkpoint_9/target.a/'}
    resolved = t5x_checkpoint._resolve_spec('/ckpts/checkpoint_9', spec)
    assert resolved['kvstore'] == {'driver': 'file',
                                   'path': '/ckpts/checkpoint_9/target.a'}
