"""Prompt tuning as a delta: initializers on hand-worked tables, combination, the prompted T5, gin files."""
import functools
import warnings

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from prompt_tuning import gin_utils
from prompt_tuning.model import SIZES, T5Config, Transformer
from prompt_tuning.deltas import combine, initializers
from prompt_tuning.deltas.prompt import Prompt, PromptTuning

TINY = T5Config(vocab_size=128, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=16,
                num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)
RNG = jax.random.PRNGKey(0)
# Row i is [i, 10 + i]: every row distinct, every mean easy by hand.
TABLE = jnp.array([[i, 10 + i] for i in range(20)], jnp.float32)
RELEASED = ('sst2', 'mrpc', 'rte')


class FakeVocab:
  """A vocabulary whose `encode` gives fixed ids."""

  def __init__(self, pieces):
    self.pieces = pieces

  def encode(self, s):
    return list(self.pieces[s])


def _row_ids(prompt, table):
  """The table row each prompt row equals (fails if one is not a row)."""
  prompt, table = np.asarray(prompt), np.asarray(table)
  ids = []
  for row in prompt:
    hits = np.where((table == row).all(axis=1))[0]
    assert len(hits) == 1, row
    ids.append(int(hits[0]))
  return ids


# -- initializers ----------------------------------------------------------------
def test_random_uniform_is_symmetric_in_scale():
  init = initializers.random_uniform()
  prompt = jax.jit(init, static_argnums=1)(RNG, (100, 16), TABLE)
  assert prompt.shape == (100, 16) and prompt.dtype == jnp.float32
  assert float(prompt.min()) >= -0.5 and float(prompt.max()) <= 0.5
  # Both signs, and close to both ends: [-0.5, 0.5], not [0, 0.5).
  assert float(prompt.min()) < -0.45 and float(prompt.max()) > 0.45
  wide = initializers.random_uniform(2.0)(RNG, (100, 16), TABLE)
  assert float(jnp.abs(wide).max()) > 1.5 and float(jnp.abs(wide).max()) <= 2.0


def test_original_code_uniform_is_flax_uniform():
  prompt = initializers.original_code_uniform()(RNG, (100, 16), TABLE)
  assert float(prompt.min()) >= 0.0 and float(prompt.max()) < 0.5
  assert float(prompt.max()) > 0.45
  np.testing.assert_array_equal(prompt, nn.initializers.uniform(0.5)(RNG, (100, 16)))


def test_sampled_vocab_takes_distinct_rows_of_the_first_n_ids():
  init = initializers.sampled_vocab(population_size=6)
  full = jax.jit(init, static_argnums=1)(RNG, (6, 2), TABLE)
  assert sorted(_row_ids(full, TABLE)) == [0, 1, 2, 3, 4, 5]
  for seed in range(5):
    ids = _row_ids(init(jax.random.PRNGKey(seed), (4, 2), TABLE), TABLE)
    assert len(set(ids)) == 4 and max(ids) < 6
  # Different keys, different samples.
  assert not np.array_equal(init(jax.random.PRNGKey(1), (4, 2), TABLE),
                            init(jax.random.PRNGKey(2), (4, 2), TABLE))


def test_sampled_vocab_longer_than_population_warns_and_repeats():
  with pytest.warns(UserWarning, match='more than once'):
    prompt = initializers.sampled_vocab(3)(RNG, (10, 2), TABLE)
  ids = _row_ids(prompt, TABLE)
  assert max(ids) < 3 and len(ids) == 10
  # A population beyond the table is the whole table, without a warning.
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    ids = _row_ids(initializers.sampled_vocab(5000)(RNG, (20, 2), TABLE), TABLE)
  assert sorted(ids) == list(range(20))


def test_class_labels_hand_worked():
  vocab = FakeVocab({'yes': [2, 4], 'no': [7], 'maybe': [1, 2, 3]})
  fill = lambda rng, shape, table: jnp.full(shape, -1.0)
  init = initializers.class_labels(['yes', 'no', 'maybe'], vocab, fallback=fill)
  prompt = jax.jit(init, static_argnums=1)(RNG, (5, 2), TABLE)
  # yes: mean of rows 2 and 4 = [3, 13]; no: row 7; maybe: mean of 1, 2, 3.
  np.testing.assert_allclose(prompt, [[3, 13], [7, 17], [2, 12], [-1, -1], [-1, -1]])


