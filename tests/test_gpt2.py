"""GPT-2: parity with Hugging Face transformers' PyTorch GPT-2, the checkpoint
reader's errors, the sites deltas attach to, and the byte-level BPE vocabulary.

The HF models are small and random, with every weight, bias and LayerNorm
parameter drawn at random (HF's own init leaves biases at 0 and norms at 1,
which would hide a mis-mapped bias or a swapped query/key/value split).
"""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import tokenizers
import torch
import transformers

from prompt_tuning.data.gpt2_vocab import GPT2Vocabulary
from prompt_tuning.deltas.lora import LoRA
from prompt_tuning.model.gpt2 import GPT2Config, GPT2LM
from prompt_tuning.model.gpt2_checkpoint import read_hf_gpt2
from prompt_tuning.model.param_shapes import CheckpointError
from test_sites import Recorder

VOCAB = 100
N_POSITIONS = 64
SMALL = dict(vocab_size=VOCAB, n_positions=N_POSITIONS, n_embd=32, n_layer=2, n_head=4,
             embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
VARIANTS = {
    # GPT-2 as released: tanh GELU, 4d MLP; a GPT2LMHeadModel in safetensors.
    'gpt2': dict(save='lm_safetensors'),
    # Exact GELU, a 48-wide MLP, unscaled logits; the headless GPT2Model's names
    # (no `transformer.` prefix, as the original files) in a PyTorch pickle.
    'variant': dict(activation_function='gelu', n_inner=48, scale_attn_weights=False,
                    layer_norm_epsilon=1e-3, save='headless_pickle'),
}


def _hf_model(folder, save='lm_safetensors', **changes):
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**SMALL, **changes)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith(('ln_1.weight', 'ln_2.weight', 'ln_f.weight')):
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      elif p.ndim == 1:
        p.copy_(0.2 * torch.randn_like(p))
      else:
        p.copy_(0.15 * torch.randn_like(p))
  if save == 'lm_safetensors':
    model.save_pretrained(folder, safe_serialization=True)
  else:
    model.transformer.save_pretrained(folder, safe_serialization=False)
  return model


def _compare(ours, theirs, mask):
  error = np.abs(ours - theirs)[mask].max()
  scale = np.abs(theirs[mask]).max()
  assert scale > 1.0, 'logits too flat for a meaningful comparison'
  assert error <= 1e-4 * scale, f'max |diff| {error:.3g} vs max |logit| {scale:.3g}'


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_logits_match_hugging_face(tmp_path, variant):
  changes = dict(VARIANTS[variant])
  hf = _hf_model(tmp_path / 'hf', **changes)
  config, params = read_hf_gpt2(str(tmp_path / 'hf'))
  assert config.mlp_dim == changes.get('n_inner', 128)
  apply = jax.jit(GPT2LM(config).apply)
  rng = np.random.RandomState(0)
  for batch, length, padding in ((3, 17, None), (4, N_POSITIONS, 'right'), (4, 23, 'left')):
    tokens = rng.randint(0, VOCAB, (batch, length))
    mask = np.ones(tokens.shape, bool)
    if padding:
      for i, n in enumerate(rng.randint(1, length, batch)):
        if padding == 'right':
          mask[i, n:] = False
        else:
          mask[i, :length - n] = False
    ours = np.asarray(apply({'params': params}, jnp.asarray(tokens),
                                  None if padding is None else jnp.asarray(mask)))
    assert ours.dtype == np.float32 and ours.shape == (batch, length, VOCAB)
    with torch.no_grad():
      theirs = hf(input_ids=torch.tensor(tokens),
                  attention_mask=torch.tensor(mask).long()).logits.numpy()
    # Padded positions are masked differently by design (here padded queries see
    # nothing, as in the T5 decoder); every real position must agree.
    _compare(ours, theirs, mask)


