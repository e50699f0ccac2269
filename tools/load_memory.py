"""Peak host memory of loading a pretrained checkpoint, whole or shard by shard.

Used by `tools/memory_report.py --load PATH` (which prints the table); run
alone it is the worker one simulated host runs:

    python tools/load_memory.py --worker --path CKPT --mode sharded --mesh 1x8 \
      --processes 4 --process_index I --port P

Each simulated host is a process with (data * model / processes) virtual CPU
devices, joined to the others by `jax.distributed`, as the hosts of a pod
slice are. It loads the backbone onto the mesh with the training layout:

  whole    `load_pretrained(path)` (every array read into this process),
           then placed on the mesh: what the trainer did before sharded reads
  sharded  `load_pretrained(path, shardings)`: each process reads only the
           regions its devices hold

and reports its resident-set peak (`getrusage` maxrss) above the resident
set before loading, the bytes of its devices' shards (on CPU devices they
live in host memory too; on TPU or GPU they are on the chips), and the bytes
tensorstore read from disk. `peak - shards` is what loading costs a host
beyond the model's own share.

`write_t5x_checkpoint` makes a legacy T5X checkpoint (msgpack + zarr through
tensorstore, 8 MiB chunks) of random weights of any T5.1.1 size to measure
on; tensorstore reads no memory-mapped file, so the resident set counts only
what the reader holds.
"""
import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile

GIB = 1024 ** 3
HERE = os.path.dirname(os.path.abspath(__file__))


def write_t5x_checkpoint(size: str, directory: str, seed: int = 0) -> str:
  """A legacy T5X `checkpoint_0` of T5.1.1 `size` with random float32 weights; returns it."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  from flax import serialization  # pylint: disable=g-import-not-at-top
  from prompt_tuning.model import SIZES  # pylint: disable=g-import-not-at-top
  from prompt_tuning.model.param_shapes import expected_shapes, flatten_tree, unflatten_tree  # pylint: disable=g-import-not-at-top
  path = os.path.join(directory, 'checkpoint_0')
  os.makedirs(path, exist_ok=True)
  rng = np.random.default_rng(seed)
  specs = {}
  for name, shape in flatten_tree(expected_shapes(SIZES[size])).items():
    rows = max(1, (8 << 20) // (4 * int(np.prod(shape[1:]))))  # 8 MiB chunks
    array_dir = 'target.' + name.replace('/', '.')
    spec = {'driver': 'zarr', 'kvstore': {'driver': 'file', 'path': array_dir},
            'metadata': {'shape': list(shape), 'chunks': [min(rows, shape[0])] + list(shape[1:]),
                         'dtype': '<f4', 'compressor': None}}
    store = ts.open({**spec, 'kvstore': {'driver': 'file', 'path': os.path.join(path, array_dir)}},
                    create=True, delete_existing=True).result()
    store.write(rng.normal(0, 0.05, shape).astype(np.float32)).result()
    specs[name] = spec
  contents = {'version': 3, 'optimizer': {'target': unflatten_tree(specs),
                                          'state': {'step': np.int64(0)}}}
  with open(os.path.join(path, 'checkpoint'), 'wb') as f:
    f.write(serialization.msgpack_serialize(contents))
  return path


def _rss_now() -> int:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def worker(path: str, mode: str, mesh: tuple, processes: int, index: int, port: int,
           read_ahead_mib: int) -> dict:
  """Loads `path` as simulated host `index`; returns its memory figures (bytes)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  from prompt_tuning.model import load_pretrained, shard_reads, t5x_checkpoint  # pylint: disable=g-import-not-at-top
  from prompt_tuning.model.t5 import Transformer  # pylint: disable=g-import-not-at-top
  from prompt_tuning.train import partitioning  # pylint: disable=g-import-not-at-top
  shard_reads.DEFAULT_PENDING_BYTES = read_ahead_mib << 20
  if processes > 1:
    jax.distributed.initialize(f'localhost:{port}', num_processes=processes, process_id=index)
  shapes = t5x_checkpoint.open_t5x_checkpoint(path)  # metadata only
  config = t5x_checkpoint.config_from_t5x_params(shapes, source=path)
  partitioner = partitioning.Partitioner(mesh_shape=mesh)
  tokens = jax.numpy.ones((1, 8), jax.numpy.int32)
  shardings = partitioner.variable_shardings(jax.eval_shape(
      lambda: Transformer(config).init(jax.random.PRNGKey(0), tokens, tokens, tokens)))['params']
  metric = lambda: sum(v.get('value', 0) for m in ts.experimental_collect_matching_metrics(
      '/tensorstore/kvstore/file/bytes_read') for v in m['values'])
  before_rss, before_read = _rss_now(), metric()
  if mode == 'whole':
    _, params = load_pretrained(path)
    params = partitioner.place(params, shardings)
  else:
    _, params = load_pretrained(path, shardings)
  jax.block_until_ready(params)
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  shards = sum(int(np.prod(s.data.shape)) * 4 for x in jax.tree_util.tree_leaves(params)
               for s in x.addressable_shards)
  return {'mode': mode, 'process': index, 'processes': processes,
          'mesh': f'{mesh[0]}x{mesh[1]}', 'read_ahead_mib': read_ahead_mib,
          'checkpoint_bytes': config_bytes(config),
          'rss_before': before_rss, 'load_peak': peak - before_rss, 'device_shards': shards,
          'beyond_shards': peak - before_rss - shards, 'bytes_read': metric() - before_read}


