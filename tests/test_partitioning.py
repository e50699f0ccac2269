"""Partitioning: T5X's logical axis rules, and training that does not depend on the mesh.

The rule expectations are written by hand from T5X's
`standard_logical_axis_rules()` (1-D parameter and activation partitioning).
The equivalence tests train the same steps on 1 device and on 8 virtual CPU
devices arranged 8x1, 4x2 and 2x4 (and on two processes joined by
`jax.distributed`), and compare losses and trained arrays between the runs:
every run is computed independently, none is a stored expectation. They
share one fixture that starts all the processes at once; together about
1.5-2 minutes of 2 CPU cores (mostly compiling the step once per mesh), so
they are marked slow.
"""
import json
import os
import pathlib
import socket
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from prompt_tuning.model import T5Config, Transformer, hf_checkpoint
from prompt_tuning.deltas import PromptTuning, read_prompt
from prompt_tuning.train import partitioning

import mesh_runs as mesh_runs_lib  # tests/, on the path as pytest's rootdir
from model_gins import model_gin

REPO = pathlib.Path(__file__).resolve().parents[1]
TESTS = REPO / 'tests'
MESHES = ('1x1', '8x1', '4x2', '2x4')
STEPS = 3

# A one-layer model whose widths the 'model' axis divides (2 or 4) except the
# 2 heads on 4 partitions: rel_embedding [heads, buckets] is then replicated.
CONFIG = T5Config(vocab_size=32128, emb_dim=64, num_heads=2, num_encoder_layers=1,
                  num_decoder_layers=1, head_dim=32, mlp_dim=128, dropout_rate=0.0)
MODEL_GIN = model_gin(CONFIG)


def _partitioner() -> partitioning.Partitioner:
  """T5X's rules plus the prompt delta's, as the trainer adds them."""
  partitioner = partitioning.Partitioner(devices=jax.devices()[:1])
  partitioner.add_rules(PromptTuning().logical_axis_rules())
  return partitioner


# -- rules ----------------------------------------------------------------------


@pytest.mark.parametrize('logical, expected', [
    (('vocab', 'embed'), P('model', None)),            # token_embedder/embedding
    (('embed', 'vocab'), P(None, 'model')),            # logits_dense
    (('embed', 'mlp'), P(None, 'model')),              # mlp/wi_0, wi_1
    (('mlp', 'embed'), P('model', None)),              # mlp/wo
    (('embed', 'joined_kv'), P(None, 'model')),        # query, key, value
    (('joined_kv', 'embed'), P('model', None)),        # attention out
    (('heads', 'relpos_buckets'), P('model', None)),   # rel_embedding
    (('embed',), P(None)),                             # layer norm scales
    (('prompt', 'prompt_embed'), P(None, None)),       # the prompt: replicated
    (('batch', 'length'), P('data', None)),            # input tokens
    (('batch', 'length', 'embed'), P('data', None, None)),
    (('batch', 'length', 'heads', 'kv'), P('data', None, 'model', None)),
    (('batch', 'length', 'mlp'), P('data', None, 'model')),
    (('batch', 'length', 'vocab'), P('data', None, 'model')),
])
def test_rules_map_logical_axes_as_t5x(logical, expected):
  assert _partitioner().mesh_axes(logical) == expected


def test_the_models_variables_get_their_rules_shardings():
  tokens = np.ones((1, 8), np.int32)
  model = Transformer(CONFIG, deltas=(PromptTuning(length=5),))
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, tokens, tokens))
  specs = jax.tree_util.tree_map(lambda s: s.spec, _partitioner().variable_shardings(abstract))
  params = specs['params']
  assert params['token_embedder']['embedding'] == P('model', None)
  assert params['decoder']['logits_dense']['kernel'] == P(None, 'model')
  layer = params['encoder']['layers_0']
  assert layer['mlp']['wi_0']['kernel'] == P(None, 'model')
  assert layer['mlp']['wo']['kernel'] == P('model', None)
  assert layer['attention']['query']['kernel'] == P(None, 'model')
  assert layer['attention']['out']['kernel'] == P('model', None)
  assert layer['pre_attention_layer_norm']['scale'] == P(None)
  assert params['encoder']['relpos_bias']['rel_embedding'] == P('model', None)
  assert specs['prompt']['prompt']['prompt'] == P(None, None)


