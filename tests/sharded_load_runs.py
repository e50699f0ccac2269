"""Loads one backbone whole and sharded from every format (for test_sharded_loading.py).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharded_load_runs.py \
      SHARED_DATA ROOT OUT.json [PROCESS_INDEX PORT]

Without a process index: one process of 8 CPU devices, mesh 2x4. The T5X
tiny checkpoint is copied into every format under ROOT (Hugging Face in
float32 and bfloat16, T5X Orbax, this project's Orbax), then each is loaded
whole (numpy) and with the partitioner's shardings; OUT.json records, per
format, whether the two agree bit for bit and whether every array has its
sharding, and for the two region readers (legacy zarr, safetensors) every
region each array was asked for against the regions its devices hold.

With PROCESS_INDEX and PORT: one of two processes of 4 CPU devices joined by
`jax.distributed`, mesh 1x8 (the 'model' axis spans both): the legacy
checkpoint is loaded sharded and OUT.json records the bytes tensorstore read
from disk, the elements requested, and this process's shards bit for bit
against the whole arrays.
"""
import dataclasses
import json
import os
import sys

import jax
import numpy as np

from prompt_tuning.model import hf_checkpoint, load_pretrained, shard_reads, t5x_checkpoint
from prompt_tuning.model.checkpoints import DeltaCheckpointer
from prompt_tuning.model.param_shapes import flatten_tree
from prompt_tuning.model.t5 import Transformer
from prompt_tuning.train import partitioning


def _shardings(config, partitioner):
  tokens = np.ones((1, 4), np.int32)
  abstract = jax.eval_shape(lambda: Transformer(config).init(jax.random.PRNGKey(0), tokens,
                                                            tokens, tokens))
  return partitioner.variable_shardings(abstract)['params']


def _bits(x):
  return np.asarray(x, np.float32).view(np.uint32)


def _write_formats(config, params, root):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  paths = {'hf': os.path.join(root, 'hf'), 'hf_bf16': os.path.join(root, 'hf_bf16'),
           't5x_orbax': os.path.join(root, 't5x_orbax', 'checkpoint_3'),
           'ours': os.path.join(root, 'ours')}
  hf_checkpoint.write_hf_t5(config, params, paths['hf'])
  hf_checkpoint.write_hf_t5(config, params, paths['hf_bf16'], dtype='bfloat16')
  ocp.PyTreeCheckpointer().save(os.path.join(paths['t5x_orbax'], 'state'),
                                {'target': params, 'state': {'step': np.int32(3)}})
  checkpointer = DeltaCheckpointer(paths['ours'])
  checkpointer.save(3, {'step': np.int32(3), 'trainable': {'params': params}},
                    {'model_config': dataclasses.asdict(config), 'trainable': ['params/.*']})
  checkpointer.close()
  return paths


def _requested_regions(lazy, shardings, source):
  """shard_reads.place over `lazy` with every read logged: {path: [regions]}."""
  log = {}

  def logged(path, leaf):
    def read(region):
      log.setdefault(path, []).append([[s.start, s.stop] for s in region])
      return leaf.read(region)
    return shard_reads.LazyArray(leaf.shape, read)

  flat = {p: logged(p, leaf) for p, leaf in flatten_tree(lazy).items()}
  placed = shard_reads.place(flat, flatten_tree(shardings), source)
  return log, placed


def _held_regions(shape, sharding):
  """The distinct regions the devices hold, from JAX's own index map."""
  return sorted({tuple((s.indices(n)[0], s.indices(n)[1]) for s, n in zip(index, shape))
                 for index in sharding.devices_indices_map(tuple(shape)).values()})


