"""The contract every delta passes, parametrized over the registered deltas.

For each method: its variables are created where it says and nowhere else;
training gives them non-zero gradients and leaves the backbone bitwise
unchanged; checkpoint -> loader -> logits equals the trained model's logits;
a bank of two gives each example what serving it alone gives; and (slow)
training on a 2x4 virtual mesh equals one device.

A new delta registers itself (`deltas.register`) and must add a case to
CASES, or `test_every_registered_delta_has_a_case` fails; compositions
(several deltas in one model) are cases too; a method with no
per-example leaves (norm tuning) must refuse to bank instead.

DECODER_ONLY_CASES run the same checks on the decoder-only LM
(model/decoder_only.py), through the model contract (model/contract.py):
its feature converter's batch keys, its loss inputs, its base checkpoint;
every case of CASES is one of them or in DECODER_ONLY_REFUSED.
GPT2_CASES run them on GPT-2 (model/gpt2.py), whose base is a Hugging Face
GPT-2 folder written by transformers and read by `load_pretrained`; every
case of CASES is either one of them or in GPT2_REFUSED with the reason and
the error that says so (`test_deltas_gpt2_refuses_say_why`).
"""
import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import deltas
from prompt_tuning.deltas import initializers, paths
from prompt_tuning.infer import bank as bank_lib
from prompt_tuning.infer.loading import VariableLoader
from prompt_tuning.deltas import combine
from prompt_tuning.model import T5Config, Transformer, contract, hf_checkpoint
from prompt_tuning.model.config import DecoderOnlyConfig
from prompt_tuning.model.gpt2 import GPT2Config
from prompt_tuning.model.pretrained import load_pretrained
from prompt_tuning.model.checkpoints import DeltaCheckpointer, fingerprint
from prompt_tuning.train import partitioning
from prompt_tuning.train.method import Method
from prompt_tuning.train.step import TrainState, batch_loss, make_train_step
from prompt_tuning.train.trainer import initialize_variables, saved_state

from model_gins import model_gin  # tests/, on the path as pytest's rootdir

REPO = pathlib.Path(__file__).resolve().parents[1]
TESTS = REPO / 'tests'

INTRINSIC_SOURCES = [str(TESTS / 'data' / 'intrinsic' / f'source_task{i}.npy') for i in range(2)]
INTRINSIC_DECODER = str(TESTS / 'data' / 'intrinsic' / 'intrinsic_decoder.npz')

