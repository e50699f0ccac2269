"""Hugging Face T5 folders: mapping checked against transformers' own tensors."""
import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
# pylint: disable=g-import-not-at-top
from safetensors.torch import load_file, save_file

from prompt_tuning.model.hf_checkpoint import read_hf_t5, write_hf_t5
from prompt_tuning.model.param_shapes import CheckpointError, flatten_tree
from prompt_tuning.model.pretrained import load_pretrained

VOCAB = 96
HF_KWARGS = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                 num_decoder_layers=3, num_heads=4,
                 feed_forward_proj='gated-gelu', tie_word_embeddings=False,
                 relative_attention_num_buckets=8,
                 relative_attention_max_distance=20)


def _model(seed=0, **overrides):
  torch.manual_seed(seed)
  config = transformers.T5Config(**dict(HF_KWARGS, **overrides))
  return transformers.T5ForConditionalGeneration(config).eval()


def _state(model):
  return {k: v.detach().float().numpy() for k, v in model.state_dict().items()}


@pytest.fixture(scope='module')
def gated(tmp_path_factory):
  model = _model()
  folder = tmp_path_factory.mktemp('hf') / 'gated'
  model.save_pretrained(folder)
  return model, folder


def _expected_pairs(n_enc, n_dec, wi=('wi_0', 'wi_1')):
  """(T5X path, HF name, transposed), written out independently of the code."""
  pairs = [('token_embedder/embedding', 'shared.weight', False)]
  qkvo = dict(query='q', key='k', value='v', out='o')
  for stack, n in (('encoder', n_enc), ('decoder', n_dec)):
    pairs += [(f'{stack}/relpos_bias/rel_embedding',
               f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight', True),
              (f'{stack}/{stack}_norm/scale', f'{stack}.final_layer_norm.weight', False)]
    for i in range(n):
      blk, lyr = f'{stack}.block.{i}.layer', f'{stack}/layers_{i}'
      attn = ([('attention', '0.SelfAttention')] if stack == 'encoder' else
              [('self_attention', '0.SelfAttention'),
               ('encoder_decoder_attention', '1.EncDecAttention')])
      for ours, theirs in attn:
        pairs += [(f'{lyr}/{ours}/{k}/kernel', f'{blk}.{theirs}.{v}.weight', True)
                  for k, v in qkvo.items()]
      mlp = 1 if stack == 'encoder' else 2
      pairs += [(f'{lyr}/mlp/{w}/kernel', f'{blk}.{mlp}.DenseReluDense.{w}.weight', True)
                for w in wi + ('wo',)]
      norms = (['pre_attention_layer_norm', 'pre_mlp_layer_norm']
               if stack == 'encoder' else
               ['pre_self_attention_layer_norm', 'pre_cross_attention_layer_norm',
                'pre_mlp_layer_norm'])
      pairs += [(f'{lyr}/{norm}/scale', f'{blk}.{j}.layer_norm.weight', False)
                for j, norm in enumerate(norms)]
  return pairs


def _assert_mapped(params, state, n_enc=2, n_dec=3, wi=('wi_0', 'wi_1')):
  flat = flatten_tree(params)
  pairs = _expected_pairs(n_enc, n_dec, wi)
  for ours, theirs, transposed in pairs:
    want = state[theirs].T if transposed else state[theirs]
    assert flat[ours].dtype == np.float32
    np.testing.assert_array_equal(flat[ours], want, err_msg=ours)
  return set(flat) - {ours for ours, _, _ in pairs}


def test_safetensors_folder_maps_every_tensor(gated):
  model, folder = gated
  config, params = load_pretrained(str(folder))
  assert (config.vocab_size, config.emb_dim, config.head_dim, config.mlp_dim,
          config.num_heads) == (VOCAB, 32, 8, 48, 4)
  assert (config.num_encoder_layers, config.num_decoder_layers) == (2, 3)
  assert (config.relative_attention_num_buckets,
          config.relative_attention_max_distance) == (8, 20)
  assert config.mlp_activations == ('gelu', 'linear')
  assert config.dropout_rate == pytest.approx(0.1)
  # T5.1.1 logits are unscaled, so never `logits_via_embedding`; transformers
  # 5 ties lm_head to shared anyway, 4 keeps its own: both are lm_head.weight.
  assert not config.logits_via_embedding
  state = _state(model)
  rest = _assert_mapped(params, state)
  assert rest == {'decoder/logits_dense/kernel'}
  np.testing.assert_array_equal(params['decoder']['logits_dense']['kernel'],
                                state['lm_head.weight'].T)


def test_pytorch_bin_loads_the_same(gated, tmp_path):
  model, folder = gated
  shutil.copy(folder / 'config.json', tmp_path / 'config.json')
  # transformers 5 ignores safe_serialization=False: write the pickle directly
  # (it holds the tied copies: embed_tokens and lm_head).
  torch.save(model.state_dict(), tmp_path / 'pytorch_model.bin')
  _, want = read_hf_t5(str(folder))
  _, got = load_pretrained(str(tmp_path))
  for name, value in flatten_tree(want).items():
    np.testing.assert_array_equal(flatten_tree(got)[name], value, err_msg=name)


def test_sharded_bfloat16_safetensors(tmp_path):
  model = _model(seed=1).to(torch.bfloat16)
  model.save_pretrained(tmp_path, max_shard_size='20KB')
  assert len(list(tmp_path.glob('model-*-of-*.safetensors'))) > 1
  _, params = load_pretrained(str(tmp_path))
  _assert_mapped(params, _state(model))


def test_original_t5_ties_and_scales_logits(tmp_path):
  # Original T5: relu MLP, one embedding for input and output (scaled).
  kwargs = {k: v for k, v in HF_KWARGS.items() if k != 'tie_word_embeddings'}
  torch.manual_seed(2)
  model = transformers.T5ForConditionalGeneration(
      transformers.T5Config(**dict(kwargs, feed_forward_proj='relu')))
  model.save_pretrained(tmp_path)
  config, params = load_pretrained(str(tmp_path))
  assert config.mlp_activations == ('relu',) and config.logits_via_embedding
  assert _assert_mapped(params, _state(model), wi=('wi',)) == set()


@pytest.mark.parametrize('scaled', [False, True])
def test_untied_head(gated, tmp_path, scaled):
  model, folder = gated
  state = load_file(folder / 'model.safetensors')
  state['lm_head.weight'] = torch.randn(VOCAB, 32)
  save_file(state, tmp_path / 'model.safetensors', metadata={'format': 'pt'})
  hf = json.loads((folder / 'config.json').read_text())
  hf.pop('scale_decoder_outputs', None)
  hf['tie_word_embeddings'] = False  # What transformers 4 wrote for T5.1.1.
  if scaled:  # Untied yet scaled: T5X has no such switch, the factor folds in.
    hf['scale_decoder_outputs'] = True
  (tmp_path / 'config.json').write_text(json.dumps(hf))
  config, params = load_pretrained(str(tmp_path))
  assert not config.logits_via_embedding
  kernel = state['lm_head.weight'].numpy().T * (32**-0.5 if scaled else 1)
  np.testing.assert_allclose(params['decoder']['logits_dense']['kernel'],
                             kernel, rtol=1e-6)
  if scaled:
    return
  # Exported again, transformers keeps the head apart from the embedding.
  write_hf_t5(config, params, str(tmp_path / 'out'))
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(
      tmp_path / 'out')
  np.testing.assert_array_equal(reloaded.lm_head.weight.detach().numpy(),
                                state['lm_head.weight'].numpy())
  np.testing.assert_array_equal(reloaded.shared.weight.detach().numpy(),
                                state['shared.weight'].numpy())
  assert not getattr(reloaded.config, 'scale_decoder_outputs',
                     reloaded.config.tie_word_embeddings)


@pytest.mark.parametrize('original_t5', [False, True])
def test_write_hf_round_trips_through_transformers(tmp_path, original_t5):
  if original_t5:
    kwargs = {k: v for k, v in HF_KWARGS.items() if k != 'tie_word_embeddings'}
    torch.manual_seed(3)
    model = transformers.T5ForConditionalGeneration(
        transformers.T5Config(**dict(kwargs, feed_forward_proj='relu'))).eval()
  else:
    model = _model(seed=3)
  model.save_pretrained(tmp_path / 'src')
  config, params = read_hf_t5(str(tmp_path / 'src'))
  write_hf_t5(config, params, str(tmp_path / 'out'))
  config2, params2 = read_hf_t5(str(tmp_path / 'out'))
  assert config2 == config
  flat2 = flatten_tree(params2)
  for name, value in flatten_tree(params).items():
    np.testing.assert_array_equal(flat2[name], value, err_msg=name)
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(
      tmp_path / 'out').eval()
  want, got = _state(model), _state(reloaded)
  assert sorted(got) == sorted(want)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  # Same numerics, including whether logits are scaled by 1/sqrt(d).
  ids = torch.tensor([[5, 7, 9, 1]])
  with torch.no_grad():
    a = model(input_ids=ids, decoder_input_ids=ids).logits
    b = reloaded(input_ids=ids, decoder_input_ids=ids).logits
  np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)


