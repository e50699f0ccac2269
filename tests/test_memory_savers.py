"""Remat and microbatching trade compute for memory and change nothing else."""
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from prompt_tuning import gin_utils
from prompt_tuning.infer import predict
from prompt_tuning.model import SIZES, T5Config, Transformer
from prompt_tuning.model.config import REMAT_POLICIES
from prompt_tuning.deltas import PromptTuning, paths
from prompt_tuning.train.optimizers import Adafactor
from prompt_tuning.train.step import (TrainState, batch_loss, make_train_step,
                                      split_microbatches)

TINY = SIZES['tiny'].replace(dropout_rate=0.1, dtype='float32')


def _batch(batch_size=8, inputs=12, targets=5, seed=0):
  """Random tokens with ragged padding, so rows carry different token counts."""
  rng = np.random.RandomState(seed)
  enc = rng.randint(1, 32000, (batch_size, inputs)).astype(np.int32)
  tgt = rng.randint(1, 32000, (batch_size, targets)).astype(np.int32)
  for row in range(batch_size):
    enc[row, rng.randint(3, inputs + 1):] = 0
    tgt[row, rng.randint(1, targets + 1):] = 0
  dec = np.concatenate([np.zeros_like(tgt[:, :1]), tgt[:, :-1]], axis=1)
  return {'encoder_input_tokens': jnp.asarray(enc), 'decoder_input_tokens': jnp.asarray(dec),
          'decoder_target_tokens': jnp.asarray(tgt)}


def _init(model, batch, seed=0):
  return nn.unbox(model.init(jax.random.PRNGKey(seed), batch['encoder_input_tokens'],
                             batch['decoder_input_tokens'], batch['decoder_target_tokens']))


# -- remat ---------------------------------------------------------------------


@pytest.mark.parametrize('policy', [p for p in REMAT_POLICIES if p != 'none'])
def test_remat_keeps_the_parameter_tree_and_logical_axes(policy):
  batch = _batch()
  abstract = lambda cfg: jax.eval_shape(lambda: Transformer(cfg).init(
      jax.random.PRNGKey(0), batch['encoder_input_tokens'], batch['decoder_input_tokens'],
      batch['decoder_target_tokens']))
  plain, remat = abstract(TINY), abstract(TINY.replace(remat_policy=policy))
  shapes = lambda v: {k: (x.shape, x.dtype) for k, x in flatten_dict(nn.unbox(v)).items()}
  assert shapes(remat) == shapes(plain)
  assert (flatten_dict(nn.get_partition_spec(remat)) ==
          flatten_dict(nn.get_partition_spec(plain)))
  assert ('params', 'encoder', 'layers_1', 'mlp', 'wo', 'kernel') in flatten_dict(remat)


@pytest.fixture(scope='module')
def reference_gradients():
  """Loss, metrics and gradients of every parameter, no remat, dropout on."""
  batch = _batch()
  params = _init(Transformer(TINY), batch)['params']
  rng = jax.random.PRNGKey(7)

  def run(config):
    fn = lambda p: batch_loss(Transformer(config), {'params': p}, batch, dropout_rng=rng)
    return jax.jit(jax.value_and_grad(fn, has_aux=True))(params)

  return run, run(TINY)


@pytest.mark.parametrize('policy', ['full', 'minimal'])  # 'dots' differs only in its policy
def test_remat_gives_the_same_loss_and_gradients(policy, reference_gradients):
  run, ((loss, metrics), grads) = reference_gradients
  (remat_loss, remat_metrics), remat_grads = run(TINY.replace(remat_policy=policy))
  np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
  for key in metrics:
    np.testing.assert_allclose(remat_metrics[key], metrics[key], rtol=1e-6)
  flat, remat_flat = flatten_dict(grads), flatten_dict(remat_grads)
  assert flat.keys() == remat_flat.keys()
  for key, grad in flat.items():
    scale = float(np.max(np.abs(grad))) or 1.0
    np.testing.assert_allclose(remat_flat[key], grad, rtol=1e-5, atol=1e-6 * scale,
                               err_msg='/'.join(key))


def test_remat_cached_decoding_and_prompt_model_unchanged():
  config = T5Config(vocab_size=64, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=48,
                    num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0)
  enc = jnp.asarray(np.random.RandomState(0).randint(2, 64, (3, 9)))
  prompted = lambda cfg: Transformer(cfg, deltas=(PromptTuning(length=3),))
  variables = _init(prompted(config),
                    {'encoder_input_tokens': enc, 'decoder_input_tokens': enc[:, :4],
                     'decoder_target_tokens': enc[:, :4]})
  plain = predict.decode(prompted(config), variables, enc, 6)
  remat = predict.decode(prompted(config.replace(remat_policy='full')), variables, enc, 6)
  np.testing.assert_array_equal(remat, plain)


