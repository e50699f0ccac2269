"""Before and after the deltas: main 7720136 (PromptTransformer) against this code.

tests/data/main_7720136_demo/checkpoint_20 is what main 7720136 wrote for

    python -m prompt_tuning.train --gin_file=gin/demo/prompt_tune.gin \
      --gin.MODEL_DIR="'/tmp/golden/run'" --gin.TRAIN_STEPS=20 \
      --gin.EVAL_PERIOD=None --gin.CHECKPOINT_PERIOD=20 --gin.LOG_PERIOD=10

on this kind of machine (x86-64 CPU, jax 0.10.2): its prompt.npy, Orbax
state and metadata (without `deltas`). The same command must train the
bitwise same prompt now, and the old checkpoint must still load and resume.
"""
import shutil

import gin
import numpy as np
import pytest

from prompt_tuning import gin_utils
from prompt_tuning.deltas import PromptTuning, read_prompt
from prompt_tuning.infer.loading import VariableLoader
from prompt_tuning.model import Transformer, load_pretrained
from prompt_tuning.model.checkpoints import read_metadata
from prompt_tuning.train import trainer

from conftest import REPO_ROOT

OLD = REPO_ROOT / 'tests' / 'data' / 'main_7720136_demo' / 'checkpoint_20'
DEMO_BASE = 'prompt_tuning/assets/demo_world_t5'


def _train_demo(model_dir, steps):
  gin.clear_config()
  gin_utils.parse_gin(['gin/demo/prompt_tune.gin'], [
      f"MODEL_DIR = '{model_dir}'", f'TRAIN_STEPS = {steps}', 'EVAL_PERIOD = None',
      'CHECKPOINT_PERIOD = 20', 'LOG_PERIOD = 10'])
  return trainer.train()


@pytest.fixture
def at_repo_root(monkeypatch):
  # The demo's base is recorded relative to the repository root, as the demo runs.
  monkeypatch.chdir(REPO_ROOT)


def test_the_demo_trains_the_bitwise_same_prompt_as_before(tmp_path, at_repo_root):
  _train_demo(tmp_path / 'run', 20)
  new = np.load(tmp_path / 'run' / 'checkpoint_20' / 'prompt.npy')
  old = np.load(OLD / 'prompt.npy')
  assert new.dtype == old.dtype and new.shape == old.shape == (20, 64)
  np.testing.assert_array_equal(new, old)


def test_a_checkpoint_of_main_7720136_loads(at_repo_root):
  metadata = read_metadata(str(OLD))
  assert 'deltas' not in metadata and metadata['trainable_collections'] == ['prompt']
  config, _ = load_pretrained(DEMO_BASE)
  loaded = VariableLoader(Transformer(config)).checkpoint(str(OLD))
  (delta,) = loaded.model.deltas
  assert isinstance(delta, PromptTuning) and delta.length == 20 and loaded.step == 20
  np.testing.assert_array_equal(delta.prompt_of(loaded.variables), np.load(OLD / 'prompt.npy'))
  np.testing.assert_array_equal(read_prompt(str(OLD)), np.load(OLD / 'prompt.npy'))


@pytest.mark.slow
def test_a_run_of_main_7720136_resumes_as_if_never_stopped(tmp_path, at_repo_root):
  # An old run directory resumed by this code, against a run of this code alone.
  shutil.copytree(OLD, tmp_path / 'old' / 'checkpoint_20')
  resumed = _train_demo(tmp_path / 'old', 22)
  fresh = _train_demo(tmp_path / 'new', 22)
  np.testing.assert_array_equal(np.asarray(resumed.trainable['prompt']['prompt']['prompt']),
                                np.asarray(fresh.trainable['prompt']['prompt']['prompt']))
  # The resumed run's new checkpoint records its delta.
  assert read_metadata(str(tmp_path / 'old'))['deltas'][0]['kind'] == 'prompt'