# name: (the delta(s) under test, gin files that configure them for a run, bindings)
CASES = {
    'prompt': (lambda: deltas.PromptTuning(length=3, init=initializers.random_uniform()),
               ['gin/prompts/random_uniform.gin', 'gin/methods/prompt.gin'],
               ['--gin.PROMPT_LENGTH=3']),
    'lora': (lambda: deltas.LoRA(rank=2, alpha=4.0), ['gin/methods/lora.gin'],
             ['--gin.LORA_RANK=2']),
    'ia3': (deltas.IA3, ['gin/methods/ia3.gin'], []),
    'adapters': (lambda: deltas.Adapters(reduction_factor=8), ['gin/methods/adapters.gin'],
                 ['--gin.ADAPTER_REDUCTION_FACTOR=8']),
    'bitfit': (deltas.BitFit, ['gin/methods/bitfit.gin'], []),
    'norm': (deltas.NormTuning, ['gin/methods/norm.gin'], []),
    'multitask_prompt': (
        lambda: deltas.MultiTaskPrompt(num_tasks=2, length=3, combination='project'),
        ['gin/methods/multitask_prompt.gin'],
        ['--gin.NUM_TASKS=2', '--gin.PROMPT_LENGTH=3', "--gin.MULTITASK_COMBINATION='project'",
         "--gin.MIXTURE_OR_TASK_NAME='fixture_sentiment_marked'"]),
    # P-tuning's two prompt encoders; a template with an anchor token, and a prefix.
    'p_tuning_lstm': (lambda: deltas.PTuning(template='[P:2] {inputs} [T:58] [P:2]',
                                             encoder='lstm'),
                      ['gin/methods/p_tuning.gin'],
                      ["--gin.P_TUNING_TEMPLATE='[P:2] {inputs} [T:58] [P:2]'",
                       "--gin.P_TUNING_ENCODER='lstm'"]),
    # hidden 16: at 32, one of 1,024 MLP kernel entries differed between the
    # meshes by 1.7e-6 (tolerance 1.4e-6), float rounding Adafactor magnifies.
    'p_tuning_mlp': (lambda: deltas.PTuning(template='[P:4] {inputs}', encoder='mlp', hidden=16),
                     ['gin/methods/p_tuning.gin'],
                     ["--gin.P_TUNING_TEMPLATE='[P:4] {inputs}'", "--gin.P_TUNING_ENCODER='mlp'",
                      '--gin.P_TUNING_HIDDEN=16']),
    # Pseudo tokens in the text: the batches carry <extra_id_0..2> in their inputs.
    'p_tuning_in_text': (lambda: deltas.PTuningInText(template='[P:2] {inputs} [P:1] lives in'),
                         ['gin/methods/p_tuning_in_text.gin'],
                         ["--gin.P_TUNING_TEMPLATE='[P:2] {inputs} [P:1] lives in'",
                          "--gin.MIXTURE_OR_TASK_NAME='fixture_sentiment_marked'"]),
    'prefix': (lambda: deltas.PrefixTuning(length=3, position_bias='past'),
               ['gin/methods/prefix.gin'],
               ['--gin.PREFIX_LENGTH=3', "--gin.PREFIX_POSITION_BIAS='past'"]),
    # Reparameterized: trained through an MLP, served materialized.
    'prefix_reparam': (lambda: deltas.PrefixTuning(length=3, reparameterize=True, hidden_size=8),
                       ['gin/methods/prefix.gin'],
                       ['--gin.PREFIX_LENGTH=3', '--gin.PREFIX_REPARAMETERIZE=True',
                        '--gin.PREFIX_HIDDEN_SIZE=8']),
    # Intrinsic prompt tuning's two stages, on tests/data/intrinsic/ (width 32,
    # P = 3, d_I = 2): MSF over two marked tasks, IST from a fixed decoder.
    'intrinsic_msf': (
        lambda: deltas.IntrinsicSubspaceFinding(sources=INTRINSIC_SOURCES, intrinsic_dim=2),
        ['gin/methods/intrinsic_msf.gin'],
        [f'--gin.SOURCE_PROMPTS={INTRINSIC_SOURCES}', '--gin.INTRINSIC_DIM=2',
         "--gin.MIXTURE_OR_TASK_NAME='fixture_sentiment_marked'"]),
    'intrinsic_prompt': (lambda: deltas.IntrinsicPrompt(decoder=INTRINSIC_DECODER),
                         ['gin/methods/intrinsic_ist.gin'],
                         [f"--gin.INTRINSIC_DECODER='{INTRINSIC_DECODER}'"]),
    # Two deltas in one model: a prompt and LoRA.
    'prompt+lora': (lambda: (deltas.PromptTuning(length=3, init=initializers.random_uniform()),
                             deltas.LoRA(rank=2)),
                    ['gin/prompts/random_uniform.gin', 'gin/methods/prompt_lora.gin'],
                    ['--gin.PROMPT_LENGTH=3', '--gin.LORA_RANK=2']),
}

