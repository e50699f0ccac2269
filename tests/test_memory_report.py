"""tools/memory_report.py on the tiny config, against a count made by hand."""
import json
import pathlib
import subprocess
import sys

import pytest

from prompt_tuning.model import SIZES, num_parameters

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_memory_report_arguments_match_an_independent_count():
  # Mesh 1 x 2: every matrix is split in two over 'model', the batch is whole.
  out = subprocess.run(
      [sys.executable, 'tools/memory_report.py', '--sizes', 'tiny', '--modes', 'prompt',
       '--mesh', '1x2', '--batch_size', '4', '--input_length', '16', '--target_length', '4',
       '--prompt_length', '5', '--json'],
      cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  (row,) = [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{')]

  c = SIZES['tiny']
  d, kv, layers = c.emb_dim, c.num_heads * c.head_dim, c.num_encoder_layers
  # Matrices have one dimension on 'model' (vocab, mlp, joined_kv, heads): half each.
  matrices = (2 * c.vocab_size * d                        # token_embedder, logits_dense
              + layers * 4 * d * kv + layers * 8 * d * kv  # encoder / decoder attention
              + 2 * layers * 3 * d * c.mlp_dim             # wi_0, wi_1, wo
              + 2 * c.num_heads * c.relative_attention_num_buckets)
  norms = layers * 2 * d + d + layers * 3 * d + d  # replicated
  frozen = (matrices // 2 + norms) * 4
  prompt = 5 * d * 4  # replicated, float32
  batch = 4 * (16 + 4 + 4) * 4
  assert row['frozen'] == frozen
  assert row['trainable'] == prompt
  assert row['batch_shard'] == batch
  # Adafactor keeps one unfactored second moment [5, d] plus a few scalars.
  assert prompt <= row['optimizer'] <= prompt + 64
  # What XLA assigns to the arguments: all of the above and the step counter.
  assert abs(row['arguments'] - (frozen + prompt + row['optimizer'] + batch + 4)) <= 64
  assert row['total'] == row['arguments'] + row['outputs'] - row['aliased'] + row['temps']
  assert row['temps'] > 0 and row['fits'] and row['mesh'] == '1x2'


def test_written_checkpoint_loads_with_the_sizes_shapes(tmp_path):
  sys.path.insert(0, str(REPO / 'tools'))
  import load_memory  # pylint: disable=g-import-not-at-top
  from prompt_tuning.model import load_pretrained  # pylint: disable=g-import-not-at-top
  path = load_memory.write_t5x_checkpoint('tiny', str(tmp_path))
  config, params = load_pretrained(path)
  assert config.emb_dim == SIZES['tiny'].emb_dim and config.vocab_size == SIZES['tiny'].vocab_size
  assert 0.02 < float(abs(params['token_embedder']['embedding']).mean()) < 0.06  # N(0, 0.05)


@pytest.mark.slow  # four processes joined by jax.distributed: about 30 s on 2 busy cores
def test_load_report_whole_vs_sharded(tmp_path):
  # Mesh 1 x 2 over two processes (one device each): 'model' spans the hosts.
  out = subprocess.run(
      [sys.executable, 'tools/memory_report.py', '--load', str(tmp_path), '--write_checkpoint',
       'tiny', '--mesh', '1x2', '--processes', '2', '--json'],
      cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{')]
  assert sorted((r['mode'], r['process']) for r in rows) == [
      ('sharded', 0), ('sharded', 1), ('whole', 0), ('whole', 1)]
  model = 4 * num_parameters(SIZES['tiny'])
  for row in rows:
    assert row['checkpoint_bytes'] == model
    # Each host's devices hold a part of the model: the split matrices by half.
    assert 0.4 * model < row['device_shards'] < 0.6 * model
    if row['mode'] == 'whole':
      assert row['bytes_read'] >= model  # every array read by every host


@pytest.mark.slow  # two compilations of the tiny step: about 30 s on 2 busy cores
def test_two_dimensional_parameter_partitioning_halves_the_weights_on_2x2():
  """PARAMETER_PARTITIONING_DIMS=2 splits every weight's embed over 'data' (2 here)."""
  def trainable(dims):
    out = subprocess.run(
        [sys.executable, 'tools/memory_report.py', '--sizes', 'tiny', '--modes', 'model',
         '--mesh', '2x2', '--batch_size', '4', '--input_length', '16', '--target_length', '4',
         '--parameter_partitioning_dims', str(dims), '--json'],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    (row,) = [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{')]
    assert row['partitioning_dims'] == {'parameters': dims, 'activations': 1}
    return row['trainable']
  one, two = trainable(1), trainable(2)
  # Only the two relative position tables [heads, buckets] have no embed axis:
  # they keep their 1-D layout (heads over 'model' when it divides them).
  c = SIZES['tiny']
  relpos = 2 * c.num_heads * c.relative_attention_num_buckets * 4
  relpos //= 2 if c.num_heads % 2 == 0 else 1
  assert two == relpos + (one - relpos) // 2
