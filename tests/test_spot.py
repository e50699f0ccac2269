"""SPoT: restore-with-assignment for any delta, and ranking source prompts for a target."""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from prompt_tuning.deltas.assignment import assign
from prompt_tuning.transfer import spot

from test_train import (BASE_STEP, _args, _train_in_process, base_checkpoint,  # pylint: disable=unused-import
                        tiny_gin)

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tree(**leaves):
  out = {}
  for path, value in leaves.items():
    node = out
    *parents, name = path.split('__')
    for key in parents:
      node = node.setdefault(key, {})
    node[name] = np.asarray(value, np.float32)
  return out


def test_assign_same_paths_renames_skips_and_never_touches_params():
  target = _tree(params__w=[1.0], prompt__p=[[0.0, 0.0]], lora__a=[0.0], lora__b=[0.0])
  source = _tree(params__w=[9.0], prompt__p=[[1.0, 2.0]], lora__a=[3.0], other__b=[4.0])
  restored, assigned = assign(target, source, [(r'lora/b', r'other/b'), (r'lora/a', None),
                                               (r'(.*)', r'\1')])
  assert restored['params']['w'][0] == 1.0  # the backbone stays the base
  np.testing.assert_array_equal(restored['prompt']['p'], [[1.0, 2.0]])
  assert restored['lora']['a'][0] == 0.0 and restored['lora']['b'][0] == 4.0
  assert sorted(assigned) == [('lora/b', 'other/b'), ('prompt/p', 'prompt/p')]


@pytest.mark.parametrize('source,rules,message', [
    (_tree(prompt__p=[[1.0, 2.0, 3.0]]), [(r'(.*)', r'\1')], r'has shape \(1, 3\) but prompt/p'),
    (_tree(prompt__q=[[1.0, 2.0]]), [(r'(.*)', r'\1')], 'has no variable prompt/p'),
    (_tree(prompt__p=[[1.0, 2.0]]), [(r'lora/.*', r'\0')], 'took nothing'),
    (_tree(prompt__p=[[1.0, 2.0]]), [(r'(', r'\1')], 'not a regular expression'),
])
def test_assign_errors_name_the_problem(source, rules, message):
  with pytest.raises(ValueError, match=message):
    assign(_tree(prompt__p=[[0.0, 0.0]]), source, rules)


def test_a_run_starts_from_the_source_checkpoint_and_resumes_from_its_own(
    tmp_path, tiny_gin, base_checkpoint):
  source = _train_in_process(_args(tiny_gin, base_checkpoint, tmp_path / 'source', steps=2))
  source_prompt = np.load(tmp_path / 'source' / f'checkpoint_{BASE_STEP + 2}' / 'prompt.npy')
  spot_args = ['--gin_file=gin/runs/spot.gin', f"--gin.SOURCE_CHECKPOINT='{tmp_path / 'source'}'"]
  # TRAIN_STEPS at the base step: no training, the state is the initialisation.
  start = _train_in_process(_args(tiny_gin, base_checkpoint, tmp_path / 'target', steps=0,
                                  extra=spot_args))
  np.testing.assert_array_equal(np.asarray(start.trainable['prompt']['prompt']['prompt']),
                                source_prompt)
  del source
  # Trained on, then resumed with another source: its own checkpoint wins.
  _train_in_process(_args(tiny_gin, base_checkpoint, tmp_path / 'target2', steps=2,
                          extra=spot_args))
  trained = np.load(tmp_path / 'target2' / f'checkpoint_{BASE_STEP + 2}' / 'prompt.npy')
  assert not np.array_equal(trained, source_prompt)
  other = ['--gin_file=gin/runs/spot.gin', f"--gin.SOURCE_CHECKPOINT='{tmp_path / 'target'}'"]
  resumed = _train_in_process(_args(tiny_gin, base_checkpoint, tmp_path / 'target2', steps=2,
                                    extra=other))
  np.testing.assert_array_equal(np.asarray(resumed.trainable['prompt']['prompt']['prompt']),
                                trained)


def test_a_source_of_another_prompt_length_is_refused(tmp_path, tiny_gin, base_checkpoint):
  _train_in_process(_args(tiny_gin, base_checkpoint, tmp_path / 'source', steps=1))
  with pytest.raises(ValueError, match=r'has shape \(5, 4\) but prompt/prompt/prompt has shape '
                                       r'\(7, 4\)'):
    _train_in_process(_args(tiny_gin, base_checkpoint, tmp_path / 'target', steps=1, extra=[
        '--gin_file=gin/runs/spot.gin', f"--gin.SOURCE_CHECKPOINT='{tmp_path / 'source'}'",
        '--gin.PROMPT_LENGTH=7']))


