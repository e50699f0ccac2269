"""The decoder-only LM (model/decoder_only.py) and its contract (model/contract.py).

Parity: the same random weights in real T5X's decoder-only network
(t5x/examples/decoder_only/network.py, read from ../shared/t5x's tarball: the
installed T5X package leaves those modules out) give the same logits, causal,
prefix-LM and packed, and T5X's parameter paths and logical axes. The rest is
checked against independent computations: a prompt after BOS against the
plain model with those vectors as tokens, cached decoding against full
passes, rank classification against scoring each label's sequence.
"""
import importlib.util
import os
import pathlib
import sys
import tarfile
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import deltas
from prompt_tuning.deltas import combine
from prompt_tuning.infer import predict
from prompt_tuning.model import contract, param_shapes, t5x_checkpoint
from prompt_tuning.model.config import DecoderOnlyConfig, T5Config, num_parameters
from prompt_tuning.model.decoder_only import DecoderOnlyLM
from prompt_tuning.model.losses import sequence_scores
from prompt_tuning.model.t5 import Transformer
from test_sites import Recorder

REPO = pathlib.Path(__file__).resolve().parents[1]
T5X_TARBALL = pathlib.Path(os.environ.get(
    'PROMPT_TUNING_SHARED_T5X', REPO.parent / 'shared' / 't5x')) / 't5x-cc342d4-slim.tar.gz'
CONFIG = DecoderOnlyConfig(vocab_size=40, emb_dim=16, num_heads=2, num_layers=2, head_dim=8,
                           mlp_dim=32, dropout_rate=0.0)

# Two unpacked rows: [inputs, targets] concatenated, as DecoderFeatureConverter
# makes them (decoder_causal_attention: the inputs plus the first target position).
TARGETS = np.array([[5, 6, 7, 1, 9, 8, 1, 0, 0], [3, 4, 1, 7, 11, 12, 13, 1, 0]])
INPUTS = np.concatenate([np.zeros((2, 1), int), TARGETS[:, :-1]], 1) * (TARGETS > 0)
CAUSAL = np.array([[1, 1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0, 0]])
N_INPUTS = CAUSAL.sum(1) - 1  # input tokens per row


def _init(config=CONFIG, deltas_=()):
  model = DecoderOnlyLM(config, deltas=tuple(deltas_))
  variables = model.init(jax.random.PRNGKey(0), jnp.asarray(INPUTS), jnp.asarray(TARGETS))
  return model, jax.tree_util.tree_map(np.asarray, nn.unbox(variables))


@pytest.fixture(scope='module')
def t5x_network(tmp_path_factory):
  """T5X's decoder-only `network` module, loaded from its unmodified sources."""
  pytest.importorskip('t5x', reason='T5X is not installed: see ../shared/t5x/README.md')
  if not T5X_TARBALL.exists():
    pytest.skip(f'{T5X_TARBALL} is not there')
  root = tmp_path_factory.mktemp('t5x')
  prefix = 't5x-cc342d4/t5x/examples/decoder_only/'
  with tarfile.open(T5X_TARBALL) as tar:
    for name in ('layers.py', 'network.py'):
      (root / name).write_bytes(tar.extractfile(prefix + name).read())
  package = 't5x.examples.decoder_only'
  if package not in sys.modules:
    sys.modules[package] = types.ModuleType(package)
    sys.modules[package].__path__ = [str(root)]
  modules = {}
  for name in ('layers', 'network'):
    spec = importlib.util.spec_from_file_location(f'{package}.{name}', root / f'{name}.py')
    modules[name] = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = modules[name]
    setattr(sys.modules[package], name, modules[name])
    spec.loader.exec_module(modules[name])
  return modules['network']


def _t5x(network, config):
  t5x_config = network.TransformerConfig(
      vocab_size=config.vocab_size, dtype=jnp.float32, emb_dim=config.emb_dim,
      num_heads=config.num_heads, num_layers=config.num_layers, head_dim=config.head_dim,
      mlp_dim=config.mlp_dim, mlp_activations=config.mlp_activations,
      dropout_rate=0.0, logits_via_embedding=config.logits_via_embedding)
  module = network.DecoderWrapper(t5x_config)
  variables = module.init(jax.random.PRNGKey(3), jnp.asarray(INPUTS), jnp.asarray(TARGETS),
                          enable_dropout=False)
  return module, variables