def test_optimizer_state_follows_its_parameters():
  params = {'prompt': jax.ShapeDtypeStruct((5, 64), np.float32),        # not factored
            'wi': jax.ShapeDtypeStruct((256, 128), np.float32)}         # factored
  partitioner = _partitioner()
  param_shardings = {'prompt': partitioner.sharding(('prompt', 'prompt_embed')),
                     'wi': partitioner.sharding(('embed', 'mlp'))}
  abstract = jax.eval_shape(optax.adafactor(0.3).init, params)
  shardings = partitioner.optimizer_shardings(abstract, params, param_shardings)
  by_shape = {}
  for state, sharding in zip(jax.tree_util.tree_leaves(abstract),
                             jax.tree_util.tree_leaves(shardings)):
    by_shape.setdefault(state.shape, set()).add(sharding.spec)
  assert by_shape[(5, 64)] == {P(None, None)}          # v of the prompt
  assert by_shape[(256,)] == {P()} and by_shape[(128,)] == {P()}   # v_row, v_col
  assert by_shape[()] == {P()}                         # the step count


def test_activation_constraints_bind_under_the_partitioner():
  model = Transformer(CONFIG)
  tokens = np.ones((2, 8), np.int32)
  params = nn.unbox(jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), tokens, tokens, tokens))['params'])
  forward = lambda p, t: model.apply({'params': p}, t, t, t)
  # with_sharding_constraint lowers to sdy.sharding_constraint (Shardy) or a
  # custom call @Sharding (GSPMD).
  constraints = lambda text: text.count('sharding_constraint') + text.count('@Sharding')
  assert constraints(jax.jit(forward).lower(params, tokens).as_text()) == 0
  lowered = _partitioner().partition(forward).lower(params, tokens).as_text()
  # Embedded inputs, q/k/v per attention, MLP hidden, layer outputs, logits.
  assert constraints(lowered) >= 10


def test_mesh_shapes():
  assert partitioning.mesh_shape_for(8) == (8, 1)
  assert partitioning.mesh_shape_for(8, num_partitions=2) == (4, 2)
  assert partitioning.mesh_shape_for(8, num_partitions=4, mesh_shape=(2, 4)) == (2, 4)
  with pytest.raises(ValueError, match='NUM_PARTITIONS=3'):
    partitioning.mesh_shape_for(8, num_partitions=3)
  with pytest.raises(ValueError, match='MESH_SHAPE'):
    partitioning.mesh_shape_for(8, mesh_shape=(3, 3))


# -- the same training on every mesh ---------------------------------------------


@pytest.fixture(scope='module')
def base_model(tmp_path_factory):
  tokens = np.ones((1, 8), np.int32)
  params = nn.unbox(Transformer(CONFIG).init(jax.random.PRNGKey(0), tokens, tokens,
                                             tokens)['params'])
  root = tmp_path_factory.mktemp('partitioning')
  hf_checkpoint.write_hf_t5(CONFIG, jax.tree_util.tree_map(np.asarray, params),
                            str(root / 'hf'))
  (root / 'model.gin').write_text(MODEL_GIN)
  return root


def _args(root, model_dir, run, extra=()):
  prompt = run == 'prompt_tune'
  files = [root / 'model.gin'] + (['gin/prompts/random_uniform.gin'] if prompt else []) + [
      f'gin/runs/{run}.gin']
  return [f'--gin_file={f}' for f in files] + [
      f"--gin.MODEL_DIR='{model_dir}'",
      "--gin.MIXTURE_OR_TASK_NAME='fixture_sentiment'",
      "--gin.MIXTURE_OR_TASK_MODULE='fixture_tasks'",
      f"--gin.INITIAL_CHECKPOINT_PATH='{root / 'hf'}'",
      f'--gin.TRAIN_STEPS={STEPS}',
      '--gin.BATCH_SIZE=8',
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}",
      '--gin.LOG_PERIOD=1',
      '--gin.EVAL_PERIOD=None',
      f'--gin.CHECKPOINT_PERIOD={STEPS}',
      # In order, so that two hosts' shards hold the same examples as one stream.
      '--gin_bindings=prompt_tuning.train.trainer.train.shuffle = False',
  ] + (['--gin.PROMPT_LENGTH=5'] if prompt else []) + list(extra)


