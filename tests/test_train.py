"""Training end to end: the CLI, frozen weights, resumption after a kill, bad input."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from prompt_tuning import gin_utils
from prompt_tuning.model import T5Config, load_pretrained
from prompt_tuning.train import trainer

from model_gins import model_gin  # tests/, on the path as pytest's rootdir

REPO = pathlib.Path(__file__).resolve().parents[1]
TESTS = REPO / 'tests'
BASE_STEP = 3  # the tiny T5X checkpoint is checkpoint_3

# The shape of T5X's tiny test checkpoint in shared/data.
TINY_T5X_GIN = model_gin(T5Config(emb_dim=4, num_heads=2, num_encoder_layers=2,
                                  num_decoder_layers=2, head_dim=2, mlp_dim=8,
                                  dropout_rate=0.0, relative_attention_num_buckets=4))


@pytest.fixture
def tiny_gin(tmp_path):
  path = tmp_path / 'tiny_t5x.gin'
  path.write_text(TINY_T5X_GIN)
  return str(path)


@pytest.fixture
def base_checkpoint(shared_data):
  return str(shared_data / 't5x_t5_1_1_tiny' / 'checkpoint_3')


def _args(tiny_gin, base_checkpoint, model_dir, steps, run='prompt_tune', prompt='random_uniform',
          extra=(), base_step=BASE_STEP):
  files = [tiny_gin] + ([f'gin/prompts/{prompt}.gin'] if prompt else []) + [f'gin/runs/{run}.gin']
  return [f'--gin_file={f}' for f in files] + [
      f"--gin.MODEL_DIR='{model_dir}'",
      "--gin.MIXTURE_OR_TASK_NAME='fixture_sentiment'",
      "--gin.MIXTURE_OR_TASK_MODULE='fixture_tasks'",
      f"--gin.INITIAL_CHECKPOINT_PATH='{base_checkpoint}'",
      f'--gin.TRAIN_STEPS={base_step + steps}',
      '--gin.BATCH_SIZE=8',
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}",
      '--gin.LOG_PERIOD=1',
      '--gin.EVAL_PERIOD=None',
  ] + (['--gin.PROMPT_LENGTH=5'] if prompt else []) + list(extra)


@pytest.fixture(scope='module')
def random_tiny_hf(tmp_path_factory):
  """Our `tiny` preset (d_model 64) with random weights, as a Hugging Face folder.

  T5X's tiny checkpoint (d_model 4) is too narrow for a prompt to move the
  loss visibly in a few steps; this one is wide enough.
  """
  from prompt_tuning.model import SIZES, Transformer, hf_checkpoint  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  tokens = np.ones((1, 8), np.int32)
  params = nn.unbox(Transformer(SIZES['tiny']).init(jax.random.PRNGKey(0), tokens, tokens,
                                                    tokens)['params'])
  path = tmp_path_factory.mktemp('random_tiny') / 'hf'
  hf_checkpoint.write_hf_t5(SIZES['tiny'], jax.tree_util.tree_map(np.asarray, params), str(path))
  return str(path)


def _run_cli(args, **kwargs):
  env = dict(os.environ, PYTHONPATH=f'{TESTS}{os.pathsep}{os.environ.get("PYTHONPATH", "")}')
  return subprocess.Popen([sys.executable, '-m', 'prompt_tuning.train', *args], cwd=REPO,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, **kwargs)


def _train_in_process(args):
  """Parses the same flags as the CLI and calls train() here (faster, inspectable)."""
  files = [a.split('=', 1)[1] for a in args if a.startswith('--gin_file=')]
  bindings = [b.split('=', 1)[1] for b in gin_utils.rewrite_gin_args(args)
              if b.startswith('--gin_bindings=')]
  if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
  gin_utils.parse_gin(files, bindings)
  return trainer.train()


def _scalars(model_dir, tag):
  values = {}
  for path in tf.io.gfile.glob(os.path.join(model_dir, 'train', 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == tag:
          values[event.step] = float(tf.make_ndarray(value.tensor))
  return [values[k] for k in sorted(values)]


def test_cli_prompt_tuning_learns(tmp_path, random_tiny_hf):
  model_dir = tmp_path / 'run'
  proc = _run_cli(_args('gin/models/t5_1_1/tiny.gin', random_tiny_hf, model_dir, steps=40,
                        base_step=0, extra=['--gin.CHECKPOINT_PERIOD=25']))
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out[-3000:]

  losses = _scalars(model_dir, 'loss')
  assert len(losses) == 40
  # Per-token loss starts near ln(32128) = 10.4; the prompt alone must cut it.
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5, losses
  assert 'step 40/40' in out and 'tokens/s' in out and 'ETA' in out

  # T5X saves when the absolute step is a multiple of the period, and at the end.
  assert sorted(p.name for p in model_dir.glob('checkpoint_*')) == ['checkpoint_25',
                                                                     'checkpoint_40']
  assert 'PromptTuning' in (model_dir / 'config.gin').read_text()
  counts = json.loads((model_dir / 'parameters.json').read_text())
  assert counts['trained'] == 5 * 64 and counts['frozen_delta'] == 0
  # Two 32128 x 64 vocabulary tables (4.1M) and the tiny layers.
  assert 4_112_384 < counts['backbone'] < 4_500_000, counts
  prompt_40 = np.load(model_dir / 'checkpoint_40' / 'prompt.npy')
  prompt_25 = np.load(model_dir / 'checkpoint_25' / 'prompt.npy')
  assert prompt_40.shape == (5, 64) and not np.allclose(prompt_40, prompt_25)
  # The checkpoint is the delta alone: the 8 MB backbone is not in it.
  total = sum(p.stat().st_size for p in (model_dir / 'checkpoint_40').rglob('*') if p.is_file())
  assert total < 200_000, f'{total} bytes'
  stored = {p.name for p in (model_dir / 'checkpoint_40' / 'state').rglob('*')}
  assert not any('token_embedder' in name for name in stored)


def test_frozen_backbone_is_bitwise_unchanged(tmp_path, tiny_gin, base_checkpoint):
  _, loaded = load_pretrained(base_checkpoint)
  state = _train_in_process(_args(tiny_gin, base_checkpoint, tmp_path / 'run', steps=3,
                                  extra=['--gin.DROPOUT_RATE=0.1']))
  assert set(state.trainable) == {'prompt'} and set(state.frozen) == {'params'}
  jax.tree_util.tree_map(np.testing.assert_array_equal, state.frozen['params'], loaded)
  # Optimizer state exists for the prompt only: every array is at most [5, 4].
  sizes = [np.size(x) for x in jax.tree_util.tree_leaves(state.opt_state)]
  assert max(sizes) <= 20


def test_model_tuning_trains_every_parameter(tmp_path, tiny_gin, base_checkpoint):
  _, loaded = load_pretrained(base_checkpoint)
  state = _train_in_process(_args(tiny_gin, base_checkpoint, tmp_path / 'run', steps=2,
                                  run='model_tune', prompt=None))
  assert set(state.trainable) == {'params'} and state.frozen == {}
  changed = jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, b),
                                   state.trainable['params'], loaded)
  assert all(jax.tree_util.tree_leaves(changed))


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_prompt(tmp_path, tiny_gin, base_checkpoint):
  straight_dir, killed_dir = tmp_path / 'straight', tmp_path / 'killed'
  extra = ['--gin.CHECKPOINT_PERIOD=4', '--gin.DROPOUT_RATE=0.1']
  straight = _run_cli(_args(tiny_gin, base_checkpoint, straight_dir, steps=12, extra=extra))
  # Run a second copy and kill it (SIGKILL: no clean-up) once a checkpoint exists.
  victim = _run_cli(_args(tiny_gin, base_checkpoint, killed_dir, steps=12, extra=extra))
  deadline = time.time() + 400
  while not list(killed_dir.glob('checkpoint_*/prompt.npy')) and victim.poll() is None:
    assert time.time() < deadline, 'no checkpoint appeared'
    time.sleep(0.2)
  victim.send_signal(signal.SIGKILL)
  victim.communicate()
  steps_at_kill = sorted(int(p.name.split('_')[1]) for p in killed_dir.glob('checkpoint_*')
                         if p.is_dir() and '.orbax' not in p.name)
  assert steps_at_kill and steps_at_kill[-1] < BASE_STEP + 12, steps_at_kill

  resumed = _run_cli(_args(tiny_gin, base_checkpoint, killed_dir, steps=12, extra=extra))
  out_resumed, _ = resumed.communicate(timeout=600)
  out_straight, _ = straight.communicate(timeout=600)
  assert resumed.returncode == 0 and straight.returncode == 0, out_resumed[-2000:]
  assert f'Resumed from {killed_dir}/checkpoint_{steps_at_kill[-1]}' in out_resumed
  np.testing.assert_array_equal(np.load(killed_dir / 'checkpoint_15' / 'prompt.npy'),
                                np.load(straight_dir / 'checkpoint_15' / 'prompt.npy'))


def test_evaluation_during_training_keeps_the_best_checkpoint(tmp_path, random_tiny_hf):
  model_dir = tmp_path / 'run'
  _train_in_process(_args('gin/models/t5_1_1/tiny.gin', random_tiny_hf, model_dir, steps=20,
                          base_step=0, extra=['--gin.EVAL_PERIOD=10', '--gin.EVAL_STEPS=2',
                                              '--gin.CHECKPOINT_PERIOD=10']))
  lines = (model_dir / 'inference_eval' / 'fixture_sentiment-metrics.jsonl').read_text()
  records = [json.loads(line) for line in lines.splitlines()]
  assert [r['step'] for r in records] == [10, 20]
  assert all(0.0 <= r['accuracy'] <= 100.0 for r in records)
  best = json.loads((model_dir / 'best' / 'best.json').read_text())
  scores = {r['step']: r['accuracy'] for r in records}
  assert best['step'] == max(scores, key=lambda s: (scores[s], -s))
  assert (model_dir / 'best' / f'checkpoint_{best["step"]}' / 'prompt.npy').exists()
  assert list((model_dir / 'training_eval' / 'fixture_sentiment').glob('events.out.*'))


def test_eval_before_training_scores_the_untrained_prompt(tmp_path, random_tiny_hf):
  # With a learning rate of 0 the prompt never moves, so the evaluation before
  # the first step and the one after the last must agree exactly.
  model_dir = tmp_path / 'run'
  _train_in_process(_args('gin/models/t5_1_1/tiny.gin', random_tiny_hf, model_dir, steps=5,
                          base_step=0, extra=['--gin.EVAL_PERIOD=5', '--gin.EVAL_STEPS=1',
                                              '--gin.CHECKPOINT_PERIOD=5',
                                              '--gin.optimizers.Adafactor.learning_rate=0.0',
                                              '--gin.trainer.train.run_eval_before_training=True']))
  lines = (model_dir / 'inference_eval' / 'fixture_sentiment-metrics.jsonl').read_text()
  records = [json.loads(line) for line in lines.splitlines()]
  assert [r['step'] for r in records] == [0, 5]
  assert records[0]['accuracy'] == records[1]['accuracy']


def test_rank_classification_evaluation_predicts_only_labels(tmp_path, random_tiny_hf):
  from prompt_tuning.infer import evaluation  # pylint: disable=g-import-not-at-top
  from prompt_tuning.model import contract  # pylint: disable=g-import-not-at-top
  state = _train_in_process(_args('gin/models/t5_1_1/tiny.gin', random_tiny_hf,
                                  tmp_path / 'run', steps=1, base_step=0))
  evaluator = evaluation.InferenceEvaluator(
      'fixture_sentiment', {'inputs': 16, 'targets': 4}, batch_size=8,
      rank_classification_labels=['positive', 'negative'])
  model = gin_utils.macro('METHOD').model
  predict_fn = evaluator._make_predict_fn(model, state.variables)  # pylint: disable=protected-access
  task = __import__('seqio').get_mixture_or_task('fixture_sentiment')
  dataset = contract.of(model).feature_converter()(
      task.get_dataset({'inputs': 16, 'targets': 4}, split='validation', shuffle=False),
      {'inputs': 16, 'targets': 4}).enumerate()
  vocabulary = task.output_features['targets'].vocabulary
  predictions = {vocabulary.decode(tokens) for _, tokens in predict_fn(dataset)}
  assert predictions <= {'positive', 'negative'} and predictions
  metrics = evaluator.evaluate(model, state.variables)
  assert set(metrics) == {'fixture_sentiment'} and 'accuracy' in metrics['fixture_sentiment']


def test_rank_classification_labels_of_different_lengths_evaluate(tmp_path, random_tiny_hf):
  # seqio stacks a task's predictions into one array: labels of 1 and 4
  # tokens, predicted alternately, crashed the evaluation before they were padded.
  from prompt_tuning.infer import evaluation  # pylint: disable=g-import-not-at-top
  state = _train_in_process(_args('gin/models/t5_1_1/tiny.gin', random_tiny_hf,
                                  tmp_path / 'run', steps=1, base_step=0))
  labels = ['positive', 'negative', 'not at all negative']
  evaluator = evaluation.InferenceEvaluator(
      'fixture_sentiment', {'inputs': 16, 'targets': 8}, batch_size=8,
      rank_classification_labels=labels)
  jitted = evaluator._jitted  # pylint: disable=protected-access
  alternate = lambda variables, bank, tokens: np.arange(tokens.shape[0]) % 2 * 2
  evaluator._jitted = lambda model, kind: alternate if kind == 'rank' else jitted(model, kind)
  metrics = evaluator.evaluate(gin_utils.macro('METHOD').model, state.variables)
  # 'negative' is never predicted and 'not at all negative' is never a target,
  # so the accuracy is the share of 'positive' targets in even rows.
  task = __import__('seqio').get_mixture_or_task('fixture_sentiment')
  targets = [ex['targets_pretokenized'].decode() for ex in task.get_dataset(
      {'inputs': 16, 'targets': 8}, split='validation', shuffle=False).as_numpy_iterator()]
  expected = 100 * np.mean([t == 'positive' and i % 2 == 0 for i, t in enumerate(targets)])
  assert metrics['fixture_sentiment']['accuracy'] == pytest.approx(expected)


# -- bad input ------------------------------------------------------------------


def test_missing_required_macro_is_named(tmp_path, tiny_gin, base_checkpoint):
  args = [a for a in _args(tiny_gin, base_checkpoint, tmp_path, steps=1)
          if not a.startswith('--gin.MODEL_DIR')]
  with pytest.raises(Exception, match='MODEL_DIR'):
    _train_in_process(args)


def test_missing_class_labels_is_named(tmp_path, tiny_gin, base_checkpoint):
  with pytest.raises(Exception, match='CLASS_LABELS'):
    _train_in_process(_args(tiny_gin, base_checkpoint, tmp_path, steps=1,
                            prompt='class_labels'))


def test_unknown_task(tmp_path, tiny_gin, base_checkpoint):
  args = _args(tiny_gin, base_checkpoint, tmp_path, steps=1,
               extra=["--gin.MIXTURE_OR_TASK_NAME='no_such_task'"])
  with pytest.raises(ValueError, match="Unknown MIXTURE_OR_TASK_NAME 'no_such_task'"):
    _train_in_process(args)


def test_vocabulary_that_does_not_fit_the_model(tmp_path, tiny_gin, base_checkpoint):
  args = _args(tiny_gin, base_checkpoint, tmp_path, steps=1,
               extra=['--gin_bindings=prompt_tuning.model.config.T5Config.vocab_size = 1000'])
  with pytest.raises(ValueError, match=r'vocabulary .*32100 ids.* 1000 rows'):
    _train_in_process(args)


def test_checkpoint_that_does_not_fit_the_model(tmp_path, tiny_gin, base_checkpoint):
  args = _args(tiny_gin, base_checkpoint, tmp_path, steps=1,
               extra=['--gin_bindings=prompt_tuning.model.config.T5Config.mlp_dim = 16'])
  with pytest.raises(ValueError, match=r'mlp/wi_0/kernel'):
    _train_in_process(args)


def test_prompt_file_of_the_wrong_shape(tmp_path, tiny_gin, base_checkpoint):
  bad = tmp_path / 'bad.npy'
  np.save(bad, np.zeros((7, 4), np.float32))
  args = _args(tiny_gin, base_checkpoint, tmp_path / 'run', steps=1, prompt='from_file',
               extra=[f"--gin.PROMPT_FILE='{bad}'"])
  with pytest.raises(ValueError, match=r'\(7, 4\).*\(5, 4\)|\(5, 4\).*\(7, 4\)'):
    _train_in_process(args)


def test_nan_loss_stops_with_a_clear_error(tmp_path, tiny_gin, base_checkpoint, monkeypatch):
  # Bases and prompt files holding NaN are refused when loaded, so divergence is
  # simulated: every step returns a NaN loss and NaN trained variables.
  real_step = trainer.make_train_step

  def diverging(*args, **kwargs):
    step = real_step(*args, **kwargs)

    def run(state, batch):
      state, metrics = step(state, batch)
      nan = lambda x: x * jnp.nan
      return (state.replace(trainable=jax.tree_util.tree_map(nan, state.trainable)),
              {**metrics, 'loss': nan(metrics['loss'])})
    return run

  monkeypatch.setattr(trainer, 'make_train_step', diverging)
  args = _args(tiny_gin, base_checkpoint, tmp_path / 'run', steps=2)
  with pytest.raises(FloatingPointError, match=r'loss is nan at step 4 .*non-finite trained '
                                               r"variables: \{'prompt/prompt/prompt': 20\}.*"
                                               'no checkpoint was saved yet'):
    _train_in_process(args)
  assert not list((tmp_path / 'run').glob('checkpoint_*'))


def test_resume_on_another_base_model_is_refused(tmp_path, tiny_gin, base_checkpoint):
  from prompt_tuning.model import hf_checkpoint  # pylint: disable=g-import-not-at-top
  config, params = load_pretrained(base_checkpoint)
  other = jax.tree_util.tree_map(lambda x: x * 1.5, params)
  hf_checkpoint.write_hf_t5(config, other, str(tmp_path / 'other'))
  _train_in_process(_args(tiny_gin, base_checkpoint, tmp_path / 'run', steps=1))
  gin.clear_config()
  args = _args(tiny_gin, str(tmp_path / 'other'), tmp_path / 'run', steps=2)
  with pytest.raises(ValueError, match='fingerprint'):
    _train_in_process(args)


def _pretrain_args(tiny_gin, run, model_dir, train_steps, extra=()):
  return [f'--gin_file={tiny_gin}', f'--gin_file=gin/runs/{run}.gin',
          f"--gin.MODEL_DIR='{model_dir}'",
          "--gin.MIXTURE_OR_TASK_MODULE='prompt_tuning.data.demo_tasks'",
          f'--gin.TRAIN_STEPS={train_steps}', '--gin.BATCH_SIZE=4', '--gin.LOG_PERIOD=1',
          '--gin.CHECKPOINT_PERIOD=100', *extra]


def test_pretrain_then_lm_adapt_give_full_checkpoints_load_pretrained_reads(
    tmp_path, tiny_gin):
  pretrained = tmp_path / 'span_corruption'
  state = _train_in_process(_pretrain_args(
      tiny_gin, 'pretrain', pretrained, 4,
      ["--gin.MIXTURE_OR_TASK_NAME='demo_world_span_corruption'",
       "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 14}"]))
  assert set(state.trainable) == {'params'} and int(state.step) == 4
  # T5's schedule at steps below the 10,000 warm-up: 1 / sqrt(10000).
  np.testing.assert_allclose(_scalars(str(pretrained), 'learning_rate'), [0.01] * 4)
  config, params = load_pretrained(str(pretrained))
  assert config.emb_dim == 4 and config.num_encoder_layers == 2
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, state.trainable['params'])

  gin.clear_config()
  adapted = tmp_path / 'lm_adapted'
  state = _train_in_process(_pretrain_args(
      tiny_gin, 'lm_adapt', adapted, 7,
      [f"--gin.INITIAL_CHECKPOINT_PATH='{pretrained}'",
       "--gin.MIXTURE_OR_TASK_NAME='demo_world_prefix_lm'",
       "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 64}"]))
  # The global step continues from the span-corruption checkpoint's 4.
  assert int(state.step) == 7 and os.path.isdir(adapted / 'checkpoint_7')
  assert len(_scalars(str(adapted), 'loss')) == 3
  _, adapted_params = load_pretrained(str(adapted / 'checkpoint_7'))
  changed = jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, b),
                                   adapted_params, params)
  assert all(jax.tree_util.tree_leaves(changed))


def test_load_pretrained_refuses_a_prompt_checkpoint(tmp_path, tiny_gin, base_checkpoint):
  from prompt_tuning.model import CheckpointError  # pylint: disable=g-import-not-at-top
  _train_in_process(_args(tiny_gin, base_checkpoint, tmp_path / 'run', steps=1))
  with pytest.raises(CheckpointError, match='delta checkpoint.*base model is .*checkpoint_3'):
    load_pretrained(str(tmp_path / 'run'))


def test_training_from_scratch_needs_trainable_params(tmp_path, tiny_gin):
  with pytest.raises(gin_utils.ConfigurationError, match='from scratch'):
    _train_in_process(_args(tiny_gin, None, tmp_path / 'run', steps=1, base_step=0,
                            extra=['--gin.INITIAL_CHECKPOINT_PATH=None']))


def test_relative_model_dir(tmp_path, tiny_gin, base_checkpoint, monkeypatch):
  # Orbax wants absolute paths; a relative MODEL_DIR is relative to the cwd.
  monkeypatch.chdir(tmp_path)
  _train_in_process(_args(tiny_gin, base_checkpoint, 'rel/run', steps=1,
                          run='model_tune', prompt=None))
  assert (tmp_path / 'rel' / 'run' / f'checkpoint_{BASE_STEP + 1}').is_dir()
  config, _ = load_pretrained('rel/run')
  assert config.emb_dim == 4