# The deltas on the decoder-only LM: every case of CASES, or refused as on
# GPT-2 (DECODER_ONLY_REFUSED, below GPT2_REFUSED).
DECODER_ONLY_CASES = {
    'prompt': CASES['prompt'],
    # google-research/prompt-tuning's decoder-only placement: after the BOS.
    'prompt_after_bos': (lambda: deltas.PromptTuning(length=3, init=initializers.random_uniform(),
                                                     combine=combine.after_first_token),),
    'lora': CASES['lora'],
    'prefix': (lambda: deltas.PrefixTuning(length=3),),
    'prefix_reparam': CASES['prefix_reparam'],
    'intrinsic_prompt': CASES['intrinsic_prompt'],
    'prompt+lora': CASES['prompt+lora'],
    'p_tuning_mlp': CASES['p_tuning_mlp'],
    'p_tuning_in_text': CASES['p_tuning_in_text'],
    'ia3': CASES['ia3'],
    'adapters': CASES['adapters'],
    'bitfit': CASES['bitfit'],
    'norm': CASES['norm'],
}

# GPT-2: prompts at the start (PEFT's placement) and after the first token, and
# every other method whose sites GPT-2 has.
GPT2_CASES = {
    'prompt': CASES['prompt'],
    'prompt_after_bos': DECODER_ONLY_CASES['prompt_after_bos'],
    'lora': CASES['lora'],
    'prefix': DECODER_ONLY_CASES['prefix'],
    'prefix_reparam': CASES['prefix_reparam'],
    'p_tuning_mlp': CASES['p_tuning_mlp'],
    'p_tuning_in_text': CASES['p_tuning_in_text'],
    'ia3': CASES['ia3'],
    'adapters': CASES['adapters'],
    'bitfit': CASES['bitfit'],
    'norm': CASES['norm'],
    'intrinsic_prompt': CASES['intrinsic_prompt'],
    'prompt+lora': CASES['prompt+lora'],
}
# Cases that cannot apply to GPT-2: (why, the error that refuses them).
GPT2_REFUSED = {
    'multitask_prompt': ('reads each example\'s task from a marker token at encoder_input, a '
                         'T5-only site (decoder-only inputs start with the BOS)',
                         'MultiTaskPrompt created no variables'),
    'intrinsic_msf': ('reads task markers at encoder_input as the multi-task prompt does',
                      'IntrinsicSubspaceFinding created no variables'),
    'p_tuning_lstm': ('its template puts prompt tokens after {inputs}, which a causal '
                      'decoder-only model cannot place (the outputs there are read)',
                      'must put every prompt and anchor before {inputs}'),
}

# The same three, for the same reasons, on the T5X-style decoder-only LM.
DECODER_ONLY_REFUSED = GPT2_REFUSED

# Widths the 'model' axis of a 2x4 mesh divides; dropout on, as in training.
CONFIG = T5Config(vocab_size=32128, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
                  num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.1)
DECODER_ONLY_CONFIG = DecoderOnlyConfig(vocab_size=32128, emb_dim=32, num_heads=4, head_dim=8,
                                        mlp_dim=64, num_layers=2, dropout_rate=0.1,
                                        inputs_bidirectional_attention=True)
GPT2_CONFIG = GPT2Config(vocab_size=32128, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                         n_inner=64, embd_pdrop=0.1, attn_pdrop=0.1, resid_pdrop=0.1)
LENGTHS = {'inputs': 16, 'targets': 4}
STEPS = 3


def test_every_registered_delta_has_a_case():
  made = [case[0]() for case in CASES.values()]
  covered = {d.kind for m in made for d in (m if isinstance(m, tuple) else (m,))}
  assert set(deltas.registered()) <= covered


@pytest.mark.parametrize('cases, refused', [(DECODER_ONLY_CASES, DECODER_ONLY_REFUSED),
                                             (GPT2_CASES, GPT2_REFUSED)],
                         ids=['decoder_only', 'gpt2'])
def test_every_case_runs_on_a_decoder_only_backbone_or_is_refused_with_a_reason(cases, refused):
  assert set(CASES) <= set(cases) | set(refused)
  assert not set(cases) & set(refused)
  assert all(reason and error for reason, error in refused.values())


