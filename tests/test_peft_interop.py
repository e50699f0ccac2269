"""PEFT adapters: our deltas against Hugging Face PEFT running on transformers' T5.

Logits of our network with a delta must equal those of PEFT's model with the
adapter, both ways: our export loaded by `PeftModel.from_pretrained`, and an
adapter PEFT saved itself read by `import_peft_adapter`. The backbone is our
random init written with `write_hf_t5`; the adapters' values are random (a
LoRA B of zeros or IA3 scales of ones would change nothing and hide bugs).
"""
import dataclasses
import json
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
peft = pytest.importorskip('peft')
# pylint: disable=g-import-not-at-top
from conftest import REPO_ROOT
from prompt_tuning.deltas import PromptTuning
from prompt_tuning.deltas.bitfit import BitFit
from prompt_tuning.deltas.ia3 import IA3
from prompt_tuning.deltas.lora import LoRA
from prompt_tuning.interop.peft import (export_peft_adapter, import_peft_adapter, peft_files,
                                        write_adapter)
from prompt_tuning.model import T5Config, Transformer
from prompt_tuning.model.checkpoints import DeltaCheckpointer
from prompt_tuning.model.hf_checkpoint import write_hf_t5
from prompt_tuning.model.param_shapes import flatten_tree, unflatten_tree

# Head width x heads (24) != d_model (32), and 3 decoder layers against 2, so
# a transposed or misplaced tensor cannot fit by accident.
CONFIG = T5Config(vocab_size=64, emb_dim=32, num_heads=3, head_dim=8, mlp_dim=40,
                  num_encoder_layers=2, num_decoder_layers=3, dropout_rate=0.0,
                  relative_attention_num_buckets=8, relative_attention_max_distance=20)
INPUT_LENGTHS = (11, 6, 2)
TARGET_LENGTHS = (5, 3, 1)
EVERY_PROJECTION = (r'(encoder|decoder)/layers_\d+/\w*attention/(query|key|value|out)|'
                    r'(encoder|decoder)/layers_\d+/mlp/(wi_0|wi_1|wo)')

DELTAS = {
    'prompt': PromptTuning(length=4),
    'lora': LoRA(rank=3, alpha=5.0, targets=EVERY_PROJECTION),
    'lora_rslora': LoRA(rank=2, alpha=3.0, use_rslora=True),  # default targets: q, v
    'ia3': IA3(),
}


def _batch():
  rng = np.random.RandomState(0)
  inputs = rng.randint(2, CONFIG.vocab_size, (len(INPUT_LENGTHS), max(INPUT_LENGTHS)))
  targets = rng.randint(2, CONFIG.vocab_size, (len(TARGET_LENGTHS), max(TARGET_LENGTHS)))
  for i, (n, t) in enumerate(zip(INPUT_LENGTHS, TARGET_LENGTHS)):
    inputs[i, n:] = 0
    targets[i, t:] = 0
  decoder_inputs = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], 1)
  return inputs, decoder_inputs, targets


BATCH = _batch()


@pytest.fixture(scope='module')
def backbone(tmp_path_factory):
  """(our params, the Hugging Face folder written from them)."""
  params = nn.unbox(Transformer(CONFIG).init(
      jax.random.PRNGKey(0), *[jnp.asarray(x) for x in BATCH])['params'])
  params = jax.tree_util.tree_map(np.asarray, params)
  folder = tmp_path_factory.mktemp('hf') / 't5'
  write_hf_t5(CONFIG, params, str(folder))
  return params, folder


def _ours(deltas, variables):
  return np.asarray(Transformer(CONFIG, deltas=tuple(deltas)).apply(
      variables, *[jnp.asarray(x) for x in BATCH]))


def _hf_t5(folder):
  model = transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()
  # T5.1.1's head is its own matrix; a head tied to the embedding would
  # compare a different network.
  assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
  return model


def _theirs(model):
  inputs, decoder_inputs, _ = BATCH
  with torch.no_grad():
    return model(input_ids=torch.tensor(inputs),
                 attention_mask=torch.tensor(inputs > 0).long(),
                 decoder_input_ids=torch.tensor(decoder_inputs)).logits.numpy()