def test_param_tree_is_the_models(tmp_path):
  _hf_model(tmp_path / 'hf', **VARIANTS['variant'])
  config, params = read_hf_gpt2(str(tmp_path / 'hf'))
  tokens = jnp.zeros((1, 4), jnp.int32)
  initialized = nn.unbox(jax.eval_shape(
      lambda: GPT2LM(config).init(jax.random.PRNGKey(0), tokens))['params'])
  shape = lambda tree: jax.tree_util.tree_map(lambda x: tuple(x.shape), tree)
  assert shape(params) == shape(initialized)
  layer = params['decoder']['layers_1']
  assert layer['self_attention']['query']['kernel'].shape == (32, 32)
  assert layer['mlp']['wi']['kernel'].shape == (32, 48)
  assert params['position_embedder']['embedding'].shape == (N_POSITIONS, 32)


@pytest.mark.parametrize('field,value,message', [
    ('scale_attn_by_inverse_layer_idx', True, 'scale_attn_by_inverse_layer_idx=true is not '
     'supported'),
    ('reorder_and_upcast_attn', True, 'reorder_and_upcast_attn=true is not supported.*'
     'set it to false'),
    ('add_cross_attention', True, 'add_cross_attention=true is not supported'),
    ('activation_function', 'relu', "activation_function 'relu' is not supported"),
    ('tie_word_embeddings', False, 'tie_word_embeddings=false is not supported'),
    ('model_type', 'gpt_neo', "model_type 'gpt_neo' is not 'gpt2'"),
])
def test_unsupported_configs_are_errors_naming_the_field(tmp_path, field, value, message):
  folder = tmp_path / 'hf'
  _hf_model(folder)
  config = json.loads((folder / 'config.json').read_text())
  config[field] = value
  (folder / 'config.json').write_text(json.dumps(config))
  with pytest.raises(ValueError, match=message):
    read_hf_gpt2(str(folder))


def test_missing_and_misshapen_weights_are_errors(tmp_path):
  folder = tmp_path / 'hf'
  _hf_model(folder)
  config = json.loads((folder / 'config.json').read_text())
  (folder / 'config.json').write_text(json.dumps(dict(config, n_layer=3)))
  with pytest.raises(CheckpointError, match=r"missing tensors \['h.2.attn.c_attn.bias'"):
    read_hf_gpt2(str(folder))
  (folder / 'config.json').write_text(json.dumps(dict(config, n_inner=64)))
  with pytest.raises(CheckpointError, match=r'h.0.mlp.c_fc.weight: \(32, 128\), expected '
                     r'\(32, 64\)'):
    read_hf_gpt2(str(folder))


def test_sites_and_a_lora_delta_attach():
  config = GPT2Config(**SMALL)
  tokens = jnp.asarray(np.random.RandomState(0).randint(0, VOCAB, (2, 5)))
  recorder = Recorder(('attention', 'attention_scores', 'mlp', 'dense'))
  jax.eval_shape(lambda: GPT2LM(config, deltas=(recorder,)).init(jax.random.PRNGKey(0),
                                                                  tokens))
  by_site = {}
  for site, path in recorder.calls:
    by_site.setdefault(site, []).append(path)
  layers = ['decoder/layers_0', 'decoder/layers_1']
  assert by_site['attention'] == [f'{p}/self_attention' for p in layers]
  assert by_site['attention_scores'] == by_site['attention']
  assert by_site['mlp'] == [f'{p}/mlp' for p in layers]
  assert by_site['dense'][:6] == [f'{layers[0]}/self_attention/{n}'
                                  for n in ('query', 'key', 'value', 'out')] + [
                                      f'{layers[0]}/mlp/wi', f'{layers[0]}/mlp/wo']

  # LoRA's default targets (query and value of every self-attention) match GPT-2's paths,
  # and a zero-initialised update leaves the logits as they are.
  lora = GPT2LM(config, deltas=(LoRA(rank=2),))
  variables = nn.unbox(lora.init(jax.random.PRNGKey(0), tokens))
  assert sorted(variables['lora']['decoder']['layers_0']['self_attention']) == ['query',
                                                                                'value']
  plain = GPT2LM(config).apply({'params': variables['params']}, tokens)
  np.testing.assert_allclose(lora.apply(variables, tokens), plain, atol=1e-6)


