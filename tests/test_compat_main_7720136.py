"""Before and after the deltas: main 7720136 (PromptTransformer) against this code.

tests/data/main_7720136_demo/checkpoint_{1,19,20} are what main 7720136 wrote
for

    python -m prompt_tuning.train --gin_file=gin/demo/prompt_tune.gin \
      --gin.MODEL_DIR="'/tmp/golden/run'" --gin.TRAIN_STEPS=20 \
      --gin.EVAL_PERIOD=None --gin.CHECKPOINT_PERIOD=1 --gin.LOG_PERIOD=10

(checkpoint_1 from the same command with TRAIN_STEPS=2) on an x86-64 CPU with
2 cores and jax 0.10.2: prompt.npy, Orbax state and metadata (without
`deltas`).

Each step is compared alone, from the same state, within float rounding.
Through many steps the demo's training magnifies last-bit differences about
300-fold a step, so the same code and command end step 20 apart when XLA:CPU
splits its work another way: by 0.09 on one core instead of two (on the
machine that wrote these), by 0.18 on the CI machine of stop 27. Step 1
agrees to 3e-7 on one core, two, or with AVX2 or SSE4.2 instead of AVX-512. A
bitwise check of step 20 tests the machine, not the code.
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

OLD_RUN = REPO_ROOT / 'tests' / 'data' / 'main_7720136_demo'
OLD = OLD_RUN / 'checkpoint_20'
DEMO_BASE = 'prompt_tuning/assets/demo_world_t5'
# One step's float rounding across cores and instruction sets measured 2.4e-7
# on prompt values up to 7 (the difference a code change makes is the size of
# an update, about 0.3 x the prompt's scale).
ROUNDING = dict(rtol=1e-5, atol=1e-5)


def _train_demo(model_dir, steps):
  gin.clear_config()
  gin_utils.parse_gin(['gin/demo/prompt_tune.gin'], [
      f"MODEL_DIR = '{model_dir}'", f'TRAIN_STEPS = {steps}', 'EVAL_PERIOD = None',
      'CHECKPOINT_PERIOD = 20', 'LOG_PERIOD = 10'])
  return trainer.train()


def _prompt(checkpoint_dir):
  return np.load(checkpoint_dir / 'prompt.npy')


@pytest.fixture
def at_repo_root(monkeypatch):
  # The demo's base is recorded relative to the repository root, as the demo runs.
  monkeypatch.chdir(REPO_ROOT)


def test_the_demo_takes_the_same_first_step_as_before(tmp_path, at_repo_root):
  # Same initial prompt, first batch, loss and Adafactor update.
  _train_demo(tmp_path / 'run', 1)
  new, old = _prompt(tmp_path / 'run' / 'checkpoint_1'), _prompt(OLD_RUN / 'checkpoint_1')
  assert new.dtype == old.dtype and new.shape == old.shape == (20, 64)
  np.testing.assert_allclose(new, old, **ROUNDING)


def test_an_old_run_resumed_takes_the_same_last_step_as_before(tmp_path, at_repo_root):
  # From main 7720136's state at step 19 (its optimizer state and data position
  # included), this code's step 20 is the step main 7720136 took.
  shutil.copytree(OLD_RUN / 'checkpoint_19', tmp_path / 'old' / 'checkpoint_19')
  resumed = _train_demo(tmp_path / 'old', 20)
  assert resumed.step == 20
  np.testing.assert_allclose(_prompt(tmp_path / 'old' / 'checkpoint_20'), _prompt(OLD),
                             **ROUNDING)
  # The resumed run's new checkpoint records its delta.
  assert read_metadata(str(tmp_path / 'old'))['deltas'][0]['kind'] == 'prompt'


def test_a_checkpoint_of_main_7720136_loads(at_repo_root):
  metadata = read_metadata(str(OLD))
  assert 'deltas' not in metadata and metadata['trainable_collections'] == ['prompt']
  config, _ = load_pretrained(DEMO_BASE)
  loaded = VariableLoader(Transformer(config)).checkpoint(str(OLD))
  (delta,) = loaded.model.deltas
  assert isinstance(delta, PromptTuning) and delta.length == 20 and loaded.step == 20
  np.testing.assert_array_equal(delta.prompt_of(loaded.variables), _prompt(OLD))
  np.testing.assert_array_equal(read_prompt(str(OLD)), _prompt(OLD))