def one_process(shared_data, root, out):
  legacy = os.path.join(shared_data, 't5x_t5_1_1_tiny', 'checkpoint_3')
  config, params = load_pretrained(legacy)
  paths = {'t5x': legacy, **_write_formats(config, params, root)}
  shardings = _shardings(config, partitioning.Partitioner(mesh_shape=(2, 4)))
  flat_shardings = flatten_tree(shardings)
  report = {}
  for name, path in paths.items():
    _, whole = load_pretrained(path)
    _, sharded = load_pretrained(path, shardings)
    whole, sharded = flatten_tree(whole), flatten_tree(sharded)
    report[name] = {
        'paths_equal': sorted(whole) == sorted(sharded),
        'not_bit_equal': [p for p in whole if not np.array_equal(_bits(whole[p]),
                                                            _bits(sharded[p]))],
        'wrong_sharding': [p for p in sharded if sharded[p].sharding != flat_shardings[p]],
        'sharded_arrays': sum(not s.is_fully_replicated for s in flat_shardings.values()),
    }
  lazies = {'t5x': t5x_checkpoint.open_t5x_checkpoint(legacy),
            'hf': hf_checkpoint.open_hf_t5(paths['hf'])[1]}
  for name, lazy in lazies.items():
    lazy = {k: v for k, v in lazy.items() if k in ('token_embedder', 'encoder', 'decoder')}
    log, _ = _requested_regions(lazy, shardings, name)
    report[name]['regions'] = {
        p: {'requested': log.get(p, []),
            'held': [list(map(list, r)) for r in _held_regions(leaf.shape, flat_shardings[p])],
            'shape': list(leaf.shape)}
        for p, leaf in flatten_tree(lazy).items()}
  with open(out, 'w') as f:
    json.dump(report, f)


def two_processes(shared_data, out, index, port):
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  jax.distributed.initialize(f'localhost:{port}', num_processes=2, process_id=index)
  legacy = os.path.join(shared_data, 't5x_t5_1_1_tiny', 'checkpoint_3')
  config, whole = load_pretrained(legacy)
  before = _bytes_read(ts)
  partitioner = partitioning.Partitioner(mesh_shape=(1, 8))
  shardings = _shardings(config, partitioner)
  _, sharded = load_pretrained(legacy, shardings)
  read = _bytes_read(ts) - before
  whole_read = _bytes_read(ts)
  load_pretrained(legacy)
  whole_read = _bytes_read(ts) - whole_read
  mismatched = []
  for path, array in flatten_tree(sharded).items():
    for shard in array.addressable_shards:
      if not np.array_equal(_bits(shard.data), _bits(flatten_tree(whole)[path][shard.index])):
        mismatched.append(path)
  with open(out, 'w') as f:
    json.dump({'bytes_read_sharded': read, 'bytes_read_whole': whole_read,
               'mismatched': mismatched, 'local_devices': jax.local_device_count(),
               'processes': jax.process_count(), 'nan_error': _nan_on_one_host(
                   legacy, os.path.dirname(out), index, shardings)}, f)


def _nan_on_one_host(legacy, root, index, shardings):
  """One NaN in a column only process 1's devices hold: what each process raises."""
  import shutil  # pylint: disable=g-import-not-at-top
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  copy = os.path.join(root, f'nan_{index}', 'checkpoint_3')
  shutil.copytree(legacy, copy)
  store = ts.open({'driver': 'zarr', 'kvstore': {
      'driver': 'file', 'path': os.path.join(copy, 'target.decoder.logits_dense.kernel')}}).result()
  store[1, 30000].write(np.float32('nan')).result()
  try:
    load_pretrained(copy, shardings)
  except Exception as e:  # pylint: disable=broad-except
    return f'{type(e).__name__}: {e}'
  return None


def _bytes_read(ts):
  metrics = ts.experimental_collect_matching_metrics('/tensorstore/kvstore/file/bytes_read')
  return sum(v.get('value', 0) for m in metrics for v in m['values'])


if __name__ == '__main__':
  if len(sys.argv) > 4:
    two_processes(sys.argv[1], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
  else:
    one_process(*sys.argv[1:4])