@pytest.mark.parametrize('tied', [True, False])
def test_parameter_paths_shapes_and_axes_are_t5x_decoder_only(t5x_network, tied):
  config = CONFIG.replace(logits_via_embedding=tied)
  _, theirs = _t5x(t5x_network, config)
  ours = DecoderOnlyLM(config).init(jax.random.PRNGKey(0), jnp.asarray(INPUTS),
                                    jnp.asarray(TARGETS))
  flat = lambda tree: param_shapes.flatten_tree(jax.tree_util.tree_map(np.shape, tree))
  assert flat(nn.unbox(ours['params'])) == flat(theirs['params'])
  their_axes = {path[:-len('_axes')]: tuple(spec.names) for path, spec in
                param_shapes.flatten_tree(theirs['params_axes']).items()}
  our_axes = {path: tuple(spec) for path, spec in
              param_shapes.flatten_tree(nn.get_partition_spec(ours)['params']).items()}
  assert our_axes == their_axes
  assert param_shapes.flatten_tree(param_shapes.expected_shapes(config)) == flat(theirs['params'])
  assert num_parameters(config) == sum(np.prod(s) for s in flat(theirs['params']).values())


@pytest.mark.parametrize('mode', ['causal', 'prefix_lm', 'packed', 'untied'])
def test_logits_equal_t5x_decoder_only(t5x_network, mode):
  config = CONFIG.replace(logits_via_embedding=mode != 'untied',
                          inputs_bidirectional_attention=mode == 'prefix_lm')
  module, variables = _t5x(t5x_network, config)
  kwargs = {}
  if mode == 'prefix_lm':
    kwargs['decoder_causal_attention'] = jnp.asarray(CAUSAL)
  if mode == 'packed':
    kwargs['decoder_segment_ids'] = jnp.asarray([[1, 1, 1, 1, 2, 2, 2, 0, 0],
                                                 [1, 1, 1, 1, 1, 1, 2, 2, 0]])
  theirs = module.apply({'params': variables['params']}, jnp.asarray(INPUTS),
                        jnp.asarray(TARGETS), enable_dropout=False, **kwargs)
  ours = DecoderOnlyLM(config).apply({'params': variables['params']}, jnp.asarray(INPUTS),
                                     jnp.asarray(TARGETS), **kwargs)
  valid = TARGETS > 0  # T5X leaves padding rows unmasked garbage; compare real positions
  np.testing.assert_allclose(np.asarray(ours)[valid], np.asarray(theirs)[valid],
                             rtol=1e-5, atol=1e-5)
  # Causal attention alone gives other logits: the prefix-LM case checks a real mask.
  if mode == 'prefix_lm':
    causal = DecoderOnlyLM(CONFIG).apply({'params': variables['params']}, jnp.asarray(INPUTS),
                                         jnp.asarray(TARGETS), **kwargs)
    assert not np.allclose(np.asarray(causal)[valid], np.asarray(theirs)[valid], atol=1e-3)


def test_prompt_after_bos_is_the_plain_model_with_those_vectors_as_tokens():
  ids = np.array([21, 22, 23])  # the prompt is these rows of the embedding table
  prompt = deltas.PromptTuning(length=3, combine=combine.after_first_token)
  model, variables = _init(deltas_=(prompt,))
  table = variables['params']['decoder']['token_embedder']['embedding']
  variables = prompt.with_prompt(variables, table[ids])
  prompted = model.apply(variables, jnp.asarray(INPUTS), jnp.asarray(TARGETS))
  # The same sequence with the ids spelled out after BOS, target ids shifted.
  long_inputs = np.concatenate([INPUTS[:, :1], np.tile(ids, (2, 1)), INPUTS[:, 1:]], 1)
  long_targets = np.concatenate([np.tile(ids, (2, 1)), TARGETS], 1)
  plain = DecoderOnlyLM(CONFIG).apply({'params': variables['params']}, jnp.asarray(long_inputs),
                                      jnp.asarray(long_targets))
  assert prompted.shape == TARGETS.shape + (CONFIG.vocab_size,)
  valid = TARGETS > 0
  # Output j is read after token j's position: the last prompt position for j = 0.
  np.testing.assert_allclose(np.asarray(prompted)[valid], np.asarray(plain)[:, 3:][valid],
                             rtol=1e-5, atol=1e-5)


