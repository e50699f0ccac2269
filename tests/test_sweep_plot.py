"""Recipes, tools/sweep.py and tools/plot.py, without training anything.

The sweep runs a stand-in trainer (a few lines of Python that write
best/best.json) so resuming and failure handling take seconds; the plot is
checked against hand-computed means and standard deviations.
"""
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tools'))
import plot  # pylint: disable=g-import-not-at-top,wrong-import-position
import recipe as recipe_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
import sweep  # pylint: disable=g-import-not-at-top,wrong-import-position

SHARED = """
[defaults]
CKPT = "/ckpt/{SIZE}/checkpoint_1100000"

[[cross.size]]
name = "s"
vars = {SIZE = "small"}
labels = {params = 77}

[[cross.size]]
name = "m"
vars = {SIZE = "base"}
labels = {params = 248}
"""

RECIPE = """
name = "toy"
figure = "9z"
title = "Toy sweep"
finding = "Bigger is better."
include = ["_shared.toml"]
metric = "score"
x = "params"
x_scale = "log"
x_ticks = "size"
series = "init"
seeds = [0, 1]
gin_files = ["gin/models/t5_1_1/{SIZE}.gin", "gin/prompts/{INIT_GIN}.gin"]

[defaults]
LABELS = "['yes', 'no']"

[bindings]
INITIAL_CHECKPOINT_PATH = "'{CKPT}'"
MIXTURE_OR_TASK_NAME = "'toy_task'"
PROMPT_LENGTH = 20
TASK_FEATURE_LENGTHS = "{'inputs': 16, 'targets': 4}"

[[runs]]
name = "rand"
vars = {INIT_GIN = "random_uniform"}
labels = {init = "random"}
gin_files = ["gin/runs/prompt_tune.gin"]

[[runs]]
name = "cls"
vars = {INIT_GIN = "class_labels"}
labels = {init = "class_label"}
gin_files = ["gin/runs/prompt_tune.gin"]
bindings = {CLASS_LABELS = "{LABELS}", PROMPT_LENGTH = 5, USE_CACHED_TASKS = false}
"""


@pytest.fixture
def toy(tmp_path):
  (tmp_path / '_shared.toml').write_text(SHARED)
  path = tmp_path / 'toy.toml'
  path.write_text(RECIPE)
  return str(path)


# -- recipes ---------------------------------------------------------------------
def test_expansion_seeds_and_placeholders(toy):
  recipe = recipe_lib.load(toy)
  assert [r.name for r in recipe.runs] == [
      'rand-s-seed0', 'rand-s-seed1', 'rand-m-seed0', 'rand-m-seed1',
      'cls-s-seed0', 'cls-s-seed1', 'cls-m-seed0', 'cls-m-seed1']
  run = recipe.runs[7]
  assert run.labels == {'size': 'm', 'params': 248, 'seed': 1, 'init': 'class_label'}
  resolved = recipe_lib.resolve(run, recipe_lib.variables(recipe, {}))
  # Recipe files, then the run's; {SIZE} from the cross entry, {INIT_GIN} from the run.
  assert resolved.gin_files == ('gin/models/t5_1_1/base.gin', 'gin/prompts/class_labels.gin',
                                'gin/runs/prompt_tune.gin')
  assert resolved.bindings == {
      'INITIAL_CHECKPOINT_PATH': "'/ckpt/base/checkpoint_1100000'",  # a default holding {SIZE}
      'MIXTURE_OR_TASK_NAME': "'toy_task'",
      'PROMPT_LENGTH': '5',  # the run's binding over the recipe's 20
      'TASK_FEATURE_LENGTHS': "{'inputs': 16, 'targets': 4}",  # a gin dict is not a placeholder
      'RANDOM_SEED': '1',
      'CLASS_LABELS': "['yes', 'no']",
      'USE_CACHED_TASKS': 'False',
  }
  # --set beats [defaults]; the run's own vars beat --set.
  overridden = recipe_lib.resolve(run, recipe_lib.variables(
      recipe, {'CKPT': '/mine/{SIZE}', 'LABELS': "['a', 'b']", 'SIZE': 'xxl'}))
  assert overridden.bindings['INITIAL_CHECKPOINT_PATH'] == "'/mine/base'"
  assert overridden.bindings['CLASS_LABELS'] == "['a', 'b']"
  assert recipe_lib.trainer_args(resolved, "/out/it's") == [
      '--gin_file=gin/models/t5_1_1/base.gin', '--gin_file=gin/prompts/class_labels.gin',
      '--gin_file=gin/runs/prompt_tune.gin',
      "--gin.INITIAL_CHECKPOINT_PATH='/ckpt/base/checkpoint_1100000'",
      "--gin.MIXTURE_OR_TASK_NAME='toy_task'", '--gin.PROMPT_LENGTH=5',
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}", '--gin.RANDOM_SEED=1',
      "--gin.CLASS_LABELS=['yes', 'no']", '--gin.USE_CACHED_TASKS=False',
      '--gin.MODEL_DIR="/out/it\'s"']
  assert recipe.select(['cls-*-seed0']) == [recipe.runs[4], recipe.runs[6]]


