"""The contract every delta passes, parametrized over the registered deltas.

For each method: its variables are created where it says and nowhere else;
training gives them non-zero gradients and leaves the backbone bitwise
unchanged; checkpoint -> loader -> logits equals the trained model's logits;
a bank of two gives each example what serving it alone gives; and (slow)
training on a 2x4 virtual mesh equals one device.

A new delta registers itself (`deltas.register`) and must add a case to
CASES, or `test_every_registered_delta_has_a_case` fails.
"""
import json
import os
import pathlib
import re
import subprocess
import sys
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import deltas
from prompt_tuning.deltas import initializers, paths
from prompt_tuning.infer import bank as bank_lib
from prompt_tuning.infer.loading import VariableLoader
from prompt_tuning.model import T5Config, Transformer, hf_checkpoint
from prompt_tuning.model.checkpoints import DeltaCheckpointer, fingerprint
from prompt_tuning.train.method import Method
from prompt_tuning.train.step import TrainState, batch_loss, make_train_step
from prompt_tuning.train.trainer import initialize_variables, saved_state

from model_gins import model_gin  # tests/, on the path as pytest's rootdir

REPO = pathlib.Path(__file__).resolve().parents[1]
TESTS = REPO / 'tests'



def _docs_example() -> types.ModuleType:
  """The 30-line method of docs/deltas.md, run as written (it registers itself)."""
  text = (REPO / 'docs' / 'deltas.md').read_text()
  code = re.search(r'```python\n(.*?)```', text, re.S).group(1)
  module = types.ModuleType('docs_deltas_example')
  exec(compile(code, 'docs/deltas.md', 'exec'), module.__dict__)  # pylint: disable=exec-used
  return module


EXAMPLE = _docs_example()

# kind: (the delta under test, gin files that configure it for a run, bindings)
CASES = {
    'prompt': (lambda: deltas.PromptTuning(length=3, init=initializers.random_uniform()),
               ['gin/prompts/random_uniform.gin', 'gin/methods/prompt.gin'],
               ['--gin.PROMPT_LENGTH=3']),
    # Biases on the logits and inside a layer (where nn.remat may lift it).
    'example_projection_bias': (
        lambda: EXAMPLE.ProjectionBias(targets='decoder/logits_dense|encoder/layers_0/mlp/wo'),
        None, None),
}

# Widths the 'model' axis of a 2x4 mesh divides; dropout on, as in training.
CONFIG = T5Config(vocab_size=32128, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
                  num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.1)
LENGTHS = {'inputs': 16, 'targets': 4}
STEPS = 3


def test_every_registered_delta_has_a_case():
  assert set(deltas.registered()) == set(CASES)


def _batch(seed=0, batch=4):
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, 1000, (batch, LENGTHS['inputs']))
  enc[1, 9:] = 0
  tgt = rng.randint(2, 1000, (batch, LENGTHS['targets']))
  tgt[2, 2:] = 0
  dec = np.concatenate([np.zeros((batch, 1), int), tgt[:, :-1]], 1)
  return {'encoder_input_tokens': jnp.asarray(enc), 'decoder_input_tokens': jnp.asarray(dec),
          'decoder_target_tokens': jnp.asarray(tgt)}


def _logits(model, variables, batch):
  return model.apply(variables, batch['encoder_input_tokens'], batch['decoder_input_tokens'],
                     batch['decoder_target_tokens'])


@pytest.fixture(scope='module')
def base(tmp_path_factory):
  """Random backbone params (numpy) and the same as a Hugging Face folder."""
  tokens = np.ones((1, 8), np.int32)
  params = nn.unbox(Transformer(CONFIG).init(jax.random.PRNGKey(0), tokens, tokens,
                                             tokens)['params'])
  params = jax.tree_util.tree_map(np.asarray, params)
  path = tmp_path_factory.mktemp('base') / 'hf'
  hf_checkpoint.write_hf_t5(CONFIG, params, str(path))
  return params, str(path)