def _env(devices):
  # Less LLVM optimization: compiling the step dominates these runs' time.
  flags = f'--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0'
  return dict(os.environ, XLA_FLAGS=flags,
              PYTHONPATH=f'{TESTS}{os.pathsep}{os.environ.get("PYTHONPATH", "")}')


# Prompt tuning without dropout (the two-process run is compared with it, and
# its global batch holds the same rows in another order: dropout masks follow
# the row); model tuning with dropout, whose masks must not depend on the mesh
# either. Model tuning skips 4x2, which prompt tuning and 2x4 cover (each mesh
# costs a compilation of the step).
RUNS = {'prompt_tune': (MESHES, ['--gin.DROPOUT_RATE=0.0']),
        'model_tune': (('1x1', '8x1', '2x4'), ['--gin.DROPOUT_RATE=0.1'])}
# Evaluation at the end (teacher forcing and decoding) where it runs on a
# mesh: prompt tuning on 2x4 and on the two hosts.
EVAL = [f'--gin.EVAL_PERIOD={STEPS}', '--gin.EVAL_STEPS=1']


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _launch(args, devices, log):
  """Starts `python *args`; its output goes to the file `log` (a pipe could fill
  and stall a process that the others wait for)."""
  with open(log, 'w') as f:
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=_env(devices),
                            stdout=f, stderr=subprocess.STDOUT)


@pytest.fixture(scope='module')
def runs(base_model):
  """Every training run of this file, launched at once (they are independent).

  * one 8-device process per entry of RUNS trains on every mesh of MESHES
    (`mesh_runs.py`);
  * two processes of 2 CPU devices each, joined by `jax.distributed` on a
    2x2 mesh, run the prompt-tuning CLI ('two_hosts').
  Returns {name: (result arrays, layout)} for the mesh runs and
  {'two_hosts': (model_dir, [output of process 0, output of process 1])}.
  """
  procs, names = {}, []
  for run, (meshes, extra) in RUNS.items():
    entries = []
    for mesh in meshes:
      data, model = map(int, mesh.split('x'))
      evaluate = EVAL if (run, mesh) == ('prompt_tune', '2x4') else []
      entries.append({'name': f'{run}_{mesh}', 'mesh': [data, model],
                      'devices': data * model,
                      'args': _args(base_model, base_model / f'{run}_{mesh}', run,
                                    extra + evaluate)})
    spec = base_model / f'{run}.json'
    spec.write_text(json.dumps({'runs': entries}))
    procs[run] = _launch([str(TESTS / 'mesh_runs.py'), str(spec)], 8,
                         base_model / f'{run}.log')
    names += [e['name'] for e in entries]
  two_hosts, port = base_model / 'two_hosts', _free_port()
  for i in range(2):
    procs[f'host_{i}'] = _launch(
        ['-m', 'prompt_tuning.train',
         *_args(base_model, two_hosts, 'prompt_tune',
                [*RUNS['prompt_tune'][1], *EVAL, '--gin.NUM_PARTITIONS=2']),
         f'--coordinator_address=localhost:{port}', '--process_count=2',
         f'--process_index={i}'], 2, base_model / f'host_{i}.log')
  try:
    for proc in procs.values():
      proc.wait(timeout=900)
  finally:
    for proc in procs.values():
      proc.kill()
  outputs = {name: (base_model / f'{name}.log').read_text() for name in procs}
  for name, proc in procs.items():
    assert proc.returncode == 0, f'{name}:\n{outputs[name][-5000:]}'
  results = {name: (dict(np.load(base_model / name / 'result.npz')),
                    json.loads((base_model / name / 'shardings.json').read_text()))
             for name in names}
  results['two_hosts'] = (two_hosts, [outputs['host_0'], outputs['host_1']])
  return results


