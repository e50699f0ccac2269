"""GPT-2 as a member of the decoder-only model contract (model/contract.py).

Parity of a prompt at the start against Hugging Face PEFT's prompt tuning
on transformers' GPT2LMHeadModel (same random weights, same prompt vectors);
cached decoding after the prefill against teacher forcing, with and without
a prompt, on rows of different lengths (each continues at its own absolute
position); loading a Hugging Face GPT-2 folder through `load_pretrained`;
the one-line errors (unsupported config.json, too many positions, a
checkpoint of another architecture); and (slow) the train, eval and infer
CLIs on a tiny random GPT-2 folder.
"""
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
import torch

from prompt_tuning import deltas
from prompt_tuning.deltas import combine
from prompt_tuning.infer import predict
from prompt_tuning.model import checkpoints, contract, param_shapes
from prompt_tuning.model.config import DecoderOnlyConfig, T5Config
from prompt_tuning.model.decoder_only import DecoderOnlyLM
from prompt_tuning.model.gpt2 import GPT2Config, GPT2LM, parameter_shapes
from prompt_tuning.model.pretrained import load_pretrained
from prompt_tuning.model.t5 import Transformer
from test_decoder_only import CAUSAL, INPUTS, N_INPUTS, TARGETS, _greedy_by_full_passes
from test_gpt2 import SMALL, _hf_model

REPO = pathlib.Path(__file__).resolve().parents[1]
# The decoding rows of test_decoder_only (ids < 40, EOS 1), two lengths of inputs.
CONFIG = GPT2Config(vocab_size=40, n_positions=32, n_embd=16, n_layer=2, n_head=2,
                    embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
DELTAS = {
    'plain': (),
    # PEFT's placement: the prompt first, at positions 0..p-1.
    'prompt': (deltas.PromptTuning(length=3),),
    'prompt_after_bos': (deltas.PromptTuning(length=2, combine=combine.after_first_token),),
    'prefix': (deltas.PrefixTuning(length=2),),
}


def _random_variables(model, scale=0.5):
  """Init, then every leaf perturbed: decisive argmaxes, and prompts/prefixes that act."""
  variables = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.asarray(INPUTS),
                                  jnp.asarray(TARGETS)))
  leaves, tree = jax.tree_util.tree_flatten(variables)
  rng = np.random.RandomState(1)
  leaves = [np.asarray(x) + scale * rng.randn(*np.shape(x)).astype(np.float32) for x in leaves]
  return jax.tree_util.tree_unflatten(tree, leaves)


# -- parity with PEFT -----------------------------------------------------------
def test_prompt_at_the_start_matches_peft_prompt_tuning_on_hugging_face_gpt2(tmp_path):
  import peft  # pylint: disable=g-import-not-at-top
  hf = _hf_model(tmp_path / 'hf')
  config, params = load_pretrained(str(tmp_path / 'hf'))
  length = 5
  peft_model = peft.get_peft_model(hf, peft.PromptTuningConfig(
      task_type=peft.TaskType.CAUSAL_LM, num_virtual_tokens=length)).eval()
  vectors = np.random.RandomState(2).randn(length, config.n_embd).astype(np.float32)
  with torch.no_grad():
    peft_model.prompt_encoder['default'].embedding.weight.copy_(torch.tensor(vectors))

  prompt = deltas.PromptTuning(length=length)  # combine.prefix: [prompt, tokens]
  model = GPT2LM(config, deltas=(prompt,))
  variables = prompt.with_prompt({'params': params}, jnp.asarray(vectors))
  rng = np.random.RandomState(0)
  tokens = rng.randint(0, SMALL['vocab_size'], (3, 19))
  mask = np.ones(tokens.shape, bool)
  mask[1, 12:] = False  # right padding: positions of real tokens do not move
  ours = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(tokens), jnp.asarray(mask)))
  with torch.no_grad():
    theirs = peft_model(input_ids=torch.tensor(tokens),
                        attention_mask=torch.tensor(mask).long()).logits.numpy()
  # PEFT returns the prompt positions' logits too; ours drops them.
  assert theirs.shape == (3, length + 19, SMALL['vocab_size'])
  theirs = theirs[:, length:]
  scale = np.abs(theirs[mask]).max()
  relative = np.abs(ours - theirs)[mask].max() / scale
  print(f'PEFT prompt parity: max |diff| / max |logit| = {relative:.3g} (max |logit| '
        f'{scale:.3g})')
  assert scale > 1.0 and relative <= 1e-4
  # The prompt matters: without it the logits are others.
  plain = np.asarray(GPT2LM(config).apply({'params': params}, jnp.asarray(tokens),
                                          jnp.asarray(mask)))
  assert np.abs(plain - theirs)[mask].max() > 1e-2 * scale