def test_too_long_inputs_are_an_error():
  config = GPT2Config(**dict(SMALL, n_positions=4))
  with pytest.raises(ValueError, match='longer than n_positions 4'):
    jax.eval_shape(lambda: GPT2LM(config).init(jax.random.PRNGKey(0),
                                               jnp.zeros((1, 5), jnp.int32)))


# -- the vocabulary -----------------------------------------------------------
TEXTS = ['Hello world, hello words!', '  leading and trailing spaces  ',
         'naïve café — 東京 🙂', 'tabs\tand\nnewlines\n\n', 'a', '']


@pytest.fixture(scope='module')
def vocab_folder(tmp_path_factory):
  """A tiny GPT-2-style tokenizer: byte-level BPE trained here, EOS as the last id."""
  folder = tmp_path_factory.mktemp('gpt2_vocab')
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(TEXTS * 3 + ['hello hello world world the the'], vocab_size=300,
                          min_frequency=1, show_progress=False)
  bpe.save_model(str(folder))
  vocab = json.loads((folder / 'vocab.json').read_text())
  vocab['<|endoftext|>'] = len(vocab)
  (folder / 'vocab.json').write_text(json.dumps(vocab))
  return folder


def test_vocabulary_round_trips_and_matches_hugging_face(vocab_folder):
  vocabulary = GPT2Vocabulary(str(vocab_folder))
  reference = transformers.GPT2TokenizerFast(vocab=str(vocab_folder / 'vocab.json'),
                                             merges=str(vocab_folder / 'merges.txt'))
  vocab_size = len(json.loads((vocab_folder / 'vocab.json').read_text()))
  assert vocabulary.vocab_size == vocab_size
  assert vocabulary.eos_id == vocabulary.pad_id == vocab_size - 1
  assert vocabulary.unk_id is None
  for text in TEXTS:
    ids = vocabulary.encode(text)
    assert ids == reference.encode(text), text
    assert vocabulary.decode(ids) == text
  assert len(vocabulary.encode('hello world')) < len('hello world')  # merges apply
  # EOS written in text is one token; decoding stops at the first EOS and drops it.
  eos = vocabulary.eos_id
  assert vocabulary.encode('a<|endoftext|>b') == (
      vocabulary.encode('a') + [eos] + vocabulary.encode('b'))
  assert vocabulary.decode(vocabulary.encode('hi') + [eos] + vocabulary.encode('no')) == 'hi'
  assert vocabulary == GPT2Vocabulary(str(vocab_folder))


def test_vocabulary_in_tensorflow(vocab_folder):
  vocabulary = GPT2Vocabulary(str(vocab_folder))
  dataset = tf.data.Dataset.from_tensor_slices(TEXTS).map(vocabulary.encode_tf)
  encoded = [ids.numpy().tolist() for ids in dataset]
  assert encoded == [vocabulary.encode(text) for text in TEXTS]
  eos = vocabulary.eos_id
  width = max(map(len, encoded)) + 2
  batch = [ids + [eos] + vocabulary.encode('x') * (width - len(ids) - 1) for ids in encoded]
  decoded = vocabulary.decode_tf(tf.constant(batch, tf.int32)).numpy()
  assert [t.decode('utf-8') for t in decoded] == TEXTS
  assert vocabulary.decode_tf(tf.constant(batch[0], tf.int32)).numpy().decode() == TEXTS[0]


def test_vocabulary_errors(tmp_path, vocab_folder):
  with pytest.raises(ValueError, match='merges.txt.*missing'):
    (tmp_path / 'vocab.json').write_text('{}')
    GPT2Vocabulary(str(tmp_path))
  with pytest.raises(ValueError, match="no '<\\|end_of_text\\|>' token"):
    GPT2Vocabulary(str(vocab_folder), eos_token='<|end_of_text|>')
