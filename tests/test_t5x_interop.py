"""Real T5X drives our backbone and deltas (prompt_tuning/interop/t5x.py, gin/t5x/).

The adapter under T5X's own model, train state and decoders; `python -m
t5x.train` on the tiny T5X checkpoint for a prompt and for LoRA, its Orbax
checkpoint read back by our loaders and eval CLI; the same 5 steps by T5X
and by our trainer; a T5X without an interface we rely on.

T5X is installed from ../shared/t5x (its README; .ci/run does it). The skip
below only spares developer machines without it.
"""
import json
import os
import pathlib
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

t5x = pytest.importorskip('t5x', reason='T5X is not installed: see ../shared/t5x/README.md')

from t5x import adafactor as t5x_adafactor  # pylint: disable=g-import-not-at-top
from t5x import models as t5x_models
from t5x import optimizers as t5x_optimizers
from t5x import train_state as t5x_train_state
from flax import traverse_util

from prompt_tuning import deltas
from prompt_tuning.data import vocab
from prompt_tuning.deltas import initializers
from prompt_tuning.infer.loading import VariableLoader
from prompt_tuning.interop import t5x as adapter
from prompt_tuning.model import T5Config, Transformer, load_pretrained

from model_gins import model_gin  # tests/, on the path as pytest's rootdir

REPO = pathlib.Path(__file__).resolve().parents[1]
TESTS = REPO / 'tests'
TINY = T5Config(emb_dim=4, num_heads=2, num_encoder_layers=2, num_decoder_layers=2,
                head_dim=2, mlp_dim=8, dropout_rate=0.0, relative_attention_num_buckets=4)
SMALL = T5Config(vocab_size=32128, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                 num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)
BASE_STEP = 3  # the tiny T5X checkpoint is checkpoint_3

EVERY_DELTA = {
    'prompt': lambda: (deltas.PromptTuning(length=3, init=initializers.random_uniform()),),
    'p_tuning': lambda: (deltas.PTuning(template='[P:2] {inputs} [P:2]', encoder='mlp',
                                        hidden=8),),
    'prefix': lambda: (deltas.PrefixTuning(length=3),),
    'multitask_prompt': lambda: (deltas.MultiTaskPrompt(num_tasks=2, length=3),),
    'lora': lambda: (deltas.LoRA(rank=2),),
    'ia3': lambda: (deltas.IA3(),),
    'adapters': lambda: (deltas.Adapters(reduction_factor=4),),
    'bitfit': lambda: (deltas.BitFit(),),
    'norm': lambda: (deltas.NormTuning(),),
    'prompt+lora': lambda: (deltas.PromptTuning(length=3, init=initializers.random_uniform()),
                            deltas.LoRA(rank=2)),
}


def _t5x_model(module, optimizer_def=None):
  vocabulary = vocab.get_vocabulary()
  return t5x_models.EncoderDecoderModel(
      module=module, input_vocabulary=vocabulary, output_vocabulary=vocabulary,
      optimizer_def=optimizer_def or t5x_adafactor.Adafactor(), z_loss=1e-4)


def _batch(rng, batch=2, inputs=6, targets=3):
  tokens = lambda n: rng.randint(2, 100, (batch, n)).astype(np.int32)
  target = tokens(targets)
  encoder_input = tokens(inputs)
  encoder_input[:, 0] = 32099 - np.arange(batch) % 2  # task markers, for multi-task prompts
  return {'encoder_input_tokens': encoder_input, 'decoder_target_tokens': target,
          'decoder_input_tokens': np.concatenate([np.zeros((batch, 1), np.int32),
                                                  target[:, :-1]], 1),
          'decoder_loss_weights': np.ones_like(target)}


SHAPES = {'encoder_input_tokens': (2, 6), 'decoder_input_tokens': (2, 3)}
TYPES = {'encoder_input_tokens': jnp.int32, 'decoder_input_tokens': jnp.int32}