def test_class_labels_fill_the_rest_with_sampled_vocab():
  vocab = FakeVocab({'a': [5], 'b': [6, 8]})
  init = initializers.class_labels(['a', 'b'], vocab)  # fallback: sampled_vocab()
  prompt = init(RNG, (6, 2), TABLE)
  np.testing.assert_allclose(prompt[:2], [[5, 15], [7, 17]])
  # The rest are the fallback's draws for the whole prompt, positions 2..5.
  np.testing.assert_array_equal(prompt[2:], initializers.sampled_vocab()(
      RNG, (6, 2), TABLE)[2:])
  assert len(set(_row_ids(prompt[2:], TABLE))) == 4


def test_class_labels_errors():
  vocab = FakeVocab({'a': [1], 'b': [2], 'empty': [], 'big': [99]})
  with pytest.raises(ValueError, match='3 class labels do not fit a prompt of length 2'):
    initializers.class_labels(['a', 'b', 'a'], vocab)(RNG, (2, 2), TABLE)
  with pytest.raises(ValueError, match="'empty' tokenizes to no tokens"):
    initializers.class_labels(['a', 'empty'], vocab)
  with pytest.raises(TypeError, match='list of label strings'):
    initializers.class_labels('a', vocab)
  with pytest.raises(ValueError, match='outside the embedding table'):
    initializers.class_labels(['big'], vocab)(RNG, (2, 2), TABLE)


def test_class_labels_with_the_real_t5_vocabulary(shared_data):
  import seqio  # pylint: disable=g-import-not-at-top
  import sentencepiece  # pylint: disable=g-import-not-at-top
  path = str(shared_data / 't5_sentencepiece.model')
  processor = sentencepiece.SentencePieceProcessor(model_file=path)
  vocab = seqio.SentencePieceVocabulary(path, extra_ids=100)
  labels = ['entailment', 'not_entailment']
  init = initializers.class_labels(labels, vocab)
  expected_ids = tuple(tuple(processor.encode(label)) for label in labels)
  # '▁ en tail ment' and '▁not _ en tail ment'.
  assert expected_ids == ((3, 35, 5756, 297), (59, 834, 35, 5756, 297))
  assert init.token_ids == expected_ids
  table = jax.random.normal(RNG, (32128, 4))
  prompt = init(jax.random.PRNGKey(1), (10, 4), table)
  for position, ids in enumerate(expected_ids):
    np.testing.assert_allclose(prompt[position], np.asarray(table)[list(ids)].mean(0),
                               rtol=1e-6)
  assert max(_row_ids(prompt[2:], table)) < 5000
  # The shipped vocabulary is the shared one.
  with open(initializers.default_vocabulary_path(), 'rb') as f:
    assert f.read() == (shared_data / 't5_sentencepiece.model').read_bytes()


def test_text_tiles_or_cuts():
  vocab = FakeVocab({'hi there': [3, 5], '': []})
  init = initializers.text('hi there', vocab)
  np.testing.assert_allclose(jax.jit(init, static_argnums=1)(RNG, (5, 2), TABLE),
                             [[3, 13], [5, 15], [3, 13], [5, 15], [3, 13]])
  np.testing.assert_allclose(init(RNG, (1, 2), TABLE), [[3, 13]])
  with pytest.raises(ValueError, match='tokenizes to no tokens'):
    initializers.text('', vocab)


def test_from_file(tmp_path):
  array = np.arange(6, dtype=np.float32).reshape(3, 2)
  np.save(tmp_path / 'p.npy', array)
  init = initializers.from_file(str(tmp_path / 'p.npy'))
  np.testing.assert_array_equal(init(RNG, (3, 2), TABLE), array)
  with pytest.raises(ValueError, match=r'\(3, 2\).*\(4, 2\)'):
    init(RNG, (4, 2), TABLE)
  with pytest.raises(FileNotFoundError, match='No prompt file'):
    initializers.from_file(str(tmp_path / 'missing.npy'))
  (tmp_path / 'bad.npy').write_bytes(b'not a numpy file')
  with pytest.raises(ValueError, match='Could not read a prompt'):
    initializers.from_file(str(tmp_path / 'bad.npy'))
  np.save(tmp_path / 'flat.npy', np.zeros(4, np.float32))
  with pytest.raises(ValueError, match=r'holds shape \(4,\)'):
    initializers.from_file(str(tmp_path / 'flat.npy'))


