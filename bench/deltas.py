"""Every delta method's train step against prompt tuning and model tuning, as JSON.

    python bench/deltas.py [--size small] [--batch 8] [--inputs 256] [--rounds 1]

On one shape (T5.1.1-small by default, batch 8, 256 inputs, 8 targets, a
100-token prompt for the prompted methods, dropout 0.1, random weights), each
method's own run files (gin/runs/prompt_tune.gin, model_tune.gin, or
delta_tune.gin + gin/methods/<method>.gin) build the train step the trainer
runs; each runs in its own subprocess of `bench/train_step.py --only`. Per
method: trained parameters, step time (best of --repeats), XLA's memory
analysis of the compiled step and the step's peak RSS, and ratios to prompt
tuning and model tuning measured in the same run. `--rounds N` interleaves
N rounds and keeps each method's best step.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step  # pylint: disable=g-import-not-at-top,wrong-import-position

METHODS = ('prompt', 'model') + train_step.DELTA_METHODS


def _summary(result: dict) -> dict:
  if 'step_seconds' not in result:
    return result
  memory = result.get('memory', {})
  return {
      'trainable': result.get('trainable'),
      'trainable_parameters': result['trainable_parameters'],
      'share_of_backbone': round(result['trainable_parameters'] /
                                 result['backbone_parameters'], 6),
      'optimizer_state_floats': result['optimizer_state_floats'],
      'step_seconds': result['step_seconds'],
      'step_seconds_all': result['step_seconds_all'],
      'contended': max(result.get('others_cpu_share_per_step') or [0]) > 0.1,
      'xla_temp_mb': result.get('xla_memory_analysis_mb', {}).get('temp'),
      'xla_gflops_per_step': result.get('xla_gflops_per_step'),
      'steady_step_rss_delta_mb': memory.get('steady_step_rss_delta_mb'),
      'encoder_length_seen': result['encoder_length_seen'],
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--methods', default=','.join(METHODS))
  train_step.add_step_arguments(parser)
  args = parser.parse_args()
  methods = args.methods.split(',')
  unknown = sorted(set(methods) - set(METHODS))
  if unknown:
    parser.error(f'unknown methods {unknown}; choose from {list(METHODS)}')

  start = time.perf_counter()
  runs = {m: [] for m in methods}
  for _ in range(args.rounds):  # interleaved: passing contention touches all alike
    for m in methods:
      runs[m].append(train_step._child(m, args))  # pylint: disable=protected-access
  results = {}
  for m in methods:
    ok = [r for r in runs[m] if 'step_seconds' in r]
    results[m] = _summary(min(ok, key=lambda r: r['step_seconds']) if ok else runs[m][-1])
  for m, r in results.items():
    for reference in ('prompt', 'model'):
      ref = results.get(reference, {})
      if 'step_seconds' in r and 'step_seconds' in ref:
        r[f'step_time_vs_{reference}'] = round(r['step_seconds'] / ref['step_seconds'], 3)
        if r['xla_temp_mb'] and ref['xla_temp_mb']:
          r[f'xla_temp_vs_{reference}'] = round(r['xla_temp_mb'] / ref['xla_temp_mb'], 3)
  print(json.dumps({
      'benchmark': 'deltas', 'size': args.size, 'batch': args.batch, 'inputs': args.inputs,
      'targets': args.targets, 'prompt_length': train_step.PROMPT_LENGTH,
      'dropout': args.dropout, 'rounds': args.rounds, 'methods': results,
      'seconds': round(time.perf_counter() - start, 1)}, indent=2))


if __name__ == '__main__':
  main()