@pytest.mark.parametrize('backbone, name', [('gpt2', n) for n in sorted(GPT2_REFUSED)] +
                         [('decoder_only', n) for n in sorted(DECODER_ONLY_REFUSED)])
def test_decoder_only_backbones_refuse_saying_why(backbone, name, gpt2_base, decoder_only_base):
  """A refused case fails with its error, rather than training nothing."""
  reason, error = (GPT2_REFUSED if backbone == 'gpt2' else DECODER_ONLY_REFUSED)[name]
  config, params = ((GPT2_CONFIG, gpt2_base[0]) if backbone == 'gpt2'
                    else (DECODER_ONLY_CONFIG, decoder_only_base[0]))
  made = CASES[name][0]()
  method = Method(config, deltas=made if isinstance(made, tuple) else (made,))
  with pytest.raises(ValueError, match=error):
    variables = initialize_variables(method.model, params, jax.random.PRNGKey(1), LENGTHS)
    method.split(variables)
  assert reason


def _batch(seed=0, batch=4):
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, 1000, (batch, LENGTHS['inputs']))
  enc[1, 9:] = 0
  # Task markers (<extra_id_0>, <extra_id_1>) first, for multi-task prompts.
  enc[:, 0] = 32099 - np.arange(batch) % 2
  tgt = rng.randint(2, 1000, (batch, LENGTHS['targets']))
  tgt[2, 2:] = 0
  dec = np.concatenate([np.zeros((batch, 1), int), tgt[:, :-1]], 1)
  return {'encoder_input_tokens': jnp.asarray(enc), 'decoder_input_tokens': jnp.asarray(dec),
          'decoder_target_tokens': jnp.asarray(tgt)}


def _decoder_only_batch(seed=0, batch=4):
  """DecoderFeatureConverter's keys for [inputs, targets] rows (loss on the targets)."""
  rng = np.random.RandomState(seed)
  length = LENGTHS['inputs'] + LENGTHS['targets']
  tgt = rng.randint(2, 1000, (batch, length))
  inputs = np.array([9, 16, 12, 7])[:batch]  # input tokens per row
  tgt[1, 13:] = 0
  # Pseudo tokens <extra_id_0..2> among the inputs, for P-tuning in the text.
  tgt[:, [1, 3, 5]] = [32099, 32098, 32097]
  dec = np.concatenate([np.zeros((batch, 1), int), tgt[:, :-1]], 1)
  positions = np.arange(length)[None]
  causal = (positions <= inputs[:, None]).astype(np.int32)
  weights = ((positions >= inputs[:, None]) & (tgt > 0)).astype(np.float32)
  return {'decoder_input_tokens': jnp.asarray(dec), 'decoder_target_tokens': jnp.asarray(tgt),
          'decoder_causal_attention': jnp.asarray(causal),
          'decoder_loss_weights': jnp.asarray(weights)}


def _logits(model, variables, batch):
  return contract.of(model).logits(model, variables, batch)


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


@pytest.fixture(scope='module')
def decoder_only_base(tmp_path_factory):
  """Random decoder-only params and the same as a full checkpoint of ours."""
  tokens = np.ones((1, 8), np.int32)
  params = nn.unbox(contract.build(DECODER_ONLY_CONFIG).init(
      jax.random.PRNGKey(0), tokens, tokens)['params'])
  params = jax.tree_util.tree_map(np.asarray, params)
  path = tmp_path_factory.mktemp('decoder_only_base') / 'lm'
  state = TrainState(step=jnp.asarray(0, jnp.int32), frozen={}, trainable={'params': params},
                     opt_state=())
  checkpointer = DeltaCheckpointer(str(path))
  checkpointer.save(0, saved_state(state), {'model_config': dataclasses.asdict(
      DECODER_ONLY_CONFIG), 'trainable': ['params/.*'], 'deltas': []})
  checkpointer.close()
  return params, str(path / 'checkpoint_0')