@pytest.mark.parametrize('task', RELEASED)
def test_released_prompts_load_into_base(shared_data, task):
  path = shared_data / 'pretrained_prompts_t5_1_1_lm100k_base' / f'{task}.npy'
  init = initializers.from_file(str(path))
  base_table = jnp.zeros((4, SIZES['base'].emb_dim))
  variables = Prompt(100, init).init(RNG, base_table)
  np.testing.assert_array_equal(nn.unbox(variables['prompt'])['prompt'], np.load(path))


def test_released_prompt_in_the_base_model_and_not_the_small_one(shared_data):
  path = str(shared_data / 'pretrained_prompts_t5_1_1_lm100k_base' / 'sst2.npy')
  tokens = jnp.ones((1, 4), jnp.int32)
  init_shapes = lambda config: jax.eval_shape(lambda: prompted(
      config, length=100, init=initializers.from_file(path)).init(
          RNG, tokens, tokens, tokens))
  shapes = init_shapes(SIZES['base'])
  assert nn.unbox(shapes['prompt'])['prompt']['prompt'].shape == (100, 768)
  with pytest.raises(ValueError, match=r'shape \(100, 768\).*shape \(100, 512\)'):
    init_shapes(SIZES['small'])


# -- combination -------------------------------------------------------------------
PROMPT = jnp.array([[[100.0], [200.0]]])  # [1, P=2, d=1]
EMBEDDED = jnp.array([[[1.0], [2.0], [3.0]], [[4.0], [0.0], [0.0]]])  # [2, 3, 1]
MASK = jnp.array([[True, True, True], [True, False, False]])


