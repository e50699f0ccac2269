"""Loss and gradients of one batch under T5X's 1-D and 2-D partitioning (for test_partition_dims.py).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/partition_dims_runs.py OUT.npz

For each layout of LAYOUTS (mesh, activation_partitioning_dims,
parameter_partitioning_dims) the same variables are placed by the
partitioner's rules and the loss and its gradient with respect to every
parameter and the prompt are computed on the mesh. OUT.npz holds each
layout's loss, gradients by path, and the partition spec of two kernels.
"""
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from prompt_tuning.deltas import PromptTuning
from prompt_tuning.model import T5Config, Transformer
from prompt_tuning.train import partitioning

CONFIG = T5Config(vocab_size=128, emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128,
                  num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)
LAYOUTS = {'one_device': ((1, 1), 1, 1), '1d': ((2, 4), 1, 1), 'params_2d': ((2, 4), 1, 2),
           'activations_2d': ((2, 4), 2, 1), 'both_2d': ((2, 4), 2, 2),
           'both_2d_4x2': ((4, 2), 2, 2)}


def _loss(model, variables, batch):
  logits = model.apply(variables, batch['inputs'], batch['decoder_inputs'], batch['targets'])
  return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, batch['targets']))


def main(out):
  model = Transformer(CONFIG, deltas=(PromptTuning(length=4),))
  rng = np.random.RandomState(0)
  batch = {'inputs': rng.randint(2, 128, (8, 12)).astype(np.int32),
           'targets': rng.randint(2, 128, (8, 6)).astype(np.int32)}
  batch['decoder_inputs'] = np.concatenate(
      [np.zeros((8, 1), np.int32), batch['targets'][:, :-1]], 1)
  boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch['inputs'],
                                            batch['decoder_inputs'], batch['targets']))
  variables = jax.tree_util.tree_map(np.asarray, nn.unbox(jax.jit(
      lambda: model.init(jax.random.PRNGKey(0), batch['inputs'], batch['decoder_inputs'],
                         batch['targets']))()))
  results = {}
  for name, (mesh, activations, parameters) in LAYOUTS.items():
    partitioner = partitioning.Partitioner(
        mesh_shape=mesh, devices=jax.devices()[:mesh[0] * mesh[1]],
        activation_partitioning_dims=activations, parameter_partitioning_dims=parameters)
    partitioner.add_rules(PromptTuning().logical_axis_rules())
    shardings = partitioner.variable_shardings(boxed)
    placed = partitioner.place(variables, shardings)
    placed_batch = partitioner.place(batch, {k: partitioner.batch_sharding for k in batch})
    step = partitioner.partition(jax.value_and_grad(lambda v, b: _loss(model, v, b)),
                                 out_shardings=(partitioner.replicated, shardings))
    loss, grads = step(placed, placed_batch)
    results[f'{name}/loss'] = np.asarray(loss)
    for path, leaf in jax.tree_util.tree_flatten_with_path(grads)[0]:
      results[f'{name}/grad{jax.tree_util.keystr(path)}'] = np.asarray(leaf)
    params = shardings['params']
    results[f'{name}/spec/wi_0'] = np.asarray(
        str(params['encoder']['layers_0']['mlp']['wi_0']['kernel'].spec))
    results[f'{name}/spec/embedding'] = np.asarray(
        str(params['token_embedder']['embedding'].spec))
  np.savez(out, **results)


if __name__ == '__main__':
  main(sys.argv[1])