def config_bytes(config) -> int:
  from prompt_tuning.model import num_parameters  # pylint: disable=g-import-not-at-top
  return 4 * num_parameters(config)


def measure(path: str, mode: str, mesh: tuple, processes: int, read_ahead_mib: int = 256
            ) -> list:
  """Runs `processes` workers for `mode` at once; their reports, by process."""
  devices = mesh[0] * mesh[1]
  if devices % processes:
    raise SystemExit(f'--processes {processes} does not divide the {devices} devices.')
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices // processes}')
  # Output to files: a full pipe would stall a worker the others wait for.
  with tempfile.TemporaryDirectory() as logs:
    procs = []
    for i in range(processes):
      with open(os.path.join(logs, f'{i}.out'), 'w') as out, \
           open(os.path.join(logs, f'{i}.err'), 'w') as err:
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(HERE, 'load_memory.py'), '--worker', '--path', path,
             '--mode', mode, '--mesh', f'{mesh[0]}x{mesh[1]}', '--processes', str(processes),
             '--process_index', str(i), '--port', str(port),
             '--read_ahead_mib', str(read_ahead_mib)], env=env, stdout=out, stderr=err))
    reports = []
    for i, proc in enumerate(procs):
      proc.wait(timeout=3600)
      read = lambda name: open(os.path.join(logs, f'{i}.{name}')).read()
      if proc.returncode:
        raise SystemExit(f'load worker {i} failed:\n{read("err")[-3000:]}')
      reports.append(json.loads(read('out').strip().splitlines()[-1]))
  return reports


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description='one simulated host of a load measurement')
  parser.add_argument('--worker', action='store_true', required=True)
  parser.add_argument('--path', required=True)
  parser.add_argument('--mode', choices=('whole', 'sharded'), required=True)
  parser.add_argument('--mesh', required=True)
  parser.add_argument('--processes', type=int, default=1)
  parser.add_argument('--process_index', type=int, default=0)
  parser.add_argument('--port', type=int, default=0)
  parser.add_argument('--read_ahead_mib', type=int, default=256)
  args = parser.parse_args(argv)
  mesh = tuple(int(n) for n in args.mesh.lower().split('x'))
  print(json.dumps(worker(args.path, args.mode, mesh, args.processes, args.process_index,
                          args.port, args.read_ahead_mib)), flush=True)


if __name__ == '__main__':
  sys.path.insert(0, os.path.dirname(HERE))
  main()