@pytest.mark.parametrize('fn, values, mask', [
    (combine.prefix, [[100, 200, 1, 2, 3], [100, 200, 4, 0, 0]],
     [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
    (combine.after_first_token, [[1, 100, 200, 2, 3], [4, 100, 200, 0, 0]],
     [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
    (combine.suffix, [[1, 2, 3, 100, 200], [4, 100, 200, 0, 0]],
     [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
])
def test_combine_hand_worked(fn, values, mask):
  combined, combined_mask = jax.jit(fn)(PROMPT, EMBEDDED, MASK)
  np.testing.assert_array_equal(combined[..., 0], values)
  np.testing.assert_array_equal(combined_mask, np.array(mask, bool))
  np.testing.assert_array_equal(combine.combined_mask(fn, MASK, 2), combined_mask)


def test_suffix_with_interior_padding_per_example_prompts_and_empty_rows():
  prompt = jnp.array([[[10.0], [20.0]], [[30.0], [40.0]]])  # one prompt per example
  embedded = jnp.array([[[1.0], [0.0], [3.0], [0.0]], [[0.0], [0.0], [0.0], [0.0]]])
  mask = jnp.array([[True, False, True, False], [False] * 4])
  combined, combined_mask = combine.suffix(prompt, embedded, mask)
  np.testing.assert_array_equal(combined[..., 0],
                                [[1, 0, 3, 10, 20, 0], [30, 40, 0, 0, 0, 0]])
  np.testing.assert_array_equal(combined_mask, [[1, 0, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0]])


def test_combine_keeps_the_activation_dtype_and_checks_shapes():
  combined, _ = combine.prefix(PROMPT, EMBEDDED.astype(jnp.bfloat16), MASK)
  assert combined.dtype == jnp.bfloat16
  with pytest.raises(ValueError, match='neither 1 nor the input batch'):
    combine.prefix(jnp.zeros((3, 2, 1)), EMBEDDED, MASK)


# -- the prompted model ------------------------------------------------------------
# Compiling is the cost here (2 slow cores): parameters come from numpy, shapes
# from eval_shape, and each network function is jitted once for the batch below.
PROMPT_LENGTH = 3


def prompted(config, **prompt_fields):
  """T5 with one prompt delta."""
  return Transformer(config, deltas=(PromptTuning(**prompt_fields),))


MODEL = prompted(TINY, length=PROMPT_LENGTH)
PLAIN = Transformer(TINY)


def _batch(seed=1, batch=3, enc_len=7, dec_len=5):
  rng = np.random.RandomState(seed)
  enc = rng.randint(1, TINY.vocab_size, (batch, enc_len))
  enc[1, 4:] = 0
  enc[2, 2:] = 0
  tgt = rng.randint(1, TINY.vocab_size, (batch, dec_len))
  tgt[2, 3:] = 0
  dec_in = np.concatenate([np.zeros((batch, 1), int), tgt[:, :-1]], 1)
  return jnp.array(enc), jnp.array(dec_in), jnp.array(tgt)


def _shapes(model, *batch, **kwargs):
  return jax.eval_shape(lambda: model.init(RNG, *batch, **kwargs))


def _random_params(seed):
  """Plain-Transformer parameters drawn in numpy (no compilation)."""
  rng = np.random.RandomState(seed)
  shapes = nn.unbox(_shapes(PLAIN, *_batch())['params'])
  return jax.tree_util.tree_map(
      lambda s: jnp.asarray(rng.normal(0, 0.5, s.shape), jnp.float32), shapes)


def _variables(seed=0):
  # A prompt unlike any embedding row, so a misplaced prompt shows.
  prompt = np.random.RandomState(seed + 100).normal(0, 3, (PROMPT_LENGTH, TINY.emb_dim))
  return {'params': _random_params(seed),
          'prompt': {'prompt': {'prompt': jnp.asarray(prompt, jnp.float32)}}}


@jax.jit
def _logits(variables, enc, dec_in, tgt):
  return MODEL.apply(variables, enc, dec_in, tgt)


def test_prompt_collection_tree_axes_and_untouched_params():
  batch = _batch()
  shapes = _shapes(MODEL, *batch)
  assert set(shapes) == {'params', 'prompt'}
  prompt_tree = jax.tree_util.tree_map(lambda x: (x.shape, x.dtype),
                                       nn.unbox(shapes['prompt']))
  assert prompt_tree == {'prompt': {'prompt': ((PROMPT_LENGTH, 8), jnp.float32)}}
  spec = nn.get_partition_spec(shapes)['prompt']['prompt']['prompt']
  assert tuple(spec) == ('prompt', 'prompt_embed')
  # The backbone's tree, shapes and logical axes are the plain model's.
  plain = _shapes(PLAIN, *batch)
  assert set(plain) == {'params'}
  as_tree = lambda v: {k: (x.shape, tuple(s)) for (k, x), s in zip(
      flatten_dict(nn.unbox(v['params'])).items(),
      flatten_dict(nn.get_partition_spec(v)['params']).values())}
  assert as_tree(shapes) == as_tree(plain)


def test_prompt_is_initialized_from_the_pretrained_embedding_by_apply():
  enc, dec_in, tgt = _batch()
  # Class labels 'x' (ids 5, 9) and 'y' (id 11), then sampled vocabulary.
  labels = initializers.class_labels(['x', 'y'], FakeVocab({'x': [5, 9], 'y': [11]}),
                                     fallback=initializers.sampled_vocab(16))
  model = prompted(TINY, length=6, init=labels)
  # What the trainer does: apply with the pretrained params, 'prompt' mutable, jitted.
  init_prompt = jax.jit(lambda params, rng: nn.unbox(model.apply(
      {'params': params}, enc, dec_in, tgt, mutable=['prompt'],
      rngs={'params': rng})[1])['prompt']['prompt']['prompt'])
  pretrained, other = _random_params(1), _random_params(2)
  prompt = init_prompt(pretrained, RNG)
  table = pretrained['token_embedder']['embedding']
  np.testing.assert_allclose(prompt[0], (table[5] + table[9]) / 2, rtol=1e-6)
  np.testing.assert_allclose(prompt[1], table[11], rtol=1e-6)
  ids = _row_ids(prompt[2:], table)
  assert len(set(ids)) == 4 and max(ids) < 16
  # Another table, the same draws: the rows follow the table passed in.
  other_table = other['token_embedder']['embedding']
  np.testing.assert_array_equal(init_prompt(other, RNG)[2:], other_table[np.array(ids)])


@jax.jit
def _plain_on_embeddings(params, embedded, proxy, dec_in, tgt):
  """The plain network on given input embeddings; `proxy > 0` is their mask."""
  encoded = PLAIN.apply(params, embedded, proxy > 0,
                        method=lambda m, x, mask: m.encoder(x, mask))
  return PLAIN.apply(params, encoded, proxy, dec_in, tgt, method=Transformer.decode)


@pytest.mark.parametrize('where', ['prefix', 'suffix'])
def test_logits_equal_the_plain_model_on_a_hand_built_concatenation(where):
  enc, dec_in, tgt = _batch()
  variables = _variables()
  if where == 'prefix':
    logits = _logits(variables, enc, dec_in, tgt)
  else:
    model = prompted(TINY, length=PROMPT_LENGTH, combine=combine.suffix)
    logits = jax.jit(model.apply)(variables, enc, dec_in, tgt)

  # Independently: embed, splice the prompt in by hand, run the plain network.
  table = np.asarray(variables['params']['token_embedder']['embedding'])
  prompt = np.asarray(variables['prompt']['prompt']['prompt'])
  rows, proxies = [], []
  for tokens in np.asarray(enc):
    n = int((tokens > 0).sum())  # real tokens come first in this batch
    cut = 0 if where == 'prefix' else n
    rows.append(np.concatenate([table[tokens[:cut]], prompt, table[tokens[cut:]]]))
    # Stand-in tokens whose mask (> 0) is the combined mask: 1 at the prompt.
    proxies.append(np.concatenate([tokens[:cut], np.ones(PROMPT_LENGTH, int), tokens[cut:]]))
  expected = _plain_on_embeddings({'params': variables['params']}, jnp.array(np.stack(rows)),
                                  jnp.array(np.stack(proxies)), dec_in, tgt)
  np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=1e-5)


def test_two_prompt_deltas_compose_into_one_longer_prompt():
  # Deltas wrap in order, the first outermost: its prompt goes in front of the
  # second's, so two prompts [2, d] and [1, d] are one prompt [3, d].
  enc, dec_in, tgt = _batch()
  variables = _variables()
  prompt = variables['prompt']['prompt']['prompt']
  two = Transformer(TINY, deltas=(PromptTuning(length=2),
                                  PromptTuning(length=1, name='task_prompt')))
  split = {'params': variables['params'], 'prompt': {'prompt': {'prompt': prompt[:2]}},
           'task_prompt': {'task_prompt': {'prompt': prompt[2:]}}}
  np.testing.assert_allclose(jax.jit(two.apply)(split, enc, dec_in, tgt),
                             _logits(variables, enc, dec_in, tgt), rtol=1e-5, atol=1e-5)


def test_cached_decoding_with_a_prompt_matches_teacher_forcing():
  enc, dec_in, tgt = _batch()
  variables = _variables()
  full = _logits(variables, enc, dec_in, jnp.ones_like(tgt))
  encoded = jax.jit(functools.partial(MODEL.apply, method=Transformer.encode))(
      variables, enc)
  assert encoded.shape == (3, 7 + PROMPT_LENGTH, TINY.emb_dim)
  length = dec_in.shape[1]
  # A fresh cache is zeros (index 0): build it from shapes, without compiling init.
  cache = jax.tree_util.tree_map(
      lambda s: jnp.zeros(s.shape, s.dtype),
      _shapes(MODEL, enc, dec_in, tgt, decode=True, max_decode_length=length)['cache'])
  step = jax.jit(lambda cache, token: MODEL.apply(
      {**variables, 'cache': cache}, encoded, enc, token, decode=True,
      max_decode_length=length, method=Transformer.decode, mutable=['cache']))
  steps = []
  for i in range(length):
    logits, mutated = step(cache, dec_in[:, i:i + 1])
    cache = mutated['cache']
    steps.append(logits[:, 0])
  np.testing.assert_allclose(np.stack(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_gradient_reaches_every_prompt_position():
  enc, dec_in, tgt = _batch()
  variables = _variables()
  loss = lambda prompt: jnp.sum(_logits(
      {'params': variables['params'], 'prompt': prompt}, enc, dec_in, tgt) ** 2)
  grad = jax.jit(jax.grad(loss))(variables['prompt'])['prompt']['prompt']
  assert grad.shape == (PROMPT_LENGTH, 8) and np.isfinite(grad).all()
  assert (np.abs(np.asarray(grad)).sum(1) > 0).all()


def test_prompt_errors_are_clear():
  enc, dec_in, tgt = _batch()
  variables = _variables()
  run = lambda v: jax.eval_shape(lambda: MODEL.apply(v, enc, dec_in, tgt))
  with pytest.raises(ValueError, match='No prompt: pass variables'):
    run({'params': variables['params']})
  wrong = {'params': variables['params'], 'prompt': {'prompt': {'prompt': jnp.zeros((5, 8))}}}
  with pytest.raises(ValueError, match=r'\(5, 8\).*\(3, 8\)'):
    run(wrong)


# -- gin -------------------------------------------------------------------------
def _gin_prompt(files, bindings=()):
  gin_utils.parse_gin(files, ['from prompt_tuning.deltas import prompt',
                              'DELTA = @prompt.PromptTuning()', *bindings])
  return gin_utils.macro('DELTA')


@pytest.mark.parametrize('name, expected', [
    ('random_uniform', initializers.random_uniform(0.5)),
    ('sampled_vocab', initializers.sampled_vocab(5000)),
])
def test_gin_random_and_sampled(name, expected):
  delta = _gin_prompt([f'gin/prompts/{name}.gin'])
  assert isinstance(delta, PromptTuning)
  assert delta.length == 100 and delta.init == expected
  assert _gin_prompt([f'gin/prompts/{name}.gin'], ['PROMPT_LENGTH = 7']).length == 7


def test_gin_class_labels():
  delta = _gin_prompt(['gin/prompts/class_labels.gin'],
                     ["CLASS_LABELS = ['entailment', 'not_entailment']"])
  init = delta.init
  assert init.labels == ('entailment', 'not_entailment')
  assert init.token_ids == ((3, 35, 5756, 297), (59, 834, 35, 5756, 297))
  assert init.fallback == initializers.sampled_vocab(5000)


@pytest.mark.parametrize('name, required', [
    ('class_labels', 'CLASS_LABELS'), ('text', 'PROMPT_TEXT'), ('from_file', 'PROMPT_FILE')])
def test_gin_required_macros_fail_naming_them(name, required):
  # parse_gin checks required macros; were it not to, the initializer would.
  with pytest.raises(ValueError, match=required):
    gin_utils.parse_gin([f'gin/prompts/{name}.gin'])
    gin_utils.macro('PROMPT_INIT')


def test_initializers_name_the_macro_when_given_gin_required():
  vocab = FakeVocab({})
  with pytest.raises(ValueError, match='CLASS_LABELS'):
    initializers.class_labels(gin.REQUIRED, vocab)
  with pytest.raises(ValueError, match='PROMPT_TEXT'):
    initializers.text(gin.REQUIRED, vocab)
  with pytest.raises(ValueError, match='PROMPT_FILE'):
    initializers.from_file(gin.REQUIRED)


def test_gin_text():
  init = _gin_prompt(['gin/prompts/text.gin'],
                     ["PROMPT_TEXT = 'entailment'", 'PROMPT_LENGTH = 6']).init
  assert init.token_ids == (3, 35, 5756, 297)


def test_gin_from_file(shared_data):
  path = shared_data / 'pretrained_prompts_t5_1_1_lm100k_base' / 'rte.npy'
  init = _gin_prompt(['gin/prompts/from_file.gin'], [f"PROMPT_FILE = '{path}'"]).init
  np.testing.assert_array_equal(init(RNG, (100, 768)), np.load(path))


def test_init_prompt_tool_writes_what_the_trainer_initializes(tmp_path, shared_data):
  """tools/init_prompt.py (for T5X runs, which cannot read the restored table)."""
  import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  from test_train import REPO, TINY_T5X_GIN, _args, _train_in_process  # pylint: disable=g-import-not-at-top
  checkpoint = str(shared_data / 't5x_t5_1_1_tiny' / 'checkpoint_3')
  labels = "--gin.CLASS_LABELS=['positive', 'negative']"
  out = subprocess.run([sys.executable, 'tools/init_prompt.py', f'--checkpoint={checkpoint}',
                        '--gin_file=gin/prompts/class_labels.gin', labels,
                        '--gin.PROMPT_LENGTH=5', '--seed=3', f'--output={tmp_path / "p.npy"}'],
                       cwd=REPO, capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  (tmp_path / 'tiny.gin').write_text(TINY_T5X_GIN)
  state = _train_in_process(_args(str(tmp_path / 'tiny.gin'), checkpoint, tmp_path / 'run',
                                  steps=0, prompt='class_labels',
                                  extra=[labels, '--gin.RANDOM_SEED=3']))
  np.testing.assert_array_equal(np.load(tmp_path / 'p.npy'),
                                np.asarray(state.trainable['prompt']['prompt']['prompt']))