def test_missing_placeholder_is_named(toy, tmp_path):
  recipe = recipe_lib.load(toy)
  with pytest.raises(recipe_lib.RecipeError, match=re.escape(
      "run 'rand-s-seed0' needs {CKPT}: pass --set CKPT=...")):
    recipe_lib.resolve(recipe.runs[0], {})
  # The command line stops before running anything.
  out = subprocess.run([sys.executable, str(REPO / 'tools' / 'sweep.py'),
                        str(REPO / 'configs' / 'paper' / 'lm_adaptation_steps.toml'),
                        '--out_dir', str(tmp_path / 'runs'), '--only', 'lm10k-base-rte-seed0'],
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 2
  assert ('Recipe error: ' in out.stderr and '{LM10K_CHECKPOINT}' in out.stderr
          and '--set LM10K_CHECKPOINT=...' in out.stderr), out.stderr
  assert not (tmp_path / 'runs').exists()


@pytest.mark.parametrize('text, message', [
    ('name = "a"\nmetric = "score"\nx = "k"\nbogus = 1\n[[runs]]\nname = "r"\nlabels = {k = 1}',
     'unknown keys'),
    ('name = "a"\nmetric = "score"\nx = "k"\n[[runs]]\nname = "r"', "has no label 'k'"),
    ('name = "a"\nmetric = "score"\nx = "k"\n[[runs]]\nname = "r"\nlabels = {k = 1}\n'
     '[[runs]]\nname = "r"\nlabels = {k = 2}', "two runs are both named 'r'"),
    ('name = "a"\nmetric = "score"\nx = "k"\nx_scale = "log"\n[[runs]]\nname = "r"\n'
     'labels = {k = "big"}', 'needs numeric x labels'),
    ('name = "a b"\nmetric = "score"\nx = "k"\n[[runs]]\nname = "r"\nlabels = {k = 1}',
     'directory name'),
])
def test_malformed_recipes_are_refused(tmp_path, text, message):
  path = tmp_path / 'bad.toml'
  path.write_text(text)
  with pytest.raises(recipe_lib.RecipeError, match=re.escape(message)):
    recipe_lib.load(str(path))


# -- sweep.py --------------------------------------------------------------------
def test_dry_run_and_print_commands(tmp_path, capsys):
  recipe = str(REPO / 'configs' / 'paper' / 'prompt_init.toml')
  out_dir = tmp_path / 'runs'
  only = ['--only', 'class_label-base-rte-seed1', '--only', 'random_uniform-xxl-cb-seed0']
  assert sweep.main([recipe, '--out_dir', str(out_dir), '--dry_run', *only]) == 0
  printed = capsys.readouterr().out
  assert '[1/2] random_uniform-xxl-cb-seed0: would run' in printed
  assert not out_dir.exists()  # a dry run writes nothing

  assert sweep.main([recipe, '--out_dir', str(out_dir), '--print_commands', *only,
                     '--', '--tfds_data_dir=/data/tfds']) == 0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 2
  args = shlex.split(lines[1])  # the shell quoting round-trips
  model_dir = out_dir / 'prompt_init' / 'class_label-base-rte-seed1'
  assert args == [
      'python', '-m', 'prompt_tuning.train',
      '--gin_file=gin/models/t5_1_1/base.gin', '--gin_file=gin/prompts/class_labels.gin',
      '--gin_file=gin/runs/prompt_tune.gin',
      "--gin.MIXTURE_OR_TASK_MODULE='prompt_tuning.data.tasks'",
      "--gin.MIXTURE_OR_TASK_NAME='taskless_super_glue_rte_v102'",
      "--gin.INITIAL_CHECKPOINT_PATH='gs://t5-data/pretrained_models/t5x/t5_1_1_lm100k_base/"
      "checkpoint_1100000'",
      '--gin.PROMPT_LENGTH=100', '--gin.RANDOM_SEED=1',
      "--gin.CLASS_LABELS=['entailment', 'not_entailment']",
      f"--gin.MODEL_DIR='{model_dir}'", '--tfds_data_dir=/data/tfds']
  # The manifest lists every run of the recipe, with commands for those resolved.
  manifest = json.loads((out_dir / 'prompt_init' / 'manifest.json').read_text())
  assert len(manifest['runs']) == 3 * 5 * 8 * 3
  assert manifest['runs']['class_label-base-rte-seed1']['command'] == args
  assert manifest['runs']['class_label-base-rte-seed0']['command'] is None
  assert manifest['runs']['class_label-base-rte-seed1']['labels'] == {
      'size': 'base', 'params': 247_577_856, 'task': 'rte', 'seed': 1, 'init': 'class_label'}
  assert (manifest['figure'], manifest['x'], manifest['series']) == ('3b', 'params', 'init')


FAKE_TRAINER = r'''
"""Stands in for `python -m prompt_tuning.train`: writes best/best.json."""
import ast, json, os, sys
flags = dict(a[len('--gin.'):].split('=', 1) for a in sys.argv[1:] if a.startswith('--gin.'))
model_dir = ast.literal_eval(flags['MODEL_DIR'])
with open(os.environ['FAKE_CALLS'], 'a') as f:
  f.write(os.path.basename(model_dir) + '\n')
print('training', model_dir)
if os.environ.get('FAKE_FAIL') and os.environ['FAKE_FAIL'] in model_dir:
  print('boom: out of memory'); sys.exit(3)
os.makedirs(os.path.join(model_dir, 'best'))
score = float(flags['SCORE']) + int(flags['RANDOM_SEED'])
with open(os.path.join(model_dir, 'best', 'best.json'), 'w') as f:
  json.dump({'step': 10, 'score': score, 'metrics': {'toy': {'accuracy': score}}}, f)
'''

SWEEP_RECIPE = """
name = "resume"
metric = "toy/accuracy"
x = "variant"
seeds = [0, 1]
[[runs]]
name = "a"
labels = {variant = "a"}
bindings = {SCORE = 50}
[[runs]]
name = "b"
labels = {variant = "b"}
bindings = {SCORE = 70}
"""


def test_sweep_skips_finished_runs_and_reports_failures(tmp_path, monkeypatch, capsys):
  (tmp_path / 'fake_train.py').write_text(FAKE_TRAINER)
  (tmp_path / 'resume.toml').write_text(SWEEP_RECIPE)
  calls = tmp_path / 'calls.txt'
  monkeypatch.setenv('FAKE_CALLS', str(calls))
  monkeypatch.setenv('FAKE_FAIL', 'b-seed1')
  argv = [str(tmp_path / 'resume.toml'), '--out_dir', str(tmp_path / 'runs'),
          '--trainer', f'python {tmp_path / "fake_train.py"}']
  assert sweep.main(argv) == 1  # one run failed, the others still ran
  err = capsys.readouterr().err
  assert 'b-seed1: FAILED (exit 3)' in err and 'boom: out of memory' in err
  assert 'ran 4, skipped 0 already done, 1 failed: b-seed1' in err
  assert calls.read_text().split() == ['a-seed0', 'a-seed1', 'b-seed0', 'b-seed1']
  sweep_dir = tmp_path / 'runs' / 'resume'
  done = json.loads((sweep_dir / 'a-seed1' / 'sweep_done.json').read_text())
  assert done['command'][0] == 'python' and done['wall_s'] >= 0
  # The code that made the result: this repository's commit (a clone in CI).
  assert re.fullmatch(r'[0-9a-f]{40}(\+dirty)?', done['commit']), done['commit']
  assert not (sweep_dir / 'b-seed1' / 'sweep_done.json').exists()
  assert 'boom: out of memory' in (sweep_dir / 'b-seed1' / 'sweep.log').read_text()

  monkeypatch.delenv('FAKE_FAIL')
  assert sweep.main(argv) == 0  # resumes: only the failed run runs again
  err = capsys.readouterr().err
  assert 'a-seed0: already done, skipping' in err
  assert 'ran 1, skipped 3 already done, 0 failed' in err
  assert calls.read_text().split() == ['a-seed0', 'a-seed1', 'b-seed0', 'b-seed1', 'b-seed1']

  # ... and the results plot: a = 50, 51; b = 70, 71.
  spec, runs = plot.load_sweep(str(sweep_dir), None)
  table = plot.aggregate(plot.collect(runs, spec['metric']), spec)
  assert [table.cells[(None, x)].text() for x in ('a', 'b')] == [
      '50.50 ± 0.71 (2)', '70.50 ± 0.71 (2)']
  assert table.missing == []


# -- plot.py ---------------------------------------------------------------------
PLOT_RECIPE = """
name = "fig"
figure = "3b"
title = "Toy init"
metric = "score"
average_over = ["task"]
x = "size"
series = "init"
seeds = [0, 1, 2]
[[runs]]
name = "a"
labels = {init = "a"}
[[runs]]
name = "b"
labels = {init = "b"}
[[cross.size]]
name = "s"
[[cross.size]]
name = "m"
[[cross.task]]
name = "t1"
[[cross.task]]
name = "t2"
"""

# score of (init, size, task, seed); None: the run has no result.
SCORES = {
    # per-seed means 65, 67, 69 -> 67.00 ± 2.00 (3)
    ('a', 's', 't1'): [60, 62, 64], ('a', 's', 't2'): [70, 72, 74],
    # seed 2 lacks t2 -> per-seed 51, 52 -> 51.50 ± 0.71 (2)
    ('b', 's', 't1'): [50, 50, 50], ('b', 's', 't2'): [52, 54, None],
    # all 80 (a-m-t1-seed0 from metrics.jsonl's last line) -> 80.00 ± 0.00 (3)
    ('a', 'm', 't1'): [80, 80, 80], ('a', 'm', 't2'): [80, 80, 80],
    # only seed 0 has run -> 42.00 (1)
    ('b', 'm', 't1'): [40, None, None], ('b', 'm', 't2'): [44, None, None],
}


def _write_runs(sweep_dir: pathlib.Path) -> None:
  for (init, size, task), values in SCORES.items():
    for seed, value in enumerate(values):
      run = sweep_dir / f'{init}-{size}-{task}-seed{seed}'
      if value is None:
        continue
      if (init, size, task, seed) == ('a', 'm', 't1', 0):
        # No best.json: the last line of the inference metrics counts.
        (run / 'inference_eval').mkdir(parents=True)
        (run / 'inference_eval' / 'toy_task-metrics.jsonl').write_text(
            '{"step": 1000, "accuracy": 10.0}\n{"step": 2000, "accuracy": 80.0}\n')
        continue
      (run / 'best').mkdir(parents=True)
      (run / 'best' / 'best.json').write_text(json.dumps(
          {'step': 5, 'score': value, 'metrics': {'toy_task': {'accuracy': value}}}))


def test_plot_means_stds_and_missing(tmp_path):
  recipe_path = tmp_path / 'fig.toml'
  recipe_path.write_text(PLOT_RECIPE)
  sweep_dir = tmp_path / 'runs' / 'fig'
  _write_runs(sweep_dir)
  png, md = tmp_path / 'fig.png', tmp_path / 'fig.md'
  out = subprocess.run([sys.executable, str(REPO / 'tools' / 'plot.py'), str(sweep_dir),
                        '--recipe', str(recipe_path), '--output', str(png), '--markdown', str(md)],
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  text = md.read_text()
  assert text == out.stdout
  assert text.startswith('### Figure 3b: Toy init\n')
  assert '| init \\ size | s | m |' in text
  assert '| a | 67.00 ± 2.00 (3) | 80.00 ± 0.00 (3) |' in text
  assert '| b | 51.50 ± 0.71 (2) | 42.00 (1) |' in text
  # Every run without a result is listed, and why; the seed groups left out too.
  assert '- b-s-t2-seed2: no run directory' in text
  assert '- b-m-t1-seed1: no run directory' in text
  assert 'init=b, seed=2, size=s: only 1 of 2 runs over task have results' in text
  assert 'Missing (8):' in text  # 5 runs + 3 incomplete (cell, seed) groups
  assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  height, width, _ = matplotlib.image.imread(str(png)).shape
  assert height > 100 and width > 100


def test_plot_per_task_tables_list_every_seed(tmp_path):
  recipe_path = tmp_path / 'fig.toml'
  recipe_path.write_text(PLOT_RECIPE)
  sweep_dir = tmp_path / 'runs' / 'fig'
  _write_runs(sweep_dir)
  plot_py = [sys.executable, str(REPO / 'tools' / 'plot.py'), str(sweep_dir),
             '--recipe', str(recipe_path)]
  out = subprocess.run(plot_py + ['--per', 'task'], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  t1 = out.stdout.split('#### task = t1\n')[1].split('####')[0]
  assert '| a | 62.00 ± 2.00 (3) [60.00, 62.00, 64.00] | 80.00 ± 0.00 (3) [80.00, 80.00, 80.00] |' in t1
  assert '| b | 50.00 ± 0.00 (3) [50.00, 50.00, 50.00] | 40.00 (1) |' in t1
  t2 = out.stdout.split('#### task = t2\n')[1]
  assert '| b | 53.00 ± 1.41 (2) [52.00, 54.00] | 44.00 (1) |' in t2
  bad = subprocess.run(plot_py + ['--per', 'size'], capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2
  assert "--per size: not one of the recipe's average_over labels ['task']" in bad.stderr


def test_plot_only_some_runs_forms_groups_from_them_alone(tmp_path):
  recipe_path = tmp_path / 'fig.toml'
  recipe_path.write_text(PLOT_RECIPE)
  sweep_dir = tmp_path / 'runs' / 'fig'
  _write_runs(sweep_dir)
  out = subprocess.run([sys.executable, str(REPO / 'tools' / 'plot.py'), str(sweep_dir),
                        '--recipe', str(recipe_path), '--only', '*-t1-*'],
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert '| a | 62.00 ± 2.00 (3) | 80.00 ± 0.00 (3) |' in out.stdout  # t1 alone
  assert '| b | 50.00 ± 0.00 (3) | 40.00 (1) |' in out.stdout
  assert 't2' not in out.stdout  # neither averaged in nor listed as missing


def test_archive_keeps_results_across_machines(tmp_path):
  recipe_path = tmp_path / 'fig.toml'
  recipe_path.write_text(PLOT_RECIPE)
  archive = tmp_path / 'fig_results.json'
  plot_py = [sys.executable, str(REPO / 'tools' / 'plot.py')]
  # One machine runs seed 0, archives it, and its run directories are lost.
  first = tmp_path / 'machine1' / 'fig'
  _write_runs(first)
  for run in first.iterdir():
    if not run.name.endswith('seed0'):
      for f in sorted(run.rglob('*'), reverse=True):
        f.unlink() if f.is_file() else f.rmdir()
      run.rmdir()
  out = subprocess.run(plot_py + [str(first), '--recipe', str(recipe_path),
                                  '--archive', str(archive)],
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert '| a | 65.00 (1) | 80.00 (1) |' in out.stdout
  record = json.loads(archive.read_text())['runs']['a-s-t1-seed0']
  assert record['labels'] == {'init': 'a', 'size': 's', 'task': 't1', 'seed': 0}
  assert record['results']['metrics'] == {'toy_task': {'accuracy': 60}}
  # Another machine runs seeds 1 and 2 (and seed 0 of a-s-t1 again, now 61).
  second = tmp_path / 'machine2' / 'fig'
  _write_runs(second)
  for run in second.iterdir():
    if run.name.endswith('seed0') and run.name != 'a-s-t1-seed0':
      for f in sorted(run.rglob('*'), reverse=True):
        f.unlink() if f.is_file() else f.rmdir()
      run.rmdir()
  (second / 'a-s-t1-seed0' / 'best' / 'best.json').write_text(json.dumps(
      {'step': 5, 'score': 61, 'metrics': {'toy_task': {'accuracy': 61}}}))
  out = subprocess.run(plot_py + [str(second), '--recipe', str(recipe_path),
                                  '--archive', str(archive)],
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  # All three seeds, as in test_plot_means_stds_and_missing; a-s seed 0 is now
  # (61 + 70) / 2 = 65.5, so a-s is 65.5, 67, 69: 67.17 +- 1.76.
  assert '| a | 67.17 ± 1.76 (3) | 80.00 ± 0.00 (3) |' in out.stdout
  assert '| b | 51.50 ± 0.71 (2) | 42.00 (1) |' in out.stdout
  # The archive alone draws the same table.
  alone = subprocess.run(plot_py + [str(archive)], capture_output=True, text=True, timeout=120)
  assert alone.returncode == 0, alone.stderr
  assert '| a | 67.17 ± 1.76 (3) | 80.00 ± 0.00 (3) |' in alone.stdout
  assert '| b | 51.50 ± 0.71 (2) | 42.00 (1) |' in alone.stdout
  # Something else given as an archive is refused in one line.
  (tmp_path / 'other.json').write_text('{"step": 5}')
  bad = subprocess.run(plot_py + [str(tmp_path / 'other.json')], capture_output=True, text=True,
                       timeout=120)
  assert bad.returncode == 2
  assert "other.json is not an archive of tools/plot.py (expected the keys 'spec' and 'runs')" \
      in bad.stderr


def test_metric_selection():
  results = {'score': 61.0, 'metrics': {'cb': {'accuracy': 70.0, 'f1': 50.0},
                                         'rte': {'accuracy': 80.0}}}
  assert plot.metric_value(results, 'score') == 61.0
  assert plot.metric_value(results, 'cb/f1') == 50.0
  assert plot.metric_value(results, '*/accuracy') == 75.0
  with pytest.raises(KeyError, match='has: cb/accuracy, cb/f1, rte/accuracy'):
    plot.metric_value(results, 'rte/f1')
  # best.json's score is the mean over tasks of each task's mean metric.
  assert plot.mean_metric(results['metrics']) == 70.0


def test_numeric_x_with_reported_values(tmp_path):
  spec = {'x': 'params', 'x_scale': 'log', 'x_ticks': 'size', 'series': 'm', 'metric': 'score',
          'figure': '1', 'title': 't', 'reported': [{'x': 1000, 'series': 'p', 'value': 90.5}]}
  results = [plot.Result(f'r{i}', {'params': p, 'size': n, 'm': 'p', 'seed': 0}, v, 'best.json')
             for i, (p, n, v) in enumerate([(1000, 'xxl', 88.0), (10, 'small', 60.0)])]
  table = plot.aggregate(results, spec)
  assert table.xs == [10, 1000]  # sorted on a numeric axis
  text = plot.markdown(table, spec)
  assert '| m \\ size | small | xxl |' in text and '| paper: p |  | 90.50 |' in text
  plot.draw(table, spec, str(tmp_path / 'f.png'))
  assert (tmp_path / 'f.png').read_bytes()[:4] == b'\x89PNG'


# -- the recipes in configs/ -----------------------------------------------------
RECIPES = recipe_lib.find_recipes(str(REPO / 'configs'))
# Values for placeholders a recipe leaves to --set (checkpoints nobody released).
DUMMY = {'LM10K_CHECKPOINT': '/ckpt/lm10k_{SIZE}/checkpoint_1010000',
         'LM50K_CHECKPOINT': '/ckpt/lm50k_{SIZE}/checkpoint_1050000',
         'SWEEP_DIR': '/runs/recipe'}  # tools/sweep.py sets it


def test_configs_exist():
  names = {os.path.relpath(p, REPO / 'configs') for p in RECIPES}
  assert {'paper/prompt_length.toml', 'paper/prompt_init.toml', 'paper/pretrain_objective.toml',
          'paper/lm_adaptation_steps.toml', 'paper/model_size.toml', 'demo/init.toml',
          'demo/objective.toml'} <= names


@pytest.mark.parametrize('path', RECIPES, ids=lambda p: os.path.relpath(p, REPO / 'configs'))
def test_recipe_parses_and_its_gin_files_exist(path):
  recipe = recipe_lib.load(path)
  assert recipe.finding and recipe.figure
  variables = recipe_lib.variables(recipe, DUMMY)
  files = {f for run in recipe.runs for f in recipe_lib.resolve(run, variables).gin_files}
  missing = sorted(f for f in files if not (REPO / f).is_file())
  assert not missing, f'{path} names gin files that do not exist: {missing}'


def _base_step(checkpoint: str) -> int:
  """The step a recipe's frozen model was saved at, as its path or gin file says."""
  # The demo models are made by these gin files, whose TRAIN_STEPS is their
  # step; the shipped export is a Hugging Face folder, at step 0.
  made_by = {'demo_models/span_corruption': 'gin/demo/pretrain.gin',
             'demo_models/lm_adapted': 'gin/demo/lm_adapt.gin'}
  if checkpoint.startswith('prompt_tuning/assets/demo_world_t5') or checkpoint.endswith('/hf'):
    return 0  # the family's exports (tools/build_demo_model.sh)
  if checkpoint in made_by:
    text = (REPO / made_by[checkpoint]).read_text()
    return int(re.search(r'^TRAIN_STEPS = ([\d_]+)', text, re.M)[1].replace('_', ''))
  return int(re.search(r'checkpoint_(\d+)', checkpoint)[1])


@pytest.mark.parametrize('path', RECIPES, ids=lambda p: os.path.relpath(p, REPO / 'configs'))
def test_recipe_runs_configure_the_trainer(path):
  """Each distinct run parses in gin with every required macro set and equal step counts."""
  import gin  # pylint: disable=g-import-not-at-top
  from prompt_tuning import gin_utils  # pylint: disable=g-import-not-at-top
  recipe = recipe_lib.load(path)
  variables = recipe_lib.variables(recipe, DUMMY)
  seen, tuning_steps = set(), {}
  for run in recipe.runs:
    resolved = recipe_lib.resolve(run, variables)
    # Seeds and task names do not change what gin sees; the rest may.
    key = (resolved.gin_files, tuple(sorted(
        (k, v) for k, v in resolved.bindings.items()
        if k not in ('RANDOM_SEED', 'MIXTURE_OR_TASK_NAME'))))
    if key in seen:
      continue
    seen.add(key)
    gin.clear_config()
    args = gin_utils.rewrite_gin_args(recipe_lib.trainer_args(resolved, '/tmp/model_dir'))
    gin_utils.parse_gin(resolved.gin_files,
                        [a.split('=', 1)[1] for a in args if a.startswith('--gin_bindings=')])
    assert gin_utils.macro('DROPOUT_RATE') == 0.1, run.name  # the run file after the model file
    if 'gin/prompts/class_labels.gin' in resolved.gin_files:
      assert len(gin_utils.macro('CLASS_LABELS')) <= gin_utils.macro('PROMPT_LENGTH'), run.name
    # TRAIN_STEPS is absolute: every run of a sweep trains as many steps past
    # its own frozen model, 30,000 for the paper's.
    steps = gin_utils.macro('TRAIN_STEPS') - _base_step(gin_utils.macro('INITIAL_CHECKPOINT_PATH'))
    # A zero-shot run (the probe's manual prompt) trains nothing and is
    # scored by the evaluation before training.
    zero_shot = steps == 0 and resolved.bindings.get(
        'trainer.train.run_eval_before_training') == 'True'
    if run.plot and not zero_shot:  # a setup run (IPT's subspace finding) trains as needed
      tuning_steps[run.name] = steps
  assert len(set(tuning_steps.values())) == 1, tuning_steps
  if '/paper/' in path:
    assert set(tuning_steps.values()) == {30_000}


def test_sweep_dir_lets_a_run_start_from_an_earlier_runs_files(tmp_path, capsys):
  (tmp_path / 'chain.toml').write_text('''
name = "chain"
metric = "score"
x = "stage"
seeds = [3]
[[runs]]
name = "first"
labels = {stage = 1}
[[runs]]
name = "second"
labels = {stage = 2}
bindings = {PROMPT_FILE = "'{SWEEP_DIR}/first-seed{SEED}/prompt.npy'"}
''')
  out_dir = tmp_path / 'runs'
  assert sweep.main([str(tmp_path / 'chain.toml'), '--out_dir', str(out_dir), '--dry_run',
                     '--only', 'second-*']) == 0
  command = shlex.split(capsys.readouterr().out.splitlines()[1])
  assert f"--gin.PROMPT_FILE='{out_dir / 'chain'}/first-seed3/prompt.npy'" in command


def test_plot_labels_runs_with_their_trained_parameters(tmp_path):
  sweep_dir = tmp_path / 'methods'
  for name, trained, value in [('lora', 3000, 80.0), ('prompt', 200, 70.0)]:
    (sweep_dir / name / 'best').mkdir(parents=True)
    (sweep_dir / name / 'best' / 'best.json').write_text(json.dumps(
        {'step': 1, 'score': value, 'metrics': {'t': {'accuracy': value}}}))
    (sweep_dir / name / 'parameters.json').write_text(json.dumps(
        {'trained': trained, 'frozen_delta': 0, 'backbone': 10_000}))
  runs = {name: {'labels': {'method': name}, 'model_dir': str(sweep_dir / name)}
          for name in ('lora', 'prompt')}
  results = plot.collect(runs, 'score')
  assert [r.labels for r in results] == [
      {'trained_parameters': 3000, 'backbone_parameters': 10_000, 'method': 'lora'},
      {'trained_parameters': 200, 'backbone_parameters': 10_000, 'method': 'prompt'}]
  # A run not run yet has no parameters.json, so no x: listed as missing.
  results.append(plot.Result('ia3', {'method': 'ia3'}, None, 'no run directory'))
  table = plot.aggregate(results, {'x': 'trained_parameters', 'x_scale': 'log',
                                   'series': 'method'})
  assert table.xs == [200, 3000] and table.missing == ['ia3: no run directory']


def test_a_run_not_run_keeps_its_group_incomplete_when_x_is_recorded():
  # The run not run has no parameters.json, so no trained_parameters; it is
  # still the missing half of its seed's mean over tasks.
  ran = {'trained_parameters': 3000, 'method': 'LoRA', 'seed': 0}
  results = [plot.Result('lora-t1-seed0', {**ran, 'task': 't1'}, 80.0, 'best.json'),
             plot.Result('lora-t2-seed0', {'method': 'LoRA', 'seed': 0, 'task': 't2'}, None,
                         'no run directory'),
             plot.Result('lora-t1-seed1', {**ran, 'seed': 1, 'task': 't1'}, 70.0, 'best.json'),
             plot.Result('lora-t2-seed1', {**ran, 'seed': 1, 'task': 't2'}, 90.0, 'best.json')]
  table = plot.aggregate(results, {'x': 'trained_parameters', 'series': 'method',
                                   'average_over': ['task']})
  assert table.xs == [3000]
  assert table.cells[('LoRA', 3000)].values == [80.0]  # seed 1 only: (70 + 90) / 2
  assert any('only 1 of 2 runs over task' in m for m in table.missing), table.missing


METHODS_RECIPE = """
name = "methods"
metric = "score"
x = "trained_parameters"
x_scale = "log"
series = "method"
average_over = ["task"]
seeds = [0]
[[runs]]
name = "lora"
labels = {method = "LoRA"}
[[runs]]
name = "prompt"
labels = {method = "prompt"}
[[cross.size]]
name = "s"
labels = {size = "s"}
[[cross.size]]
name = "m"
labels = {size = "m"}
"""


def test_plot_against_another_label_than_the_recipes_x(tmp_path):
  recipe_path = tmp_path / 'methods.toml'
  recipe_path.write_text(METHODS_RECIPE)
  sweep_dir = tmp_path / 'runs' / 'methods'
  values = {('lora', 's'): (3000, 80.0), ('lora', 'm'): (6000, 90.0),
            ('prompt', 's'): (200, 70.0), ('prompt', 'm'): (400, 85.0)}
  for (method, size), (trained, value) in values.items():
    run = sweep_dir / f'{method}-{size}-seed0'
    (run / 'best').mkdir(parents=True)
    (run / 'best' / 'best.json').write_text(json.dumps(
        {'step': 1, 'score': value, 'metrics': {'t': {'accuracy': value}}}))
    (run / 'parameters.json').write_text(json.dumps(
        {'trained': trained, 'frozen_delta': 0, 'backbone': 10_000}))
  plot_py = [sys.executable, str(REPO / 'tools' / 'plot.py'), str(sweep_dir),
             '--recipe', str(recipe_path)]
  by_parameters = subprocess.run(plot_py, capture_output=True, text=True, timeout=120)
  assert '| method \\ trained_parameters | 200 | 400 | 3000 | 6000 |' in by_parameters.stdout
  by_size = subprocess.run(plot_py + ['--x', 'size'], capture_output=True, text=True,
                           timeout=120)
  assert by_size.returncode == 0, by_size.stderr
  assert '| method \\ size | s | m |' in by_size.stdout
  assert '| LoRA | 80.00 (1) | 90.00 (1) |' in by_size.stdout
  assert '| prompt | 70.00 (1) | 85.00 (1) |' in by_size.stdout
  averaged = subprocess.run(plot_py + ['--x', 'task'], capture_output=True, text=True,
                            timeout=120)
  assert averaged.returncode == 2 and 'the recipe averages over it' in averaged.stderr


STAGED_RECIPE = """
name = "staged"
metric = "score"
x = "split"
series = "method"
seeds = [0]
relative_to = {method = "prompt", match = ["task", "seed"]}

[[runs]]
name = "prompt"
axes = ["task"]
labels = {method = "prompt"}

[[runs]]
name = "subspace"
axes = ["dim"]
plot = false

[[runs]]
name = "intrinsic"
labels = {method = "intrinsic"}

[[cross.task]]
name = "t1"
labels = {split = "seen"}

[[cross.task]]
name = "t2"
labels = {split = "unseen"}

[[cross.dim]]
name = "d5"
labels = {dim = 5}
"""


def test_runs_take_only_the_axes_they_name_and_setup_runs_are_not_plotted(tmp_path):
  (tmp_path / 'staged.toml').write_text(STAGED_RECIPE)
  recipe = recipe_lib.load(str(tmp_path / 'staged.toml'))
  assert [r.name for r in recipe.runs] == [
      'prompt-t1-seed0', 'prompt-t2-seed0', 'subspace-d5-seed0',
      'intrinsic-t1-d5-seed0', 'intrinsic-t2-d5-seed0']
  assert [r.plot for r in recipe.runs] == [True, True, False, True, True]
  # 80 / 90 and 30 / 60 of their prompt-tuning baselines (same task and seed).
  values = {'prompt-t1-seed0': 90.0, 'prompt-t2-seed0': 60.0,
            'intrinsic-t1-d5-seed0': 80.0, 'intrinsic-t2-d5-seed0': 30.0}
  sweep_dir = tmp_path / 'runs' / 'staged'
  for name, value in values.items():
    (sweep_dir / name / 'best').mkdir(parents=True)
    (sweep_dir / name / 'best' / 'best.json').write_text(json.dumps(
        {'step': 1, 'score': value, 'metrics': {'t': {'accuracy': value}}}))
  out = subprocess.run([sys.executable, str(REPO / 'tools' / 'plot.py'), str(sweep_dir),
                        '--recipe', str(tmp_path / 'staged.toml')],
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert '| intrinsic | 88.89 (1) | 50.00 (1) |' in out.stdout, out.stdout
  assert 'subspace' not in out.stdout and 'Missing' not in out.stdout
  absolute = subprocess.run([sys.executable, str(REPO / 'tools' / 'plot.py'), str(sweep_dir),
                             '--recipe', str(tmp_path / 'staged.toml'), '--absolute'],
                            capture_output=True, text=True, timeout=120)
  assert absolute.returncode == 0, absolute.stderr
  assert '| intrinsic | 80.00 (1) | 30.00 (1) |' in absolute.stdout, absolute.stdout
  assert '| prompt | 90.00 (1) | 60.00 (1) |' in absolute.stdout, absolute.stdout


def test_a_run_naming_an_unknown_axis_is_refused(tmp_path):
  (tmp_path / 'bad.toml').write_text(STAGED_RECIPE.replace('axes = ["dim"]', 'axes = ["dims"]'))
  with pytest.raises(recipe_lib.RecipeError, match=r"names cross axes \['dims'\]"):
    recipe_lib.load(str(tmp_path / 'bad.toml'))


@pytest.mark.parametrize('name', ['scale', 'compare', 'ipt'])
def test_suite_recipes_name_each_tasks_labels_and_ipts_sources_in_marker_order(name):
  import ast  # pylint: disable=g-import-not-at-top
  from prompt_tuning.data import demo_suite  # pylint: disable=g-import-not-at-top
  recipe = recipe_lib.load(str(REPO / 'configs' / 'demo' / f'{name}.toml'))
  variables = recipe_lib.variables(recipe, DUMMY)
  for run in recipe.runs:
    resolved = recipe_lib.resolve(run, variables)
    task = ast.literal_eval(resolved.bindings['MIXTURE_OR_TASK_NAME'])
    if 'SOURCE_PROMPTS' in resolved.bindings:  # IPT's subspace finding, on the marked mixture
      seen, _ = demo_suite.task_split('random', 'taskless')
      sources = ast.literal_eval(resolved.bindings['SOURCE_PROMPTS'])
      assert task == 'demo_suite_random_seen' and len(sources) == len(seen) == 23
      for source, seen_task in zip(sources, seen):  # source i is marker <extra_id_i>'s task
        assert f'-{seen_task.replace("taskless_demo_suite_", "")}-seed' in source, source
      continue
    assert ast.literal_eval(resolved.bindings['CLASS_LABELS']) == demo_suite.labels(task), run.name


def test_sweeps_side_by_side_do_not_trip_over_the_manifest(tmp_path):
  # Sweeps sharing an output directory (one per core, their run locks
  # keeping them off each other's runs) each rewrite its manifest at start;
  # with one shared temporary name, one could rename away the file the
  # other was about to rename, and that sweep died before its run.
  writer = ('import sys; sys.path.insert(0, sys.argv[1]); import sweep\n'
            'for i in range(400):\n'
            '  sweep.write_text(sys.argv[2], sys.argv[3] * 1000)\n')
  path = tmp_path / 'manifest.json'
  procs = [subprocess.Popen([sys.executable, '-c', writer, str(REPO / 'tools'), str(path), c],
                            stderr=subprocess.PIPE, text=True) for c in 'ab']
  errors = [p.communicate()[1] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], errors
  assert path.read_text() in ('a' * 1000, 'b' * 1000)
  assert [p.name for p in tmp_path.iterdir()] == ['manifest.json']  # no temporary left
