"""Intrinsic prompt tuning: parity with a PyTorch auto-encoder, frozen parts, serving, a run."""
import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from prompt_tuning.deltas import IntrinsicPrompt, IntrinsicSubspaceFinding, PromptTuning
from prompt_tuning.deltas import intrinsic, paths, read_prompt
from prompt_tuning.deltas.prompt import NotRecorded
from prompt_tuning.model import T5Config, Transformer, checkpoints
from prompt_tuning.train.method import Method
from prompt_tuning.train.step import TrainState, batch_loss, make_train_step

from test_train import TINY_T5X_GIN, _args, _train_in_process  # tests/, on the path

CONFIG = T5Config(vocab_size=32128, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                  num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)
T, P, D, D_I = 3, 4, CONFIG.emb_dim, 5
MARKER_0 = 32099
TASKS = [2, 0, 1, 2]  # the batch's examples' tasks


def _batch(tasks=TASKS):
  rng = np.random.RandomState(0)
  enc = rng.randint(2, 500, (len(tasks), 9))
  enc[:, 0] = MARKER_0 - np.asarray(tasks)
  enc[0, 6:] = 0
  tgt = rng.randint(2, 500, (len(tasks), 3))
  tgt[1, 2:] = 0  # examples have different numbers of target tokens
  dec = np.concatenate([np.zeros((len(tasks), 1), int), tgt[:, :-1]], 1)
  return {'encoder_input_tokens': jnp.asarray(enc), 'decoder_input_tokens': jnp.asarray(dec),
          'decoder_target_tokens': jnp.asarray(tgt)}


def _logits(model, variables, batch):
  return model.apply(variables, *batch.values())


@pytest.fixture(scope='module')
def msf():
  """An MSF delta over T random prompts and its initialized variables."""
  sources = np.random.RandomState(1).normal(size=(T, P, D)).astype(np.float32)
  delta = IntrinsicSubspaceFinding(sources=sources, intrinsic_dim=D_I)
  model = Transformer(CONFIG, deltas=(delta,))
  variables = nn.unbox(model.init(jax.random.PRNGKey(0), *_batch().values()))
  return delta, model, jax.tree_util.tree_map(np.asarray, variables), sources


class TorchAutoEncoder(torch.nn.Module):
  """IPT's auto-encoder, written from the paper's description."""

  def __init__(self, length, width, intrinsic_dim):
    super().__init__()
    self.encoder = torch.nn.Linear(length * width, intrinsic_dim)
    self.decoder = torch.nn.Sequential(torch.nn.Linear(intrinsic_dim, width), torch.nn.Tanh(),
                                       torch.nn.Linear(width, length * width))

  def forward(self, prompts):  # [T, P, d] -> (reconstructions [T, P, d], MSE per task [T])
    flat = prompts.reshape(prompts.shape[0], -1)
    reconstructed = self.decoder(self.encoder(flat))
    mse = torch.nn.functional.mse_loss(reconstructed, flat, reduction='none').mean(-1)
    return reconstructed.reshape(prompts.shape), mse


def _torch_model(leaves):
  """The torch auto-encoder holding our weights (torch's weight is our kernel transposed)."""
  module = TorchAutoEncoder(P, D, D_I)
  copies = {module.encoder: 'encoder', module.decoder[0]: 'hidden', module.decoder[2]: 'output'}
  with torch.no_grad():
    for linear, prefix in copies.items():
      linear.weight.copy_(torch.from_numpy(np.asarray(leaves[f'{prefix}_kernel']).T.copy()))
      linear.bias.copy_(torch.from_numpy(np.array(leaves[f'{prefix}_bias'])))
  return module