def _greedy_by_full_passes(model, variables, steps):
  """Greedy continuation of each row's inputs, one full (uncached) pass per token."""
  rows = []
  for row in range(2):
    n = N_INPUTS[row]
    tokens = list(INPUTS[row, :n + 1])
    out = []
    for _ in range(steps):
      seq = np.asarray([tokens], np.int32)
      targets = np.ones_like(seq)  # every position real
      causal = (np.arange(seq.shape[1]) <= n).astype(np.int32)[None]
      logits = model.apply(variables, jnp.asarray(seq), jnp.asarray(targets),
                           decoder_causal_attention=jnp.asarray(causal))
      nxt = int(np.argmax(np.asarray(logits)[0, -1]))
      out.append(nxt)
      if nxt == 1:
        break
      tokens.append(nxt)
    rows.append(out + [0] * (steps - len(out)))
  return np.asarray(rows)


def _decoding_case(kind):
  config = CONFIG.replace(inputs_bidirectional_attention=kind == 'prefix_lm')
  delta = {'prompt_after_bos': (deltas.PromptTuning(length=2, combine=combine.after_first_token),),
           'prefix': (deltas.PrefixTuning(length=2),)}.get(kind, ())
  return _init(config, delta)


@pytest.mark.parametrize('kind', ['plain', 'prefix_lm', 'prompt_after_bos', 'prefix'])
def test_cached_steps_after_the_prefill_give_the_teacher_forced_logits(kind):
  model, variables = _decoding_case(kind)
  full = np.asarray(model.apply(variables, jnp.asarray(INPUTS), jnp.asarray(TARGETS),
                                decoder_causal_attention=jnp.asarray(CAUSAL)))
  step, cache, start = contract.DECODER_ONLY.prefill(
      model, variables, jnp.asarray(INPUTS), jnp.asarray(CAUSAL), max_decode_length=4)
  np.testing.assert_array_equal(np.asarray(start), INPUTS[np.arange(2), N_INPUTS])
  token = start
  for i in range(4):  # feed the true targets: output i is target position n + i's
    logits, cache = step(token[:, None], cache)
    for row in range(2):
      if TARGETS[row, N_INPUTS[row] + i]:
        np.testing.assert_allclose(np.asarray(logits)[row], full[row, N_INPUTS[row] + i],
                                   rtol=1e-5, atol=1e-5)
    token = jnp.asarray(TARGETS[np.arange(2), N_INPUTS + i])


@pytest.mark.parametrize('kind', ['plain', 'prefix_lm', 'prompt_after_bos', 'prefix'])
def test_prefill_and_cached_greedy_decoding_equal_full_passes(kind):
  model, variables = _decoding_case(kind)
  steps = 4
  decoded = predict.decode(model, variables, (jnp.asarray(INPUTS), jnp.asarray(CAUSAL)), steps)
  np.testing.assert_array_equal(np.asarray(decoded),
                                _greedy_by_full_passes(model, variables, steps))


def test_rank_classification_scores_each_labels_sequence_after_one_shared_prefill():
  model, variables = _init(deltas_=(deltas.LoRA(rank=2),))
  variables = jax.tree_util.tree_map(  # LoRA's B starts at zero: make it act
      lambda x: x + 0.3 if x.ndim == 2 and x.shape[0] == 2 else x, variables)
  labels = [[9, 1], [17, 18, 1], [30, 1]]
  picked = predict.rank_classify(model, variables, (jnp.asarray(INPUTS), jnp.asarray(CAUSAL)),
                                 labels)
  want = []
  for row in range(2):
    n = N_INPUTS[row]
    scores = []
    for label in labels:
      targets = np.asarray([list(TARGETS[row, :n]) + label], np.int32)
      inputs = np.concatenate([[[0]], targets[:, :-1]], 1)
      logits = model.apply(variables, jnp.asarray(inputs), jnp.asarray(targets))
      weights = (np.arange(targets.shape[1]) >= n)[None]
      scores.append(float(sequence_scores(logits, jnp.asarray(targets), jnp.asarray(weights))[0]))
    assert len(set(np.round(scores, 4))) == len(labels)  # a real choice
    want.append(scores)
  np.testing.assert_array_equal(np.asarray(picked), np.argmax(want, axis=1))
  # The scores themselves: one prefill per example, the labels through its cache.
  arch = contract.DECODER_ONLY
  context = arch.rank_context(model, variables, jnp.asarray(INPUTS), jnp.asarray(CAUSAL),
                              label_length=3)
  np.testing.assert_allclose(np.asarray(arch.label_scores(model, variables, context, labels)),
                             want, rtol=1e-5, atol=1e-5)


