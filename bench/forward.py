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


def matmul_flops(config: T5Config, batch: int, inputs: int, targets: int) -> tuple:
  """(weight, score) matmul FLOPs of one forward pass (2 per multiply-add).

  Weight matmuls multiply activations by a kernel (projections, MLP, logits;
  the decoder's cross-attention keys and values project all `inputs`
  encoder positions); score matmuls are attention's QK^T and weights x V.
  """
  d, ff, kv = config.emb_dim, config.mlp_dim, config.num_heads * config.head_dim
  projection = 2 * d * kv
  mlp = 2 * (len(config.mlp_activations) + 1) * d * ff
  encoder_weight = config.num_encoder_layers * inputs * (4 * projection + mlp)
  encoder_score = config.num_encoder_layers * inputs * 4 * inputs * kv
  decoder_weight = (config.num_decoder_layers * (targets * (6 * projection + mlp) +
                                                 inputs * 2 * projection) +
                    targets * 2 * d * config.vocab_size)
  decoder_score = config.num_decoder_layers * targets * 4 * (targets + inputs) * kv
  return batch * (encoder_weight + decoder_weight), batch * (encoder_score + decoder_score)


def model_flops(config: T5Config, batch: int, inputs: int, targets: int) -> float:
  """Matmul FLOPs of one forward pass (2 per multiply-add), from the shapes."""
  return sum(matmul_flops(config, batch, inputs, targets))


def train_flops(config: T5Config, batch: int, inputs: int, targets: int,
                weight_gradients: bool) -> float:
  """Matmul FLOPs of forward + backward.

  The activation gradients repeat each weight matmul once and each score
  matmul twice (the gradients of both its operands are activations); with
  `weight_gradients` (model tuning) each weight matmul runs once more. A
  frozen backbone under a prompt still needs every activation gradient,
  down to the input embeddings.
  """
  weight, score = matmul_flops(config, batch, inputs, targets)
  return weight * (3 if weight_gradients else 2) + score * 3


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

  peak = matmul_peak_flops(dtype=jnp.dtype(args.dtype))
  flops = {'forward': model_flops(config, args.batch, args.inputs, args.targets),
           'forward_backward': train_flops(config, args.batch, args.inputs, args.targets,
                                           weight_gradients=True)}
  tokens = args.batch * (args.inputs + args.targets)
  result = {
      'benchmark': 'forward',
      'device': device_description(),
      'size': args.size, 'dtype': args.dtype, 'batch': args.batch,
      'input_length': args.inputs, 'target_length': args.targets,
      'matmul_peak_gflops': round(peak / 1e9, 2),
      'matmul_peak_note': f'one 2048x2048 {args.dtype} matmul, best of 5',
  }
  for name, fn in (('forward', forward), ('forward_backward', forward_backward)):
    xla_flops = fn.lower(params).compile().cost_analysis()
    xla_flops = xla_flops[0] if isinstance(xla_flops, list) else xla_flops
    seconds = best_time(lambda: fn(params), args.repeats)
    step_flops = flops[name]
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
