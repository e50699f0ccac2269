"""The embedded demo: prompt-tune the frozen demo model on a demo-world task and report.

    python tools/demo.py [--model_dir runs/demo] [--method lora] [--verbose] [--gin.NAME=VALUE ...]

Runs gin/demo/prompt_tune.gin (a 20-token prompt on the genre task of the
demo world, against the frozen LM-adapted demo model shipped in
prompt_tuning/assets/demo_world_t5), then prints:

  * the validation accuracy of the untuned prompt (step 0), of every
    evaluation, and of the best checkpoint, beside the majority-class
    baseline of the same validation split;
  * each prompt position's nearest vocabulary tokens (the paper's section 7);
  * where everything was written (checkpoints, prompt.npy, metrics, TensorBoard).

`--method` tunes another method of gin/methods/ (lora, ia3, adapters,
bitfit, norm, prompt_lora) with gin/demo/delta_tune.gin instead; the nearest
tokens are shown when the method has a prompt. Extra `--gin.NAME=VALUE`
arguments are passed to the run, e.g. `--gin.TRAIN_STEPS=200`. A re-run with the same --model_dir resumes (and
only reports, when the run is complete). The console shows the run's own
lines and, on a terminal, progress bars; `--verbose` brings back every
library's log lines (`prompt_tuning.console`).
"""
import argparse
import collections
import json
import os
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

GIN_FILE = 'gin/demo/prompt_tune.gin'
METHODS = ('prompt', 'lora', 'ia3', 'adapters', 'bitfit', 'norm', 'prompt_lora')


def gin_files(method: str) -> list:
  """The demo's gin files for `method` (the README's prompt tuning by default)."""
  if method == 'prompt':
    return [GIN_FILE]
  return ['gin/demo/delta_tune.gin', f'gin/methods/{method}.gin']


def majority_baseline(task_name: str, split: str = 'validation') -> float:
  """Accuracy (%) of always answering the most frequent target of `split`."""
  import seqio  # pylint: disable=g-import-not-at-top
  task = seqio.get_mixture_or_task(task_name)
  targets = collections.Counter(
      ex['targets_pretokenized'].numpy()
      for ex in task.get_dataset(None, split=split, shuffle=False))
  return 100 * max(targets.values()) / sum(targets.values())


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model_dir', default='runs/demo')
  parser.add_argument('--top_k', type=int, default=5)
  parser.add_argument('--method', default='prompt', choices=METHODS)
  parser.add_argument('--verbose', action='store_true',
                      help="every library's log lines (TensorFlow, absl, CUDA, Orbax, SeqIO)")
  args, extra = parser.parse_known_args()
  os.chdir(REPO_ROOT)  # the gin files name the shipped model relative to the root

  from prompt_tuning import console  # pylint: disable=g-import-not-at-top
  console.setup(verbose=args.verbose)  # before TensorFlow is imported
  from prompt_tuning import gin_utils  # pylint: disable=g-import-not-at-top
  from prompt_tuning.train import trainer  # pylint: disable=g-import-not-at-top
  bindings = gin_utils.rewrite_gin_args(extra)
  gin_bindings = [b.split('=', 1)[1] for b in bindings if b.startswith('--gin_bindings=')]
  unknown = [b for b in bindings if not b.startswith('--gin_bindings=')]
  if unknown:
    parser.error(f'unrecognized arguments: {unknown}')
  # Also score the untuned prompt (step 0), to show what tuning added.
  gin_utils.parse_gin(gin_files(args.method), [f"MODEL_DIR = '{args.model_dir}'",
                                   'trainer.train.run_eval_before_training = True'] +
                      gin_bindings)
  task = gin_utils.macro('MIXTURE_OR_TASK_NAME')
  base = gin_utils.macro('INITIAL_CHECKPOINT_PATH')

  start = time.time()
  trainer.train()
  minutes = (time.time() - start) / 60

  from prompt_tuning.data.vocab import get_vocabulary  # pylint: disable=g-import-not-at-top
  from prompt_tuning.model import load_pretrained  # pylint: disable=g-import-not-at-top
  from prompt_tuning.infer.neighbors import describe, nearest_neighbors  # pylint: disable=g-import-not-at-top
  from prompt_tuning.deltas import read_prompt  # pylint: disable=g-import-not-at-top
  best_file = os.path.join(args.model_dir, 'best', 'best.json')
  with open(best_file) as f:
    best = json.load(f)
  accuracy = best['metrics'][task]['accuracy']
  baseline = majority_baseline(task)
  with open(os.path.join(args.model_dir, 'inference_eval', f'{task}-metrics.jsonl')) as f:
    history = {}  # step -> accuracy; a resumed run's re-evaluations replace earlier ones
    for line in f:
      record = json.loads(line)
      history[record['step']] = record['accuracy']

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from prompt_tuning.model.checkpoints import read_delta  # pylint: disable=g-import-not-at-top
  best_dir = os.path.join(args.model_dir, 'best', f'checkpoint_{best["step"]}')
  trained = sum(int(np.size(x)) for x in
                jax.tree_util.tree_leaves(read_delta(best_dir)))
  _, params = load_pretrained(base)
  backbone = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(params))
  print(f'\n=== {args.method} demo: {task} (frozen {base}) ===')
  print(f'trained parameters    {trained:,} ({100 * trained / backbone:.3f}% of the '
        f'backbone\'s {backbone:,})')
  print(f'validation accuracy   {accuracy:.1f}%  (best of the run, step {best["step"]})')
  print(f'majority-class guess  {baseline:.1f}%')
  has_prompt = 'prompt' in args.method
  print('by step               ' + ', '.join(
      f'{step}: {history[step]:.1f}%' for step in sorted(history)) +
        ('  (step 0: the untuned prompt)' if has_prompt else '  (step 0: before tuning)'))
  print(f'run time              {minutes:.1f} min')
  if has_prompt:
    prompt = read_prompt(best_dir)
    vocabulary = get_vocabulary()
    ids, sims = nearest_neighbors(prompt, params['token_embedder']['embedding'], args.top_k,
                                  vocabulary.vocab_size)
    print(f'\nNearest vocabulary tokens of each of the {len(prompt)} prompt vectors '
          '(cosine similarity):')
    print('\n'.join(describe(ids, sims, lambda t: vocabulary.decode([t]) or f'<id {t}>')))
  print('\nOutputs:')
  for what, path in (
      ('run directory', args.model_dir),
      ('best checkpoint', best_dir),
      *([('best prompt [length, embed]', os.path.join(best_dir, 'prompt.npy'))]
        if has_prompt else []),
      ('validation metrics', os.path.join(args.model_dir, 'inference_eval')),
      ('effective gin config', os.path.join(args.model_dir, 'config.gin')),
      ('TensorBoard', f'tensorboard --logdir {args.model_dir}')):
    print(f'  {what:28s} {path}')


if __name__ == '__main__':
  main()