def test_reconstructions_and_the_loss_term_equal_a_pytorch_auto_encoder(msf):
  delta, model, variables, sources = msf
  leaves = variables['intrinsic']['intrinsic']
  np.testing.assert_array_equal(leaves['source_prompts'], sources)
  with torch.no_grad():
    reconstructed, mse = (t.numpy() for t in _torch_model(leaves)(torch.from_numpy(np.array(sources))))
  np.testing.assert_allclose(delta.reconstructed(variables), reconstructed, atol=1e-5, rtol=1e-5)

  # The term: alpha * MSE of each example's task, once per target token.
  batch = _batch()
  tokens = np.asarray(batch['decoder_target_tokens'] > 0).sum(-1)
  _, metrics = batch_loss(model, variables, batch)
  expected = sum(200.0 * mse[t] * n for t, n in zip(TASKS, tokens))
  np.testing.assert_allclose(metrics['auxiliary_loss'], expected, rtol=1e-5)
  # Normalized per target token, a one-task batch's term is alpha * MSE: the paper's.
  _, metrics = batch_loss(model, variables, _batch([1, 1]),
                          loss_normalizing_factor='NUM_REAL_TARGET_TOKENS')
  np.testing.assert_allclose(metrics['auxiliary_loss'], 200.0 * mse[1], rtol=1e-5)
  # Each example is served its task's reconstruction: a plain prompt delta given it agrees.
  served = _logits(model, variables, batch)
  for row, task in enumerate(TASKS):
    single = PromptTuning(length=P, init=NotRecorded())
    alone = _logits(Transformer(CONFIG, deltas=(single,)),
                    single.with_prompt({'params': variables['params']},
                                       jnp.asarray(reconstructed[task])),
                    {k: v[row:row + 1] for k, v in batch.items()})
    np.testing.assert_allclose(served[row:row + 1], alone, atol=1e-5, rtol=1e-5)


def _train(delta, variables, steps=2, num_microbatches=None):
  method = Method(CONFIG, deltas=(delta,))
  frozen, trainable = method.split(variables)
  tx = method.optimizer.build(0)
  state = TrainState(step=jnp.asarray(0, jnp.int32), frozen=frozen,
                     trainable=jax.tree_util.tree_map(jnp.array, trainable),
                     opt_state=tx.init(trainable))
  step_fn = make_train_step(method.model, tx, seed=0, num_microbatches=num_microbatches)
  for _ in range(steps):
    state, metrics = step_fn(state, _batch())
  return state, metrics


def _leaf_names(tree):
  return {path.rsplit('/', 1)[-1] for path in paths.flatten_tree(tree)}


def _assert_only_trained_moved(state, initial):
  flat = paths.flatten_tree(initial)
  for path, value in paths.flatten_tree(state.frozen).items():
    np.testing.assert_array_equal(np.asarray(value), flat[path], err_msg=path)
  for path, value in paths.flatten_tree(state.trainable).items():
    assert not np.allclose(np.asarray(value), flat[path]), path


def test_msf_trains_the_auto_encoder_only(msf):
  delta, _, variables, _ = msf
  state, metrics = _train(delta, variables)
  assert _leaf_names(state.trainable) == {'encoder_kernel', 'encoder_bias', 'hidden_kernel',
                                          'hidden_bias', 'output_kernel', 'output_bias'}
  assert 'source_prompts' in _leaf_names(state.frozen)
  _assert_only_trained_moved(state, variables)
  assert 0 < metrics['auxiliary_loss'] < metrics['loss']
  # Summed per target token, microbatches add up to the whole batch.
  _, halves = _train(delta, variables, steps=1, num_microbatches=2)
  _, whole = _train(delta, variables, steps=1)
  for name in ('loss', 'auxiliary_loss'):
    np.testing.assert_allclose(halves[name], whole[name], rtol=1e-5)


