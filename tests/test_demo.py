"""The README's main command, tools/demo.py, end to end on the shipped demo model."""
import json
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_learns_the_genre_task_well_above_the_majority_class(tmp_path):
  # 100 of the demo's 300 steps: the shipped model gets there within 100.
  model_dir = tmp_path / 'demo'
  result = subprocess.run(
      [sys.executable, 'tools/demo.py', '--model_dir', str(model_dir),
       '--gin.TRAIN_STEPS=100'],
      cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  out = result.stdout
  accuracy = float(re.search(r'validation accuracy\s+([\d.]+)%', out).group(1))
  baseline = float(re.search(r'majority-class guess\s+([\d.]+)%', out).group(1))
  # 4 balanced classes: the majority class is about a quarter of the split.
  assert 24 < baseline < 30
  # The bar: well above the majority class.
  assert accuracy > baseline + 40, out
  by_step = dict(re.findall(r'(\d+): ([\d.]+)%', re.search(r'by step\s+(.*)', out).group(1)))
  assert set(by_step) == {'0', '100'}
  # The report is read from the run's own records, not made up.
  best = json.loads((model_dir / 'best' / 'best.json').read_text())
  assert best['metrics']['taskless_demo_world_genre']['accuracy'] == pytest.approx(accuracy,
                                                                                   abs=0.05)
  # One line of nearest tokens per prompt vector (20), then the outputs.
  assert len(re.findall(r'^\s+\d+: ', out, flags=re.M)) == 20
  assert (model_dir / 'best' / f'checkpoint_{best["step"]}' / 'prompt.npy').exists()