def test_a_checkpoint_of_the_other_architecture_is_one_clear_line():
  _, variables = _init()
  decoder_only = variables['params']
  tokens = np.ones((1, 4), np.int32)
  t5_config = T5Config(vocab_size=40, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                       num_encoder_layers=1, num_decoder_layers=1)
  encoder_decoder = nn.unbox(Transformer(t5_config).init(jax.random.PRNGKey(0), tokens, tokens,
                                                         tokens)['params'])
  with pytest.raises(param_shapes.CheckpointError) as error:
    param_shapes.check_params(t5_config, decoder_only, '/ckpt/lm')
  assert '\n' not in str(error.value)
  assert 'decoder-only checkpoint' in str(error.value) and 'gin/models/decoder_only' in str(
      error.value)
  with pytest.raises(param_shapes.CheckpointError) as error:
    param_shapes.check_params(CONFIG, encoder_decoder, '/ckpt/t5')
  assert '\n' not in str(error.value) and 'encoder-decoder checkpoint' in str(error.value)
  # A T5X decoder-only tree's shapes give back its configuration.
  assert t5x_checkpoint.config_from_t5x_params(decoder_only, source='x') == CONFIG.replace(
      dropout_rate=0.1)


def test_p_tuning_template_after_the_inputs_is_refused_on_decoder_only():
  model = DecoderOnlyLM(CONFIG, deltas=(deltas.PTuning(template='[P:2] {inputs} [P:2]',
                                                       encoder='mlp', hidden=8),))
  with pytest.raises(ValueError, match='before {inputs}'):
    model.init(jax.random.PRNGKey(0), jnp.asarray(INPUTS), jnp.asarray(TARGETS))


def test_the_contract_picks_the_architecture_and_its_feature_converter():
  import seqio  # pylint: disable=g-import-not-at-top
  assert contract.of(DecoderOnlyLM(CONFIG)) is contract.DECODER_ONLY
  assert isinstance(contract.DECODER_ONLY.feature_converter(), seqio.DecoderFeatureConverter)
  assert isinstance(contract.ENCODER_DECODER.feature_converter(),
                    seqio.EncDecFeatureConverter)
  assert isinstance(contract.build(CONFIG), DecoderOnlyLM)
  with pytest.raises(TypeError, match='neither'):
    contract.of(nn.Dense(3))


