"""tools/memory_report.py on the tiny config, against a count made by hand."""
import json
import pathlib
import subprocess
import sys

from prompt_tuning.model import SIZES

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