# Errors.


def test_config_without_weights(gated, tmp_path):
  shutil.copy(gated[1] / 'config.json', tmp_path / 'config.json')
  with pytest.raises(CheckpointError, match='has no weights'):
    load_pretrained(str(tmp_path))


def test_weights_without_config(gated, tmp_path):
  shutil.copy(gated[1] / 'model.safetensors', tmp_path / 'model.safetensors')
  with pytest.raises(CheckpointError, match='no config.json'):
    load_pretrained(str(tmp_path))


def _write_state(folder, gated, state):
  shutil.copy(gated[1] / 'config.json', folder / 'config.json')
  save_file({k: v.contiguous() for k, v in state.items()},
            folder / 'model.safetensors', metadata={'format': 'pt'})


def test_missing_and_unknown_tensors_are_named(gated, tmp_path):
  state = load_file(gated[1] / 'model.safetensors')
  del state['decoder.block.2.layer.1.EncDecAttention.k.weight']
  state['encoder.block.0.layer.0.SelfAttention.q.bias'] = torch.zeros(32)
  _write_state(tmp_path, gated, state)
  with pytest.raises(CheckpointError) as e:
    load_pretrained(str(tmp_path))
  message = str(e.value)
  assert ("missing tensors: ['decoder.block.2.layer.1.EncDecAttention.k.weight']"
          in message)
  assert "unknown tensors: ['encoder.block.0.layer.0.SelfAttention.q.bias']" in message


