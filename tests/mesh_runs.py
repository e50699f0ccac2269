"""Trains the same few steps on several device meshes, one process (for test_partitioning.py).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 PYTHONPATH=tests \
      python tests/mesh_runs.py SPEC.json

SPEC.json: {"runs": [{"name": str, "args": [CLI flags of prompt_tuning.train],
"mesh": [data, model], "devices": n}, ...]}. Each run trains with
`Partitioner(mesh_shape=mesh, devices=jax.devices()[:n])` and writes
`<MODEL_DIR>/result.npz` (per-step losses from its TensorBoard events and the
final trainable arrays by path) and `<MODEL_DIR>/shardings.json` (the
partition spec of every placed array, by path).

XLA_FLAGS must be set before JAX starts, hence a separate process; running all
meshes in it compiles the model once per mesh instead of paying a CLI start-up
for each.
"""
import json
import os
import sys

import gin
import jax
import numpy as np
import tensorflow as tf

from prompt_tuning import gin_utils
from prompt_tuning.train import partitioning
from prompt_tuning.train import trainer


def _flat(tree):
  return {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def losses(model_dir):
  """The 'loss' scalars of MODEL_DIR/train, in step order."""
  values = {}
  for path in tf.io.gfile.glob(os.path.join(model_dir, 'train', 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == 'loss':
          values[event.step] = float(tf.make_ndarray(value.tensor))
  return np.asarray([values[k] for k in sorted(values)])


def run(args, mesh, devices):
  gin.clear_config()
  files = [a.split('=', 1)[1] for a in args if a.startswith('--gin_file=')]
  bindings = [b.split('=', 1)[1] for b in gin_utils.rewrite_gin_args(args)
              if b.startswith('--gin_bindings=')]
  gin_utils.parse_gin(files, bindings)
  model_dir = str(gin_utils.macro('MODEL_DIR'))
  partitioner = partitioning.Partitioner(mesh_shape=mesh, devices=jax.devices()[:devices])
  state = trainer.train(partitioner=partitioner)
  specs = {'/'.join(('state', name)): str(leaf.sharding.spec)
           for name, leaf in _flat({'frozen': state.frozen, 'trainable': state.trainable,
                                    'opt_state': state.opt_state}).items()}
  with open(os.path.join(model_dir, 'shardings.json'), 'w') as f:
    json.dump({'mesh': dict(partitioner.mesh.shape), 'specs': specs}, f)
  arrays = {f'trainable{k}': np.asarray(v) for k, v in _flat(state.trainable).items()}
  np.savez(os.path.join(model_dir, 'result.npz'), loss=losses(model_dir), **arrays)


def main(spec_path):
  with open(spec_path) as f:
    spec = json.load(f)
  for r in spec['runs']:
    run(r['args'], r['mesh'], r['devices'])
    print(f"done {r['name']}", flush=True)


if __name__ == '__main__':
  main(sys.argv[1])
