"""How well a subspace-finding (MSF) run reconstructs its source prompts, as JSON.

    python tools/msf_reconstruction.py runs/demo_ipt/msf-d5-seed0 [more MSF runs]

For each MSF checkpoint (MODEL_DIR = its latest): the mean squared error of
every task's reconstruction decoder(encoder(prompt)) against its source
prompt, beside the prompts' own variance, and the error the best affine map
through d_I dimensions would leave (PCA of the centred, flattened prompts:
the sum of the squared singular values past the d_I-th, per number). MSF's
decoder has a tanh, so it can go below that bound; an error near the
prompts' variance means the subspace kept little of them.
"""
import argparse
import json
import sys
from typing import Any, Dict

import numpy as np

from prompt_tuning.deltas import intrinsic
from prompt_tuning.model.checkpoints import read_delta, resolve_checkpoint


def affine_bound(prompts: np.ndarray, dims: int) -> float:
  """Mean squared error of the best rank-`dims` affine reconstruction of `prompts` [T, ...]."""
  flat = prompts.reshape(len(prompts), -1)
  singular = np.linalg.svd(flat - flat.mean(0), compute_uv=False)
  return float(np.sum(singular[dims:] ** 2) / flat.size)


def report(weights: Dict[str, np.ndarray]) -> Dict[str, Any]:
  """The reconstruction figures of an MSF delta's variables (`intrinsic`'s leaves)."""
  sources = np.asarray(weights['source_prompts'], np.float32)
  dims = weights['encoder_kernel'].shape[-1]
  rebuilt = np.asarray(intrinsic.decode(weights, intrinsic.encode(weights, sources),
                                        sources.shape[1]))
  per_task = np.mean((rebuilt - sources) ** 2, axis=(1, 2))
  return {'tasks': len(sources), 'intrinsic_dim': int(dims),
          'mse': float(per_task.mean()), 'mse_max': float(per_task.max()),
          'prompt_variance': float(np.mean(np.var(sources.reshape(len(sources), -1), axis=1))),
          'affine_bound_mse': affine_bound(sources, dims),
          'mse_per_task': [round(float(m), 4) for m in per_task]}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('checkpoints', nargs='+', help='MSF MODEL_DIRs or checkpoint_<step> dirs')
  parser.add_argument('--name', default='intrinsic', help="the delta's name (its collection)")
  args = parser.parse_args()
  out = {}
  for path in args.checkpoints:
    tree = read_delta(path)
    if args.name not in tree or 'source_prompts' not in tree[args.name].get(args.name, {}):
      print(f'Error: {path} holds no MSF delta named {args.name!r} (it holds {sorted(tree)}); '
            'give an intrinsic_msf.gin run.', file=sys.stderr)
      return 2
    out[resolve_checkpoint(path)] = report(tree[args.name][args.name])
  print(json.dumps(out, indent=1))
  return 0


if __name__ == '__main__':
  sys.exit(main())