def _hf_gpt2(config, folder):
  """A random GPT2LMHeadModel of `config`'s shape saved as a Hugging Face folder."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=config.vocab_size, n_positions=config.n_positions, n_embd=config.n_embd,
      n_layer=config.n_layer, n_head=config.n_head, n_inner=config.n_inner,
      # Not GPT-2's 0.02: a random model that flat barely notices a prompt, and
      # 3 steps of prompt tuning drown in dropout's noise.
      initializer_range=0.2))
  hf.save_pretrained(str(folder), safe_serialization=True)


@pytest.fixture(scope='module')
def gpt2_base(tmp_path_factory):
  """A random GPT-2 as a Hugging Face folder, and its params as load_pretrained reads them."""
  path = tmp_path_factory.mktemp('gpt2_base') / 'hf'
  _hf_gpt2(GPT2_CONFIG, path)
  config, params = load_pretrained(str(path))
  assert isinstance(config, GPT2Config)
  return params, str(path)


def _architecture(name):
  """(case, config, batch maker) of a fixture parameter ('<backbone>/<case>' or a CASES key)."""
  if name.startswith('decoder_only/'):
    return DECODER_ONLY_CASES[name.split('/', 1)[1]], DECODER_ONLY_CONFIG, _decoder_only_batch
  if name.startswith('gpt2/'):
    return GPT2_CASES[name.split('/', 1)[1]], GPT2_CONFIG, _decoder_only_batch
  return CASES[name], CONFIG, _batch


# Compile time: prompt, LoRA and prefix on the decoder-only backbones run by default.
DECODER_ONLY_FAST = ('prompt_after_bos', 'lora', 'prefix')
GPT2_FAST = ('prompt', 'lora', 'prefix')


@pytest.fixture(scope='module', params=sorted(CASES) + [
    pytest.param(f'decoder_only/{name}',
                 marks=() if name in DECODER_ONLY_FAST else pytest.mark.slow)
    for name in sorted(DECODER_ONLY_CASES)] + [
        pytest.param(f'gpt2/{name}', marks=() if name in GPT2_FAST else pytest.mark.slow)
        for name in sorted(GPT2_CASES)])
def trained(request, base, decoder_only_base, gpt2_base):
  """The method trained STEPS steps from its init: a dict of what the tests check."""
  case, config, make_batch = _architecture(request.param)
  made = case[0]()
  method = Method(config, deltas=made if isinstance(made, tuple) else (made,))
  model = method.model
  params, base_path = {id(DECODER_ONLY_CONFIG): decoder_only_base,
                       id(GPT2_CONFIG): gpt2_base}.get(id(config), base)
  variables = initialize_variables(model, params, jax.random.PRNGKey(1), LENGTHS)
  frozen, trainable = method.split(variables)
  initial = jax.tree_util.tree_map(np.array, variables)
  tx = method.optimizer.build(0)
  state = TrainState(step=jnp.asarray(0, jnp.int32), frozen=frozen,
                     trainable=jax.tree_util.tree_map(jnp.array, trainable),
                     opt_state=tx.init(trainable))
  batch = make_batch()
  step_fn = make_train_step(model, tx, seed=0)
  for _ in range(STEPS):
    state, _ = step_fn(state, batch)
  # After a few steps: at init a zero factor (LoRA's B) blocks its partner's gradient.
  grads = jax.grad(lambda t: batch_loss(model, paths.merge(state.frozen, t), batch)[0])(
      state.trainable)
  return {'kind': request.param, 'deltas': method.deltas, 'method': method, 'model': model,
          'initial': initial, 'grads': grads, 'state': state, 'batch': batch,
          'config': config, 'base': (params, base_path)}


def test_variables_are_where_the_delta_says_and_nowhere_else(trained):
  method, model, initial = trained['method'], trained['model'], trained['initial']
  init_args = contract.of(model).init_args(LENGTHS)
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *init_args))
  plain = jax.eval_shape(lambda: contract.build(trained['config']).init(
      jax.random.PRNGKey(0), *init_args))
  shapes = lambda tree: jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), nn.unbox(tree))
  # The backbone's tree is untouched; each delta adds its own collection only
  # (norm tuning adds none: it trains leaves of the backbone's).
  collections = {d.collection for d in method.deltas}
  assert shapes(abstract['params']) == shapes(plain['params'])
  assert set(abstract) - {'params'} <= collections
  # What is trained is exactly what its patterns name, and something is.
  trained_paths = set(paths.flatten_tree(trained['state'].trainable))
  assert trained_paths and trained_paths == set(paths.flatten_tree(
      paths.select(initial, method.trainable_patterns)))
  # Every delta variable carries logical axes the deltas or T5X have rules for.
  rules = {name for name, _ in method.logical_axis_rules()} | {
      name for name, _ in partitioning.T5X_LOGICAL_AXIS_RULES}
  specs = nn.get_partition_spec(abstract)
  for path, spec in paths.flatten_tree({c: specs[c] for c in collections if c in specs}).items():
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


def test_checkpoint_then_loader_gives_the_same_logits(trained, tmp_path):
  state, method, batch = trained['state'], trained['method'], trained['batch']
  params, base_path = trained['base']
  metadata = {'base_checkpoint': base_path, 'base_fingerprint': fingerprint(params),
              'base_step': 0, 'data_batches_consumed': STEPS, **method.record()}
  json.dumps(metadata)  # the record is JSON
  checkpointer = DeltaCheckpointer(str(tmp_path / 'run'))
  checkpointer.save(STEPS, saved_state(state), metadata,
                    lambda d: method.export(jax.device_get(
                        {c: v for c, v in state.variables.items() if c != 'params'}), d))
  checkpointer.close()
  # Only the delta is stored: of the backbone, at most the leaves it trains.
  stored = paths.flatten_tree(jax.device_get(saved_state(state))['trainable'])
  assert set(stored) == set(paths.flatten_tree(state.trainable))
  assert sum(np.size(v) for v in stored.values()) < sum(np.size(v) for v in
                                                      paths.flatten_tree(params).values()) / 10

  # The loader knows nothing of the method: it rebuilds it from the record.
  loaded = VariableLoader(contract.build(trained['config'])).checkpoint(str(tmp_path / 'run'))
  assert [d.to_config() for d in loaded.model.deltas] == [d.to_config() for d in method.deltas]
  assert loaded.step == STEPS
  # Float32 rounding, scaled by the largest logit: a served (materialized) prefix
  # MLP rounds differently from the trained one, 2e-6 on GPT-2's logits up to ~10.
  want = np.asarray(_logits(trained['model'], state.variables, batch))
  np.testing.assert_allclose(_logits(loaded.model, loaded.variables, batch), want,
                             rtol=1e-6, atol=1e-6 * max(1.0, np.abs(want).max()))
  # Its exports are in the checkpoint (their names learnt from a scratch export).
  exported = method.export(jax.device_get({c: v for c, v in state.variables.items()
                                           if c != 'params'}), str(tmp_path))
  for path in exported:
    assert (tmp_path / 'run' / f'checkpoint_{STEPS}' / os.path.basename(path)).exists()


def test_a_bank_of_two_serves_each_example_as_its_delta_alone(trained):
  model, batch, state, method = trained['model'], trained['batch'], trained['state'], trained['method']
  # A member: what the deltas own (their collections and the leaves they train).
  owned = list(method.trainable_patterns) + [f'{d.collection}/.*' for d in method.deltas]
  def member(variables):  # served: materialized (a prompt encoder collapsed to its prompt)
    for delta in method.deltas:
      variables = delta.materialize(variables)
    return paths.select(jax.device_get(variables), owned)
  members = [member(trained['initial']), member(state.variables)]
  frozen = {'params': trained['initial']['params']}
  if not any(d.bank_leaves() for d in method.deltas):
    # Leaves of the backbone itself (norm tuning) cannot differ per example.
    with pytest.raises(ValueError, match='cannot share one pass'):
      bank_lib.stack(members, model.deltas)
    return
  shared, stacked = bank_lib.stack(members, model.deltas)
  index = jnp.asarray([1, 0, 0, 1])
  mixed = _logits(model, paths.merge(frozen, shared, bank_lib.select(stacked, index)), batch)
  for number in (0, 1):
    alone = _logits(model, paths.merge(frozen, members[number]), batch)
    rows = np.flatnonzero(np.asarray(index) == number)
    np.testing.assert_allclose(mixed[rows], alone[rows], rtol=1e-5, atol=1e-5)
  # The two members differ, so the check above could fail.
  assert not np.allclose(_logits(model, paths.merge(frozen, members[0]), batch),
                         _logits(model, paths.merge(frozen, members[1]), batch))


def _run_args(root, kind, model_dir):
  _, files, bindings = CASES[kind]
  return [f'--gin_file={f}' for f in [root / 'model.gin', 'gin/runs/delta_tune.gin', *files]] + [
      f"--gin.MODEL_DIR='{model_dir}'",
      "--gin.MIXTURE_OR_TASK_NAME='fixture_sentiment'",
      "--gin.MIXTURE_OR_TASK_MODULE='fixture_tasks'",
      f"--gin.INITIAL_CHECKPOINT_PATH='{root / 'hf'}'",
      f'--gin.TRAIN_STEPS={STEPS}', '--gin.BATCH_SIZE=8',
      f'--gin.TASK_FEATURE_LENGTHS={LENGTHS}', '--gin.LOG_PERIOD=1',
      '--gin.EVAL_PERIOD=None', f'--gin.CHECKPOINT_PERIOD={STEPS}',
      '--gin.DROPOUT_RATE=0.1',
      # A learning rate these methods train at (gin/runs/delta_tune.gin's
      # Adafactor): at the paper's prompt rate of 0.3 LoRA diverges, and a
      # diverging run amplifies float rounding until the meshes disagree.
      '--gin.LEARNING_RATE=0.01', *bindings]


@pytest.mark.slow
@pytest.mark.parametrize('kind', sorted(k for k, (_, files, _) in CASES.items() if files))
def test_training_on_a_2x4_mesh_equals_one_device(kind, base, tmp_path):
  hf_checkpoint.write_hf_t5(CONFIG, base[0], str(tmp_path / 'hf'))
  (tmp_path / 'model.gin').write_text(model_gin(CONFIG))
  _check_mesh_equals_one_device(kind, tmp_path)


def _gpt2_model_gin(config):
  """gin/models/gpt2/*.gin's shape for `config`, dropout through %DROPOUT_RATE."""
  lines = ['from __gin__ import dynamic_registration', 'from prompt_tuning.model import gpt2',
           f'DROPOUT_RATE = {config.embd_pdrop!r}', 'MODEL_CONFIG = @gpt2.GPT2Config()']
  for field in dataclasses.fields(GPT2Config):
    value = getattr(config, field.name)
    value = '%DROPOUT_RATE' if field.name.endswith('_pdrop') else repr(value)
    lines.append(f'gpt2.GPT2Config.{field.name} = {value}')
  return '\n'.join(lines) + '\n'


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['prompt', 'lora'])
def test_gpt2_training_on_a_2x4_mesh_equals_one_device(kind, tmp_path):
  """The same from a Hugging Face GPT-2 folder, through gin/models/gpt2's MODEL_CONFIG."""
  _hf_gpt2(GPT2_CONFIG, tmp_path / 'hf')
  (tmp_path / 'model.gin').write_text(_gpt2_model_gin(GPT2_CONFIG))
  _check_mesh_equals_one_device(kind, tmp_path)


def _check_mesh_equals_one_device(kind, root):
  """Trains `kind` on one device and on a 2x4 mesh (tests/mesh_runs.py); equal results."""
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
