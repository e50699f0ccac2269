r"""Runs every training run of a recipe, one after another, resumably.

    python tools/sweep.py configs/demo/init.toml --out_dir runs/
    python tools/sweep.py configs/paper/prompt_init.toml --out_dir gs://bucket/sweeps \
        --set LM100K_CHECKPOINT=/ckpt/t5_1_1_lm100k_{SIZE}/checkpoint_1100000 \
        --only '*-base-rte-*' --print_commands      # one shell command per run
    python tools/sweep.py RECIPE --out_dir DIR --dry_run          # the plan, nothing written
    python tools/sweep.py RECIPE --out_dir DIR -- --tfds_data_dir=$HOME/tensorflow_datasets

Each run is `python -m prompt_tuning.train --gin_file=... --gin.NAME=VALUE ...
--gin.MODEL_DIR='<out_dir>/<recipe>/<run>'`, started from the repository
root (relative paths in a recipe are relative to it) with its output in
MODEL_DIR/sweep.log. After a run succeeds, MODEL_DIR/sweep_done.json records
its command, the code's commit and its wall time, and a later sweep skips it: re-running the same
command resumes a sweep (an interrupted run resumes from its last checkpoint,
as the trainer does). A failed run is reported and the sweep goes on; the exit
status is 1 if any run failed.

<out_dir>/<recipe>/manifest.json lists every run of the recipe (labels,
MODEL_DIR, and the command for those resolved so far) plus the plotting spec,
for `tools/plot.py`. `--print_commands` writes it too (for runs launched as
cluster jobs); `--dry_run` writes nothing.

`--set VAR=value` fills the recipe's `{VAR}` placeholders (over its
[defaults]); `--only GLOB` (repeatable) picks runs by name; `--trainer`
replaces the training command (default `python -m prompt_tuning.train`);
arguments after `--` are added to every run's command.
"""
import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import recipe as recipe_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

DONE_FILE = 'sweep_done.json'
LOG_FILE = 'sweep.log'
MANIFEST = 'manifest.json'
DEFAULT_TRAINER = 'python -m prompt_tuning.train'
_TAIL_LINES = 20


# -- files (local or gs://; TensorFlow only when a URL needs it) -----------------
def _is_url(path: str) -> bool:
  return '://' in path


def exists(path: str) -> bool:
  if _is_url(path):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.io.gfile.exists(path)
  return os.path.exists(path)


def read_text(path: str) -> str:
  if _is_url(path):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    with tf.io.gfile.GFile(path) as f:
      return f.read()
  with open(path, encoding='utf-8') as f:
    return f.read()


def write_text(path: str, text: str) -> None:
  """Writes via a temporary file and a rename, so a reader never sees half a file."""
  if _is_url(path):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, 'w') as f:
      f.write(text)
    return
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  # A temporary name of this writer's own: sweeps side by side in one output
  # directory all rewrite its manifest, and a shared name let one rename
  # away the file another was about to rename.
  tmp = f'{path}.{os.getpid()}.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(text)
  os.replace(tmp, path)


def join(*parts: str) -> str:
  return '/'.join(p.rstrip('/') for p in parts) if _is_url(parts[0]) else os.path.join(*parts)


# -- the sweep -----------------------------------------------------------------
def model_dir(out_dir: str, recipe: recipe_lib.Recipe, run_name: str) -> str:
  return join(out_dir, recipe.name, run_name)


def command(trainer: Sequence[str], resolved: recipe_lib.ResolvedRun, directory: str,
            extra: Sequence[str]) -> List[str]:
  return [*trainer, *recipe_lib.trainer_args(resolved, directory), *extra]


def shell_join(args: Sequence[str]) -> str:
  """A command line as a person would type it: `--gin.X="'value'"`, not shlex's '"'"'."""
  return ' '.join(_shell_quote(a) for a in args)


def _shell_quote(arg: str) -> str:
  if shlex.quote(arg) == arg:
    return arg
  flag, sep, value = arg.partition('=')
  if sep and arg.startswith('-') and shlex.quote(flag) == flag:
    return f'{flag}={_shell_quote_value(value)}'
  return _shell_quote_value(arg)


def _shell_quote_value(value: str) -> str:
  # Inside double quotes the shell still expands these; fall back to shlex then.
  if not any(c in value for c in '"$`\\!'):
    return f'"{value}"'
  return shlex.quote(value)


