"""The infer and eval commands on one device and on a 2x4 mesh (for test_mesh_inference.py).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 PYTHONPATH=tests \
      python tests/mesh_infer_runs.py ROOT [PROCESS_INDEX PORT]

With PROCESS_INDEX PORT: one of two processes of 4 devices joined by
`jax.distributed`, layout 'two_hosts' (mesh 1x8 across both; process 0
writes the outputs), infer only.

Writes a random `tiny` base (Hugging Face folder) and two prompt checkpoints
under ROOT, then for each layout ('one': 1 device; 'mesh': 2x4, backbone read
shard by shard) runs `batch_infer.infer` (predict and score) on a checkpoint
and on the bank of both, and `evaluate_checkpoints` on the directory; the
outputs go to ROOT/<layout>/..., and ROOT/<layout>/shardings.json records
the backbone's layout as loaded.
"""
import json
import os
import sys

import flax.linen as nn
import jax
import numpy as np

from prompt_tuning.deltas import PromptTuning
from prompt_tuning.infer import batch_infer, checkpoint_eval, evaluation, loading
from prompt_tuning.model import SIZES, Transformer, hf_checkpoint, load_pretrained
from prompt_tuning.model.checkpoints import DeltaCheckpointer, fingerprint
from prompt_tuning.train import partitioning

TASK, LENGTHS = 'fixture_sentiment', {'inputs': 16, 'targets': 4}
LAYOUTS = {'one': ((1, 1), 1), 'mesh': ((2, 4), 8)}


def _write_inputs(root):
  config = SIZES['tiny']
  tokens = np.ones((1, 8), np.int32)
  params = jax.tree_util.tree_map(np.asarray, nn.unbox(
      Transformer(config).init(jax.random.PRNGKey(0), tokens, tokens, tokens)['params']))
  base = os.path.join(root, 'hf')
  if jax.process_index() == 0:
    hf_checkpoint.write_hf_t5(config, params, base)
  _sync('base written')
  params = load_pretrained(base)[1]
  checkpointer = DeltaCheckpointer(os.path.join(root, 'run'), keep=None)
  rng, delta = np.random.RandomState(0), PromptTuning(length=5)
  for step in (10, 20):
    trainable = delta.with_prompt({}, rng.normal(0, 2.0, (5, config.emb_dim)).astype(np.float32))
    checkpointer.save(step, {'step': np.int32(step), 'trainable': trainable,
                             'opt_state': {'v': np.zeros((5,), np.float32)}},
                      {'base_checkpoint': base, 'base_fingerprint': fingerprint(params),
                       'base_step': 0, 'trainable_collections': ['prompt']})
  checkpointer.close()
  return config


def _sync(name):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def main(root, layouts=LAYOUTS, evaluate=True):
  config = _write_inputs(root)  # every process: Orbax saves collectively
  run = os.path.join(root, 'run')
  checkpoints = [os.path.join(run, 'checkpoint_10'), os.path.join(run, 'checkpoint_20')]
  for name, (mesh, devices) in layouts.items():
    partitioner = partitioning.Partitioner(mesh_shape=mesh, devices=jax.devices()[:devices])
    out = os.path.join(root, name)
    common = dict(model=Transformer(config), mixture_or_task_name=TASK,
                  mixture_or_task_module='fixture_tasks', task_feature_lengths=LENGTHS,
                  batch_size=16, partitioner=partitioner)
    for mode in ('predict', 'score'):
      batch_infer.infer(mode=mode, output_dir=os.path.join(out, 'single'),
                        checkpoint_path=checkpoints[0], **common)
      batch_infer.infer(mode=mode, output_dir=os.path.join(out, 'bank'),
                        prompt_files=checkpoints, **common)
    results = {}
    if evaluate:
      evaluator = evaluation.InferenceEvaluator(TASK, LENGTHS, batch_size=16,
                                                log_dir=os.path.join(out, 'eval'))
      results = checkpoint_eval.evaluate_checkpoints(
          model=Transformer(config), evaluator=evaluator, checkpoint_path=run,
          mixture_or_task_module='fixture_tasks', partitioner=partitioner)
    loaded = loading.VariableLoader(Transformer(config), partitioner=partitioner).checkpoint(
        checkpoints[0])
    layout = {jax.tree_util.keystr(p): str(x.sharding.spec)
              for p, x in jax.tree_util.tree_flatten_with_path(loaded.variables)[0]}
    if jax.process_index() > 0:
      continue
    with open(os.path.join(out, 'shardings.json'), 'w') as f:
      json.dump({'layout': layout, 'metrics': {str(k): v for k, v in results.items()},
                 'mesh': dict(partitioner.mesh.shape)}, f)


if __name__ == '__main__':
  if len(sys.argv) > 2:  # one of two processes of 4 devices: mesh 1x8 across them
    jax.distributed.initialize(f'localhost:{sys.argv[3]}', num_processes=2,
                               process_id=int(sys.argv[2]))
    main(sys.argv[1], {'two_hosts': ((1, 8), 8)}, evaluate=False)
  else:
    main(sys.argv[1])
