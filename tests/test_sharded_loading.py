"""Pretrained checkpoints read shard by shard (`model/shard_reads.py`, `load_pretrained(..., shardings)`).

On 8 virtual CPU devices (a subprocess, `sharded_load_runs.py`), the T5X tiny
checkpoint in every format is loaded whole (numpy) and onto a 2x4 mesh; the
two must agree bit for bit, every array must have its requested sharding,
and the region readers (legacy zarr, safetensors) must have been asked for
exactly the regions the devices hold, each once. Two processes of 4 devices
on a 1x8 mesh check what a host of a pod reads: its own shards only, fewer
bytes from disk than a whole load (tensorstore's own counter).
"""
import json
import pathlib

import jax
import numpy as np
import pytest

from prompt_tuning.model import load_pretrained, shard_reads
from prompt_tuning.model.checkpoints import fingerprint
from prompt_tuning.model.finite import NonFiniteError
from prompt_tuning.model.param_shapes import CheckpointError, flatten_tree
import virtual_hosts

TESTS = pathlib.Path(__file__).resolve().parent
FORMATS = ('t5x', 'hf', 'hf_bf16', 't5x_orbax', 'ours')


@pytest.fixture(scope='module')
def runs(shared_data, tmp_path_factory):
  """(one 8-device process's report, [report of process 0, of process 1])."""
  root = tmp_path_factory.mktemp('sharded_load')
  script = str(TESTS / 'sharded_load_runs.py')
  port = virtual_hosts.free_port()
  commands = [([str(root / 'one.json')], 8)] + [
      ([str(root / f'p{i}.json'), str(i), str(port)], 4) for i in range(2)]
  virtual_hosts.run_together(
      [([script, str(shared_data), str(root), *args], devices) for args, devices in commands],
      [root / f'log_{number}' for number in range(len(commands))], timeout=600)
  read = lambda name: json.loads((root / name).read_text())
  return read('one.json'), [read('p0.json'), read('p1.json')]


@pytest.mark.parametrize('name', FORMATS)
def test_sharded_load_equals_the_whole_load_bit_for_bit(runs, name):
  report = runs[0][name]
  assert report['paths_equal']
  assert report['not_bit_equal'] == []
  assert report['wrong_sharding'] == []
  # The mesh really splits the model: most kernels are sharded over 'model'.
  assert report['sharded_arrays'] >= 30


@pytest.mark.parametrize('name', ('t5x', 'hf'))
def test_each_array_is_read_by_the_regions_its_devices_hold(runs, name):
  regions = runs[0][name]['regions']
  split = 0
  for path, entry in regions.items():
    requested = sorted(map(lambda r: tuple(map(tuple, r)), entry['requested']))
    held = sorted(map(lambda r: tuple(map(tuple, r)), entry['held']))
    assert requested == held, path  # each distinct region once, nothing else
    whole = tuple((0, n) for n in entry['shape'])
    if held != [whole]:
      split += 1
      assert whole not in requested, path
  assert split >= 30


def test_each_host_reads_only_its_part(runs):
  """Mesh 1x8 over two processes: 'model' spans the hosts, each holds half of a split array."""
  for report in runs[1]:
    assert report['processes'] == 2 and report['local_devices'] == 4
    assert report['mismatched'] == []
    # Norms, relpos tables and kernels 'model' does not divide are read whole
    # by both; the embedding and logits (most of the bytes) by halves.
    assert report['bytes_read_sharded'] < 0.7 * report['bytes_read_whole'], report
    # A NaN that only process 1 reads fails both processes alike (no host waits forever).
    assert report['nan_error'].startswith('NonFiniteError'), report['nan_error']
    assert 'decoder/logits_dense/kernel: 1 of 128512' in report['nan_error']


def test_fingerprint_of_placed_arrays_equals_numpy(shared_data):
  _, params = load_pretrained(str(shared_data / 't5x_t5_1_1_tiny' / 'checkpoint_3'))
  placed = jax.tree_util.tree_map(jax.numpy.asarray, params)
  assert fingerprint(placed) == fingerprint(params)
  changed = dict(params, token_embedder={'embedding': params['token_embedder']['embedding'] + 1})
  assert fingerprint(changed) != fingerprint(params)


def test_place_refuses_arrays_without_a_sharding():
  lazy = {'a': shard_reads.in_memory(np.zeros((2, 2), np.float32)),
          'b': shard_reads.in_memory(np.zeros((2,), np.float32))}
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with pytest.raises(CheckpointError, match="'b'"):
    shard_reads.place(lazy, {'a': sharding}, 'here')


def test_non_finite_values_are_named_as_they_are_read():
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  values = np.ones((4, 3), np.float32)
  values[1, 2], values[3, 0] = np.nan, np.inf
  with pytest.raises(NonFiniteError, match=r'src holds NaN .*\(w: 2 of 12\)'):
    shard_reads.place({'w': shard_reads.in_memory(values), 'ok': shard_reads.in_memory(
        np.ones(3, np.float32))}, {'w': sharding, 'ok': sharding}, 'src')


def test_non_finite_placed_arrays_are_counted_on_device():
  values = np.ones((4, 3), np.float32)
  values[0, 0] = np.nan
  with pytest.raises(NonFiniteError, match=r'w: 1 of 12'):
    shard_reads.check_finite_placed({'w': jax.numpy.asarray(values),
                                     'ok': jax.numpy.ones(3)}, 'src')


def test_read_ahead_budget_still_places_every_array():
  rng = np.random.RandomState(0)
  values = {f'a{i}': rng.normal(size=(8, 4)).astype(np.float32) for i in range(5)}
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  placed = shard_reads.place({k: shard_reads.in_memory(v) for k, v in values.items()},
                             {k: sharding for k in values}, 'src', max_pending_bytes=1)
  for k, v in values.items():
    np.testing.assert_array_equal(np.asarray(placed[k]), v)
  assert sorted(flatten_tree(placed)) == sorted(values)
