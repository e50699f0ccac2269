"""What each method adds beyond the contract: placement, init, merging, bad input."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import deltas
from prompt_tuning.deltas import paths
from prompt_tuning.model import T5Config, Transformer
from prompt_tuning.train.method import Method

CONFIG = T5Config(vocab_size=128, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                  num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0)
RNG = np.random.RandomState(0)
ENC = jnp.asarray(RNG.randint(2, 128, (3, 7)))
DEC = jnp.asarray(RNG.randint(2, 128, (3, 4)))


def _init(*delta_list):
  model = Transformer(CONFIG, deltas=tuple(delta_list))
  return model, jax.tree_util.tree_map(np.asarray, nn.unbox(
      model.init(jax.random.PRNGKey(0), ENC, DEC, DEC)))


def _logits(model, variables):
  return np.asarray(model.apply(variables, ENC, DEC, DEC))


def _paths(variables, collection):
  return sorted(paths.flatten_tree({collection: variables[collection]}))


def _randomized(variables, collection, seed=1):
  """`variables` with the collection's leaves replaced by random non-zero values."""
  rng = np.random.RandomState(seed)
  randomize = lambda x: rng.normal(0, 0.5, np.shape(x)).astype(np.float32)
  return {**variables, collection: jax.tree_util.tree_map(randomize, variables[collection])}


PLAIN_MODEL, PLAIN = _init()
PLAIN_LOGITS = _logits(PLAIN_MODEL, PLAIN)


def _with_base(variables):
  """The delta's variables on the plain model's backbone (same random params)."""
  return {**variables, 'params': PLAIN['params']}


# -- LoRA --------------------------------------------------------------------------
def test_lora_targets_query_and_value_of_every_attention_and_starts_as_the_base():
  model, variables = _init(deltas.LoRA(rank=2))
  leaves = _paths(variables, 'lora')
  kinds = ('encoder/layers_{}/attention', 'decoder/layers_{}/self_attention',
           'decoder/layers_{}/encoder_decoder_attention')
  assert leaves == sorted(f'lora/{kind.format(i)}/{proj}/lora_{f}' for kind in kinds
                          for i in (0, 1) for proj in ('query', 'value') for f in 'ab')
  a = variables['lora']['encoder']['layers_0']['attention']['query']['lora_a']
  assert a.shape == (16, 2) and np.abs(a).max() <= 1 / np.sqrt(16) and np.abs(a).max() > 0
  np.testing.assert_allclose(_logits(model, _with_base(variables)), PLAIN_LOGITS, rtol=1e-6)


@pytest.mark.parametrize('rslora', [False, True])
def test_lora_merged_into_the_kernels_serves_the_same_logits(rslora):
  delta = deltas.LoRA(rank=4, alpha=6.0, use_rslora=rslora)
  model, variables = _init(delta)
  variables = _with_base(_randomized(variables, 'lora'))
  merged = delta.merge(variables)
  assert set(merged) == {'params'}
  np.testing.assert_allclose(_logits(PLAIN_MODEL, merged), _logits(model, variables),
                             rtol=1e-4, atol=1e-4)
  # By hand: one merged kernel is W + (alpha / r or alpha / sqrt r) A B.
  lora = variables['lora']['encoder']['layers_1']['attention']['value']
  scale = 6.0 / (2.0 if rslora else 4.0)
  np.testing.assert_allclose(
      merged['params']['encoder']['layers_1']['attention']['value']['kernel'],
      PLAIN['params']['encoder']['layers_1']['attention']['value']['kernel'] +
      scale * lora['lora_a'] @ lora['lora_b'], rtol=1e-5, atol=1e-6)


def test_lora_bad_input_is_named():
  with pytest.raises(ValueError, match='rank 32 is larger than the projection.*16 -> 16'):
    _init(deltas.LoRA(rank=32))
  method = Method(CONFIG, deltas=(deltas.LoRA(targets='encoder/layers_0/attn/query'),))
  _, variables = _init(*method.deltas)
  with pytest.raises(ValueError, match="LoRA created no variables: the LoRA targets "
                                       "'encoder/layers_0/attn/query' match no dense"):
    method.split(variables)
  with pytest.raises(ValueError, match='rank must be at least 1'):
    deltas.LoRA(rank=0)


