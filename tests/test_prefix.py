"""Prefix tuning / deep prompts (prompt_tuning/deltas/prefix.py).

* Against PEFT's PREFIX_TUNING on transformers' T5 (same random weights,
  written with `write_hf_t5`): PEFT prefixes decoder self-attention only, as
  n past keys, so the prefix gets the relative position bias of positions
  0..n-1 with the sequence from n: `PrefixTuning(placements=('decoder',),
  position_bias='past')` gives its logits, plain and reparameterized
  (PEFT's prefix_projection). Padded inputs and targets are in the batch;
  logits are compared at real targets, as in test_peft_interop (T5X masks
  padded queries, Hugging Face does not: padded rows differ with or without
  a prefix).
* One encoder attention recomputed in numpy, relative buckets by hand, for
  both position_bias modes.
* Each placement changes what it should and nothing else; cached decoding
  equals teacher forcing for every placement and mode; materialized
  variables serve what the reparameterization trains; banks; configs; errors.
"""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.deltas import base, paths
from prompt_tuning.deltas.prefix import PrefixTuning
from prompt_tuning.infer import bank as bank_lib
from prompt_tuning.infer import predict
from prompt_tuning.model import T5Config, Transformer
from prompt_tuning.model.hf_checkpoint import write_hf_t5
from prompt_tuning.model.sites import module_path

from test_decoding import greedy_by_recomputing  # tests/, on the path as pytest's rootdir

# Heads x head width (24) != d_model (32), and 3 decoder layers against 2.
CONFIG = T5Config(vocab_size=64, emb_dim=32, num_heads=3, head_dim=8, mlp_dim=40,
                  num_encoder_layers=2, num_decoder_layers=3, dropout_rate=0.0,
                  relative_attention_num_buckets=8, relative_attention_max_distance=20)
N = 4


def _batch(config=CONFIG, inputs=(11, 6, 2), targets=(5, 3, 1)):
  rng = np.random.RandomState(0)
  enc = rng.randint(2, config.vocab_size, (len(inputs), max(inputs)))
  tgt = rng.randint(2, config.vocab_size, (len(targets), max(targets)))
  for i, (n, t) in enumerate(zip(inputs, targets)):
    enc[i, n:] = 0
    tgt[i, t:] = 0
  dec = np.concatenate([np.zeros_like(tgt[:, :1]), tgt[:, :-1]], 1)
  return enc, dec, tgt


BATCH = _batch()


def _params(config=CONFIG):
  tokens = jnp.ones((1, 4), jnp.int32)
  return jax.tree_util.tree_map(np.asarray, nn.unbox(Transformer(config).init(
      jax.random.PRNGKey(0), tokens, tokens, tokens)['params']))


@pytest.fixture(scope='module')
def params():
  return _params()


def _variables(delta, params, config=CONFIG, seed=1, std=0.5):
  """{'params', 'prefix'}: the delta's variables from init, every leaf random N(0, std)."""
  tokens = jnp.ones((1, 4), jnp.int32)
  created = nn.unbox(Transformer(config, deltas=(delta,)).init(
      jax.random.PRNGKey(seed), tokens, tokens, tokens)['prefix'])
  rng = np.random.RandomState(seed)
  prefix = jax.tree_util.tree_map(
      lambda x: rng.normal(0.0, std, np.shape(x)).astype(np.float32), created)
  return {'params': params, 'prefix': prefix}


def _logits(delta, variables, batch=BATCH, config=CONFIG):
  deltas = (delta,) if delta else ()
  return np.asarray(Transformer(config, deltas=deltas).apply(
      variables, *[jnp.asarray(x) for x in batch]))


def _encoded(delta, variables, batch=BATCH):
  deltas = (delta,) if delta else ()
  return np.asarray(Transformer(CONFIG, deltas=deltas).apply(
      variables, jnp.asarray(batch[0]), method=Transformer.encode))


# -- against PEFT -------------------------------------------------------------

def _peft_slots(num_layers):
  """The slots of PEFT's table [n, 2 * L, h, hd] that decoder layer i reads: (key, value).

  PEFT's get_prompt (SEQ_2_SEQ_LM) joins the table to itself (two transformer
  submodules, 4L slots) and hands layer i slots 4i..4i+3 as (self key, self
  value, cross key, cross value), then drops the cross-attention part. Layer i
  reads slots 4i and 4i + 1 modulo 2L: with an odd L each slot once; with an
  even L layers i and i + L/2 share a prefix and half the table is unused.
  """
  return [((4 * i) % (2 * num_layers), (4 * i + 1) % (2 * num_layers))
          for i in range(num_layers)]


