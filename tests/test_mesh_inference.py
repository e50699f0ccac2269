"""eval and infer on the training mesh: the same outputs as on one device.

`mesh_infer_runs.py` (8 virtual CPU devices) runs `batch_infer.infer`
(predict and score) for a prompt checkpoint and for a bank of two, and
`evaluate_checkpoints` over a directory, once on one device and once on a
2x4 mesh whose backbone is read shard by shard with the training layout.
Each output is computed independently; none is a stored expectation.
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

TESTS = pathlib.Path(__file__).resolve().parent
REPO = TESTS.parent
FILE = 'fixture_sentiment-validation-{}.jsonl'


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  root = tmp_path_factory.mktemp('mesh_infer')
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(TESTS),
             XLA_FLAGS='--xla_force_host_platform_device_count=8')
  proc = subprocess.run([sys.executable, str(TESTS / 'mesh_infer_runs.py'), str(root)],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
                        check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return root


def _lines(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow  # 75 s of CPU (3 min with two training sweeps on the 2 cores)
@pytest.mark.parametrize('kind', ['single', 'bank'])
def test_predictions_and_scores_equal_one_device(root, kind):
  one, mesh = root / 'one' / kind, root / 'mesh' / kind
  predicted = _lines(one / FILE.format('predict'))
  assert len(predicted) == 32
  assert _lines(mesh / FILE.format('predict')) == predicted
  scores = lambda d: np.array([r['score'] for r in _lines(d / FILE.format('score'))])
  assert np.all(np.isfinite(scores(one))) and np.ptp(scores(one)) > 0
  np.testing.assert_allclose(scores(mesh), scores(one), rtol=1e-5)


@pytest.mark.slow
def test_eval_of_every_checkpoint_equals_one_device(root):
  for step in ('000010', '000020'):
    name = f'fixture_sentiment-{step}.jsonl'
    want = [r['prediction'] for r in _lines(root / 'one' / 'eval' / name)]
    assert [r['prediction'] for r in _lines(root / 'mesh' / 'eval' / name)] == want
  metrics = lambda d: json.loads((root / d / 'shardings.json').read_text())['metrics']
  assert metrics('mesh') == metrics('one') and sorted(metrics('one')) == ['10', '20']


@pytest.mark.slow
def test_the_backbone_is_loaded_with_the_training_layout(root):
  recorded = json.loads((root / 'mesh' / 'shardings.json').read_text())
  assert recorded['mesh'] == {'data': 2, 'model': 4}
  layout = recorded['layout']
  assert layout["['params']['token_embedder']['embedding']"] == "P('model', None)"
  assert layout["['params']['encoder']['layers_0']['mlp']['wi_0']['kernel']"] == \
      "P(None, 'model')"
  assert layout["['prompt']['prompt']['prompt']"] == 'P()'