@pytest.mark.parametrize('name', sorted(EVERY_DELTA))
def test_every_delta_trains_under_t5x_train_state(name):
  """T5X's init, params_axes check, MultiOptimizer + traversal and Adafactor rules."""
  delta_tuple = EVERY_DELTA[name]()
  opt = t5x_adafactor.Adafactor(decay_rate=0.8, step_offset=0, multiply_by_parameter_scale=False,
                                logical_factor_rules=adapter.logical_factor_rules())
  multi = t5x_optimizers.MultiOptimizer(((traverse_util.ModelParamTraversal(
      adapter.trainable_filter(delta_tuple)), opt),))
  model = _t5x_model(adapter.T5XTransformer(SMALL, delta_tuple), multi)
  variables = model.get_initial_variables(jax.random.PRNGKey(0), SHAPES, TYPES)
  params = variables['params']
  for collection in {d.collection for d in delta_tuple} - {'norm'}:
    assert collection in params, f'{collection} missing from params: {sorted(params)}'
  state = t5x_train_state.FlaxOptimTrainState.create(multi, variables)
  batch = _batch(np.random.RandomState(0))
  grads = jax.grad(lambda p: model.loss_fn(p, batch, None)[0])(state.params)
  new = state.apply_gradient(grads, learning_rate=0.3)
  moved = {'/'.join(k) for k, v in traverse_util.flatten_dict(new.params).items()
           if not np.array_equal(v, traverse_util.flatten_dict(state.params)[k])}
  keep = adapter.trainable_filter(delta_tuple)
  assert moved and all(keep('/' + p, None) for p in moved), (name, sorted(moved))
  # Our model on the mapped variables computes T5X's logits exactly.
  ours = Transformer(SMALL, delta_tuple).apply(
      adapter.from_params(params, delta_tuple), batch['encoder_input_tokens'],
      batch['decoder_input_tokens'], batch['decoder_target_tokens'])
  theirs = model.module.apply({'params': params}, batch['encoder_input_tokens'],
                              batch['decoder_input_tokens'], batch['decoder_target_tokens'],
                              enable_dropout=False)
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_params_axes_in_t5x_form_and_restore_map():
  delta_tuple = EVERY_DELTA['prompt+lora']()
  variables = _t5x_model(adapter.T5XTransformer(SMALL, delta_tuple)).get_initial_variables(
      jax.random.PRNGKey(0), SHAPES, TYPES)
  names = nn.partitioning.get_axis_names(variables['params_axes'])
  assert tuple(names['prompt']['prompt']['prompt']) == ('prompt', 'prompt_embed')
  assert tuple(names['encoder']['layers_0']['attention']['query']['kernel']) == (
      'embed', 'joined_kv')
  assert set(traverse_util.flatten_dict(names)) == set(
      traverse_util.flatten_dict(variables['params']))
  skip = [re.compile(p) for p, _ in adapter.restore_assignment_map(delta_tuple)]
  assert any(p.fullmatch('target/prompt/prompt/prompt') for p in skip)
  assert not any(p.fullmatch('target/encoder/layers_0/attention/query/kernel') for p in skip)


def test_t5x_decoding_with_the_cache():
  """T5X's beam search and sampling run on the adapter's cached decode."""
  delta_tuple = EVERY_DELTA['prompt']()
  model = _t5x_model(adapter.T5XTransformer(SMALL, delta_tuple))
  params = model.get_initial_variables(jax.random.PRNGKey(0), SHAPES, TYPES)['params']
  batch = _batch(np.random.RandomState(1))
  beams = model.predict_batch(params, batch)
  assert beams.shape == (2, 3)
  greedy_t5x = t5x_models.EncoderDecoderModel(
      module=model.module, input_vocabulary=model.input_vocabulary,
      output_vocabulary=model.output_vocabulary, optimizer_def=None,
      decode_fn=t5x.decoding.temperature_sample)
  sampled = greedy_t5x.predict_batch_with_aux(
      params, batch, rng=jax.random.PRNGKey(0),
      decoder_params={'temperature': 0.0})[0]
  # Greedy (temperature 0) equals teacher-forced argmax on its own output.
  decoder_input = np.concatenate([np.zeros((2, 1), np.int32), np.asarray(sampled)[:, :-1]], 1)
  logits = model.module.apply({'params': params}, batch['encoder_input_tokens'], decoder_input,
                              np.ones_like(decoder_input), enable_dropout=False)
  eos = model.output_vocabulary.eos_id
  for row, argmax in zip(np.asarray(sampled), np.asarray(jnp.argmax(logits, -1))):
    n = len(row) if eos not in row else list(row).index(eos) + 1
    np.testing.assert_array_equal(row[:n], argmax[:n])


def test_packed_examples_are_refused():
  module = adapter.T5XTransformer(SMALL, EVERY_DELTA['prompt']())
  tokens = jnp.ones((2, 4), jnp.int32)
  with pytest.raises(ValueError, match='packed examples are not supported.*pack = False'):
    module.init(jax.random.PRNGKey(0), tokens, tokens, tokens, encoder_segment_ids=tokens,
                enable_dropout=False)


def test_a_t5x_without_an_interface_fails_naming_it(monkeypatch):
  from t5x import optimizers  # pylint: disable=g-import-not-at-top
  monkeypatch.delattr(optimizers, 'MultiOptimizer')
  with pytest.raises(ImportError, match=r'^This T5X has no t5x\.optimizers\.MultiOptimizer'):
    adapter.check_t5x()