def _assert_close(ours, theirs, base):
  """Equal at real target positions to 1e-4 of the logits' scale, and the
  delta moves the logits by far more than that."""
  real = BATCH[2] > 0  # T5X masks padded queries too: compare real targets.
  scale = np.abs(theirs[real]).max()
  assert scale > 1.0, 'logits too flat for a meaningful comparison'
  error = np.abs(ours - theirs)[real].max()
  assert error <= 1e-4 * scale, f'max |diff| {error:.3g} vs max |logit| {scale:.3g}'
  effect = np.abs(theirs - base)[real].max()
  assert effect > 1e-2 * scale, f'the delta barely changes the logits ({effect:.3g})'


def _random_delta_variables(delta, params):
  """The delta's variables from init, every leaf replaced by random values."""
  variables = nn.unbox(Transformer(CONFIG, deltas=(delta,)).init(
      jax.random.PRNGKey(1), *[jnp.asarray(x) for x in BATCH]))
  rng = np.random.RandomState(2)
  flat = flatten_tree({delta.collection: variables[delta.collection]})
  for path, value in flat.items():
    noise = rng.normal(0.0, 0.5, np.shape(value)).astype(np.float32)
    # IA3 scales around 1; LoRA factors, prompts: random and non-zero.
    flat[path] = 1.0 + noise if path.endswith('/scale') else noise
  return {'params': params, **unflatten_tree(flat)}


@pytest.mark.parametrize('method', sorted(DELTAS))
def test_exported_adapter_runs_in_peft_like_ours(backbone, tmp_path, method):
  params, folder = backbone
  delta = DELTAS[method]
  variables = _random_delta_variables(delta, params)
  adapter_config, tensors = peft_files((delta,), variables, CONFIG, str(folder))
  write_adapter(str(tmp_path / 'adapter'), adapter_config, tensors)

  model = _hf_t5(folder)
  base = _theirs(model)
  wrapped = peft.PeftModel.from_pretrained(model, str(tmp_path / 'adapter')).eval()
  assert wrapped.peft_config['default'].peft_type.value == adapter_config['peft_type']
  _assert_close(_ours((delta,), variables), _theirs(wrapped), base)


def _peft_model(folder, method):
  """PEFT's own adapter on the T5 folder, every adapter weight random."""
  configs = {
      'prompt': peft.PromptTuningConfig(task_type='SEQ_2_SEQ_LM', num_virtual_tokens=3),
      'lora': peft.LoraConfig(task_type='SEQ_2_SEQ_LM', r=4, lora_alpha=10, lora_dropout=0.1,
                              target_modules=['q', 'k', 'o', 'wi_1', 'wo']),
      # A regex: decoder q and v only, as PEFT matches it against module names.
      'lora_rslora': peft.LoraConfig(task_type='SEQ_2_SEQ_LM', r=2, lora_alpha=3,
                                     use_rslora=True, target_modules=r'decoder\..*\.(q|v)'),
      # wi_0 scaled at its output, wo at its input.
      'ia3': peft.IA3Config(task_type='SEQ_2_SEQ_LM', target_modules=['k', 'v', 'wi_0', 'wo'],
                            feedforward_modules=['wo']),
  }
  model = peft.get_peft_model(_hf_t5(folder), configs[method])
  torch.manual_seed(3)
  trained = [p for _, p in model.named_parameters() if p.requires_grad]
  assert trained
  # LoRA factors of 0.5 on 34 projections make the network chaotic: float32
  # rounding alone then moves the logits by 1e-4 of their scale.
  mean, std = {'ia3': (1.0, 0.5), 'prompt': (0.0, 0.5)}.get(method, (0.0, 0.1))
  with torch.no_grad():
    for p in trained:
      p.copy_(mean + std * torch.randn_like(p))
  return model.eval()