@pytest.fixture(scope='module', params=sorted(CASES))
def trained(request, base):
  """The method trained STEPS steps from its init: a dict of what the tests check."""
  delta = CASES[request.param][0]()
  method = Method(CONFIG, deltas=(delta,))
  model = method.model
  params, _ = base
  variables = initialize_variables(model, params, jax.random.PRNGKey(1), LENGTHS)
  frozen, trainable = method.split(variables)
  initial = jax.tree_util.tree_map(np.array, variables)
  tx = method.optimizer.build(0)
  state = TrainState(step=jnp.asarray(0, jnp.int32), frozen=frozen,
                     trainable=jax.tree_util.tree_map(jnp.array, trainable),
                     opt_state=tx.init(trainable))
  batch = _batch()
  grads = jax.grad(lambda t: batch_loss(model, paths.merge(frozen, t), batch)[0])(trainable)
  step_fn = make_train_step(model, tx, seed=0)
  for _ in range(STEPS):
    state, _ = step_fn(state, batch)
  return {'kind': request.param, 'delta': delta, 'method': method, 'model': model,
          'initial': initial, 'grads': grads, 'state': state, 'batch': batch}


def test_variables_are_where_the_delta_says_and_nowhere_else(trained):
  delta, model, initial = trained['delta'], trained['model'], trained['initial']
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *[
      v[:1] for v in trained['batch'].values()]))
  plain = jax.eval_shape(lambda: Transformer(CONFIG).init(jax.random.PRNGKey(0), *[
      v[:1] for v in trained['batch'].values()]))
  shapes = lambda tree: jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), nn.unbox(tree))
  # The backbone's tree is untouched; the delta adds its own collection only.
  assert shapes(abstract['params']) == shapes(plain['params'])
  assert set(abstract) == {'params', delta.collection}
  # What is trained is exactly what its patterns name, all of it in its collection.
  trained_paths = set(paths.flatten_tree(trained['state'].trainable))
  assert trained_paths == set(paths.flatten_tree(paths.select(initial,
                                                             delta.trainable_patterns())))
  assert all(p.startswith(f'{delta.collection}/') for p in trained_paths)
  # Every delta leaf carries logical axes the delta has rules for.
  rules = {name for name, _ in delta.logical_axis_rules()}
  specs = paths.flatten_tree(nn.get_partition_spec(abstract)[delta.collection])
  for path, spec in specs.items():
    assert set(spec) <= rules, (path, spec)


def test_gradients_reach_every_trained_leaf(trained):
  for path, grad in paths.flatten_tree(trained['grads']).items():
    assert np.isfinite(grad).all() and np.abs(grad).sum() > 0, path


def test_training_moves_the_delta_and_leaves_the_base_bitwise_unchanged(trained):
  state, initial = trained['state'], trained['initial']
  for path, value in paths.flatten_tree(state.frozen).items():
    np.testing.assert_array_equal(np.asarray(value), paths.flatten_tree(initial)[path],
                                  err_msg=path)
  assert int(state.step) == STEPS
  moved = [not np.allclose(np.asarray(v), paths.flatten_tree(initial)[p])
           for p, v in paths.flatten_tree(state.trainable).items()]
  assert all(moved)


def test_checkpoint_then_loader_gives_the_same_logits(trained, base, tmp_path):
  state, method, batch = trained['state'], trained['method'], trained['batch']
  params, base_path = base
  metadata = {'base_checkpoint': base_path, 'base_fingerprint': fingerprint(params),
              'base_step': 0, 'data_batches_consumed': STEPS, **method.record()}
  json.dumps(metadata)  # the record is JSON
  checkpointer = DeltaCheckpointer(str(tmp_path / 'run'))
  checkpointer.save(STEPS, saved_state(state), metadata,
                    lambda d: method.export(jax.device_get(
                        {c: v for c, v in state.variables.items() if c != 'params'}), d))
  checkpointer.close()
  # Only the delta is stored: no backbone array in the checkpoint.
  stored = jax.tree_util.tree_map(np.shape, saved_state(state))
  assert 'params' not in stored['trainable']

  # The loader knows nothing of the method: it rebuilds it from the record.
  loaded = VariableLoader(Transformer(CONFIG)).checkpoint(str(tmp_path / 'run'))
  assert [d.to_config() for d in loaded.model.deltas] == [d.to_config() for d in method.deltas]
  assert loaded.step == STEPS
  np.testing.assert_allclose(_logits(loaded.model, loaded.variables, batch),
                             _logits(trained['model'], state.variables, batch),
                             rtol=1e-6, atol=1e-6)
  # Its exports are in the checkpoint (their names learnt from a scratch export).
  exported = method.export(jax.device_get({c: v for c, v in state.variables.items()
                                           if c != 'params'}), str(tmp_path))
  for path in exported:
    assert (tmp_path / 'run' / f'checkpoint_{STEPS}' / os.path.basename(path)).exists()


