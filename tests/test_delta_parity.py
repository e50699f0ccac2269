"""BitFit, norm tuning, bottleneck adapters and merged serving against independent implementations.

Prompt tuning, LoRA and (IA)^3 are checked against PEFT through their adapter
files (tests/test_peft_interop.py). Here, on the same random T5 (ours and
transformers' from one set of weights):

* BitFit against PEFT's BEFT (zero-initialised biases added to projections);
* norm tuning against PEFT's LN_TUNING (trained copies of the layer norms);
* Houlsby and Pfeiffer adapters against the reference's formula,
  y + up(act(down(y))), applied with torch forward hooks to the outputs of
  transformers' attention and feed-forward modules (the `adapters` library
  pins older transformers releases than the test extras install).
"""
import functools
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
peft = pytest.importorskip('peft')
# pylint: disable=g-import-not-at-top,unused-import
from conftest import REPO_ROOT
from prompt_tuning.deltas import IA3, Adapters, BitFit, LoRA, NormTuning, paths
from prompt_tuning.infer.loading import VariableLoader, merged
from prompt_tuning.interop.peft import hf_module_name, hf_sublayer_name
from prompt_tuning.model import Transformer
from prompt_tuning.model.checkpoints import DeltaCheckpointer, fingerprint
from prompt_tuning.model.hf_checkpoint import hf_names
from prompt_tuning.train.method import Method
from test_peft_interop import (BATCH, CONFIG, _assert_close, _hf_t5, _ours, _theirs,
                               backbone)

RNG = np.random.RandomState(7)


def _init(delta):
  return jax.tree_util.tree_map(np.asarray, nn.unbox(Transformer(CONFIG, deltas=(delta,)).init(
      jax.random.PRNGKey(1), *[jnp.asarray(x) for x in BATCH])))


def _random(tree, std=0.5):
  return jax.tree_util.tree_map(
      lambda x: RNG.normal(0.0, std, np.shape(x)).astype(np.float32), tree)


def test_bitfit_equals_peft_beft(backbone):
  params, folder = backbone
  delta = BitFit()  # every attention and MLP projection
  biases = paths.flatten_tree(_random(_init(delta)['bitfit']))
  modules = {hf_module_name(p[:-len('/bias')]): b for p, b in biases.items()}
  model = _hf_t5(folder)
  base = _theirs(model)
  wrapped = peft.get_peft_model(model, peft.BeftConfig(target_modules=sorted(modules)))
  with torch.no_grad():
    for name, bias in modules.items():
      wrapped.base_model.model.get_submodule(name).beft_bias['default'].copy_(
          torch.tensor(bias[None]))
  ours = _ours((delta,), {'params': params, 'bitfit': paths.unflatten_tree(biases)})
  _assert_close(ours, _theirs(wrapped.eval()), base)


def test_norm_tuning_equals_peft_ln_tuning(backbone):
  params, folder = backbone
  delta = NormTuning()
  _, trained = paths.partition({'params': params}, delta.trainable_patterns())
  scales = paths.flatten_tree(_random(trained, std=0.3))
  scales = {p: s + 1.0 for p, s in scales.items()}  # around T5's ones
  model = _hf_t5(folder)
  base = _theirs(model)
  wrapped = peft.get_peft_model(model, peft.LNTuningConfig(
      target_modules=['layer_norm', 'final_layer_norm']))
  t5x_to_hf = {f'params/{t5x}': hf for hf, (t5x, _) in hf_names(CONFIG).items()}
  with torch.no_grad():
    for path, scale in scales.items():
      module = t5x_to_hf[path][:-len('.weight')]
      wrapped.base_model.model.get_submodule(module).ln_tuning_layers['default'].weight.copy_(
          torch.tensor(scale))
  assert len(scales) == 2 * 2 + 3 * 3 + 2  # every norm of both stacks
  ours = _ours((delta,), paths.merge({'params': params}, paths.unflatten_tree(scales)))
  _assert_close(ours, _theirs(wrapped.eval()), base)


@pytest.mark.parametrize('placement', ['houlsby', 'pfeiffer'])
def test_adapters_equal_the_reference_formula_on_transformers_t5(backbone, placement):
  params, folder = backbone
  delta = Adapters(placement=placement, reduction_factor=4)
  weights = _random(_init(delta)['adapters'], std=0.3)
  act = {'houlsby': torch.nn.functional.silu, 'pfeiffer': torch.relu}[placement]
  model = _hf_t5(folder)
  base = _theirs(model)

  def hook(adapter):
    down, down_bias, up, up_bias = (torch.tensor(adapter[k]) for k in
                                    ('down_kernel', 'down_bias', 'up_kernel', 'up_bias'))
    def add_adapter(module, inputs, output):
      del module, inputs
      # Attention modules return (output, ...); the feed-forward a tensor.
      y = output[0] if isinstance(output, tuple) else output
      y = y + act(y @ down + down_bias) @ up + up_bias
      return (y,) + tuple(output[1:]) if isinstance(output, tuple) else y
    return add_adapter

  sublayers = {path[:-len('/down_kernel')] for path in paths.flatten_tree(weights)
               if path.endswith('/down_kernel')}
  expected = {'houlsby': 2 * 2 + 3 * 3, 'pfeiffer': 2 + 3}[placement]
  assert len(sublayers) == expected
  at = lambda path: functools.reduce(lambda node, key: node[key], path.split('/'), weights)
  handles = [model.get_submodule(hf_sublayer_name(path)).register_forward_hook(hook(at(path)))
             for path in sublayers]
  try:
    theirs = _theirs(model)
  finally:
    for handle in handles:
      handle.remove()
  _assert_close(_ours((delta,), {'params': params, 'adapters': weights}), theirs, base)


@pytest.mark.parametrize('kind', ['lora', 'ia3'])
def test_a_merged_delta_exports_as_a_plain_t5_that_transformers_serves(backbone, tmp_path, kind):
  """Merged serving: the delta folded into the kernels, written as a Hugging
  Face folder, run by transformers alone, gives our unmerged model's logits."""
  params, folder = backbone
  delta = {'lora': LoRA(rank=2, alpha=4.0), 'ia3': IA3()}[kind]
  weights = _random(_init(delta)[delta.collection], std=0.3)
  if kind == 'ia3':
    weights = jax.tree_util.tree_map(lambda x: x + 1.0, weights)
  variables = {'params': params, delta.collection: weights}
  unmerged = _ours((delta,), variables)
  model, served = merged(Transformer(CONFIG, deltas=(delta,)), variables)
  assert model.deltas == () and set(served) == {'params'}

  method = Method(CONFIG, deltas=(delta,))
  checkpointer = DeltaCheckpointer(str(tmp_path / 'run'))
  checkpointer.save(1, {'step': np.int32(1), 'trainable': {delta.collection: weights},
                        'opt_state': {}},
                    {'base_checkpoint': str(folder), 'base_fingerprint': fingerprint(params),
                     'base_step': 0, **method.record()})
  checkpointer.close()
  loaded = VariableLoader(Transformer(CONFIG), merge=True).checkpoint(str(tmp_path / 'run'))
  assert loaded.model.deltas == ()
  subprocess.run([sys.executable, 'tools/export_hf.py', str(tmp_path / 'run'),
                  str(tmp_path / 'merged'), '--merge_delta'], cwd=REPO_ROOT, check=True,
                 capture_output=True)
  theirs = _theirs(_hf_t5(str(tmp_path / 'merged')))
  _assert_close(unmerged, theirs, _ours((), {'params': params}))
