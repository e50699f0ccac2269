"""SPoT on the demo world: retrieval of a related source prompt, and transfer from it.

    python tools/spot_demo.py --out_dir runs/spot_demo     # about 20 minutes on 2 cores
    python tools/spot_demo.py --out_dir runs/spot_demo --markdown docs/demo_spot.md

1. Source prompts: the demo's prompt-tuning recipe (gin/demo/prompt_tune.gin,
   20 tokens, sampled-vocabulary init as SPoT's) for SOURCE_STEPS on each
   source task: two tasks related to genre (genre narrowed to two kinds) and
   two that are not (the BoolQ- and RTE-like tasks).
2. The target's task embedding: its own prompt after EMBED_STEPS on genre.
3. Ranking the sources by both similarities of `prompt_tuning.transfer.spot`.
4. Genre for TARGET_STEPS from a fresh prompt, from the best-ranked source and
   from the worst-ranked one (gin/runs/spot.gin), for each seed, evaluated
   every 10 steps (rank classification on the 1,000 validation examples).

Every run is `python -m prompt_tuning.train` in <out_dir>/<name> with its log
in train.log; a rerun skips runs that finished and resumes the others.
Results: <out_dir>/spot_demo.json, and a markdown report with --markdown.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Dict, List, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable=g-import-not-at-top,wrong-import-position
import init_prompt
from prompt_tuning.deltas import initializers, read_prompt
from prompt_tuning.transfer import spot

TARGET = ('taskless_demo_world_genre', ['profile', 'story', 'letter', 'quiz'])
SOURCES = {
    'genre_profile_story': ('taskless_demo_world_genre_profile_story', ['profile', 'story']),
    'genre_letter_quiz': ('taskless_demo_world_genre_letter_quiz', ['letter', 'quiz']),
    'boolq': ('taskless_demo_world_boolq', ['no', 'yes']),
    'rte': ('taskless_demo_world_rte', ['entailment', 'not_entailment']),
}
DEMO_MODEL = 'prompt_tuning/assets/demo_world_t5'
SOURCE_STEPS, EMBED_STEPS, TARGET_STEPS, EVAL_EVERY = 60, 10, 30, 10


def train(model_dir: str, task: str, labels: Sequence[str], steps: int, seed: int,
          eval_period: int, extra: Sequence[str] = ()) -> None:
  """One demo prompt-tuning run (resumed, or skipped once it reached `steps`)."""
  args = [sys.executable, '-m', 'prompt_tuning.train', '--gin_file=gin/demo/prompt_tune.gin',
          *extra, f"--gin.MODEL_DIR='{model_dir}'", f"--gin.MIXTURE_OR_TASK_NAME='{task}'",
          f'--gin.CLASS_LABELS={list(labels)}', '--gin.PROMPT_INIT=@initializers.sampled_vocab()',
          f'--gin.TRAIN_STEPS={steps}', f'--gin.EVAL_PERIOD={eval_period}',
          f'--gin.CHECKPOINT_PERIOD={steps}', f'--gin.RANDOM_SEED={seed}']
  if os.path.exists(os.path.join(model_dir, f'checkpoint_{steps}', 'prompt.npy')):
    return
  os.makedirs(model_dir, exist_ok=True)
  print(f'training {model_dir} ({steps} steps)', flush=True)
  with open(os.path.join(model_dir, 'train.log'), 'a') as log:
    subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, check=True)


def accuracies(model_dir: str, task: str) -> Dict[int, float]:
  """{step: accuracy} of a run's inference evaluations."""
  path = os.path.join(model_dir, 'inference_eval', f'{task}-metrics.jsonl')
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return {row['step']: row['accuracy'] for row in rows}


def _cell(values: List[float]) -> str:
  spread = statistics.stdev(values) if len(values) > 1 else 0.0
  return f'{statistics.mean(values):.1f} ± {spread:.1f}'


