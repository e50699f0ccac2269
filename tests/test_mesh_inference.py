"""eval and infer on the training mesh: the same outputs as on one device.

`mesh_infer_runs.py` (8 virtual CPU devices) runs `batch_infer.infer`
(predict and score) for a prompt checkpoint and for a bank of two, and
`evaluate_checkpoints` over a directory, on one device and on a 2x4 mesh
whose backbone is read shard by shard with the training layout; the infer
runs again on two processes of 4 devices sharing a 1x8 mesh (each reads its
half of the backbone).
Each output is computed independently; none is a stored expectation.
"""
import json
import pathlib

import numpy as np
import pytest

import virtual_hosts

TESTS = pathlib.Path(__file__).resolve().parent
FILE = 'fixture_sentiment-validation-{}.jsonl'


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  """One process (layouts 'one' and 'mesh'), then two processes of 4 devices on a
  1x8 mesh across them (layout 'two_hosts', infer only, in its own directory,
  linked into the first's)."""
  root, two = tmp_path_factory.mktemp('mesh_infer'), tmp_path_factory.mktemp('two_hosts')
  script = str(TESTS / 'mesh_infer_runs.py')
  port = virtual_hosts.free_port()
  # One after the other: two processes joined by gloo crawl when they share
  # the cores with a third compiling.
  runs = [[[script, str(root)]], [[script, str(two), str(i), str(port)] for i in range(2)]]
  for number, (group, devices) in enumerate(zip(runs, (8, 4))):
    virtual_hosts.run_together([(args, devices) for args in group],
                               [two / f'log_{number}_{i}' for i in range(len(group))],
                               timeout=1800)
  (root / 'two_hosts').symlink_to(two / 'two_hosts')
  return root


def _lines(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow  # 2.5 min of CPU; 5-15 min with two training sweeps on the 2 cores
@pytest.mark.parametrize('layout', ['mesh', 'two_hosts'])
@pytest.mark.parametrize('kind', ['single', 'bank'])
def test_predictions_and_scores_equal_one_device(root, kind, layout):
  one, mesh = root / 'one' / kind, root / layout / kind
  predicted = _lines(one / FILE.format('predict'))
  assert len(predicted) == 32
  assert _lines(mesh / FILE.format('predict')) == predicted
  scores = lambda d: np.array([r['score'] for r in _lines(d / FILE.format('score'))])
  assert np.all(np.isfinite(scores(one))) and np.ptp(scores(one)) > 0
  np.testing.assert_allclose(scores(mesh), scores(one), rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize('layout', ['mesh'])
def test_eval_of_every_checkpoint_equals_one_device(root, layout):
  for step in ('000010', '000020'):
    name = f'fixture_sentiment-{step}.jsonl'
    want = [r['prediction'] for r in _lines(root / 'one' / 'eval' / name)]
    assert [r['prediction'] for r in _lines(root / layout / 'eval' / name)] == want
  metrics = lambda d: json.loads((root / d / 'shardings.json').read_text())['metrics']
  assert metrics(layout) == metrics('one') and sorted(metrics('one')) == ['10', '20']


@pytest.mark.slow
def test_the_backbone_is_loaded_with_the_training_layout(root):
  recorded = json.loads((root / 'mesh' / 'shardings.json').read_text())
  assert recorded['mesh'] == {'data': 2, 'model': 4}
  layout = recorded['layout']
  assert layout["['params']['token_embedder']['embedding']"] == "P('model', None)"
  assert layout["['params']['encoder']['layers_0']['mlp']['wi_0']['kernel']"] == \
      "P(None, 'model')"
  assert layout["['prompt']['prompt']['prompt']"] == 'P()'