def _peft_model(folder, config, **prefix_config):
  peft = pytest.importorskip('peft')
  transformers = pytest.importorskip('transformers')
  model = transformers.T5ForConditionalGeneration.from_pretrained(str(folder)).eval()
  # PEFT's defaults would take the encoder's layer count (num_hidden_layers)
  # and token_dim = d_model (head width d / h): neither fits CONFIG.
  settings = peft.PrefixTuningConfig(
      task_type='SEQ_2_SEQ_LM', num_virtual_tokens=N, num_layers=config.num_decoder_layers,
      token_dim=config.num_heads * config.head_dim, num_attention_heads=config.num_heads,
      **prefix_config)
  return peft.get_peft_model(model, settings).eval()


def _peft_logits(model, decoder_mask=False):
  torch = pytest.importorskip('torch')
  enc, dec, tgt = BATCH
  extra = {'decoder_attention_mask': torch.tensor(tgt > 0).long()} if decoder_mask else {}
  with torch.no_grad():
    return model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0).long(),
                 decoder_input_ids=torch.tensor(dec), **extra).logits.numpy()


def _assert_close(ours, theirs, base_logits, tolerance=1e-4):
  real = BATCH[2] > 0
  scale = np.abs(theirs[real]).max()
  error = np.abs(ours - theirs)[real].max()
  assert error <= tolerance * scale, f'max |diff| {error:.3g} vs max |logit| {scale:.3g}'
  assert np.abs(theirs - base_logits)[real].max() > 1e-2 * scale, 'the prefix changes nothing'


def _decoder_prefixes(variables):
  """[(key, value)] [n, h, hd] of every decoder self-attention, by layer."""
  keys = base.module_leaves(variables, 'prefix', 'prefix_key')
  values = base.module_leaves(variables, 'prefix', 'prefix_value')
  return [(keys[f'decoder/layers_{i}/self_attention'],
           values[f'decoder/layers_{i}/self_attention'])
          for i in range(CONFIG.num_decoder_layers)]


def test_decoder_prefix_equals_peft_prefix_tuning(params, tmp_path):
  torch = pytest.importorskip('torch')
  write_hf_t5(CONFIG, params, str(tmp_path / 't5'))
  delta = PrefixTuning(length=N, placements=('decoder',), position_bias='past')
  variables = _variables(delta, params)
  model = _peft_model(tmp_path / 't5', CONFIG)
  with model.disable_adapter():
    base_logits = _peft_logits(model)
  h, hd, layers = CONFIG.num_heads, CONFIG.head_dim, CONFIG.num_decoder_layers
  table = np.zeros((N, 2 * layers, h, hd), np.float32)
  for (key, value), (key_slot, value_slot) in zip(_decoder_prefixes(variables),
                                                   _peft_slots(layers)):
    table[:, key_slot], table[:, value_slot] = key, value
  with torch.no_grad():
    model.prompt_encoder['default'].embedding.weight.copy_(torch.tensor(table.reshape(N, -1)))
  # The layout is PEFT's: its cache holds our prefixes, [1, h, n, hd] per layer.
  cache = model.get_prompt(1).self_attention_cache
  for layer, (key, value) in zip(cache.layers, _decoder_prefixes(variables)):
    np.testing.assert_array_equal(layer.keys[0].detach().numpy(), key.transpose(1, 0, 2))
    np.testing.assert_array_equal(layer.values[0].detach().numpy(), value.transpose(1, 0, 2))

  ours = _logits(delta, variables)
  _assert_close(ours, _peft_logits(model), base_logits)
  # PEFT prepends ones to a decoder mask; the real targets do not change.
  _assert_close(ours, _peft_logits(model, decoder_mask=True), base_logits)
  # Zero relative bias on the prefix is another function: the check can fail.
  unbiased = _logits(PrefixTuning(length=N, placements=('decoder',)), variables)
  assert np.abs(unbiased - ours)[BATCH[2] > 0].max() > 1e-2 * np.abs(ours).max()