def _log(message: str) -> None:
  print(f'[{time.strftime("%H:%M:%S")}] {message}', file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else (f'{m}m{s:02d}s' if m else f'{s}s')


def _done_record(directory: str) -> Optional[Dict[str, Any]]:
  path = join(directory, DONE_FILE)
  if not exists(path):
    return None
  try:
    return json.loads(read_text(path))
  except json.JSONDecodeError:
    return None  # a damaged record: run again rather than trust it


def _best_score(directory: str) -> Optional[float]:
  path = join(directory, 'best', 'best.json')
  try:
    return float(json.loads(read_text(path))['score']) if exists(path) else None
  except (ValueError, KeyError, TypeError):
    return None


def code_version() -> Optional[str]:
  """The repository's commit, with '+dirty' if tracked files differ from it; None outside git."""
  try:
    git = lambda *a: subprocess.run(['git', *a], cwd=recipe_lib.REPO_ROOT, capture_output=True,
                                    text=True, check=True, timeout=30).stdout.strip()
    commit = git('rev-parse', 'HEAD')
    dirty = git('status', '--porcelain', '--untracked-files=no')
  except (OSError, subprocess.SubprocessError):
    return None
  return commit + ('+dirty' if dirty else '')


def run_one(cmd: Sequence[str], directory: str, display: Sequence[str],
            verbose: bool) -> Tuple[int, float, List[str]]:
  """Runs `cmd` from the repository root, its output to MODEL_DIR/sweep.log.

  Returns (exit status, wall seconds, the output's last lines).
  """
  start = time.perf_counter()
  tail: List[str] = []
  local_log = not _is_url(directory)
  if local_log:
    os.makedirs(directory, exist_ok=True)
  log = open(join(directory, LOG_FILE), 'a', encoding='utf-8') if local_log else None
  try:
    if log:
      log.write(f'\n# {datetime.datetime.now().isoformat(timespec="seconds")} '
                f'{shell_join(display)}\n')
      log.flush()
    proc = subprocess.Popen(list(cmd), cwd=recipe_lib.REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors='replace')
    try:
      for line in proc.stdout:
        if log:
          log.write(line)
        if verbose:
          sys.stderr.write(line)
        tail = (tail + [line.rstrip('\n')])[-_TAIL_LINES:]
      status = proc.wait()
    except KeyboardInterrupt:
      # Stop our own child; the trainer resumes from its checkpoint next time.
      proc.terminate()
      try:
        proc.wait(timeout=30)
      except subprocess.TimeoutExpired:
        proc.kill()
      raise
  finally:
    if log:
      log.close()
  return status, time.perf_counter() - start, tail


def write_manifest(path: str, recipe: recipe_lib.Recipe, out_dir: str,
                   commands: Dict[str, List[str]]) -> None:
  """Every run of the recipe; commands resolved now replace those recorded before."""
  previous: Dict[str, Any] = {}
  if exists(path):
    try:
      previous = json.loads(read_text(path)).get('runs', {})
    except json.JSONDecodeError:
      previous = {}
  runs = {}
  for run in recipe.runs:
    cmd = commands.get(run.name, previous.get(run.name, {}).get('command'))
    runs[run.name] = {'labels': run.labels, 'model_dir': model_dir(out_dir, recipe, run.name),
                      'command': cmd, 'plot': run.plot}
  write_text(path, json.dumps({**recipe.plot_spec(), 'runs': runs}, indent=2) + '\n')


def sweep(recipe: recipe_lib.Recipe, out_dir: str, overrides: Dict[str, str],
          only: Sequence[str], trainer: Sequence[str], extra: Sequence[str],
          dry_run: bool = False, print_commands: bool = False, verbose: bool = False) -> int:
  """Runs (or lists) the selected runs; returns the process exit status."""
  unused = set(overrides) - recipe_lib.used_variables(recipe)
  if unused:
    _log(f'warning: --set {", ".join(sorted(unused))} is not used by any run of {recipe.path}')
  selected = recipe.select(only)
  if not selected:
    names = ', '.join(r.name for r in recipe.runs[:5])
    raise recipe_lib.RecipeError(f'--only {list(only)} matches no run of {recipe.path} '
                                 f'(e.g. {names}, ...).')
  shadowed = {name for name in overrides if all(name in r.vars for r in selected)}
  if shadowed:
    _log(f'warning: --set {", ".join(sorted(shadowed))} has no effect: the recipe sets it '
         'per run (a run\'s vars win over --set)')
  # {SWEEP_DIR}: where this recipe's runs go, so a run can start from an
  # earlier run's output (runs go in file order).
  variables = {**recipe_lib.variables(recipe, overrides),
               'SWEEP_DIR': join(out_dir, recipe.name)}
  # Every selected run is resolved before anything starts: a missing variable
  # fails now, not hours into the sweep.
  resolved = [recipe_lib.resolve(run, variables, recipe.path) for run in selected]
  shown_trainer = ['python' if t == sys.executable else t for t in trainer]
  commands = {r.run.name: command(shown_trainer, r, model_dir(out_dir, recipe, r.run.name), extra)
              for r in resolved}

  if print_commands:
    write_manifest(join(out_dir, recipe.name, MANIFEST), recipe, out_dir, commands)
    _log(f'{len(resolved)} commands; run them from the repository root ({recipe_lib.REPO_ROOT})')
    for r in resolved:
      print(shell_join(commands[r.run.name]))
    return 0

  if dry_run:
    for i, r in enumerate(resolved, 1):
      directory = model_dir(out_dir, recipe, r.run.name)
      state = 'done, would skip' if _done_record(directory) else 'would run'
      print(f'[{i}/{len(resolved)}] {r.run.name}: {state}\n  {shell_join(commands[r.run.name])}')
    return 0

  write_manifest(join(out_dir, recipe.name, MANIFEST), recipe, out_dir, commands)
  _log(f'Recipe {recipe.name} ({recipe.path}): {len(resolved)} of {len(recipe.runs)} runs '
       f'-> {join(out_dir, recipe.name)}')
  failed, ran, skipped, walls = [], 0, 0, []
  sweep_start = time.perf_counter()
  for i, r in enumerate(resolved, 1):
    name, directory = r.run.name, model_dir(out_dir, recipe, r.run.name)
    shown = commands[name]
    record = _done_record(directory)
    if record is not None:
      skipped += 1
      note = '' if record.get('command') == shown else ' (recorded with another command)'
      _log(f'[{i}/{len(resolved)}] {name}: already done{note}, skipping')
      continue
    _log(f'[{i}/{len(resolved)}] {name}: starting (log: {join(directory, LOG_FILE)})')
    actual = command(trainer, r, directory, extra)
    status, wall, tail = run_one(actual, directory, shown, verbose)
    walls.append(wall)
    ran += 1
    if status == 0:
      write_text(join(directory, DONE_FILE), json.dumps(
          {'run': name, 'labels': r.run.labels, 'command': shown, 'commit': code_version(),
           'wall_s': round(wall, 1),
           'finished': datetime.datetime.now().isoformat(timespec='seconds')}, indent=2) + '\n')
      score = _best_score(directory)
      score_text = f', best score {score:.2f}' if score is not None else ''
      _log(f'[{i}/{len(resolved)}] {name}: done in {_duration(wall)}{score_text}')
    else:
      failed.append(name)
      _log(f'[{i}/{len(resolved)}] {name}: FAILED (exit {status}) after {_duration(wall)}; '
           f'last lines:\n    ' + '\n    '.join(tail))
    remaining = len(resolved) - i
    if remaining and walls:
      eta = remaining * sum(walls) / len(walls)
      _log(f'{remaining} runs left, about {_duration(eta)} at the mean run time so far '
           '(less for runs already done)')
  _log(f'Finished in {_duration(time.perf_counter() - sweep_start)}: ran {ran}, skipped '
       f'{skipped} already done, {len(failed)} failed'
       + (f': {", ".join(failed)}' if failed else ''))
  return 1 if failed else 0


def _absolute(out_dir: str) -> str:
  # Runs start in the repository root, so a relative MODEL_DIR would move.
  return out_dir if _is_url(out_dir) else os.path.abspath(out_dir)


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  extra: List[str] = []
  if '--' in argv:
    at = argv.index('--')
    argv, extra = argv[:at], argv[at + 1:]
  parser = argparse.ArgumentParser(
      description=__doc__.split('\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog='The recipe format: configs/README.md.')
  parser.add_argument('recipe', help='a recipe TOML file, e.g. configs/demo/init.toml')
  parser.add_argument('--out_dir', required=True, help='runs go to OUT_DIR/<recipe>/<run>')
  parser.add_argument('--set', dest='assignments', action='append', default=[],
                      metavar='VAR=value', help='fill a {VAR} placeholder (repeatable)')
  parser.add_argument('--only', action='append', default=[], metavar='GLOB',
                      help='only runs whose name matches (repeatable), e.g. "*-seed0"')
  parser.add_argument('--dry_run', action='store_true',
                      help='print the plan and the commands; run and write nothing')
  parser.add_argument('--print_commands', action='store_true',
                      help='print one shell command per run (and write the manifest)')
  parser.add_argument('--trainer', default=DEFAULT_TRAINER,
                      help=f'the training command (default: {DEFAULT_TRAINER!r})')
  parser.add_argument('--verbose', action='store_true',
                      help="also echo the trainer's output (it always goes to MODEL_DIR/sweep.log)")
  args = parser.parse_args(argv)
  trainer = shlex.split(args.trainer)
  if trainer and trainer[0] == 'python':
    trainer[0] = sys.executable  # the interpreter running the sweep, e.g. a virtualenv's
  try:
    recipe = recipe_lib.load(args.recipe)
    return sweep(recipe, _absolute(args.out_dir), recipe_lib.parse_assignments(args.assignments),
                 args.only, trainer, extra, dry_run=args.dry_run,
                 print_commands=args.print_commands, verbose=args.verbose)
  except recipe_lib.RecipeError as e:
    print(f'Recipe error: {e}', file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    _log('Interrupted; run the same command again to resume.')
    return 130


if __name__ == '__main__':
  sys.exit(main())
