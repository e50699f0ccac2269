"""The Flax T5.1.1 against the T5X tree, hand-worked numerics and the spec's counts."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.serialization import msgpack_restore
from flax.traverse_util import flatten_dict

from prompt_tuning import gin_utils
from prompt_tuning.model import SIZES, T5Config, Transformer, layers, num_parameters

TINY_T5X = T5Config(vocab_size=32128, emb_dim=4, num_heads=2, head_dim=2, mlp_dim=8,
                    num_encoder_layers=2, num_decoder_layers=2,
                    relative_attention_num_buckets=4, dropout_rate=0.0)
SMALL_TEST = T5Config(vocab_size=128, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=48,
                      num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0)


def _abstract_params(config, enc_len=7, dec_len=5):
  tokens = lambda n: jnp.ones((2, n), jnp.int32)
  variables = jax.eval_shape(lambda: Transformer(config).init(
      jax.random.PRNGKey(0), tokens(enc_len), tokens(dec_len), tokens(dec_len)))
  return variables


def test_parameter_tree_matches_the_real_t5x_checkpoint(shared_data):
  raw = (shared_data / 't5x_t5_1_1_tiny/checkpoint_3/checkpoint').read_bytes()
  target = msgpack_restore(raw)['optimizer']['target']
  is_spec = lambda _, x: isinstance(x, dict) and 'driver' in x
  expected = {'/'.join(k): tuple(v['metadata']['shape']) if isinstance(v, dict) else v.shape
              for k, v in flatten_dict(target, is_leaf=is_spec).items()}
  ours = {'/'.join(k): v.shape
          for k, v in flatten_dict(nn.unbox(_abstract_params(TINY_T5X)['params'])).items()}
  assert ours == expected


def test_logical_axes_are_t5x_names():
  specs = flatten_dict(nn.get_partition_spec(_abstract_params(SMALL_TEST))['params'])
  specs = {'/'.join(k): tuple(v) for k, v in specs.items()}
  expected = {
      'token_embedder/embedding': ('vocab', 'embed'),
      'encoder/relpos_bias/rel_embedding': ('heads', 'relpos_buckets'),
      'encoder/layers_0/attention/query/kernel': ('embed', 'joined_kv'),
      'encoder/layers_1/attention/out/kernel': ('joined_kv', 'embed'),
      'encoder/layers_0/mlp/wi_0/kernel': ('embed', 'mlp'),
      'encoder/layers_0/mlp/wi_1/kernel': ('embed', 'mlp'),
      'encoder/layers_0/mlp/wo/kernel': ('mlp', 'embed'),
      'encoder/encoder_norm/scale': ('embed',),
      'decoder/layers_1/encoder_decoder_attention/key/kernel': ('embed', 'joined_kv'),
      'decoder/layers_0/pre_cross_attention_layer_norm/scale': ('embed',),
      'decoder/logits_dense/kernel': ('embed', 'vocab'),
  }
  for path, axes in expected.items():
    assert specs[path] == axes, path
  assert all(axes for axes in specs.values()), 'every parameter carries axes'


def test_small_has_the_published_parameter_count():
  assert num_parameters(SIZES['small']) == 76_961_152
  tree = nn.unbox(_abstract_params(SIZES['small'])['params'])
  assert sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)) == 76_961_152


@pytest.mark.parametrize('size', ['tiny', 'small', 'base', 'large', 'xl', 'xxl'])
def test_size_gin_files(size):
  gin_utils.parse_gin([f'gin/models/t5_1_1/{size}.gin'])
  # The model files leave dropout off; runs turn it on through DROPOUT_RATE.
  # Activations are bfloat16 on accelerators, as T5X runs, and float32 on CPU.
  activations = 'float32' if jax.default_backend() == 'cpu' else 'bfloat16'
  assert gin_utils.macro('MODEL_CONFIG') == SIZES[size].replace(dropout_rate=0.0,
                                                                dtype=activations)


def test_rms_norm_hand_worked():
  x = jnp.array([[3.0, 4.0]])
  y = layers.RMSNorm().apply({'params': {'scale': jnp.array([1.0, 2.0])}}, x)
  rms = math.sqrt((9 + 16) / 2 + 1e-6)
  np.testing.assert_allclose(y, [[3 / rms, 8 / rms]], rtol=1e-6)


def test_relative_position_buckets_hand_worked():
  bucket = lambda rel, bidi: int(layers.relative_position_bucket(
      np.array([rel], np.int32), bidi, 32, 128)[0])
  # memory - query = -n: a key n positions before the query.
  assert [bucket(-n, True) for n in (0, 1, 7, 8, 16, 127, 500)] == [0, 1, 7, 8, 10, 15, 15]
  # Keys after the query use the upper half: 16 + the same rule.
  assert [bucket(n, True) for n in (1, 7, 8, 16)] == [17, 23, 24, 26]
  # Causal: the future collapses to 0; 16 exact buckets, then log up to 128.
  assert [bucket(n, False) for n in (3, 0)] == [0, 0]
  assert [bucket(-n, False) for n in (15, 16, 32, 64, 128, 1000)] == [15, 16, 21, 26, 31, 31]


def _random_batch(rng, vocab, batch=3, enc_len=11, dec_len=6):
  enc = rng.randint(1, vocab, (batch, enc_len))
  enc[1, 7:] = 0
  tgt = rng.randint(1, vocab, (batch, dec_len))
  tgt[2, 3:] = 0
  dec_in = np.concatenate([np.zeros((batch, 1), int), tgt[:, :-1]], 1)
  return jnp.array(enc), jnp.array(dec_in), jnp.array(tgt)


def test_cached_decoding_matches_teacher_forcing():
  model = Transformer(SMALL_TEST)
  enc, dec_in, tgt = _random_batch(np.random.RandomState(1), SMALL_TEST.vocab_size)
  params = model.init(jax.random.PRNGKey(0), enc, dec_in, tgt)['params']
  full = model.apply({'params': params}, enc, dec_in, jnp.ones_like(tgt))
  encoded = model.apply({'params': params}, enc, method=Transformer.encode)
  length = dec_in.shape[1]
  cache = model.init(jax.random.PRNGKey(0), enc, dec_in, tgt, decode=True,
                     max_decode_length=length)['cache']
  steps = []
  for i in range(length):
    logits, mutated = model.apply(
        {'params': params, 'cache': cache}, encoded, enc, dec_in[:, i:i + 1],
        decode=True, max_decode_length=length, method=Transformer.decode,
        mutable=['cache'])
    cache = mutated['cache']
    steps.append(logits[:, 0])
  np.testing.assert_allclose(np.stack(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_real_positions():
  model = Transformer(SMALL_TEST)
  enc, dec_in, tgt = _random_batch(np.random.RandomState(2), SMALL_TEST.vocab_size)
  params = model.init(jax.random.PRNGKey(0), enc, dec_in, tgt)['params']
  logits = model.apply({'params': params}, enc, dec_in, tgt)
  # Example 1 has 7 real input tokens: the same example cut to 7 must agree.
  short = model.apply({'params': params}, enc[1:2, :7], dec_in[1:2], tgt[1:2])
  np.testing.assert_allclose(logits[1:2], short, atol=1e-5)


def test_bfloat16_activations_keep_float32_logits_and_stay_close():
  model32 = Transformer(SMALL_TEST)
  model16 = Transformer(SMALL_TEST.replace(dtype='bfloat16'))
  enc, dec_in, tgt = _random_batch(np.random.RandomState(3), SMALL_TEST.vocab_size)
  params = model32.init(jax.random.PRNGKey(0), enc, dec_in, tgt)['params']
  l32 = model32.apply({'params': params}, enc, dec_in, tgt)
  l16 = model16.apply({'params': params}, enc, dec_in, tgt)
  assert l16.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(l16 - l32))) < 0.05 * float(jnp.max(jnp.abs(l32)))


def test_dropout_is_active_only_when_enabled():
  model = Transformer(SMALL_TEST.replace(dropout_rate=0.5))
  enc, dec_in, tgt = _random_batch(np.random.RandomState(4), SMALL_TEST.vocab_size)
  params = model.init(jax.random.PRNGKey(0), enc, dec_in, tgt)['params']
  run = lambda seed, on: model.apply({'params': params}, enc, dec_in, tgt, enable_dropout=on,
                                     rngs={'dropout': jax.random.PRNGKey(seed)})
  np.testing.assert_array_equal(run(0, False), run(1, False))
  assert not np.allclose(run(0, True), run(1, True))


def test_original_t5_variant_ties_logits_and_uses_relu():
  config = SMALL_TEST.replace(logits_via_embedding=True, mlp_activations=('relu',))
  tree = flatten_dict(nn.unbox(_abstract_params(config)['params']))
  names = {'/'.join(k) for k in tree}
  assert 'decoder/logits_dense/kernel' not in names
  assert 'encoder/layers_0/mlp/wi/kernel' in names
  assert 'encoder/layers_0/mlp/wi_0/kernel' not in names