def test_reparameterized_prefix_equals_peft_prefix_projection(tmp_path):
  """P-tuning v2's MLP against PEFT's prefix_projection, trained and materialized.

  PEFT's embedding is token_dim = h * hd wide and ours d_model (P-tuning v2):
  the same function only when h * hd = d, so this model has d = 24.
  """
  torch = pytest.importorskip('torch')
  config = CONFIG.replace(emb_dim=CONFIG.num_heads * CONFIG.head_dim)
  params = _params(config)
  write_hf_t5(config, params, str(tmp_path / 't5'))
  delta = PrefixTuning(length=N, placements=('decoder',), position_bias='past',
                       reparameterize=True, hidden_size=16)
  variables = _variables(delta, params, config)
  model = _peft_model(tmp_path / 't5', config, prefix_projection=True, encoder_hidden_size=16)
  with model.disable_adapter():
    base_logits = _peft_logits(model)
  prefix = variables['prefix']
  encoder = prefix['prefix_encoder']
  width = config.num_heads * config.head_dim
  out_kernel = np.zeros((2 * config.num_decoder_layers * width, 16), np.float32)
  out_bias = np.zeros((2 * config.num_decoder_layers * width,), np.float32)
  for i, slots in enumerate(_peft_slots(config.num_decoder_layers)):
    attention = prefix['decoder'][f'layers_{i}']['self_attention']
    for part, slot in zip(('key', 'value'), slots):
      rows = slice(slot * width, (slot + 1) * width)
      out_kernel[rows] = attention[f'{part}_kernel'].reshape(16, width).T
      out_bias[rows] = attention[f'{part}_bias'].reshape(width)
  encoder_module = model.prompt_encoder['default']
  with torch.no_grad():
    for tensor, value in ((encoder_module.embedding.weight, encoder['embedding']),
                          (encoder_module.transform[0].weight, encoder['hidden_kernel'].T),
                          (encoder_module.transform[0].bias, encoder['hidden_bias']),
                          (encoder_module.transform[2].weight, out_kernel),
                          (encoder_module.transform[2].bias, out_bias)):
      tensor.copy_(torch.tensor(value))
  theirs = _peft_logits(model)
  _assert_close(_logits(delta, variables, config=config), theirs, base_logits)
  _assert_close(_logits(delta, delta.materialize(variables), config=config), theirs,
                base_logits)


# -- by hand --------------------------------------------------------------------

class _Recorder:
  """Records each attention's input (after its layer norm) and output."""
  sites = ('attention',)

  def __init__(self):
    self.calls = {}

  def setup(self, root):
    del root

  def intercept(self, site, next_fun, args, kwargs, module):
    out = next_fun(*args, **kwargs)
    self.calls[module_path(module)] = (np.asarray(args[0]), np.asarray(out))
    return out


@pytest.mark.parametrize('position_bias', ['none', 'past'])
def test_one_encoder_attention_by_hand(position_bias):
  # 32 buckets: distances below 8 have exact buckets, 16 * (rel > 0) + |rel|.
  config = T5Config(vocab_size=64, emb_dim=16, num_heads=2, head_dim=4, mlp_dim=24,
                    num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)
  n, h, hd = 2, config.num_heads, config.head_dim
  batch = _batch(config, inputs=(5, 3), targets=(2, 2))
  delta = PrefixTuning(length=n, placements=('encoder',), position_bias=position_bias)
  params = _params(config)
  variables = _variables(delta, params, config)
  recorder = _Recorder()
  Transformer(config, deltas=(delta, recorder)).apply(
      variables, *[jnp.asarray(x) for x in batch])
  x, out = recorder.calls['encoder/layers_0/attention']

  p = params['encoder']['layers_0']['attention']
  prefix = variables['prefix']['encoder']['layers_0']['attention']
  b, length, _ = x.shape
  split = lambda y: y.reshape(b, length, h, hd)
  query, key, value = (split(x @ p[name]['kernel']) for name in ('query', 'key', 'value'))
  key = np.concatenate([np.broadcast_to(prefix['prefix_key'], (b, n, h, hd)), key], 1)
  value = np.concatenate([np.broadcast_to(prefix['prefix_value'], (b, n, h, hd)), value], 1)
  # Positions: real query i; real key j; prefix key j < n ('past': at j, the
  # sequence from n, so the distance is j - (n + i)).
  i = np.arange(length)[:, None]
  relative = np.concatenate([np.arange(n)[None, :] - (n + i), np.arange(length)[None] - i], 1)
  table = params['encoder']['relpos_bias']['rel_embedding']  # [h, buckets]
  bias = table[:, 16 * (relative > 0) + np.abs(relative)]  # [h, l, n + l]
  if position_bias == 'none':
    bias[:, :, :n] = 0.0
  valid = batch[0] > 0
  visible = np.concatenate([np.ones((b, length, n), bool),
                            valid[:, :, None] & valid[:, None, :]], -1)  # T5X masks both
  logits = np.einsum('bqhd,bkhd->bhqk', query, key) + bias[None]
  logits = np.where(visible[:, None], logits, logits - 1e10)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  expected = np.einsum('bhqk,bkhd->bqhd', weights, value).reshape(b, length, h * hd)
  np.testing.assert_allclose(out, expected @ p['out']['kernel'], rtol=1e-4, atol=1e-5)


