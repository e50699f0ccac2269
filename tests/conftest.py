"""Shared fixtures. The real artifacts live in ../shared/data beside the clone."""
import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get('PROMPT_TUNING_SHARED_DATA',
                                          REPO_ROOT.parent / 'shared' / 'data'))


@pytest.fixture(scope='session')
def shared_data() -> pathlib.Path:
  """../shared/data (or $PROMPT_TUNING_SHARED_DATA); missing data fails, never skips."""
  if not (SHARED_DATA / 't5x_t5_1_1_tiny' / 'checkpoint_3').is_dir():
    pytest.fail(f'The shared reference data is missing at {SHARED_DATA}: clone the '
                'repository beside shared/ or set PROMPT_TUNING_SHARED_DATA.',
                pytrace=False)
  return SHARED_DATA


@pytest.fixture(scope='session', autouse=True)
def _float32_matmuls_in_float32():
  """Parity tolerances assume true float32 matmuls. On GPUs JAX's default
  precision rounds float32 matmul inputs to TF32 (10-bit mantissa): on an
  H100, logits then differ from Hugging Face's by 7e-4 of their scale.
  'highest' changes nothing on CPU."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_default_matmul_precision', 'highest')


@pytest.fixture(autouse=True)
def _clear_gin():
  """Gin is global state: every test starts from an empty configuration."""
  import gin  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  yield
  gin.clear_config()