def _assert_same_training(results, reference, other):
  (ref, _), (got, layout) = results[reference], results[other]
  assert len(ref['loss']) == STEPS
  # The runs learn: otherwise equal losses would prove little.
  assert ref['loss'][-1] < ref['loss'][0]
  np.testing.assert_allclose(got['loss'], ref['loss'], rtol=1e-5, err_msg=other)
  for name in ref:
    np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-6,
                               err_msg=f'{other} {name}')
  return layout


@pytest.mark.slow
@pytest.mark.parametrize('mesh', MESHES[1:])
def test_prompt_tuning_is_the_same_on_every_mesh(runs, mesh):
  layout = _assert_same_training(runs, 'prompt_tune_1x1', f'prompt_tune_{mesh}')
  data, model = map(int, mesh.split('x'))
  assert layout['mesh'] == {'data': data, 'model': model}
  specs = layout['specs']
  assert specs["state/['trainable']['prompt']['prompt']['prompt']"] == str(P(None, None))
  assert (specs["state/['frozen']['params']['token_embedder']['embedding']"] ==
          str(P('model', None)))


def _metrics_records(model_dir):
  path = model_dir / 'inference_eval' / 'fixture_sentiment-metrics.jsonl'
  return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_evaluation_runs_on_a_mesh(runs, base_model):
  model_dir = base_model / 'prompt_tune_2x4'
  assert [r['step'] for r in _metrics_records(model_dir)] == [STEPS]
  assert list((model_dir / 'training_eval' / 'fixture_sentiment').glob('events.out.*'))
  assert (model_dir / 'best' / f'checkpoint_{STEPS}' / 'prompt.npy').exists()


@pytest.mark.slow
@pytest.mark.parametrize('mesh', RUNS['model_tune'][0][1:])
def test_model_tuning_is_the_same_on_every_mesh(runs, mesh):
  layout = _assert_same_training(runs, 'model_tune_1x1', f'model_tune_{mesh}')
  specs = layout['specs']
  wi = "['params']['encoder']['layers_0']['mlp']['wi_0']['kernel']"
  assert specs[f"state/['trainable']{wi}"] == str(P(None, 'model'))
  # Adafactor's factored rows/columns are replicated; the step count too.
  assert specs[f"state/['opt_state'][0].v_row{wi}"] == str(P())
  # 2 heads do not divide 4 partitions: that table is replicated instead.
  relpos = "state/['trainable']['params']['encoder']['relpos_bias']['rel_embedding']"
  model = int(mesh.split('x')[1])
  assert specs[relpos] == str(P('model', None) if model <= 2 else P(None, None))


@pytest.mark.slow
def test_two_processes_train_like_one(runs):
  """2 processes x 2 CPU devices, mesh 2x2: each host feeds its half of the batch.

  Each host reads shard i of 2 of the (unshuffled) stream, i.e. examples
  i, i + 2, i + 4, ...: a global batch holds the examples of the one-process
  batch in another row order. The loss and the gradient are sums over rows,
  so the runs agree up to float summation order.
  """
  model_dir, outputs = runs['two_hosts']
  assert 'JAX sees 4 devices on 2 processes' in outputs[0]
  assert "Device mesh {'data': 2, 'model': 2}" in outputs[0]
  reference, _ = runs['prompt_tune_1x1']
  # Process 0 wrote the .npy and the summaries; Orbax's checkpoint is complete.
  prompt = np.load(model_dir / f'checkpoint_{STEPS}' / 'prompt.npy')
  np.testing.assert_allclose(prompt, reference["trainable['prompt']['prompt']['prompt']"],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(mesh_runs_lib.losses(str(model_dir)), reference['loss'], rtol=1e-5)
  # Read back here, on one device: another topology than the one that wrote it.
  np.testing.assert_array_equal(read_prompt(str(model_dir)), prompt)
  # Both hosts evaluated; host 0 alone wrote the records.
  assert [r['step'] for r in _metrics_records(model_dir)] == [STEPS]
  assert json.loads((model_dir / 'best' / 'best.json').read_text())['step'] == STEPS