# Hand-worked: a = rows e1, e2; b = e1 (and 2 * e1: cosine ignores the norm).
A = np.array([[1.0, 0.0], [0.0, 1.0]])
B = np.array([[2.0, 0.0]])


def test_the_two_similarities_by_hand():
  assert spot.mean_pooled_cosine(A, B) == pytest.approx(1 / np.sqrt(2))  # mean (.5, .5) vs e1
  assert spot.mean_pairwise_cosine(A, B) == pytest.approx(0.5)  # cos 1 and cos 0
  c = np.array([[0.0, 1.0], [-1.0, 0.0], [0.0, 3.0]])  # means (-1/3, 4/3)
  assert spot.mean_pooled_cosine(B, c) == pytest.approx(-1 / np.sqrt(17))
  assert spot.mean_pairwise_cosine(B, c) == pytest.approx((0 - 1 + 0) / 3)


def test_ranking_and_the_weighted_top_k_average():
  library = {'near': np.array([[1.0, 0.1]]), 'far': np.array([[0.1, 1.0]]),
             'opposite': np.array([[-1.0, 0.0]])}
  ranking = spot.rank(np.array([[1.0, 0.0]]), library, 'pairwise')
  assert [name for name, _ in ranking] == ['near', 'far', 'opposite']
  s_near, s_far = ranking[0][1], ranking[1][1]
  expected = (s_near * library['near'] + s_far * library['far']) / (s_near + s_far)
  np.testing.assert_allclose(spot.top_k_average(library, ranking, 2), expected, rtol=1e-6)
  pair = {'a': library['near'], 'b': library['far']}
  with pytest.raises(ValueError, match='sum to'):
    spot.top_k_average(pair, spot.rank(np.array([[-1.0, 0.0]]), pair), 2)
  with pytest.raises(ValueError, match=r'k must be in \[1, 3\]'):
    spot.top_k_average(library, ranking, 4)
  with pytest.raises(ValueError, match='different shapes'):
    spot.top_k_average({**library, 'far': np.ones((2, 2))}, ranking, 2)


def test_prompts_of_another_width_do_not_compare():
  with pytest.raises(ValueError, match='one width'):
    spot.rank(np.ones((3, 4)), {'x': np.ones((3, 5))})
  with pytest.raises(ValueError, match='Unknown similarity'):
    spot.rank(A, {'x': B}, 'euclid')


def test_cli_ranks_and_writes_the_average(tmp_path):
  rng = np.random.RandomState(0)
  target = rng.normal(size=(4, 8)).astype(np.float32)
  files = {'close': target + 0.1 * rng.normal(size=(4, 8)), 'noise': rng.normal(size=(4, 8)),
           'short': target[:2]}
  for name, value in {'target': target, **files}.items():
    np.save(tmp_path / f'{name}.npy', value.astype(np.float32))
  out = subprocess.run(
      [sys.executable, 'tools/spot.py', f'--target={tmp_path / "target.npy"}',
       *[f'--source={n}={tmp_path / n}.npy' for n in files], '--top_k=1',
       f'--average_output={tmp_path / "avg.npy"}', f'--json={tmp_path / "r.json"}'],
      cwd=REPO, capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  ranking = json.loads((tmp_path / 'r.json').read_text())['ranking']
  assert {r['source'] for r in ranking[:2]} == {'close', 'short'}
  assert ranking[-1]['source'] == 'noise' and 'Sources ranked' in out.stdout
  np.testing.assert_allclose(np.load(tmp_path / 'avg.npy'),
                             np.load(tmp_path / f'{ranking[0]["source"]}.npy'), rtol=1e-6)
  bad = subprocess.run([sys.executable, 'tools/spot.py', f'--target={tmp_path / "target.npy"}',
                        f'--source=x={tmp_path / "missing.npy"}'], cwd=REPO,
                       capture_output=True, text=True, check=False)
  assert bad.returncode != 0 and 'missing.npy' in bad.stderr


def test_the_source_recipe_is_the_papers():
  from prompt_tuning.deltas import initializers  # pylint: disable=g-import-not-at-top
  from prompt_tuning.model import T5Config  # pylint: disable=g-import-not-at-top
  from prompt_tuning.train.method import from_run_files  # pylint: disable=g-import-not-at-top
  method = from_run_files(['gin/runs/spot_source.gin'], T5Config())
  (prompt,) = method.deltas
  assert prompt.length == 100 and isinstance(prompt.init, initializers.SampledVocab)
  assert prompt.init.population_size == 5000 and method.optimizer.learning_rate == 0.3