# -- placements, layers ---------------------------------------------------------

PLACED = {
    ('encoder',): ['encoder/layers_0/attention', 'encoder/layers_1/attention'],
    ('decoder',): [f'decoder/layers_{i}/self_attention' for i in range(3)],
    ('cross',): [f'decoder/layers_{i}/encoder_decoder_attention' for i in range(3)],
}


@pytest.mark.parametrize('placements', sorted(PLACED))
def test_each_placement_prefixes_its_attentions_only(params, placements):
  delta = PrefixTuning(length=N, placements=placements, position_bias='past')
  variables = _variables(delta, params)
  modules = {p.rsplit('/', 1)[0] for p in paths.flatten_tree(variables['prefix'])}
  assert sorted(modules) == PLACED[placements]
  plain = {'params': params}
  encoder_changed = not np.allclose(_encoded(delta, variables), _encoded(None, plain))
  assert encoder_changed == (placements == ('encoder',))
  logits = _logits(delta, variables)
  assert not np.allclose(logits, _logits(None, plain), atol=1e-3)
  # Cross-attention has no relative bias in T5: 'past' and 'none' are one function.
  unbiased = _logits(PrefixTuning(length=N, placements=placements), variables)
  assert np.allclose(unbiased, logits, atol=1e-6) == (placements == ('cross',))


def test_layers_select_the_prefixed_layers(params):
  delta = PrefixTuning(length=N, layers=(1,))
  variables = _variables(delta, params)
  modules = {p.rsplit('/', 1)[0] for p in paths.flatten_tree(variables['prefix'])}
  assert modules == {'encoder/layers_1/attention', 'decoder/layers_1/self_attention',
                     'decoder/layers_1/encoder_decoder_attention'}
  assert not np.allclose(_encoded(delta, variables), _encoded(None, {'params': params}))


# -- cached decoding --------------------------------------------------------------

def _step_logits(model, variables, enc, dec):
  """Logits [b, t, vocab] of cached decoding, one teacher-forced position per call."""
  length = dec.shape[1]
  cache = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), enc, dec, dec, decode=True,
                                            max_decode_length=length))['cache']
  cache = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), cache)
  encoded = model.apply(variables, enc, method=Transformer.encode)
  steps = []
  for t in range(length):
    logits, state = model.apply({**variables, 'cache': cache}, encoded, enc, dec[:, t:t + 1],
                                decode=True, max_decode_length=length,
                                method=Transformer.decode, mutable=['cache'])
    cache = state['cache']
    steps.append(np.asarray(logits[:, 0]))
  return np.stack(steps, 1)


@pytest.mark.parametrize('position_bias', ['none', 'past'])
@pytest.mark.parametrize('placements', sorted(PLACED))
def test_cached_decoding_equals_teacher_forcing(params, placements, position_bias):
  delta = PrefixTuning(length=N, placements=placements, position_bias=position_bias)
  variables = _variables(delta, params)
  model = Transformer(CONFIG, deltas=(delta,))
  enc, dec, _ = (jnp.asarray(x) for x in BATCH)
  forced = np.asarray(model.apply(variables, enc, dec, jnp.ones_like(dec)))
  np.testing.assert_allclose(_step_logits(model, variables, enc, dec), forced,
                             rtol=1e-5, atol=1e-5)


def test_greedy_decoding_with_the_cache_equals_recomputing(params):
  delta = PrefixTuning(length=N, position_bias='past', reparameterize=True, hidden_size=8)
  variables = _variables(delta, params)
  model = Transformer(CONFIG, deltas=(delta,))
  enc = jnp.asarray(BATCH[0])
  length = 5
  cached = np.asarray(predict.decode(model, variables, enc, length))
  np.testing.assert_array_equal(cached, greedy_by_recomputing(model, variables, enc, length))


# -- serving: materialize, remat, banks --------------------------------------------

