"""Targeted SPoT: ranks a library of source prompts for a target task.

    python tools/spot.py --target /runs/target_short \\
        --source mnli=/runs/mnli --source squad=/prompts/squad.npy ... \\
        [--metric mean_pooled|pairwise] [--top_k 3 --average_output start.npy] [--json r.json]

Prompts are `.npy` files [length, width], checkpoints, or MODEL_DIRs (their
latest). The target's prompt is its own after a short run. Prints both
similarities of the SPoT paper for every source, ranked by --metric; with
--average_output, writes the top-k prompts averaged with weights sim / sum
(start a run from it with gin/prompts/from_file.gin), or start from the
best source's checkpoint with gin/runs/spot.gin.
"""
import argparse
import json
import sys

import numpy as np

from prompt_tuning.deltas import read_prompt
from prompt_tuning.transfer import spot


def _source(text: str):
  name, sep, path = text.partition('=')
  if not sep or not name or not path:
    raise argparse.ArgumentTypeError(f'--source takes name=path, got {text!r}.')
  return name, path


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--target', required=True, help='the target task\'s (short-run) prompt')
  parser.add_argument('--source', type=_source, action='append', required=True,
                      help='name=path of a source prompt; repeat for each')
  parser.add_argument('--metric', default='mean_pooled', choices=sorted(spot.METRICS))
  parser.add_argument('--top_k', type=int, default=3)
  parser.add_argument('--average_output', help='write the weighted top-k average here (.npy)')
  parser.add_argument('--json', help='write the ranking here')
  args = parser.parse_args(argv)
  names = [name for name, _ in args.source]
  if len(set(names)) != len(names):
    parser.error(f'Source names repeat: {names}.')
  try:
    target = read_prompt(args.target)
    library = {name: read_prompt(path) for name, path in args.source}
    scores = {metric: dict(spot.rank(target, library, metric)) for metric in spot.METRICS}
    ranking = spot.rank(target, library, args.metric)
    average = (spot.top_k_average(library, ranking, min(args.top_k, len(ranking)))
               if args.average_output else None)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f'spot: {e}')
  print(f'Sources ranked for {args.target} by {args.metric}:')
  print('| rank | source | mean_pooled | pairwise |\n|---|---|---|---|')
  for position, (name, _) in enumerate(ranking, 1):
    print(f'| {position} | {name} | {scores["mean_pooled"][name]:.4f} | '
          f'{scores["pairwise"][name]:.4f} |')
  if average is not None:
    np.save(args.average_output, average)
    top = ', '.join(name for name, _ in ranking[:args.top_k])
    print(f'Top-{args.top_k} average ({top}) {average.shape} -> {args.average_output}')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'target': args.target, 'metric': args.metric,
                 'ranking': [{'source': name, **{m: scores[m][name] for m in scores}}
                             for name, _ in ranking]}, f, indent=1)


if __name__ == '__main__':
  main()