# -- IA3 ---------------------------------------------------------------------------
def test_ia3_scales_keys_values_and_the_mlp_input_and_starts_as_the_base():
  model, variables = _init(deltas.IA3())
  shapes = {p: v.shape for p, v in paths.flatten_tree(variables['ia3']).items()}
  assert shapes['encoder/layers_0/attention/key/scale'] == (16,)   # heads * head_dim
  assert shapes['decoder/layers_1/encoder_decoder_attention/value/scale'] == (16,)
  assert shapes['decoder/layers_0/mlp/wo/scale'] == (32,)          # the MLP's hidden width
  assert len(shapes) == 2 * 2 + 2 * 4 + 4  # k, v per attention; wo per layer
  np.testing.assert_allclose(_logits(model, _with_base(variables)), PLAIN_LOGITS, rtol=1e-6)


def test_ia3_zero_value_scale_silences_attention_values():
  # Zero value scales make every attention output zero: the same as a backbone
  # whose value kernels are zero.
  model, variables = _init(deltas.IA3(targets=r'.*/value', feedforward='none'))
  zeroed = jax.tree_util.tree_map(np.zeros_like, variables['ia3'])
  params = paths.flatten_tree(PLAIN['params'])
  params = {p: (np.zeros_like(v) if p.endswith('value/kernel') else v) for p, v in params.items()}
  expected = _logits(PLAIN_MODEL, {'params': paths.unflatten_tree(params)})
  np.testing.assert_allclose(_logits(model, {'params': PLAIN['params'], 'ia3': zeroed}),
                             expected, rtol=1e-5, atol=1e-6)


# -- adapters ----------------------------------------------------------------------
@pytest.mark.parametrize('placement, where', [
    ('houlsby', {'attention', 'self_attention', 'encoder_decoder_attention', 'mlp'}),
    ('pfeiffer', {'mlp'})])
def test_adapters_sit_after_their_sublayers(placement, where):
  _, variables = _init(deltas.Adapters(placement=placement, reduction_factor=4))
  found = {p.split('/')[3] for p in _paths(variables, 'adapters')}
  assert found == where
  layer = 'mlp'
  down = variables['adapters']['encoder']['layers_0'][layer]['down_kernel']
  assert down.shape == (16, 4) and 0.005 < down.std() < 0.04  # N(0, 0.02)


def test_adapters_with_a_zero_up_projection_start_as_the_base():
  model, variables = _init(deltas.Adapters(zero_init_up=True, reduction_factor=4))
  np.testing.assert_allclose(_logits(model, _with_base(variables)), PLAIN_LOGITS, rtol=1e-6)
  model, variables = _init(deltas.Adapters(reduction_factor=4))  # "bert" init: not identity
  assert not np.allclose(_logits(model, _with_base(variables)), PLAIN_LOGITS, rtol=1e-6)


def test_adapters_bad_input_is_named():
  with pytest.raises(ValueError, match="Unknown adapter placement 'both'"):
    deltas.Adapters(placement='both')
  with pytest.raises(ValueError, match='reduction_factor 32 leaves no bottleneck'):
    _init(deltas.Adapters(reduction_factor=32))


# -- BitFit and norm tuning --------------------------------------------------------
def test_bitfit_adds_zero_biases_where_targeted():
  model, variables = _init(deltas.BitFit(targets=r'.*/value'))
  assert all(p.endswith('value/bias') for p in _paths(variables, 'bitfit'))
  assert len(_paths(variables, 'bitfit')) == 6  # one per attention
  np.testing.assert_allclose(_logits(model, _with_base(variables)), PLAIN_LOGITS, rtol=1e-6)


def test_norm_tuning_trains_only_the_norm_scales():
  method = Method(CONFIG, deltas=(deltas.NormTuning(),))
  _, variables = _init(*method.deltas)
  frozen, trainable = method.split(variables)
  trained = sorted(paths.flatten_tree(trainable))
  # 2 per encoder layer, 3 per decoder layer, and the two final norms.
  assert len(trained) == 2 * 2 + 2 * 3 + 2
  assert all(p.startswith('params/') and p.endswith('norm/scale') for p in trained)
  assert 'params' in frozen and set(variables) == {'params'}