@pytest.mark.parametrize('method', sorted(DELTAS))
def test_peft_adapter_imports_and_runs_like_peft(backbone, tmp_path, method):
  params, folder = backbone
  model = _peft_model(folder, method)
  model.save_pretrained(str(tmp_path / 'adapter'))
  deltas, variables = import_peft_adapter(str(tmp_path / 'adapter'), config=CONFIG)
  with model.disable_adapter():
    base = _theirs(model)
  _assert_close(_ours(deltas, {'params': params, **variables}), _theirs(model), base)

  (delta,) = deltas
  if method == 'prompt':
    assert delta.length == 3
  elif method.startswith('lora'):
    assert (delta.rank, delta.alpha, delta.use_rslora) == (
        (4, 10.0, False) if method == 'lora' else (2, 3.0, True))
    assert delta.dropout == pytest.approx(0.1 if method == 'lora' else 0.0)
    # Exactly the modules PEFT adapted, a factor pair each: (q, k, o, wi_1, wo)
    # in 2 encoder layers, with cross-attention's (q, k, o) in 3 decoder
    # layers; or decoder q, v of self- and cross-attention.
    count = {'lora': 2 * 5 + 3 * 8, 'lora_rslora': 3 * 2 * 2}[method]
    assert len(flatten_tree(variables)) == 2 * count
  else:
    scales = flatten_tree(variables)
    assert len(scales) == 2 * 4 + 3 * 6  # k, v, wi_0, wo; and cross k, v
    assert scales['ia3/decoder/layers_2/mlp/wo/scale'].shape == (CONFIG.mlp_dim,)


def _checkpoint(tmp_path, delta, trainable):
  run = tmp_path / 'run'
  DeltaCheckpointer(str(run)).save(
      5, {'step': jnp.asarray(5), 'trainable': trainable,
          'opt_state': optax.adafactor(0.3).init(trainable)},
      {'deltas': [delta.to_config()], 'base_checkpoint': '/models/t5_base',
       'model_config': dataclasses.asdict(CONFIG)})
  return run


def test_export_of_a_checkpoint_and_the_tool(backbone, tmp_path):
  params, folder = backbone
  delta = DELTAS['lora']
  variables = _random_delta_variables(delta, params)
  run = _checkpoint(tmp_path, delta, {'lora': variables['lora']})

  out = export_peft_adapter(str(run), str(tmp_path / 'adapter'))
  written = json.loads((tmp_path / 'adapter' / 'adapter_config.json').read_text())
  assert written['base_model_name_or_path'] == '/models/t5_base'
  assert (written['r'], written['lora_alpha'], written['bias']) == (3, 5.0, 'none')
  assert 'encoder.block.1.layer.1.DenseReluDense.wi_0' in written['target_modules']
  assert 'decoder.block.2.layer.1.EncDecAttention.o' in written['target_modules']
  model = _hf_t5(folder)
  base = _theirs(model)
  wrapped = peft.PeftModel.from_pretrained(model, out).eval()
  _assert_close(_ours((delta,), variables), _theirs(wrapped), base)

  # The tool: export again (another recorded base), import to .npz.
  tool = [sys.executable, str(REPO_ROOT / 'tools' / 'peft_adapter.py')]
  subprocess.run(tool + ['export', '--checkpoint', str(run), '--output',
                         str(tmp_path / 'cli'), '--base_model_name_or_path', str(folder)],
                 check=True, capture_output=True, cwd=REPO_ROOT)
  written = json.loads((tmp_path / 'cli' / 'adapter_config.json').read_text())
  assert written['base_model_name_or_path'] == str(folder)
  subprocess.run(tool + ['import', '--adapter', str(tmp_path / 'cli'), '--output',
                         str(tmp_path / 'lora.npz'), '--base', str(folder)],
                 check=True, capture_output=True, cwd=REPO_ROOT)
  data = np.load(tmp_path / 'lora.npz')
  (recorded,) = json.loads(str(data['__deltas__']))
  assert (recorded['kind'], recorded['rank'], recorded['alpha']) == ('lora', 3, 5.0)
  want = flatten_tree({'lora': variables['lora']})
  assert set(data.files) == set(want) | {'__deltas__'}
  for path, value in want.items():
    np.testing.assert_array_equal(data[path], value, err_msg=path)


def test_unsupported_peft_type(tmp_path):
  write_adapter(str(tmp_path), {'peft_type': 'PREFIX_TUNING', 'task_type': 'SEQ_2_SEQ_LM',
                                 'num_virtual_tokens': 4},
                {'prompt_embeddings': np.zeros((8, 32))})
  with pytest.raises(ValueError, match=r"PREFIX_TUNING.*\['IA3', 'LORA', 'PROMPT_TUNING'\]"):
    import_peft_adapter(str(tmp_path))


