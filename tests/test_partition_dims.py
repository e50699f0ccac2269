"""T5X's 2-D partitioning (ACTIVATION_PARTITIONING_DIMS, PARAMETER_PARTITIONING_DIMS).

The rules are checked against real T5X's `standard_logical_axis_rules` (when
T5X is installed, as in .ci/run), the layouts by hand from T5X's rule order,
and the numerics on 8 virtual CPU devices (`partition_dims_runs.py`): loss and
gradients of one batch under 1-D and every 2-D layout equal one device's.
"""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from prompt_tuning.train import partitioning

TESTS = pathlib.Path(__file__).resolve().parent
DIMS = [(1, 1), (1, 2), (2, 1), (2, 2)]


@pytest.mark.parametrize('activations, parameters', DIMS)
def test_rules_equal_t5x_own(activations, parameters):
  t5x_partitioning = pytest.importorskip(
      't5x.partitioning', reason='T5X is not installed: see ../shared/t5x/README.md')
  extra = [('prompt', None), ('prompt_embed', None)]
  want = t5x_partitioning.standard_logical_axis_rules(activations, parameters, extra)
  got = partitioning.standard_logical_axis_rules(activations, parameters, extra)
  assert got == tuple(map(tuple, want))


@pytest.mark.parametrize('dims, logical, expected', [
    ((1, 2), ('vocab', 'embed'), P('model', 'data')),       # embedding: 2-D
    ((1, 2), ('embed', 'mlp'), P('data', 'model')),         # wi
    ((1, 2), ('embed',), P('data')),                         # norm scales
    ((1, 2), ('batch', 'length', 'embed'), P('data', None, None)),  # 'data' is the batch's
    ((2, 1), ('batch', 'length', 'embed'), P('data', None, 'model')),
    ((2, 1), ('embed', 'mlp'), P(None, 'model')),           # 'mlp' takes 'model' first
    ((2, 2), ('embed', 'joined_kv'), P('data', 'model')),
    ((2, 2), ('batch', 'length', 'embed'), P('data', None, 'model')),
    ((1, 1), ('vocab', 'embed'), P('model', None)),
])
def test_two_dimensional_layouts(dims, logical, expected):
  partitioner = partitioning.Partitioner(activation_partitioning_dims=dims[0],
                                         parameter_partitioning_dims=dims[1])
  assert partitioner.mesh_axes(logical) == expected


def test_unsupported_dims_are_refused():
  with pytest.raises(ValueError, match='must be 1 or 2'):
    partitioning.standard_logical_axis_rules(3, 1)


@pytest.mark.slow  # about 20 s of compiling on 2 free cores, over a minute when they are busy
def test_loss_and_gradients_are_the_same_under_every_layout(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(TESTS),
             XLA_FLAGS='--xla_force_host_platform_device_count=8 '
                       '--xla_backend_optimization_level=0')
  out = tmp_path / 'out.npz'
  proc = subprocess.run([sys.executable, str(TESTS / 'partition_dims_runs.py'), str(out)],
                        env=env, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  results = dict(np.load(out))
  layouts = sorted({k.split('/')[0] for k in results} - {'one_device'})
  assert len(layouts) == 5
  assert str(results['both_2d/spec/wi_0']) == str(P('data', 'model'))
  assert str(results['params_2d/spec/embedding']) == str(P('model', 'data'))
  grads = [k.split('/', 1)[1] for k in results if k.startswith('one_device/grad')]
  assert len(grads) > 20
  for layout in layouts:
    np.testing.assert_allclose(results[f'{layout}/loss'], results['one_device/loss'], rtol=1e-5)
    for name in grads:
      np.testing.assert_allclose(results[f'{layout}/{name}'], results[f'one_device/{name}'],
                                 rtol=1e-4, atol=1e-5, err_msg=f'{layout} {name}')