@pytest.mark.slow  # about 40 s of CPU (3 min wall beside two training jobs): two runs, eval, infer
def test_a_decoder_only_run_trains_then_prompt_tunes_and_evaluates(tmp_path):
  """`prompt_tuning.train` end to end on the tiny preset, with the decoder-only converter.

  Model tuning from scratch writes a full checkpoint; prompt tuning after BOS
  on it trains the prompt alone and evaluates with rank classification; the
  same evaluator then decodes (prefill + cached greedy decoding); the eval
  and infer commands' gin files evaluate and predict from the run.
  """
  from prompt_tuning import gin_utils  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  from prompt_tuning.infer import batch_infer, checkpoint_eval, evaluation
  from test_train import _train_in_process  # tests/, on the path as pytest's rootdir
  common = ["--gin.MIXTURE_OR_TASK_NAME='fixture_sentiment'",
            "--gin.MIXTURE_OR_TASK_MODULE='fixture_tasks'", '--gin.BATCH_SIZE=8',
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}", '--gin.LOG_PERIOD=1',
            "--gin.ACTIVATION_DTYPE='float32'"]
  files = lambda *names: [f'--gin_file={name}' for name in
                          ('gin/models/decoder_only/tiny.gin',) + names]
  base = _train_in_process(files('gin/runs/model_tune.gin') + common + [
      f"--gin.MODEL_DIR='{tmp_path / 'lm'}'", '--gin.INITIAL_CHECKPOINT_PATH=None',
      '--gin.TRAIN_STEPS=3', '--gin.EVAL_PERIOD=None'])
  assert int(base.step) == 3 and 'params' in base.trainable
  state = _train_in_process(
      files('gin/prompts/random_uniform.gin', 'gin/runs/prompt_tune.gin',
            'gin/methods/prompt_decoder_only.gin') + common + [
          f"--gin.MODEL_DIR='{tmp_path / 'prompt'}'",
          f"--gin.INITIAL_CHECKPOINT_PATH='{tmp_path / 'lm' / 'checkpoint_3'}'",
          '--gin.TRAIN_STEPS=6', '--gin.EVAL_PERIOD=3', '--gin.EVAL_STEPS=1',
          '--gin.PROMPT_LENGTH=4', "--gin.RANK_CLASSIFICATION_LABELS=['positive', 'negative']"])
  model = gin_utils.macro('METHOD').model
  assert isinstance(model, DecoderOnlyLM)
  assert int(state.step) == 6 and set(state.trainable) == {'prompt'}
  assert (tmp_path / 'prompt' / 'checkpoint_6' / 'prompt.npy').exists()
  ranked = [line for line in (tmp_path / 'prompt' / 'inference_eval' /
                              'fixture_sentiment-metrics.jsonl').read_text().splitlines()]
  assert ranked and 'accuracy' in ranked[-1]
  decoded = evaluation.InferenceEvaluator('fixture_sentiment', {'inputs': 16, 'targets': 4},
                                          batch_size=8, num_examples=8)
  metrics = decoded.evaluate(model, state.variables)
  assert 0.0 <= metrics['fixture_sentiment']['accuracy'] <= 100.0
  # The eval and infer commands' configurations (gin/runs/eval.gin, infer.gin) on the run.
  lengths = "{'inputs': 16, 'targets': 4}"
  macros = [f"CHECKPOINT_PATH = '{tmp_path / 'prompt'}'",
            "MIXTURE_OR_TASK_NAME = 'fixture_sentiment'",
            'BATCH_SIZE = 16', f'TASK_FEATURE_LENGTHS = {lengths}']
  gin_utils.parse_gin(['gin/models/decoder_only/tiny.gin', 'gin/runs/eval.gin'],
                      macros + [f"EVAL_OUTPUT_DIR = '{tmp_path / 'eval'}'"])
  evaluated = checkpoint_eval.evaluate_checkpoints()
  assert list(evaluated) == [6] and 'accuracy' in evaluated[6]['fixture_sentiment']
  gin_utils.parse_gin(['gin/models/decoder_only/tiny.gin', 'gin/runs/infer.gin'],
                      macros + [f"INFER_OUTPUT_DIR = '{tmp_path / 'infer'}'"])
  batch_infer.infer()
  lines = (tmp_path / 'infer' / 'fixture_sentiment-validation-predict.jsonl').read_text()
  assert len(lines.splitlines()) == 32 and '"prediction"' in lines
  # PEFT adapters are T5's: a decoder-only checkpoint is refused in one line.
  from prompt_tuning.interop import peft
  with pytest.raises(ValueError, match='decoder-only LM; PEFT adapter export') as error:
    peft.export_peft_adapter(str(tmp_path / 'prompt'), str(tmp_path / 'peft'))
  assert '\n' not in str(error.value)


@pytest.mark.parametrize('remat', ['none', 'full'])
def test_decoder_only_sites_are_reached_once_per_call(remat):
  from prompt_tuning.model import sites  # pylint: disable=g-import-not-at-top
  recorder = Recorder(('decoder_input', 'decoder_only_layer', 'attention', 'mlp',
                       'relative_position_bias'))
  model = DecoderOnlyLM(CONFIG.replace(remat_policy=remat))
  variables = model.init(jax.random.PRNGKey(0), jnp.asarray(INPUTS), jnp.asarray(TARGETS))
  with sites.attach((recorder,)):
    model.apply(variables, jnp.asarray(INPUTS), jnp.asarray(TARGETS))
  assert sorted(recorder.calls) == sorted(
      [('decoder_input', ''), ('relative_position_bias', 'decoder/relpos_bias')] +
      [(name, f'decoder/layers_{i}{suffix}') for i in range(CONFIG.num_layers)
       for name, suffix in (('decoder_only_layer', ''), ('attention', '/self_attention'),
                            ('mlp', '/mlp'))])
