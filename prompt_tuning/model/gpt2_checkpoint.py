"""Hugging Face GPT-2 folders (config.json + safetensors or a PyTorch pickle) as GPT2LM params.

GPT-2's projections are `Conv1D`s whose weight is already [in, out], so no
kernel is transposed; the fused `attn.c_attn` [d, 3d] (and its bias) splits
into query, key and value in that order. `lm_head.weight`, where a file has
it, must be the token embedding (GPT2LM ties them). Names may carry the
`transformer.` prefix of `GPT2LMHeadModel` or not (the original `gpt2`
files do not); the causal-mask buffers older files store (`attn.bias`,
`attn.masked_bias`) are not weights and are dropped.
"""
import json
import os
import re
from typing import Any, Dict, Mapping, Tuple

import numpy as np

from prompt_tuning.model.gpt2 import ACTIVATIONS, GPT2Config
from prompt_tuning.model.hf_checkpoint import CONFIG_NAME
from prompt_tuning.model.hf_checkpoint import open_weights
from prompt_tuning.model.param_shapes import CheckpointError
from prompt_tuning.model.param_shapes import unflatten_tree
from prompt_tuning.model.shard_reads import read_whole

_PREFIX = 'transformer.'
_MASK_BUFFER = re.compile(r'h\.\d+\.attn\.(bias|masked_bias)')
# config.json flags whose models GPT2LM does not compute, and the way out.
_UNSUPPORTED = {
    'scale_attn_by_inverse_layer_idx':
        "divides layer i's attention logits by i + 1, which GPT2LM does not; "
        'use a model trained without it',
    'reorder_and_upcast_attn':
        'only changes half-precision rounding in PyTorch; set it to false in '
        'config.json (GPT2LM computes attention logits in float32 anyway)',
    'add_cross_attention':
        'adds encoder-decoder attention, which a decoder-only GPT2LM lacks; '
        'use a checkpoint without it',
}
_REQUIRED = ('vocab_size', 'n_positions', 'n_embd', 'n_layer', 'n_head')


def config_from_hf(hf: Mapping[str, Any], source: str) -> GPT2Config:
  """The GPT2Config of a Hugging Face GPT-2 config.json; CheckpointError if unsupported."""
  if hf.get('model_type', 'gpt2') != 'gpt2':
    raise CheckpointError(f"{source}: model_type {hf['model_type']!r} is not 'gpt2'")
  missing = [k for k in _REQUIRED if k not in hf]
  if missing:
    raise CheckpointError(f'{source} lacks GPT-2 fields {missing}')
  for field, fix in _UNSUPPORTED.items():
    if hf.get(field):
      raise CheckpointError(f'{source}: {field}=true is not supported: it {fix}')
  activation = hf.get('activation_function', 'gelu_new')
  if activation not in ACTIVATIONS:
    raise CheckpointError(f'{source}: activation_function {activation!r} is not supported; '
                          f'GPT2LM computes {sorted(ACTIVATIONS)}')
  if hf.get('tie_word_embeddings', True) is False:
    raise CheckpointError(f'{source}: tie_word_embeddings=false is not supported: GPT2LM '
                          'projects to the vocabulary through its token embedding')
  if hf['n_embd'] % hf['n_head']:
    raise CheckpointError(f"{source}: n_embd {hf['n_embd']} is not a multiple of "
                          f"n_head {hf['n_head']}")
  return GPT2Config(
      vocab_size=hf['vocab_size'], n_positions=hf['n_positions'], n_embd=hf['n_embd'],
      n_layer=hf['n_layer'], n_head=hf['n_head'], n_inner=hf.get('n_inner'),
      activation_function=activation,
      layer_norm_epsilon=hf.get('layer_norm_epsilon', 1e-5),
      scale_attn_weights=hf.get('scale_attn_weights', True),
      embd_pdrop=hf.get('embd_pdrop', 0.1), attn_pdrop=hf.get('attn_pdrop', 0.1),
      resid_pdrop=hf.get('resid_pdrop', 0.1))