def test_wrong_shape_is_named(gated, tmp_path):
  state = load_file(gated[1] / 'model.safetensors')
  state['encoder.block.1.layer.1.DenseReluDense.wo.weight'] = torch.zeros(32, 40)
  _write_state(tmp_path, gated, state)
  with pytest.raises(CheckpointError,
                     match=r'encoder/layers_1/mlp/wo/kernel: got \[40, 32\], '
                     r'expected \[48, 32\]'):
    load_pretrained(str(tmp_path))


def test_corrupt_safetensors(gated, tmp_path):
  shutil.copy(gated[1] / 'config.json', tmp_path / 'config.json')
  (tmp_path / 'model.safetensors').write_bytes(b'\x10\x00' * 50)
  with pytest.raises(CheckpointError, match='model.safetensors'):
    load_pretrained(str(tmp_path))


def test_write_bfloat16_halves_the_file_and_rounds_to_nearest(gated, tmp_path):
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  config, params = read_hf_t5(str(gated[1]))
  write_hf_t5(config, params, str(tmp_path / 'f32'))
  write_hf_t5(config, params, str(tmp_path / 'bf16'), dtype='bfloat16')
  size = lambda d: (tmp_path / d / 'model.safetensors').stat().st_size
  assert 0.45 < size('bf16') / size('f32') < 0.55
  _, loaded = load_pretrained(str(tmp_path / 'bf16'))
  for name, value in flatten_tree(params).items():
    rounded = np.asarray(value, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(flatten_tree(loaded)[name], rounded, err_msg=name)
