"""Prompt extraction and nearest neighbours on hand-worked values."""
import math
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import optax

from prompt_tuning.deltas import read_prompt
from prompt_tuning.infer.neighbors import nearest_neighbors
from prompt_tuning.model.checkpoints import DeltaCheckpointer


def test_nearest_neighbors_by_cosine_similarity():
  table = np.array([[1, 0], [0, 1], [1, 1], [-1, 0]], np.float32)
  prompt = np.array([[2, 0.1], [-1, -1]], np.float32)
  ids, sims = nearest_neighbors(prompt, table, top_k=2)
  assert ids.tolist() == [[0, 2], [3, 0]]
  norm = math.hypot(2, 0.1)
  np.testing.assert_allclose(sims[0], [2 / norm, 2.1 / (norm * math.sqrt(2))], rtol=1e-6)
  # Row 1: e3 scores 1/sqrt(2); e0 and e1 tie at -1/sqrt(2): the lower id wins.
  np.testing.assert_allclose(sims[1], [1 / math.sqrt(2), -1 / math.sqrt(2)], rtol=1e-6)
  ids, _ = nearest_neighbors(prompt, table, top_k=1, max_id=3)  # row 3 excluded
  assert ids.tolist() == [[0], [0]]


def test_extract_prompt_from_a_checkpoint(tmp_path):
  prompt = np.arange(12, dtype=np.float32).reshape(3, 4)
  trainable = {'prompt': {'prompt': {'prompt': jnp.asarray(prompt)}}}
  DeltaCheckpointer(str(tmp_path / 'run')).save(
      7, {'step': jnp.asarray(7), 'trainable': trainable,
          'opt_state': optax.adafactor(0.3).init(trainable)},
      {'deltas': [{'kind': 'prompt', 'length': 3}]})
  np.testing.assert_array_equal(read_prompt(str(tmp_path / 'run')), prompt)
  out = subprocess.run([sys.executable, 'tools/extract_prompt.py', '--checkpoint',
                        str(tmp_path / 'run' / 'checkpoint_7'), '--output',
                        str(tmp_path / 'p.npy')], capture_output=True, text=True, check=True)
  assert 'prompt (3, 4)' in out.stdout
  np.testing.assert_array_equal(np.load(tmp_path / 'p.npy'), prompt)