@pytest.fixture(scope='module')
def ist(msf, tmp_path_factory):
  """IST from the MSF delta's exported decoder, and its initialized variables."""
  delta, _, variables, _ = msf
  directory = tmp_path_factory.mktemp('msf_export')
  written = delta.export(variables, str(directory))
  assert [os.path.basename(p) for p in written] == ['intrinsic_decoder.npz'] + [
      f'intrinsic_task{i}.npy' for i in range(T)]
  ist_delta = IntrinsicPrompt(decoder=str(directory / 'intrinsic_decoder.npz'))
  model = Transformer(CONFIG, deltas=(ist_delta,))
  ist_variables = nn.unbox(model.init(jax.random.PRNGKey(2), *_batch().values()))
  return ist_delta, model, jax.tree_util.tree_map(np.asarray, ist_variables), variables


def test_ist_starts_from_msfs_decoder_and_trains_z_only(ist):
  delta, _, variables, msf_variables = ist
  assert (delta.length, delta.intrinsic_dim) == (P, D_I)
  tree, msf_tree = variables['prompt']['prompt'], msf_variables['intrinsic']['intrinsic']
  for leaf in intrinsic.DECODER_LEAVES:
    np.testing.assert_array_equal(tree[leaf], msf_tree[leaf])
  assert tree['z'].shape == (D_I,) and 0 < np.abs(tree['z']).max() < 0.1  # N(0, 0.02^2)
  state, metrics = _train(delta, variables)
  assert _leaf_names(state.trainable) == {'z'} and 'auxiliary_loss' not in metrics
  _assert_only_trained_moved(state, variables)


def test_ist_materializes_to_a_plain_prompt(ist):
  delta, model, variables, _ = ist
  tree = variables['prompt']['prompt']
  # The prompt decoder(z), by the PyTorch decoder.
  with torch.no_grad():
    torch_prompt = _torch_model({**tree, 'encoder_kernel': np.zeros((P * D, D_I), np.float32),
                                 'encoder_bias': np.zeros(D_I, np.float32)}
                                ).decoder(torch.from_numpy(np.array(tree['z']))).numpy().reshape(P, D)
  served = delta.materialize(variables)
  assert set(served['prompt']['prompt']) == {'prompt'}
  np.testing.assert_allclose(served['prompt']['prompt']['prompt'], torch_prompt, atol=1e-5)
  batch = _batch()
  trained = _logits(model, variables, batch)
  np.testing.assert_allclose(_logits(model, served, batch), trained, atol=1e-6, rtol=1e-6)
  # Those are prompt tuning's own variables.
  plain = Transformer(CONFIG, deltas=(PromptTuning(length=P, init=NotRecorded()),))
  np.testing.assert_allclose(_logits(plain, served, batch), trained, atol=1e-6, rtol=1e-6)


def test_configs_round_trip(msf, ist):
  for delta in (msf[0], ist[0]):
    config = json.loads(json.dumps(delta.to_config()))
    rebuilt = type(delta).from_config(config)
    assert rebuilt.to_config() == delta.to_config()
  assert IntrinsicSubspaceFinding.from_config(msf[0].to_config()).num_tasks == T


def test_bad_input_is_named(tmp_path, msf):
  prompt = np.zeros((P, D), np.float32)
  with pytest.raises(ValueError, match='must be at least 1, got 0'):
    IntrinsicSubspaceFinding(sources=[prompt], intrinsic_dim=0)
  with pytest.raises(ValueError, match=r'one shape; got <array 0> \(4, 16\), <array 1> \(3, 16\)'):
    IntrinsicSubspaceFinding(sources=[prompt, prompt[:3]])
  with pytest.raises(ValueError, match='No source prompts'):
    IntrinsicSubspaceFinding(sources=[])
  with pytest.raises(FileNotFoundError, match='No prompt file at /nowhere/a.npy'):
    IntrinsicSubspaceFinding(sources=['/nowhere/a.npy'])
  with pytest.raises(FileNotFoundError, match='No intrinsic decoder file at /nowhere/d.npz'):
    IntrinsicPrompt(decoder='/nowhere/d.npz')
  with pytest.raises(FileNotFoundError, match='/nowhere/run'):
    IntrinsicPrompt(decoder='/nowhere/run')
  with pytest.raises(ValueError, match='needs the MSF decoder'):
    IntrinsicPrompt()
  np.savez(tmp_path / 'partial.npz', hidden_kernel=np.zeros((2, D)))
  with pytest.raises(ValueError, match=r"lacks the intrinsic decoder weights \['hidden_bias'"):
    IntrinsicPrompt(decoder=str(tmp_path / 'partial.npz'))
  msf[0].export(msf[2], str(tmp_path))
  with pytest.raises(ValueError, match="prompt length 7 differs from the decoder's 4"):
    IntrinsicPrompt(decoder=str(tmp_path / 'intrinsic_decoder.npz'), length=7)
  narrow = dataclasses.replace(CONFIG, emb_dim=8)
  with pytest.raises(ValueError, match="width 16 but the model's width d is 8"):
    Transformer(narrow, deltas=(msf[0],)).init(jax.random.PRNGKey(0), *_batch().values())