def test_materialized_variables_serve_what_the_reparameterization_trains(params):
  delta = PrefixTuning(length=N, position_bias='past', reparameterize=True, hidden_size=8)
  variables = _variables(delta, params)
  served = delta.materialize(variables)
  assert sorted({p.rsplit('/', 1)[1] for p in paths.flatten_tree(served['prefix'])}) == [
      'prefix_key', 'prefix_value']
  assert len(paths.flatten_tree(served['prefix'])) == 2 * (2 + 3 + 3)
  assert delta.materialize(served) is served
  trained = _logits(delta, variables)
  np.testing.assert_allclose(_logits(delta, served), trained, rtol=1e-5, atol=1e-5)
  plain = PrefixTuning(length=N, position_bias='past')
  np.testing.assert_allclose(_logits(plain, served), trained, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='No prefix at'):
    _logits(delta, {'params': params})


def test_gradients_through_remat_layers_equal_plain_layers(params):
  """The root's hidden layer reaches nn.remat-lifted layers through the scratch."""
  delta = PrefixTuning(length=N, position_bias='past', reparameterize=True, hidden_size=8)
  variables = _variables(delta, params)
  weights = jnp.asarray(np.random.RandomState(3).normal(size=(3, 5, CONFIG.vocab_size)))

  def grads(remat):
    model = Transformer(CONFIG.replace(remat_policy=remat), deltas=(delta,))
    loss = lambda prefix: jnp.sum(weights * model.apply(
        {'params': params, 'prefix': prefix}, *[jnp.asarray(x) for x in BATCH]))
    return paths.flatten_tree(jax.jit(jax.grad(loss))(variables['prefix']))

  plain, remat = grads('none'), grads('full')
  for path, grad in plain.items():
    assert np.abs(grad).sum() > 0, path
    # Recomputation reorders float32 sums: equal to 1e-5 of the leaf's largest gradient.
    np.testing.assert_allclose(remat[path], grad, rtol=0, atol=1e-5 * np.abs(grad).max(),
                               err_msg=path)


def test_a_bank_serves_each_example_its_own_prefix(params):
  delta = PrefixTuning(length=N, position_bias='past')
  members = [_variables(delta, params, seed=s)['prefix'] for s in (1, 2)]
  shared, stacked = bank_lib.stack([{'prefix': m} for m in members], (delta,))
  assert not paths.flatten_tree(shared)
  index = jnp.asarray([1, 0, 1])
  mixed = _logits(delta, paths.merge({'params': params}, bank_lib.select(stacked, index)))
  for number, member in enumerate(members):
    alone = _logits(delta, {'params': params, 'prefix': member})
    rows = np.flatnonzero(np.asarray(index) == number)
    np.testing.assert_allclose(mixed[rows], alone[rows], rtol=1e-5, atol=1e-5)


# -- configuration and errors -------------------------------------------------------

def test_config_round_trips_through_json():
  delta = PrefixTuning(length=7, placements=('decoder', 'cross'), layers=(0, 2),
                       position_bias='past', reparameterize=True, hidden_size=64, init_std=0.1)
  rebuilt = base.delta_from_config(json.loads(json.dumps(delta.to_config())))
  assert rebuilt == delta and hash(rebuilt) == hash(delta)
  assert isinstance(rebuilt.placements, tuple) and isinstance(rebuilt.layers, tuple)


@pytest.mark.parametrize('fields, message', [
    ({'placements': ('encoder', 'self')}, r"Unknown prefix placements \['self'\]"),
    ({'placements': ()}, 'Unknown prefix placements'),
    ({'length': 0}, 'prefix length must be at least 1, got 0'),
    ({'position_bias': 'learned'}, "Unknown position_bias 'learned'"),
    ({'layers': (-1,)}, 'non-negative layer indices'),
])
def test_bad_fields_are_clear_errors(fields, message):
  with pytest.raises(ValueError, match=message):
    PrefixTuning(**fields)


def test_a_layer_the_model_lacks_is_an_error_naming_it():
  tokens = jnp.ones((1, 4), jnp.int32)
  model = Transformer(CONFIG, deltas=(PrefixTuning(length=2, layers=(2,)),))
  with pytest.raises(ValueError, match=r'layers \[2\] do not exist in the encoder.*2 layers'):
    model.init(jax.random.PRNGKey(0), tokens, tokens, tokens)
  # The decoder has 3 layers: decoder placements may use layer 2.
  decoder_only = Transformer(CONFIG, deltas=(PrefixTuning(length=2, layers=(2,),
                                                          placements=('decoder',)),))
  decoder_only.init(jax.random.PRNGKey(0), tokens, tokens, tokens)