def hf_names(config: GPT2Config) -> Dict[str, Tuple[Tuple[int, ...], Tuple[str, ...]]]:
  """Maps each HF tensor name (no `transformer.` prefix) to (its shape, our paths).

  Several paths: the tensor splits into that many equal parts along its last axis.
  """
  d, m = config.n_embd, config.mlp_dim
  names = {
      'wte.weight': ((config.vocab_size, d), ('token_embedder/embedding',)),
      'wpe.weight': ((config.n_positions, d), ('position_embedder/embedding',)),
      'ln_f.weight': ((d,), ('decoder/decoder_norm/scale',)),
      'ln_f.bias': ((d,), ('decoder/decoder_norm/bias',)),
  }
  for i in range(config.n_layer):
    hf, ours = f'h.{i}', f'decoder/layers_{i}'
    for norm, name in (('ln_1', 'pre_self_attention_layer_norm'),
                       ('ln_2', 'pre_mlp_layer_norm')):
      names[f'{hf}.{norm}.weight'] = ((d,), (f'{ours}/{name}/scale',))
      names[f'{hf}.{norm}.bias'] = ((d,), (f'{ours}/{name}/bias',))
    projections = (('attn.c_attn', (d, 3 * d), 'self_attention', ('query', 'key', 'value')),
                   ('attn.c_proj', (d, d), 'self_attention', ('out',)),
                   ('mlp.c_fc', (d, m), 'mlp', ('wi',)),
                   ('mlp.c_proj', (m, d), 'mlp', ('wo',)))
    for conv, shape, block, parts in projections:
      names[f'{hf}.{conv}.weight'] = (shape, tuple(f'{ours}/{block}/{p}/kernel' for p in parts))
      names[f'{hf}.{conv}.bias'] = (shape[-1:], tuple(f'{ours}/{block}/{p}/bias' for p in parts))
  return names


def read_hf_gpt2(path: str) -> Tuple[GPT2Config, Dict[str, Any]]:
  """Reads a Hugging Face GPT-2 folder into a GPT2LM parameter tree.

  Args:
    path: local folder with config.json and model.safetensors (possibly
      sharded) or pytorch_model.bin.

  Returns:
    (config, params): params as nested dicts of float32 numpy arrays, e.g.
    decoder/layers_0/self_attention/query/kernel [n_embd, n_embd].

  Raises:
    CheckpointError (a ValueError): an unsupported config.json, or missing,
      unknown or misshapen tensors.
  """
  config_path = os.path.join(path, CONFIG_NAME)
  try:
    with open(config_path) as f:
      hf = json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f'cannot read Hugging Face config {config_path}: {e}') from e
  config = config_from_hf(hf, config_path)
  weights = {}
  for name, value in read_whole(open_weights(path), path).items():
    name = name[len(_PREFIX):] if name.startswith(_PREFIX) else name
    if not _MASK_BUFFER.fullmatch(name):
      weights[name] = value
  lm_head = weights.pop('lm_head.weight', None)
  if (lm_head is not None and 'wte.weight' in weights and
      not np.array_equal(lm_head, weights['wte.weight'])):
    raise CheckpointError(f'{path}: lm_head.weight differs from transformer.wte.weight; '
                          'GPT2LM ties its output projection to the token embedding')

  names = hf_names(config)
  missing = sorted(set(names) - set(weights))
  unknown = sorted(set(weights) - set(names))
  if missing or unknown:
    raise CheckpointError(f'{path} does not match its config.json (n_layer '
                          f'{config.n_layer}): missing tensors {missing}, unknown tensors '
                          f'{unknown}')
  misshapen = [f'{name}: {weights[name].shape}, expected {shape}'
               for name, (shape, _) in names.items() if weights[name].shape != shape]
  if misshapen:
    raise CheckpointError(f'{path}: tensors do not fit config.json: {"; ".join(misshapen)}')
  flat = {}
  for name, (_, paths) in names.items():
    for ours, part in zip(paths, np.split(weights[name], len(paths), axis=-1)):
      flat[ours] = np.ascontiguousarray(part, dtype=np.float32)
  return config, unflatten_tree(flat)