# -- cached decoding ------------------------------------------------------------
@pytest.mark.parametrize('kind', sorted(DELTAS))
def test_cached_steps_after_the_prefill_give_the_teacher_forced_logits(kind):
  model = GPT2LM(CONFIG, deltas=DELTAS[kind])
  variables = _random_variables(model)
  full = np.asarray(model.apply(variables, jnp.asarray(INPUTS), jnp.asarray(TARGETS),
                                decoder_causal_attention=jnp.asarray(CAUSAL)))
  step, cache, start = contract.DECODER_ONLY.prefill(
      model, variables, jnp.asarray(INPUTS), jnp.asarray(CAUSAL), max_decode_length=4)
  extra = sum(d.length for d in DELTAS[kind] if isinstance(d, deltas.PromptTuning))
  # Each row continues at its own absolute position: its inputs' end (+ the prompt).
  np.testing.assert_array_equal(np.asarray(cache['position']['cache_index']),
                                N_INPUTS + extra)
  token = start
  for i in range(4):  # feed the true targets: output i is target position n + i's
    logits, cache = step(token[:, None], cache)
    for row in range(2):
      if TARGETS[row, N_INPUTS[row] + i]:
        np.testing.assert_allclose(np.asarray(logits)[row], full[row, N_INPUTS[row] + i],
                                   rtol=1e-5, atol=1e-5)
    token = jnp.asarray(TARGETS[np.arange(2), N_INPUTS + i])


@pytest.mark.parametrize('kind', sorted(DELTAS))
def test_greedy_cached_decoding_equals_argmax_of_full_passes(kind):
  model = GPT2LM(CONFIG, deltas=DELTAS[kind])
  variables = _random_variables(model)
  steps = 4
  decoded = np.asarray(predict.decode(model, variables,
                                      (jnp.asarray(INPUTS), jnp.asarray(CAUSAL)), steps))
  want = _greedy_by_full_passes(model, variables, steps)
  np.testing.assert_array_equal(decoded, want)
  assert len(set(want.ravel().tolist())) > 1  # not one token repeated: a real check


def test_rank_classification_scores_equal_teacher_forced_label_sequences():
  model = GPT2LM(CONFIG, deltas=DELTAS['prompt'])
  variables = _random_variables(model)
  labels = [[9, 1], [17, 18, 1], [30, 1]]
  arch = contract.DECODER_ONLY
  context = arch.rank_context(model, variables, jnp.asarray(INPUTS), jnp.asarray(CAUSAL),
                              label_length=3)
  scores = np.asarray(arch.label_scores(model, variables, context, labels))
  for row in range(2):
    n = N_INPUTS[row]
    for j, label in enumerate(labels):
      targets = np.asarray([list(TARGETS[row, :n]) + label], np.int32)
      inputs = np.concatenate([[[0]], targets[:, :-1]], 1)
      causal = (np.arange(targets.shape[1]) <= n)[None].astype(np.int32)
      weights = (np.arange(targets.shape[1]) >= n)[None].astype(np.float32)
      want = arch.score(model, variables, jnp.asarray(inputs), jnp.asarray(targets),
                        jnp.asarray(causal), jnp.asarray(weights))
      np.testing.assert_allclose(scores[row, j], float(want[0]), rtol=1e-5, atol=1e-5)


def test_a_zero_token_before_the_end_is_real_trailing_zeros_are_padding():
  """GPT-2's id 0 is '!': seqio's zero padding can only be trailing."""
  model = GPT2LM(CONFIG)
  variables = _random_variables(model)
  targets = np.array([[5, 0, 7, 9, 0]])
  inputs = np.array([[0, 5, 0, 7, 9]])
  logits = np.asarray(model.apply(variables, jnp.asarray(inputs), jnp.asarray(targets)))
  mask = np.array([[True, True, True, True, False]])
  explicit = np.asarray(model.apply(variables, jnp.asarray(inputs), jnp.asarray(mask)))
  np.testing.assert_allclose(logits[:, :4], explicit[:, :4], rtol=1e-6, atol=1e-6)
  masked_zero = np.asarray(model.apply(variables, jnp.asarray(inputs),
                                       jnp.asarray(mask & (inputs > 0) | (np.arange(5) == 0))))
  assert not np.allclose(logits[:, 3], masked_zero[:, 3], atol=1e-4)