def test_missing_files(tmp_path):
  with pytest.raises(FileNotFoundError, match='adapter_config.json'):
    import_peft_adapter(str(tmp_path))
  (tmp_path / 'adapter_config.json').write_text(json.dumps({'peft_type': 'LORA'}))
  with pytest.raises(FileNotFoundError, match='adapter_model.safetensors'):
    import_peft_adapter(str(tmp_path))


def _lora_adapter(tmp_path, **changes):
  """A LoRA adapter (rank 2 on q, v) written for CONFIG, its config edited."""
  delta = DELTAS['lora_rslora']
  rng = np.random.RandomState(4)
  flat = {}
  for stack, n, blocks in (('encoder', 2, ['attention']),
                           ('decoder', 3, ['self_attention', 'encoder_decoder_attention'])):
    for i in range(n):
      for block in blocks:
        for proj, (d_in, d_out) in (('query', (32, 24)), ('value', (32, 24))):
          flat[f'lora/{stack}/layers_{i}/{block}/{proj}/lora_a'] = rng.normal(size=(d_in, 2))
          flat[f'lora/{stack}/layers_{i}/{block}/{proj}/lora_b'] = rng.normal(size=(2, d_out))
  adapter_config, tensors = peft_files((delta,), unflatten_tree(flat), CONFIG)
  adapter_config.update(changes)
  return write_adapter(str(tmp_path / 'adapter'), adapter_config, tensors)


def test_shapes_must_fit_the_adapter_config_and_the_base(tmp_path):
  adapter = _lora_adapter(tmp_path)
  deltas, _ = import_peft_adapter(adapter, config=CONFIG)  # fits
  assert deltas[0].rank == 2
  # 4 heads of 8: query projections of 32 -> 32, not 32 -> 24.
  wider = CONFIG.replace(num_heads=4)
  with pytest.raises(ValueError, match=r'decoder\.block\.0\.layer\.0\.SelfAttention\.q\.'
                     r'lora_B\.weight has shape \(24, 2\) .*\(32, 2\)'):
    import_peft_adapter(adapter, config=wider)
  # One decoder layer fewer: decoder.block.2 has nowhere to go.
  with pytest.raises(ValueError, match='decoder/layers_2'):
    import_peft_adapter(adapter, config=CONFIG.replace(num_decoder_layers=2))
  # The config says rank 3, the tensors have rank 2.
  adapter = _lora_adapter(tmp_path, r=3)
  with pytest.raises(ValueError, match=r'lora_A\.weight has shape \(2, 32\) .*\(3, 32\)'):
    import_peft_adapter(adapter)


def test_lora_options_without_counterpart(tmp_path):
  with pytest.raises(ValueError, match='use_dora'):
    import_peft_adapter(_lora_adapter(tmp_path, use_dora=True))
  with pytest.raises(ValueError, match="bias='all'"):
    import_peft_adapter(_lora_adapter(tmp_path, bias='all'))


def test_export_refuses_other_deltas(backbone, tmp_path):
  params, _ = backbone
  bitfit = BitFit(targets=r'encoder/layers_0/attention/query')
  trainable = {'bitfit': {'encoder': {'layers_0': {'attention': {'query': {
      'bias': jnp.ones((24,))}}}}}}
  run = _checkpoint(tmp_path, bitfit, trainable)
  with pytest.raises(ValueError, match=r"\['ia3', 'lora', 'prompt'\].*\['bitfit'\]"):
    export_peft_adapter(str(run), str(tmp_path / 'adapter'))
  assert not (tmp_path / 'adapter').exists()
  # Two deltas make two adapters, not one.
  prompt, lora = DELTAS['prompt'], DELTAS['lora']
  variables = {**_random_delta_variables(prompt, params),
               'lora': _random_delta_variables(lora, params)['lora']}
  with pytest.raises(ValueError, match=r"\['prompt', 'lora'\]"):
    peft_files((prompt, lora), variables, CONFIG)
