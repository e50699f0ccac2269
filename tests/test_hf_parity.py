"""Parity with an independent implementation: Hugging Face transformers' PyTorch T5.

A randomly initialised HF model is saved as a folder, loaded through
`load_pretrained`, and run through our Flax network on a padded batch whose
inputs are longer than 128 tokens, so the logarithmic and saturated
relative-position buckets are exercised.
"""
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from prompt_tuning.model import Transformer, load_pretrained, sequence_scores

VOCAB = 384
INPUT_LENGTHS = (300, 217, 140, 9)   # padded to 300
TARGET_LENGTHS = (20, 13, 7, 1)      # padded to 20

CONFIGS = {
    # T5.1.1: gated GELU, untied logits; head width x heads != d_model on purpose.
    't5_1_1': dict(feed_forward_proj='gated-gelu', tie_word_embeddings=False,
                   d_model=64, d_kv=12, num_heads=4, d_ff=96),
    # Original T5: ReLU MLP, logits through the tied embedding (scaled by d^-0.5).
    't5_original': dict(feed_forward_proj='relu', tie_word_embeddings=True,
                        d_model=48, d_kv=16, num_heads=3, d_ff=80),
}


def _hf_model(tmp_path, **kwargs):
  torch.manual_seed(0)
  config = transformers.T5Config(
      vocab_size=VOCAB, num_layers=2, num_decoder_layers=3, dropout_rate=0.0,
      relative_attention_num_buckets=32, relative_attention_max_distance=128,
      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, **kwargs)
  # HF's own random init. (Much wider weights make the network chaotic: then
  # each implementation's float32 result drifts ~1e-4 from its own float64
  # result, and a comparison between them measures rounding, not semantics.)
  model = transformers.T5ForConditionalGeneration(config).eval()
  if not kwargs['tie_word_embeddings']:
    # transformers 5 ties lm_head to the embedding whatever the config says;
    # a separate random head makes the untied T5.1.1 path really untied.
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
  model.save_pretrained(tmp_path / 'hf', safe_serialization=True)
  return model


def _batch():
  rng = np.random.RandomState(0)
  inputs = rng.randint(1, VOCAB, (len(INPUT_LENGTHS), max(INPUT_LENGTHS)))
  targets = rng.randint(1, VOCAB, (len(TARGET_LENGTHS), max(TARGET_LENGTHS)))
  for i, (n, t) in enumerate(zip(INPUT_LENGTHS, TARGET_LENGTHS)):
    inputs[i, n:] = 0
    targets[i, t:] = 0
  decoder_inputs = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], 1)
  return inputs, decoder_inputs, targets


@pytest.mark.parametrize('variant', sorted(CONFIGS))
def test_logits_and_scores_match_hugging_face(tmp_path, variant):
  hf = _hf_model(tmp_path, **CONFIGS[variant])
  config, params = load_pretrained(str(tmp_path / 'hf'))
  inputs, decoder_inputs, targets = _batch()

  ours = np.asarray(Transformer(config.replace(dropout_rate=0.0)).apply(
      {'params': params}, jnp.asarray(inputs), jnp.asarray(decoder_inputs),
      jnp.asarray(targets)))
  with torch.no_grad():
    theirs = hf(input_ids=torch.tensor(inputs),
                attention_mask=torch.tensor(inputs > 0).long(),
                decoder_input_ids=torch.tensor(decoder_inputs)).logits.numpy()

  # Padded target positions are masked differently by design (T5X masks padded
  # queries too); compare every real target position.
  real = targets > 0
  error = np.abs(ours - theirs)[real].max()
  scale = np.abs(theirs[real]).max()
  assert scale > 1.0, 'logits too flat for a meaningful comparison'
  assert error <= 1e-4 * scale, f'max |diff| {error:.3g} vs max |logit| {scale:.3g}'

  # Our per-example score is minus HF's mean loss times the number of targets.
  scores = np.asarray(sequence_scores(jnp.asarray(ours), jnp.asarray(targets)))
  for i, (n, t) in enumerate(zip(INPUT_LENGTHS, TARGET_LENGTHS)):
    with torch.no_grad():
      loss = hf(input_ids=torch.tensor(inputs[i:i + 1, :n]),
                labels=torch.tensor(targets[i:i + 1, :t])).loss.item()
    np.testing.assert_allclose(scores[i], -loss * t, rtol=1e-4, atol=1e-3)