def test_a_bank_of_two_serves_each_example_as_its_delta_alone(trained):
  model, batch, state = trained['model'], trained['batch'], trained['state']
  delta_of = lambda variables: {c: v for c, v in jax.device_get(variables).items()
                                if c != 'params'}
  members = [delta_of(trained['initial']), delta_of(state.variables)]
  shared, stacked = bank_lib.stack(members, model.deltas)
  frozen = {'params': trained['initial']['params']}
  index = jnp.asarray([1, 0, 0, 1])
  mixed = _logits(model, paths.merge(frozen, shared, bank_lib.select(stacked, index)), batch)
  for member in (0, 1):
    alone = _logits(model, paths.merge(frozen, members[member]), batch)
    rows = np.flatnonzero(np.asarray(index) == member)
    np.testing.assert_allclose(mixed[rows], alone[rows], rtol=1e-5, atol=1e-5)
  # The two members differ, so the check above could fail.
  assert not np.allclose(_logits(model, paths.merge(frozen, members[0]), batch),
                         _logits(model, paths.merge(frozen, members[1]), batch))


def _run_args(root, kind, model_dir):
  _, files, bindings = CASES[kind]
  return [f'--gin_file={f}' for f in [root / 'model.gin', 'gin/runs/base.gin', *files]] + [
      f"--gin.MODEL_DIR='{model_dir}'",
      "--gin.MIXTURE_OR_TASK_NAME='fixture_sentiment'",
      "--gin.MIXTURE_OR_TASK_MODULE='fixture_tasks'",
      f"--gin.INITIAL_CHECKPOINT_PATH='{root / 'hf'}'",
      f'--gin.TRAIN_STEPS={STEPS}', '--gin.BATCH_SIZE=8',
      f'--gin.TASK_FEATURE_LENGTHS={LENGTHS}', '--gin.LOG_PERIOD=1',
      '--gin.EVAL_PERIOD=None', f'--gin.CHECKPOINT_PERIOD={STEPS}',
      '--gin.DROPOUT_RATE=0.1', *bindings]


@pytest.mark.slow
@pytest.mark.parametrize('kind', sorted(k for k, (_, files, _) in CASES.items() if files))
def test_training_on_a_2x4_mesh_equals_one_device(kind, base, tmp_path):
  root = tmp_path
  hf_checkpoint.write_hf_t5(CONFIG, base[0], str(root / 'hf'))
  (root / 'model.gin').write_text(model_gin(CONFIG))
  runs = [{'name': name, 'mesh': mesh, 'devices': mesh[0] * mesh[1],
           'args': [str(a) for a in _run_args(root, kind, root / name)]}
          for name, mesh in (('one', [1, 1]), ('mesh', [2, 4]))]
  (root / 'spec.json').write_text(json.dumps({'runs': runs}))
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             PYTHONPATH=f'{TESTS}{os.pathsep}{os.environ.get("PYTHONPATH", "")}')
  proc = subprocess.run([sys.executable, str(TESTS / 'mesh_runs.py'), str(root / 'spec.json')],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
                        check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  one, mesh = (dict(np.load(root / name / 'result.npz')) for name in ('one', 'mesh'))
  assert len(one['loss']) == STEPS and one['loss'][-1] < one['loss'][0]
  assert one.keys() == mesh.keys()
  for name in one:
    np.testing.assert_allclose(mesh[name], one[name], rtol=1e-5, atol=1e-6, err_msg=name)
  layout = json.loads((root / 'mesh' / 'shardings.json').read_text())
  assert layout['mesh'] == {'data': 2, 'model': 4}
