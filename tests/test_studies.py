"""The demo-suite studies' recipes run end to end in seconds, so they cannot rot.

Each is the real recipe through tools/sweep.py and tools/plot.py with
`--set SUITE_STEPS=2` (two training steps, one evaluation) and `--only` a
few of its runs on the shipped xs and s demo models; the knowledge probe's
on a decoder-only LM pre-trained for 2 steps by tools/build_demo_model.sh. Slow: every run is a
training process (about 20 s on 2 cores).
"""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _tool(*args, check=True):
  proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                        timeout=1800, check=False)
  if check:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc


def _sweep(recipe, out_dir, *only, settings=()):
  args = ['tools/sweep.py', f'configs/demo/{recipe}.toml', '--out_dir', str(out_dir),
          '--set', 'SUITE_STEPS=2', *settings]
  for pattern in only:
    args += ['--only', pattern]
  return _tool(*args)


def _plot(sweep_dir, *only):
  """The table of the runs `only` names: a seed's mean over tasks waits for all of them."""
  args = ['tools/plot.py', str(sweep_dir), '--output', str(sweep_dir / 'figure.png')]
  for pattern in only:
    args += ['--only', pattern]
  return _tool(*args).stdout


def test_scale_recipe(tmp_path):
  only = ('*-genre-xs-seed0', '*-genre-s-seed0')
  _sweep('scale', tmp_path, *only)
  table = _plot(tmp_path / 'demo_scale', *only)
  # Model and prompt tuning at two sizes, each from its run's best.json.
  for method in ('model_tuning', 'prompt_tuning'):
    row = next(line for line in table.splitlines() if line.startswith(f'| {method} |'))
    assert row.count('(1)') == 2, table
  counts = json.loads((tmp_path / 'demo_scale' / 'prompt-genre-xs-seed0' /
                       'parameters.json').read_text())
  assert counts == {'trained': 20 * 16, 'frozen_delta': 0, 'backbone': 1_046_848}
  assert (tmp_path / 'demo_scale' / 'figure.png').stat().st_size > 1000


def test_compare_recipe(tmp_path):
  only = ('lora-genre-xs-seed0', 'bitfit-genre-xs-seed0')
  _sweep('compare', tmp_path, *only)
  table = _plot(tmp_path / 'demo_compare', *only)
  # x is what each method trains, read from the runs' parameters.json.
  trained = {m: json.loads((tmp_path / 'demo_compare' / f'{m}-genre-xs-seed0' /
                            'parameters.json').read_text())['trained'] for m in ('lora', 'bitfit')}
  assert all(f'{n:,}' in table or str(n) in table for n in trained.values()), table
  assert 'LoRA' in table and 'BitFit' in table
  # The whole recipe: the runs not run are listed, and each seed's mean over
  # the two tasks waits for the one not run.
  whole = _tool('tools/plot.py', str(tmp_path / 'demo_compare'), check=False).stdout
  assert 'prompt-genre-xs-seed0: no run directory' in whole
  assert 'only 1 of 2 runs over task have results' in whole


def test_ipt_recipe_in_its_three_stages(tmp_path):
  """Stage 1's source prompts but one stand in as files (prompt tuning is tested above)."""
  import ast  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(REPO / 'tools'))
  import recipe as recipe_lib  # pylint: disable=g-import-not-at-top
  sweep_dir = tmp_path / 'demo_ipt'
  recipe = recipe_lib.load(str(REPO / 'configs' / 'demo' / 'ipt.toml'))
  msf = next(r for r in recipe.runs if r.name == 'msf-d5-seed0')
  values = {**recipe_lib.variables(recipe, {'SUITE_STEPS': '2'}), 'SWEEP_DIR': str(sweep_dir)}
  sources = ast.literal_eval(recipe_lib.resolve(msf, values).bindings['SOURCE_PROMPTS'])
  rng = np.random.RandomState(0)
  for source in sources:
    run = pathlib.Path(source).parents[1]
    if run.name != 'prompt-same_city-seed0':  # that one trains below
      (run / 'checkpoint_2').mkdir(parents=True)
      np.save(source, rng.uniform(-0.5, 0.5, (20, 64)).astype('f4'))
      (run / 'sweep_done.json').write_text('{}')  # the sweep skips it as done
  # Prompt tuning for a seen and an unseen task (the baselines), the
  # subspace, and intrinsic tuning on both tasks.
  _sweep('ipt', tmp_path, 'prompt-same_city-seed0', 'prompt-genre-seed0', 'msf-d5-seed0',
         'ist-same_city-d5-seed0', 'ist-genre-d5-seed0', settings=['--set', 'MSF_STEPS=2'])
  found = sweep_dir / 'msf-d5-seed0' / 'checkpoint_2'
  assert (found / 'intrinsic_decoder.npz').exists() and (found / 'intrinsic_task22.npy').exists()
  ist = json.loads((sweep_dir / 'ist-genre-d5-seed0' / 'parameters.json').read_text())
  assert ist['trained'] == 5  # z alone; the decoder is a frozen part of the delta
  table = _plot(sweep_dir, 'prompt-same_city-seed0', 'prompt-genre-seed0',
                'ist-same_city-d5-seed0', 'ist-genre-d5-seed0')
  row = next(line for line in table.splitlines() if line.startswith('| 5 |'))
  assert row.count('(1)') == 2, table  # seen and unseen: % of their prompt-tuning runs


def test_probe_recipe_on_a_two_step_decoder_only_lm(tmp_path):
  import os  # pylint: disable=g-import-not-at-top
  env = {**os.environ, 'DEMO_MODELS': str(tmp_path / 'models'), 'PYTHON': sys.executable}
  proc = subprocess.run(['tools/build_demo_model.sh', 'decoder_only', '--gin.TRAIN_STEPS=2',
                         '--gin.CHECKPOINT_PERIOD=2', '--gin.EVAL_PERIOD=None'], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=1800, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  checkpoint = tmp_path / 'models' / 'decoder_only' / 'lm' / 'checkpoint_2'
  assert checkpoint.is_dir()
  # The manual prompt zero-shot on every relation, and one P-tuning and one
  # prompt-tuning run (2 steps) on the city relation.
  only = ('manual-*-seed0', 'p_tuning-city-seed0', 'prompt_manual-city-seed0')
  _sweep('probe', tmp_path, *only, settings=['--set', 'BASE_STEP=2', '--set', 'PROBE_STEPS=4',
                                             '--set', f'PROBE_CHECKPOINT={checkpoint}'])
  for run in ('manual-colour-seed0', 'p_tuning-city-seed0', 'prompt_manual-city-seed0'):
    best = json.loads((tmp_path / 'demo_probe' / run / 'best' / 'best.json').read_text())
    (metrics,) = best['metrics'].values()
    assert 0 <= metrics['precision_at_1'] <= 100, (run, best)
  trained = json.loads((tmp_path / 'demo_probe' / 'p_tuning-city-seed0' /
                        'parameters.json').read_text())['trained']
  assert trained > 6 * 128  # the LSTM encoder and its 6 input embeddings
  table = _plot(tmp_path / 'demo_probe', *only)
  row = next(line for line in table.splitlines() if line.startswith('| precision@1'))
  # One seed each: the manual prompt's mean over all 4 relations, the others' city alone.
  assert row.count('(1)') == 3, table