# -- python -m t5x.train ---------------------------------------------------------

OVERRIDES = """from __gin__ import dynamic_registration
import __main__ as train_script
from t5x import utils
train_script.train.infer_eval_dataset_cfg = None
train_script.train.train_eval_dataset_cfg = None
train_script.train.stats_period = 1
train_script.train.random_seed = 0
utils.SaveCheckpointConfig.period = 1000
train/utils.DatasetConfig.seed = 0
"""


def _t5x_train(tmp_path, shared_data, method, run, steps, extra=()):
  (tmp_path / 'tiny.gin').write_text(model_gin(TINY))
  (tmp_path / 'overrides.gin').write_text(OVERRIDES)
  model_dir = tmp_path / f'{method}_t5x'
  files = [tmp_path / 'tiny.gin', 'gin/t5x/models/t5x_module.gin', f'gin/t5x/methods/{method}.gin',
           f'gin/t5x/runs/{run}.gin', tmp_path / 'overrides.gin']
  args = [f'--gin_file={f}' for f in files] + [
      f"--gin.MODEL_DIR='{model_dir}'", "--gin.MIXTURE_OR_TASK_NAME='fixture_sentiment'",
      "--gin.MIXTURE_OR_TASK_MODULE='fixture_tasks'",
      f"--gin.INITIAL_CHECKPOINT_PATH='{shared_data / 't5x_t5_1_1_tiny' / 'checkpoint_3'}'",
      f'--gin.TRAIN_STEPS={BASE_STEP + steps}', '--gin.BATCH_SIZE=8',
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}"] + list(extra)
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             PYTHONPATH=f'{TESTS}{os.pathsep}{os.environ.get("PYTHONPATH", "")}')
  done = subprocess.run([sys.executable, '-m', 't5x.train', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-4000:]
  return model_dir, done.stderr


def _t5x_losses(log):
  """{step: loss per non-padding target token} from T5X's per-step stats lines."""
  found = re.findall(r'\[(\d+)\] collection=train .*?loss_per_nonpadding_target_token=([\d.e+-]+)',
                     log)
  return {int(step): float(loss) for step, loss in found}


def _assert_backbone_unchanged(model_dir, shared_data):
  _, base = load_pretrained(str(shared_data / 't5x_t5_1_1_tiny' / 'checkpoint_3'))
  _, trained = load_pretrained(str(model_dir))
  flat = lambda t: traverse_util.flatten_dict(t)
  assert flat(base).keys() == flat(trained).keys()
  for key, value in flat(base).items():
    np.testing.assert_array_equal(value, flat(trained)[key], err_msg='/'.join(key))


@pytest.mark.slow
def test_t5x_train_prompt_then_our_eval_and_extract(tmp_path, shared_data):
  prompt = np.random.RandomState(0).uniform(-0.5, 0.5, (5, 4)).astype(np.float32)
  np.save(tmp_path / 'init.npy', prompt)
  model_dir, _ = _t5x_train(tmp_path, shared_data, 'prompt', 'prompt_tune', 5, [
      '--gin_file=gin/prompts/from_file.gin', '--gin.PROMPT_LENGTH=5',
      f"--gin.PROMPT_FILE='{tmp_path / 'init.npy'}'"])
  checkpoint = model_dir / f'checkpoint_{BASE_STEP + 5}'
  assert (checkpoint / 'state' / '_METADATA').exists()  # Orbax, T5X HEAD's default
  _assert_backbone_unchanged(model_dir, shared_data)
  loaded = VariableLoader(Transformer(TINY)).checkpoint(str(model_dir))
  trained = np.asarray(loaded.variables['prompt']['prompt']['prompt'])
  assert loaded.step == BASE_STEP + 5 and trained.shape == (5, 4)
  assert not np.allclose(trained, prompt)
  # The .npy extracted from it is the trained prompt.
  subprocess.run([sys.executable, 'tools/extract_prompt.py', '--checkpoint', str(model_dir),
                  '--output', str(tmp_path / 'p.npy')], cwd=REPO, check=True,
                 env=dict(os.environ, JAX_PLATFORMS='cpu'))
  np.testing.assert_array_equal(np.load(tmp_path / 'p.npy'), trained)
  # Our eval CLI evaluates the T5X run as base + delta.
  (tmp_path / 'eval_tiny.gin').write_text(model_gin(TINY))
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             PYTHONPATH=f'{TESTS}{os.pathsep}{os.environ.get("PYTHONPATH", "")}')
  out = tmp_path / 'eval'
  done = subprocess.run(
      [sys.executable, '-m', 'prompt_tuning.eval', f'--gin_file={tmp_path / "eval_tiny.gin"}',
       '--gin_file=gin/runs/eval.gin', f"--gin.CHECKPOINT_PATH='{model_dir}'",
       f"--gin.EVAL_OUTPUT_DIR='{out}'", "--gin.MIXTURE_OR_TASK_NAME='fixture_sentiment'",
       "--gin.MIXTURE_OR_TASK_MODULE='fixture_tasks'", '--gin.BATCH_SIZE=8',
       "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-4000:]
  lines = (out / 'fixture_sentiment-metrics.jsonl').read_text().splitlines()
  assert json.loads(lines[-1])['step'] == BASE_STEP + 5


@pytest.mark.slow
def test_t5x_train_lora(tmp_path, shared_data):
  model_dir, _ = _t5x_train(tmp_path, shared_data, 'lora', 'delta_tune', 3,
                            ['--gin.LORA_RANK=2', '--gin.LEARNING_RATE=0.1'])
  _assert_backbone_unchanged(model_dir, shared_data)
  model = Transformer(TINY, deltas=(deltas.LoRA(rank=2),))
  loaded = VariableLoader(model).checkpoint(str(model_dir))
  lora_b = traverse_util.flatten_dict(loaded.variables['lora'])
  assert any(k[-1] == 'lora_b' and np.any(v != 0) for k, v in lora_b.items())  # B starts at 0


@pytest.mark.slow
def test_t5x_and_our_trainer_agree_for_five_steps(tmp_path, shared_data):
  """Same tiny model, data order, seed, prompt start and Adafactor: same losses and prompt."""
  from test_train import _run_cli  # pylint: disable=g-import-not-at-top
  prompt = np.random.RandomState(0).uniform(-0.5, 0.5, (5, 4)).astype(np.float32)
  np.save(tmp_path / 'init.npy', prompt)
  init = ['--gin_file=gin/prompts/from_file.gin', '--gin.PROMPT_LENGTH=5', '--gin.DROPOUT_RATE=0.0',
          f"--gin.PROMPT_FILE='{tmp_path / 'init.npy'}'"]
  model_dir, log = _t5x_train(tmp_path, shared_data, 'prompt', 'prompt_tune', 5, init)
  theirs = _t5x_losses(log)
  (tmp_path / 'tiny.gin').write_text(model_gin(TINY))
  ours_dir = tmp_path / 'ours'
  proc = _run_cli([f'--gin_file={tmp_path / "tiny.gin"}', '--gin_file=gin/prompts/from_file.gin',
                   '--gin_file=gin/runs/prompt_tune.gin', f"--gin.MODEL_DIR='{ours_dir}'",
                   "--gin.MIXTURE_OR_TASK_NAME='fixture_sentiment'",
                   "--gin.MIXTURE_OR_TASK_MODULE='fixture_tasks'",
                   f"--gin.INITIAL_CHECKPOINT_PATH='{shared_data / 't5x_t5_1_1_tiny' / 'checkpoint_3'}'",
                   f'--gin.TRAIN_STEPS={BASE_STEP + 5}', '--gin.BATCH_SIZE=8',
                   "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}",
                   '--gin.LOG_PERIOD=1', '--gin.EVAL_PERIOD=None', '--gin.DROPOUT_RATE=0.0',
                   '--gin.PROMPT_LENGTH=5', f"--gin.PROMPT_FILE='{tmp_path / 'init.npy'}'"])
  output = proc.communicate(timeout=600)[0]
  assert proc.returncode == 0, output[-4000:]
  ours = {int(s): float(l) for s, l in re.findall(r'step (\d+)/\d+ .*?loss ([\d.]+)', output)}
  print('t5x  losses', theirs)
  print('ours losses', ours)
  assert sorted(theirs) == sorted(ours) == list(range(BASE_STEP + 1, BASE_STEP + 6))
  for step in theirs:
    assert abs(theirs[step] - ours[step]) <= 1e-4, (step, theirs[step], ours[step])
  t5x_prompt = VariableLoader(Transformer(TINY)).checkpoint(str(model_dir)).variables
  our_prompt = VariableLoader(Transformer(TINY)).checkpoint(str(ours_dir)).variables
  difference = np.max(np.abs(np.asarray(t5x_prompt['prompt']['prompt']['prompt']) -
                             np.asarray(our_prompt['prompt']['prompt']['prompt'])))
  print('max prompt difference', difference)
  assert difference <= 1e-5
