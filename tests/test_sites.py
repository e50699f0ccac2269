"""The sites deltas attach to: the documented list, and what attaching does and does not do."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.model import decoder_only, layers, sites, t5
from prompt_tuning.model import T5Config, Transformer

CONFIG = T5Config(vocab_size=64, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                  num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)
TOKENS = jnp.asarray(np.random.RandomState(0).randint(2, 64, (2, 5)))

# The documented list (model/sites.py). A site renamed or moved must fail here,
# not silently stop a delta from attaching.
EXPECTED = {
    'encoder_input': ('Transformer', 'embed_encoder_inputs'),
    'encoder_mask': ('Transformer', 'encoder_mask'),
    'encoder_layer': ('EncoderLayer', '__call__'),
    'decoder_layer': ('DecoderLayer', '__call__'),
    'attention': ('MultiHeadDotProductAttention', '__call__'),
    'attention_scores': ('MultiHeadDotProductAttention', 'attend'),
    'mlp': ('MlpBlock', '__call__'),
    'dense': ('Dense', '__call__'),
    'relative_position_bias': ('RelativePositionBiases', '__call__'),
    'decoder_input': ('DecoderOnlyBackbone', 'embed_decoder_inputs'),
    'decoder_step_input': ('DecoderOnlyBackbone', 'embed_decoder_step'),
    'decoder_only_layer': ('DecoderOnlyLayer', '__call__'),
}


ENCODER_DECODER_SITES = [name for name, (owner, _) in EXPECTED.items()
                         if not owner.startswith('DecoderOnly')]


def test_the_site_list_is_the_documented_one():
  assert {s.name: (s.owner, s.method) for s in sites.SITES} == EXPECTED
  classes = {cls.__name__: cls for cls in (t5.Transformer, t5.EncoderLayer, t5.DecoderLayer,
                                           layers.MultiHeadDotProductAttention,
                                           layers.MlpBlock, layers.Dense,
                                           layers.RelativePositionBiases,
                                           decoder_only.DecoderOnlyBackbone,
                                           decoder_only.DecoderOnlyLayer)}
  for site in sites.SITES:
    assert callable(getattr(classes[site.owner], site.method, None)), site
    assert site.name in sites.__doc__, f'{site.name} is not documented in sites.py'


def test_unknown_site_is_an_error_listing_the_sites():
  with pytest.raises(ValueError, match=r"Unknown site 'attn'.*attention_scores"):
    sites.get_site('attn')


class Recorder:
  """A delta-like handler that records each site call with its module path."""

  def __init__(self, names):
    self.sites, self.calls = tuple(names), []

  def setup(self, root):
    del root

  def intercept(self, site, next_fun, args, kwargs, module):
    self.calls.append((site.name, sites.module_path(module)))
    return next_fun(*args, **kwargs)


def _paths(recorder, name):
  return [path for site, path in recorder.calls if site == name]


@pytest.mark.parametrize('remat', ['none', 'full'])
def test_every_site_is_reached_once_per_call(remat):
  recorder = Recorder(ENCODER_DECODER_SITES)
  model = Transformer(CONFIG.replace(remat_policy=remat))
  with sites.attach((recorder,)):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), TOKENS, TOKENS, TOKENS))
  assert _paths(recorder, 'encoder_input') == ['']
  assert _paths(recorder, 'encoder_mask') == ['']
  # One call per layer, also under nn.remat (whose lifted class must not match twice).
  assert _paths(recorder, 'encoder_layer') == ['encoder/layers_0']
  assert _paths(recorder, 'decoder_layer') == ['decoder/layers_0']
  assert sorted(_paths(recorder, 'attention')) == [
      'decoder/layers_0/encoder_decoder_attention', 'decoder/layers_0/self_attention',
      'encoder/layers_0/attention']
  assert sorted(_paths(recorder, 'attention_scores')) == sorted(_paths(recorder, 'attention'))
  assert sorted(_paths(recorder, 'mlp')) == ['decoder/layers_0/mlp', 'encoder/layers_0/mlp']
  dense = _paths(recorder, 'dense')
  assert 'encoder/layers_0/attention/query' in dense
  assert 'decoder/layers_0/mlp/wo' in dense and 'decoder/logits_dense' in dense
  assert len(dense) == 3 * 4 + 2 * 3 + 1  # q, k, v, out per attention; wi_0, wi_1, wo; logits
  assert _paths(recorder, 'relative_position_bias') == ['encoder/relpos_bias',
                                                        'decoder/relpos_bias']


class Scale:
  """Doubles every dense projection's output: a change must show in the logits."""
  sites = ('dense',)

  def setup(self, root):
    del root

  def intercept(self, site, next_fun, args, kwargs, module):
    return 2.0 * next_fun(*args, **kwargs)


def test_attaching_changes_the_output_and_detaching_restores_it():
  model = Transformer(CONFIG)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), TOKENS, TOKENS, TOKENS)['params'])
  plain = model.apply({'params': params}, TOKENS, TOKENS, TOKENS)
  scaled = Transformer(CONFIG, deltas=(Scale(),)).apply({'params': params}, TOKENS, TOKENS,
                                                         TOKENS)
  assert not np.allclose(scaled, plain)
  # Nothing leaks out of the attach context: the plain model is plain again.
  np.testing.assert_array_equal(model.apply({'params': params}, TOKENS, TOKENS, TOKENS), plain)


def test_a_model_with_deltas_keeps_the_backbone_tree():
  shapes = lambda m: jax.tree_util.tree_map(
      lambda x: (x.shape, x.dtype),
      nn.unbox(jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), TOKENS, TOKENS,
                                             TOKENS))['params']))
  assert shapes(Transformer(CONFIG, deltas=(Scale(),))) == shapes(Transformer(CONFIG))


class Scratch:
  """Leaves a value at the root and reads it in every attention, as a delta may."""
  sites = ('encoder_input', 'encoder_mask', 'attention')

  def __init__(self):
    self.seen = []

  def setup(self, root):
    del root

  def intercept(self, site, next_fun, args, kwargs, module):
    store = sites.scratch(self)
    if site.name != 'attention':
      store.setdefault('calls', []).append(site.name)
    else:
      self.seen.append(tuple(store['calls']))
    return next_fun(*args, **kwargs)


def test_the_scratch_lives_for_one_attachment_and_is_shared_by_encode_and_decode():
  delta = Scratch()
  model = Transformer(CONFIG, deltas=(delta,))
  params = nn.unbox(model.init(jax.random.PRNGKey(0), TOKENS, TOKENS, TOKENS)['params'])
  delta.seen.clear()
  model.apply({'params': params}, TOKENS, TOKENS, TOKENS)
  # encode (its attention), then decode (two): one dict for the whole call.
  assert delta.seen == [('encoder_input',)] + 2 * [('encoder_input', 'encoder_mask')]
  delta.seen.clear()
  model.apply({'params': params}, TOKENS, method=Transformer.encode)
  assert delta.seen == [('encoder_input',)]  # a fresh one for the next call
  with pytest.raises(RuntimeError, match='only available while deltas are attached'):
    sites.scratch(delta)