def test_t5x_checkpoint_runs_under_remat(shared_data):
  from prompt_tuning.model import load_pretrained  # pylint: disable=g-import-not-at-top
  config, params = load_pretrained(str(shared_data / 't5x_t5_1_1_tiny' / 'checkpoint_3'))
  batch = _batch()
  logits = lambda cfg: jax.jit(Transformer(cfg).apply)(
      {'params': params}, batch['encoder_input_tokens'], batch['decoder_input_tokens'],
      batch['decoder_target_tokens'])
  np.testing.assert_allclose(logits(config.replace(remat_policy='full')), logits(config),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('run', ['prompt_tune', 'model_tune'])
def test_remat_policy_gin_switch(run):
  files = ['gin/models/t5_1_1/tiny.gin'] + (
      ['gin/prompts/random_uniform.gin'] if run == 'prompt_tune' else []) + [
          f'gin/runs/{run}.gin']
  required = ["MODEL_DIR = '/tmp/unused'", "MIXTURE_OR_TASK_NAME = 'unused'",
              "INITIAL_CHECKPOINT_PATH = '/tmp/unused'"]
  gin_utils.parse_gin(files, required + ["REMAT_POLICY = 'full'"])
  assert gin_utils.macro('METHOD').model.config.remat_policy == 'full'
  gin.clear_config()
  gin_utils.parse_gin(files, required)
  assert gin_utils.macro('METHOD').model.config.remat_policy == 'none'


def test_unknown_remat_policy_is_named():
  with pytest.raises(ValueError, match=r"remat_policy 'some'.*'none', 'minimal'"):
    TINY.replace(remat_policy='some')


# -- microbatching ---------------------------------------------------------------


def _one_step(model, variables, trainable_patterns, optimizer, batch, num_microbatches,
              **loss_kwargs):
  frozen, trainable = paths.partition(variables, trainable_patterns)
  # Fresh copies: the step donates the trainable variables and optimizer state.
  trainable = jax.tree_util.tree_map(jnp.array, trainable)
  tx = optimizer.build(0)
  state = TrainState(step=jnp.asarray(0, jnp.int32), frozen=frozen, trainable=trainable,
                     opt_state=tx.init(trainable))
  step_fn = make_train_step(model, tx, seed=0, num_microbatches=num_microbatches,
                            **loss_kwargs)
  state, metrics = step_fn(state, batch)
  return state.trainable, jax.device_get(metrics)


def _assert_same_step(big, micro, rtol=1e-5):
  (trainable, metrics), (micro_trainable, micro_metrics) = big, micro
  assert metrics.keys() == micro_metrics.keys()
  for key in metrics:
    np.testing.assert_allclose(micro_metrics[key], metrics[key], rtol=rtol, err_msg=key)
  flat, micro_flat = flatten_dict(trainable), flatten_dict(micro_trainable)
  assert flat.keys() == micro_flat.keys()
  for key in flat:
    np.testing.assert_allclose(micro_flat[key], flat[key], rtol=rtol, atol=1e-7,
                               err_msg='/'.join(key))


def test_microbatched_prompt_tuning_step_equals_the_big_batch():
  config = TINY.replace(dropout_rate=0.0)  # equality needs the same (no) dropout
  model = Transformer(config, deltas=(PromptTuning(length=5),))
  batch = _batch()
  variables = _init(model, batch)
  run = lambda n: _one_step(model, variables, ('prompt/.*',), Adafactor(), batch, n)
  big = run(None)
  _assert_same_step(big, run(4))
  # The update moved the prompt (so the comparison is not trivially of the init).
  assert not np.allclose(big[0]['prompt']['prompt']['prompt'],
                         variables['prompt']['prompt']['prompt'])


def test_microbatched_model_tuning_step_equals_the_big_batch_per_token_normalized():
  config = TINY.replace(dropout_rate=0.0)
  model = Transformer(config)
  batch = _batch()
  variables = _init(model, batch)
  optimizer = Adafactor(learning_rate=1e-3, weight_decay_rate=None,
                        multiply_by_parameter_scale=True)
  # A factor taken from the batch (T5X's NUM_REAL_TARGET_TOKENS) must be the
  # whole batch's token count in every microbatch, not the microbatch's own.
  run = lambda n: _one_step(model, variables, ('params/.*',), optimizer, batch, n,
                            loss_normalizing_factor='NUM_REAL_TARGET_TOKENS')
  big = run(1)
  _assert_same_step(big, run(4))
  tokens = float(jnp.sum(batch['decoder_target_tokens'] > 0))
  assert big[1]['weight_sum'] == tokens
  # Normalized: the loss is per token (~ln 32128 for a random model).
  assert 5.0 < big[1]['loss'] < 15.0


def test_indivisible_batch_is_a_clear_error():
  batch = _batch(batch_size=6, inputs=4, targets=2)
  with pytest.raises(ValueError, match='batch size 6 is not divisible by num_microbatches=4'):
    split_microbatches(batch, 4)  # what the step runs while tracing
  # Microbatch k holds rows k, k + N, ...: the strided split of a 'data'-sharded batch.
  split = split_microbatches(batch, 3)['encoder_input_tokens']
  assert split.shape == (3, 2, 4)
  np.testing.assert_array_equal(split[1], batch['encoder_input_tokens'][1::3])


def test_trainer_takes_num_microbatches_from_gin(tmp_path, shared_data, monkeypatch):
  from prompt_tuning.train import trainer  # pylint: disable=g-import-not-at-top
  from test_train import TINY_T5X_GIN, _args, _train_in_process  # pylint: disable=g-import-not-at-top
  seen, make = [], trainer.make_train_step
  monkeypatch.setattr(trainer, 'make_train_step', lambda *a, **k: (
      seen.append(k['num_microbatches']), make(*a, **k))[1])
  tiny_gin = tmp_path / 'tiny.gin'
  tiny_gin.write_text(TINY_T5X_GIN)
  checkpoint = str(shared_data / 't5x_t5_1_1_tiny' / 'checkpoint_3')
  run = lambda name, n: _train_in_process(_args(
      str(tiny_gin), checkpoint, tmp_path / name, steps=1,
      extra=[f'--gin.NUM_MICROBATCHES={n}', "--gin.REMAT_POLICY='full'",
             '--gin.DROPOUT_RATE=0.0']))
  whole = run('whole', None).trainable
  gin.clear_config()
  micro = run('micro', 4).trainable
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                         micro, whole)
  assert seen == [None, 4]
  gin.clear_config()
  with pytest.raises(ValueError, match='BATCH_SIZE 8 is not divisible by NUM_MICROBATCHES 3'):
    run('bad', 3)


