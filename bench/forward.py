"""Forward and forward+backward throughput of a T5.1.1 preset, as JSON.

    python bench/forward.py                       # small, batch 8, 256 -> 64 tokens
    python bench/forward.py --size base --batch 4

Reports tokens/s (input + target tokens per second), the model FLOPs of one
step (counted from the architecture, and as XLA's cost analysis counts them),
and the share of this machine's float32 matmul peak measured in the same run.
Backward is taken with respect to every parameter (model tuning), the most
expensive case. Weights are random: speed does not depend on their values.
"""
import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import best_time, device_description, matmul_peak_flops  # pylint: disable=g-import-not-at-top

from prompt_tuning.model import SIZES, T5Config, Transformer, compute_weighted_cross_entropy


def model_flops(config: T5Config, batch: int, inputs: int, targets: int) -> float:
  """Matmul FLOPs of one forward pass (2 per multiply-add), from the shapes."""
  d, ff, kv = config.emb_dim, config.mlp_dim, config.num_heads * config.head_dim
  gates = len(config.mlp_activations)
  mlp = 2 * (gates + 1) * d * ff
  encoder = config.num_encoder_layers * (2 * 4 * d * kv + mlp + 4 * inputs * kv)
  decoder = config.num_decoder_layers * (2 * 8 * d * kv + mlp + 4 * targets * kv +
                                         4 * inputs * kv)
  logits = 2 * d * config.vocab_size
  return batch * (inputs * encoder + targets * (decoder + logits))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--size', default='small', choices=sorted(SIZES))
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--inputs', type=int, default=256)
  parser.add_argument('--targets', type=int, default=64)
  parser.add_argument('--dtype', default='float32')
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()

  config = SIZES[args.size].replace(dropout_rate=0.0, dtype=args.dtype)
  model = Transformer(config)
  rng = np.random.RandomState(0)
  enc = jnp.asarray(rng.randint(1, 32000, (args.batch, args.inputs)), jnp.int32)
  tgt = jnp.asarray(rng.randint(1, 32000, (args.batch, args.targets)), jnp.int32)
  dec = jnp.concatenate([jnp.zeros_like(tgt[:, :1]), tgt[:, :-1]], axis=1)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), enc, dec, tgt)['params']

  def loss_fn(p):
    logits = model.apply({'params': p}, enc, dec, tgt)
    return compute_weighted_cross_entropy(logits, tgt)[0]

  forward = jax.jit(loss_fn)
  forward_backward = jax.jit(jax.value_and_grad(loss_fn))

  peak = matmul_peak_flops()
  flops = model_flops(config, args.batch, args.inputs, args.targets)
  tokens = args.batch * (args.inputs + args.targets)
  result = {
      'benchmark': 'forward',
      'device': device_description(),
      'size': args.size, 'dtype': args.dtype, 'batch': args.batch,
      'input_length': args.inputs, 'target_length': args.targets,
      'matmul_peak_gflops': round(peak / 1e9, 2),
  }
  for name, fn, multiple in (('forward', forward, 1), ('forward_backward', forward_backward, 3)):
    xla_flops = fn.lower(params).compile().cost_analysis()
    xla_flops = xla_flops[0] if isinstance(xla_flops, list) else xla_flops
    seconds = best_time(lambda: fn(params), args.repeats)
    step_flops = multiple * flops  # backward costs two forwards
    result[name] = {
        'step_seconds': round(seconds, 4),
        'tokens_per_second': round(tokens / seconds, 1),
        'model_gflops_per_step': round(step_flops / 1e9, 2),
        'xla_gflops_per_step': round(xla_flops.get('flops', float('nan')) / 1e9, 2),
        'achieved_gflops': round(step_flops / seconds / 1e9, 2),
        'fraction_of_matmul_peak': round(step_flops / seconds / peak, 3),
    }
  print(json.dumps(result, indent=2))


if __name__ == '__main__':
  main()