def markdown(results: Dict) -> str:
  lines = ['| rank | source | mean-pooled cosine | pairwise cosine | the same on changes: '
           'mean-pooled | pairwise | source accuracy (%) |', '|---|---|---|---|---|---|---|']
  for i, row in enumerate(results['ranking'], 1):
    lines.append(f'| {i} | {row["source"]} | {row["mean_pooled"]:.4f} | '
                 f'{row["pairwise"]:.4f} | {row["mean_pooled_of_changes"]:.4f} | '
                 f'{row["pairwise_of_changes"]:.4f} | {row["source_accuracy"]:.1f} |')
  steps = sorted({int(s) for arm in results['arms'].values() for s in arm['per_seed'][0]})
  lines += ['', '| start | ' + ' | '.join(f'step {s}' for s in steps) + ' |',
            '|---|' + '---|' * len(steps)]
  for arm, data in results['arms'].items():
    cells = [_cell([run[str(s)] for run in data['per_seed']]) for s in steps]
    lines.append(f'| {arm} | ' + ' | '.join(cells) + ' |')
  lines += ['', 'Per seed (' + ', '.join(str(s) for s in results['seeds']) + '):']
  for arm, data in results['arms'].items():
    lines.append(f'- {arm}: ' + '; '.join(
        'step ' + str(s) + ' ' + ', '.join(f'{run[str(s)]:.1f}' for run in data['per_seed'])
        for s in steps))
  return '\n'.join(lines) + '\n'


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out_dir', required=True)
  parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2, 3, 4])
  parser.add_argument('--markdown', help='also write the tables here')
  args = parser.parse_args()
  out = os.path.abspath(args.out_dir)

  source_accuracy = {}
  for name, (task, labels) in SOURCES.items():
    train(f'{out}/source_{name}', task, labels, SOURCE_STEPS, 0, SOURCE_STEPS)
    source_accuracy[name] = accuracies(f'{out}/source_{name}', task)[SOURCE_STEPS]
  target_task, target_labels = TARGET
  train(f'{out}/target_embedding', target_task, target_labels, EMBED_STEPS, 0, EMBED_STEPS)

  target = read_prompt(f'{out}/target_embedding')
  library = {name: read_prompt(f'{out}/source_{name}') for name in SOURCES}
  scores = {metric: dict(spot.rank(target, library, metric)) for metric in spot.METRICS}
  ranking = spot.rank(target, library, 'mean_pooled')
  # Every seed-0 run starts from the same sampled prompt: the same ranking on
  # what each run changed (prompt - start), for comparison.
  # The recipe's init: sampled vocabulary (5,000 pieces), 20 tokens, seed 0.
  start = init_prompt.initial_prompt(DEMO_MODEL, initializers.sampled_vocab(), 20, 0)
  moved = {metric: dict(spot.rank(target - start, {n: p - start for n, p in library.items()},
                                  metric)) for metric in spot.METRICS}
  best, worst = ranking[0][0], ranking[-1][0]
  print('ranking (mean-pooled cosine):', ranking, flush=True)

  starts = {'fresh (sampled vocab)': [], f'SPoT from {best} (best ranked)': [f'source_{best}'],
            f'SPoT from {worst} (worst ranked)': [f'source_{worst}']}
  arms = {}
  for arm, source in starts.items():
    per_seed = []
    for seed in args.seeds:
      name = ('fresh' if not source else f'spot_{source[0]}') + f'_seed{seed}'
      extra = (['--gin_file=gin/runs/spot.gin', f"--gin.SOURCE_CHECKPOINT='{out}/{source[0]}'"]
               if source else [])
      train(f'{out}/{name}', target_task, target_labels, TARGET_STEPS, seed, EVAL_EVERY, extra)
      per_seed.append({str(k): v for k, v in accuracies(f'{out}/{name}', target_task).items()})
    arms[arm] = {'per_seed': per_seed}

  results = {
      'seeds': args.seeds, 'target': target_task,
      'steps': {'source': SOURCE_STEPS, 'embedding': EMBED_STEPS, 'target': TARGET_STEPS},
      'ranking': [{'source': name, 'mean_pooled': scores['mean_pooled'][name],
                   'pairwise': scores['pairwise'][name],
                   'mean_pooled_of_changes': moved['mean_pooled'][name],
                   'pairwise_of_changes': moved['pairwise'][name],
                   'source_accuracy': source_accuracy[name]} for name, _ in ranking],
      'arms': arms}
  with open(os.path.join(out, 'spot_demo.json'), 'w') as f:
    json.dump(results, f, indent=1)
  table = markdown(results)
  print(table)
  if args.markdown:
    with open(args.markdown, 'w') as f:
      f.write(table)


if __name__ == '__main__':
  main()