# -- a bfloat16 frozen backbone ------------------------------------------------------


def test_a_bfloat16_frozen_backbone_trains_the_bitwise_same_prompt():
  # Every layer casts its weights to the activation dtype first, so with
  # bfloat16 activations a backbone stored in bfloat16 computes the same bits.
  from prompt_tuning.train.trainer import cast_frozen  # pylint: disable=g-import-not-at-top
  config = TINY.replace(dtype='bfloat16')
  model = Transformer(config, deltas=(PromptTuning(length=5),))
  batch = _batch()
  variables = _init(model, batch)
  frozen, trainable = paths.partition(variables, ('prompt/.*',))
  stored = cast_frozen(frozen, 'bfloat16')
  dtypes = lambda tree: {'/'.join(k): str(x.dtype) for k, x in flatten_dict(tree['params']).items()}
  assert set(dtypes(frozen).values()) == {'float32'}
  # All but the logits projection, which T5X computes in float32.
  assert {k: v for k, v in dtypes(stored).items() if v != 'bfloat16'} == {
      'decoder/logits_dense/kernel': 'float32'}

  def three_steps(frozen):
    tx = Adafactor().build(0)
    own = jax.tree_util.tree_map(jnp.array, trainable)  # the step donates it
    state = TrainState(step=jnp.asarray(0, jnp.int32), frozen=frozen, trainable=own,
                       opt_state=tx.init(own))
    step_fn = make_train_step(model, tx, seed=0)
    for _ in range(3):
      state, metrics = step_fn(state, batch)
    return jax.device_get(state.trainable), jax.device_get(metrics)

  (prompt, metrics), (prompt_bf16, metrics_bf16) = three_steps(frozen), three_steps(stored)
  assert not np.array_equal(prompt['prompt']['prompt']['prompt'],
                            trainable['prompt']['prompt']['prompt'])
  np.testing.assert_array_equal(prompt_bf16['prompt']['prompt']['prompt'],
                                prompt['prompt']['prompt']['prompt'])
  assert metrics_bf16 == metrics


def test_frozen_param_dtype_gin_switch_and_bad_value():
  from prompt_tuning.train.trainer import cast_frozen  # pylint: disable=g-import-not-at-top
  files = ['gin/models/t5_1_1/tiny.gin', 'gin/prompts/random_uniform.gin',
           'gin/runs/prompt_tune.gin']
  required = ["MODEL_DIR = '/tmp/unused'", "MIXTURE_OR_TASK_NAME = 'unused'",
              "INITIAL_CHECKPOINT_PATH = '/tmp/unused'"]
  gin_utils.parse_gin(files, required + ["FROZEN_PARAM_DTYPE = 'bfloat16'"])
  assert gin_utils.macro('FROZEN_PARAM_DTYPE') == 'bfloat16'
  assert gin.query_parameter('train.frozen_param_dtype').__repr__() == '%FROZEN_PARAM_DTYPE'
  gin.clear_config()
  gin_utils.parse_gin(files, required)
  assert gin_utils.macro('FROZEN_PARAM_DTYPE') is None
  gin.clear_config()
  with pytest.raises(gin_utils.ConfigurationError, match="FROZEN_PARAM_DTYPE must be a floating"):
    cast_frozen({'params': {'w': jnp.ones(2)}}, 'int8')