# -- the contract and loading ---------------------------------------------------
def test_the_contract_builds_and_drives_gpt2():
  assert isinstance(contract.build(CONFIG), GPT2LM)
  assert contract.of(GPT2LM(CONFIG)) is contract.DECODER_ONLY
  assert contract.for_config(CONFIG) is contract.DECODER_ONLY
  shapes = jax.eval_shape(lambda: GPT2LM(CONFIG).init(jax.random.PRNGKey(0),
                                                      *contract.DECODER_ONLY.init_args(
                                                          {'inputs': 5, 'targets': 3})))
  flat = param_shapes.flatten_tree(jax.tree_util.tree_map(lambda x: tuple(x.shape),
                                                          nn.unbox(shapes['params'])))
  assert flat == param_shapes.flatten_tree(parameter_shapes(CONFIG))
  assert set(shapes) == {'params'}  # no cache unless decoding


def test_load_pretrained_reads_a_hugging_face_gpt2_folder(tmp_path):
  hf = _hf_model(tmp_path / 'hf')
  config, params = load_pretrained(str(tmp_path / 'hf'))
  assert config == GPT2Config(**SMALL)
  param_shapes.check_params(config, params, 'x')
  tokens = np.random.RandomState(0).randint(0, SMALL['vocab_size'], (2, 9))
  ours = np.asarray(GPT2LM(config).apply({'params': params}, jnp.asarray(tokens)))
  with torch.no_grad():
    theirs = hf(input_ids=torch.tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
  # Placed onto shardings (one device here) as the trainer asks for it.
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  _, placed = load_pretrained(str(tmp_path / 'hf'),
                              jax.tree_util.tree_map(lambda _: sharding, params))
  np.testing.assert_array_equal(np.asarray(placed['decoder']['layers_1']['mlp']['wo']['bias']),
                                params['decoder']['layers_1']['mlp']['wo']['bias'])


@pytest.mark.parametrize('field,value', [
    ('scale_attn_by_inverse_layer_idx', True),
    ('reorder_and_upcast_attn', True),
    ('activation_function', 'swish'),
])
def test_an_unsupported_gpt2_config_is_one_line_naming_the_key(tmp_path, field, value):
  _hf_model(tmp_path / 'hf')
  path = tmp_path / 'hf' / 'config.json'
  path.write_text(json.dumps(dict(json.loads(path.read_text()), **{field: value})))
  with pytest.raises(param_shapes.CheckpointError) as error:
    load_pretrained(str(tmp_path / 'hf'))
  message = str(error.value)
  assert '\n' not in message and field in message and 'not supported' in message


def test_prompt_plus_inputs_longer_than_n_positions_names_both_and_the_fix():
  config = CONFIG.replace(n_positions=10)
  model = GPT2LM(config, deltas=(deltas.PromptTuning(length=3),))
  tokens = jnp.ones((1, 9), jnp.int32)
  with pytest.raises(ValueError) as error:
    model.init(jax.random.PRNGKey(0), tokens, tokens)
  message = str(error.value)
  assert '\n' not in message
  assert ('prompt of 3 positions + inputs of 9 = 12 positions, more than n_positions 10'
          in message and 'TASK_FEATURE_LENGTHS' in message and 'at most 7' in message)
  # The prefill asks before it builds a cache; rank classification's label room too.
  variables = nn.unbox(model.init(jax.random.PRNGKey(0), tokens[:, :6], tokens[:, :6]))
  causal = jnp.ones((1, 9), jnp.int32)
  with pytest.raises(ValueError, match='prompt of 3 positions \\+ inputs of 9'):
    contract.DECODER_ONLY.prefill(model, variables, tokens, causal, max_decode_length=2)
  with pytest.raises(ValueError, match='Cached decoding over 11 positions .* n_positions 10'):
    contract.DECODER_ONLY.rank_context(model, variables, tokens[:, :6], causal[:, :6],
                                       label_length=2)


def test_a_checkpoint_of_another_architecture_names_it_and_the_gin_to_use(tmp_path):
  _hf_model(tmp_path / 'hf')
  gpt2_config, gpt2_params = load_pretrained(str(tmp_path / 'hf'))
  tokens = np.ones((1, 4), np.int32)
  t5_config = T5Config(vocab_size=40, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                       num_encoder_layers=1, num_decoder_layers=1)
  t5_params = nn.unbox(Transformer(t5_config).init(jax.random.PRNGKey(0), tokens, tokens,
                                                   tokens)['params'])
  lm_config = DecoderOnlyConfig(vocab_size=40, emb_dim=16, num_heads=2, num_layers=1,
                                head_dim=8, mlp_dim=32)
  lm_params = nn.unbox(DecoderOnlyLM(lm_config).init(jax.random.PRNGKey(0), tokens,
                                                     tokens)['params'])
  cases = [  # (configured, checkpoint, what the checkpoint is called, the gin to use)
      (t5_config, gpt2_params, 'a decoder-only checkpoint (GPT-2)', 'gin/models/gpt2/'),
      (lm_config, gpt2_params, 'a decoder-only checkpoint (GPT-2)', 'gin/models/gpt2/'),
      (gpt2_config, t5_params, 'an encoder-decoder checkpoint', 'gin/models/t5_1_1/'),
      (gpt2_config, lm_params, "a decoder-only checkpoint (T5X's decoder-only LM)",
       'gin/models/decoder_only/'),
  ]
  for config, params, called, gin_dir in cases:
    with pytest.raises(param_shapes.CheckpointError) as error:
      param_shapes.check_params(config, params, '/ckpt')
    message = str(error.value)
    assert '\n' not in message and f'/ckpt is {called}' in message and gin_dir in message, (
        message)


# -- the CLIs -------------------------------------------------------------------
def _cli(module, args, cwd):
  proc = subprocess.run([sys.executable, '-m', module, *args], cwd=cwd, capture_output=True,
                        text=True, timeout=900, check=False,
                        env=dict(os.environ, PYTHONPATH=f'{REPO / "tests"}{os.pathsep}'
                                 f'{os.environ.get("PYTHONPATH", "")}'))
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc


@pytest.mark.slow  # three CLI processes on 2 CPU cores
def test_gpt2_prompt_tuning_through_the_train_eval_and_infer_clis(tmp_path):
  """A tiny random GPT-2 written as a Hugging Face folder; prompt tuning, eval, infer.

  The fixture task's vocabulary is the project's 32128-id SentencePiece one,
  which gin/models/gpt2/tiny.gin's vocab_size matches.
  """
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=32128, n_positions=512, n_embd=64, n_layer=2, n_head=4)).save_pretrained(
          str(tmp_path / 'hf'), safe_serialization=True)
  task = ["--gin.MIXTURE_OR_TASK_NAME='fixture_sentiment'",
          "--gin.MIXTURE_OR_TASK_MODULE='fixture_tasks'",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}"]
  model = '--gin_file=gin/models/gpt2/tiny.gin'
  _cli('prompt_tuning.train', [
      model, '--gin_file=gin/prompts/random_uniform.gin', '--gin_file=gin/runs/prompt_tune.gin',
      f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
      f"--gin.INITIAL_CHECKPOINT_PATH='{tmp_path / 'hf'}'", '--gin.TRAIN_STEPS=4',
      '--gin.BATCH_SIZE=8', '--gin.PROMPT_LENGTH=4', '--gin.EVAL_PERIOD=None',
      '--gin.CHECKPOINT_PERIOD=4', '--gin.LOG_PERIOD=1', *task], REPO)
  checkpoint = tmp_path / 'run' / 'checkpoint_4'
  assert (checkpoint / 'prompt.npy').exists()
  assert np.load(checkpoint / 'prompt.npy').shape == (4, 64)
  assert checkpoints.read_metadata(str(checkpoint))['model_config']['n_layer'] == 2
  # PEFT adapters are T5's: a GPT-2 run is refused in one line.
  from prompt_tuning.interop import peft  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match='decoder-only LM; PEFT adapter export') as error:
    peft.export_peft_adapter(str(tmp_path / 'run'), str(tmp_path / 'peft'))
  assert '\n' not in str(error.value)

  _cli('prompt_tuning.eval', [
      model, '--gin_file=gin/runs/eval.gin', f"--gin.CHECKPOINT_PATH='{tmp_path / 'run'}'",
      f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'eval'}'", '--gin.BATCH_SIZE=16', *task], REPO)
  metrics = (tmp_path / 'eval' / 'fixture_sentiment-metrics.jsonl').read_text().splitlines()
  assert metrics and 'accuracy' in metrics[-1]

  _cli('prompt_tuning.infer', [
      model, '--gin_file=gin/runs/infer.gin', f"--gin.CHECKPOINT_PATH='{tmp_path / 'run'}'",
      f"--gin.INFER_OUTPUT_DIR='{tmp_path / 'infer'}'", '--gin.BATCH_SIZE=16', *task], REPO)
  lines = (tmp_path / 'infer' / 'fixture_sentiment-validation-predict.jsonl').read_text()
  assert len(lines.splitlines()) == 32 and '"prediction"' in lines


def test_prefix_position_bias_past_is_refused_on_gpt2():
  model = GPT2LM(CONFIG, deltas=(deltas.PrefixTuning(length=2, position_bias='past'),))
  with pytest.raises(ValueError, match="position_bias='past'.*GPT2LM.*position_bias='none'"):
    model.init(jax.random.PRNGKey(0), jnp.asarray(INPUTS), jnp.asarray(TARGETS))
