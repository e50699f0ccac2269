"""tools/msf_reconstruction.py against hand-worked examples."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'tools'))
import msf_reconstruction  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_affine_bound_by_hand():
  # Flattened rows (0, 0), (2, 0), (0, 2): centred, their scatter matrix is
  # [[24, -12], [-12, 24]] / 9, eigenvalues 4 and 4/3; 6 numbers in all.
  prompts = np.array([[[0., 0.]], [[2., 0.]], [[0., 2.]]])
  assert msf_reconstruction.affine_bound(prompts, 0) == pytest.approx((4 + 4 / 3) / 6)
  assert msf_reconstruction.affine_bound(prompts, 1) == pytest.approx((4 / 3) / 6)
  assert msf_reconstruction.affine_bound(prompts, 2) == pytest.approx(0, abs=1e-12)


def test_report_of_a_hand_built_auto_encoder():
  # Prompts [[1]] and [[-1]]: z = +-1, hidden tanh(+-2), output scaled to +-0.5,
  # so each task's error is 0.5^2 = 0.25.
  weights = {'source_prompts': np.array([[[1.]], [[-1.]]], np.float32),
             'encoder_kernel': np.array([[1.]], np.float32), 'encoder_bias': np.zeros(1, np.float32),
             'hidden_kernel': np.array([[2.]], np.float32), 'hidden_bias': np.zeros(1, np.float32),
             'output_kernel': np.array([[0.5 / np.tanh(2.)]], np.float32),
             'output_bias': np.zeros(1, np.float32)}
  got = msf_reconstruction.report(weights)
  assert got['tasks'] == 2 and got['intrinsic_dim'] == 1
  assert got['mse'] == pytest.approx(0.25, rel=1e-5)
  assert got['mse_per_task'] == [0.25, 0.25]
  assert got['affine_bound_mse'] == pytest.approx(0, abs=1e-12)  # two points lie on a line