@pytest.mark.slow  # two runs: 17 s on idle cores, 40 s on busy ones
def test_msf_then_ist_runs_end_to_end(tmp_path, shared_data):
  """prompt_tuning.train: MSF on two marked tasks, then IST from the MSF run."""
  base = str(shared_data / 't5x_t5_1_1_tiny' / 'checkpoint_3')
  (tmp_path / 'tiny.gin').write_text(TINY_T5X_GIN)
  rng = np.random.RandomState(3)
  sources = []
  for i in range(2):  # the tiny model's width is 4
    sources.append(str(tmp_path / f'source{i}.npy'))
    np.save(sources[-1], rng.normal(size=(3, 4)).astype(np.float32))
  common = dict(run='delta_tune', prompt=None, steps=3)
  _train_in_process(_args(str(tmp_path / 'tiny.gin'), base, tmp_path / 'msf', **common, extra=[
      '--gin_file=gin/methods/intrinsic_msf.gin', f'--gin.SOURCE_PROMPTS={sources}',
      '--gin.INTRINSIC_DIM=2', "--gin.MIXTURE_OR_TASK_NAME='fixture_sentiment_marked'"]))
  msf_checkpoint = checkpoints.resolve_checkpoint(str(tmp_path / 'msf'))
  # The reconstruction term is logged beside the loss, per target token.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  logged = [v.tag for path in tf.io.gfile.glob(str(tmp_path / 'msf' / 'train' / 'events.*'))
            for event in tf.compat.v1.train.summary_iterator(path) for v in event.summary.value]
  assert 'auxiliary_loss' in logged and 'loss' in logged
  assert {'intrinsic_decoder.npz', 'intrinsic_task0.npy', 'intrinsic_task1.npy'} <= set(
      os.listdir(msf_checkpoint))
  decoder = np.load(os.path.join(msf_checkpoint, 'intrinsic_decoder.npz'))

  import gin  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  state = _train_in_process(_args(
      str(tmp_path / 'tiny.gin'), base, tmp_path / 'ist', **common, extra=[
          '--gin_file=gin/methods/intrinsic_ist.gin',
          f"--gin.INTRINSIC_DECODER='{tmp_path / 'msf'}'"]))
  assert _leaf_names(state.trainable) == {'z'}
  # The frozen decoder is MSF's and is saved with IST's checkpoint.
  stored = checkpoints.read_delta(str(tmp_path / 'ist'))['prompt']['prompt']
  for leaf in intrinsic.DECODER_LEAVES:
    np.testing.assert_array_equal(stored[leaf], decoder[leaf])
  ist_checkpoint = checkpoints.resolve_checkpoint(str(tmp_path / 'ist'))
  exported = np.load(os.path.join(ist_checkpoint, 'prompt.npy'))
  assert exported.shape == (3, 4)
  np.testing.assert_array_equal(read_prompt(str(tmp_path / 'ist')), exported)
