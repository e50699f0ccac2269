"""Hugging Face T5 folders (config.json + safetensors) to and from T5X trees.

Hugging Face stores `torch.nn.Linear` weights as [out, in]; T5X kernels are
[in, out], so every projection is transposed, and the relative position
table [buckets, heads] becomes T5X's [heads, buckets]. The position tables
live in block 0 of each stack (T5X keeps one per stack, `relpos_bias`).

Output logits: T5X's `logits_via_embedding` multiplies by the embedding and
scales by 1/sqrt(d_model); Hugging Face does the same when
`config.scale_decoder_outputs` (transformers 5) or, in older files,
`tie_word_embeddings` is true. transformers 5 always ties `lm_head` to
`shared` for a freshly built model and then writes no `lm_head.weight`, but
records `scale_decoder_outputs: false` for a T5.1.1 configuration: such a
folder becomes an untied `logits_dense` equal to the embedding, which keeps
the numerics. An untied head with scaling (no T5X counterpart) gets the
factor folded into `logits_dense`.
"""
import functools
import json
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from prompt_tuning.model import shard_reads
from prompt_tuning.model.config import T5Config
from prompt_tuning.model.param_shapes import CheckpointError
from prompt_tuning.model.param_shapes import check_params
from prompt_tuning.model.param_shapes import flatten_tree
from prompt_tuning.model.param_shapes import unflatten_tree

CONFIG_NAME = 'config.json'
SAFETENSORS_NAME = 'model.safetensors'
SAFETENSORS_INDEX_NAME = 'model.safetensors.index.json'
TORCH_NAME = 'pytorch_model.bin'
TORCH_INDEX_NAME = 'pytorch_model.bin.index.json'
WEIGHT_NAMES = (SAFETENSORS_NAME, SAFETENSORS_INDEX_NAME, TORCH_NAME,
                TORCH_INDEX_NAME)

# feed_forward_proj <-> T5X mlp_activations.
_ACTIVATIONS = {
    'relu': ('relu',),
    'gated-gelu': ('gelu', 'linear'),
    'gated-relu': ('relu', 'linear'),
    'gated-silu': ('silu', 'linear'),
}
# Copies of `shared.weight`, or tensors Hugging Face itself never uses.
_REDUNDANT = ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight')
_UNUSED = ('decoder.block.0.layer.1.EncDecAttention.'
           'relative_attention_bias.weight',)


def hf_names(config: T5Config) -> Dict[str, Tuple[str, bool]]:
  """Maps each HF tensor name to (T5X path, transposed) for `config`."""
  names: Dict[str, Tuple[str, bool]] = {
      'shared.weight': ('token_embedder/embedding', False)}

  def attention(hf, t5x):
    for short, full in (('q', 'query'), ('k', 'key'), ('v', 'value'),
                        ('o', 'out')):
      names[f'{hf}.{short}.weight'] = (f'{t5x}/{full}/kernel', True)

  def mlp(hf, t5x):
    n = len(config.mlp_activations)
    for wi in (['wi'] if n == 1 else [f'wi_{i}' for i in range(n)]) + ['wo']:
      names[f'{hf}.DenseReluDense.{wi}.weight'] = (f'{t5x}/mlp/{wi}/kernel',
                                                   True)

  for stack, count in (('encoder', config.num_encoder_layers),
                       ('decoder', config.num_decoder_layers)):
    names[f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.'
          'weight'] = (f'{stack}/relpos_bias/rel_embedding', True)
    names[f'{stack}.final_layer_norm.weight'] = (f'{stack}/{stack}_norm/scale',
                                                 False)
    for i in range(count):
      hf, t5x = f'{stack}.block.{i}.layer', f'{stack}/layers_{i}'
      if stack == 'encoder':
        attention(f'{hf}.0.SelfAttention', f'{t5x}/attention')
        norms = ('pre_attention_layer_norm', 'pre_mlp_layer_norm')
        mlp(f'{hf}.1', t5x)
      else:
        attention(f'{hf}.0.SelfAttention', f'{t5x}/self_attention')
        attention(f'{hf}.1.EncDecAttention', f'{t5x}/encoder_decoder_attention')
        norms = ('pre_self_attention_layer_norm',
                 'pre_cross_attention_layer_norm', 'pre_mlp_layer_norm')
        mlp(f'{hf}.2', t5x)
      for j, norm in enumerate(norms):
        names[f'{hf}.{j}.layer_norm.weight'] = (f'{t5x}/{norm}/scale', False)
  return names


def config_from_hf(hf: Mapping[str, Any], source: str) -> T5Config:
  """The T5Config of a Hugging Face T5 config.json (untied logits assumed)."""
  if hf.get('model_type', 't5') not in ('t5', 'mt5'):
    raise CheckpointError(f"{source}: model_type {hf['model_type']!r} is not "
                          "'t5' or 'mt5'")
  missing = [k for k in ('vocab_size', 'd_model', 'd_kv', 'd_ff', 'num_layers',
                         'num_heads') if k not in hf]
  if missing:
    raise CheckpointError(f'{source} lacks T5 fields {missing}')
  proj = hf.get('feed_forward_proj', 'relu')
  if proj not in _ACTIVATIONS:
    raise CheckpointError(f'{source}: feed_forward_proj {proj!r} is not one '
                          f'of {sorted(_ACTIVATIONS)}')
  return T5Config(
      vocab_size=hf['vocab_size'], emb_dim=hf['d_model'],
      num_heads=hf['num_heads'], head_dim=hf['d_kv'], mlp_dim=hf['d_ff'],
      num_encoder_layers=hf['num_layers'],
      num_decoder_layers=hf.get('num_decoder_layers') or hf['num_layers'],
      mlp_activations=_ACTIVATIONS[proj],
      dropout_rate=hf.get('dropout_rate', 0.1),
      relative_attention_num_buckets=hf.get('relative_attention_num_buckets',
                                            32),
      relative_attention_max_distance=hf.get(
          'relative_attention_max_distance', 128))


def open_safetensors(path: str) -> Dict[str, shard_reads.LazyArray]:
  """{tensor name: LazyArray} of a safetensors file: the header only is read.

  A region is read with `safe_open(...).get_slice(name)[region]`: just those
  bytes of the file, in the stored dtype (bfloat16 included).
  """
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top

  def read(name, region):
    with safe_open(path, framework='np') as f:
      return f.get_slice(name)[region]

  with safe_open(path, framework='np') as f:
    return {name: shard_reads.LazyArray(tuple(f.get_slice(name).get_shape()),
                                        functools.partial(read, name))
            for name in f.keys()}


def read_safetensors(path: str) -> Dict[str, np.ndarray]:
  """Every tensor of a safetensors file, whole, as float32 numpy."""
  return {name: shard_reads.as_float32(leaf.read(shard_reads.full_region(leaf.shape)))
          for name, leaf in open_safetensors(path).items()}


def read_torch(path: str) -> Dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise CheckpointError(
        f'{path} is a PyTorch pickle and torch is not installed; install '
        'torch or convert the folder to safetensors') from e
  state = torch.load(path, map_location='cpu', weights_only=True)
  return {k: v.detach().float().numpy() for k, v in state.items()}


def _open_torch(path: str) -> Dict[str, shard_reads.LazyArray]:
  # A pickle cannot be read by parts: it is read whole, whatever the sharding.
  return {k: shard_reads.in_memory(v) for k, v in read_torch(path).items()}


def open_weights(folder: str) -> Dict[str, shard_reads.LazyArray]:
  """All tensors of an HF folder as LazyArrays, preferring safetensors."""
  for name, opener in ((SAFETENSORS_NAME, open_safetensors),
                       (SAFETENSORS_INDEX_NAME, open_safetensors),
                       (TORCH_NAME, _open_torch),
                       (TORCH_INDEX_NAME, _open_torch)):
    path = os.path.join(folder, name)
    if not os.path.exists(path):
      continue
    try:
      if not name.endswith('.index.json'):
        return opener(path)
      with open(path) as f:
        files = sorted(set(json.load(f)['weight_map'].values()))
      weights = {}
      for shard in files:
        weights.update(opener(os.path.join(folder, shard)))
      return weights
    except CheckpointError:
      raise
    except Exception as e:  # safetensors, pickle, json and OS errors
      raise CheckpointError(f'cannot read weights {path}: '
                            f'{type(e).__name__}: {e}') from e
  found = sorted(os.listdir(folder))
  raise CheckpointError(f'{folder} has no weights: expected one of '
                        f'{list(WEIGHT_NAMES)}, found {found}')


def _transposed(leaf: shard_reads.LazyArray) -> shard_reads.LazyArray:
  """[out, in] stored -> [in, out]: a region is read transposed from the file."""
  return shard_reads.LazyArray(
      leaf.shape[::-1],
      lambda region: shard_reads.as_float32(leaf.read(tuple(region[::-1]))).T)


def _scaled(leaf: shard_reads.LazyArray, factor: np.float32) -> shard_reads.LazyArray:
  return shard_reads.LazyArray(
      leaf.shape, lambda region: shard_reads.as_float32(leaf.read(region)) * factor)


def _equal(a: shard_reads.LazyArray, b: Optional[shard_reads.LazyArray]) -> bool:
  """Whether two stored tensors hold the same values, compared 64 MiB of rows at a time."""
  if b is None or a.shape != b.shape:
    return False
  rows = max(1, (64 << 20) // max(1, a.nbytes // max(1, a.shape[0])))
  for start in range(0, a.shape[0], rows):
    region = (slice(start, min(start + rows, a.shape[0])),) + tuple(
        slice(0, n) for n in a.shape[1:])
    if not np.array_equal(shard_reads.as_float32(a.read(region)),
                          shard_reads.as_float32(b.read(region))):
      return False
  return True


def open_hf_t5(path: str) -> Tuple[T5Config, Dict[str, Any]]:
  """A Hugging Face T5 folder as a T5X tree of LazyArrays; only headers are read.

  `shard_reads.read_whole` reads the tree whole, `shard_reads.place` shard by
  shard (safetensors; a PyTorch pickle is read whole either way).

  Raises:
    CheckpointError: naming missing, unknown or misshapen tensors.
  """
  config_path = os.path.join(path, CONFIG_NAME)
  try:
    with open(config_path) as f:
      hf = json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f'cannot read Hugging Face config {config_path}: '
                          f'{e}') from e
  config = config_from_hf(hf, config_path)
  weights = open_weights(path)
  names = hf_names(config)
  if 'shared.weight' not in weights:  # Some exporters keep only a copy.
    for name in _REDUNDANT:
      if name in weights:
        weights['shared.weight'] = weights[name]
        break
  embedding = weights.get('shared.weight')
  lm_head = weights.pop('lm_head.weight', None)
  for name in _REDUNDANT:
    copy = weights.pop(name, None)
    if copy is not None and copy is not embedding and not _equal(copy, embedding):
      raise CheckpointError(f'{path}: {name} differs from shared.weight; '
                            'T5 shares one embedding table')
  for name in _UNUSED:
    weights.pop(name, None)

  missing = sorted(set(names) - set(weights))
  unknown = sorted(set(weights) - set(names))
  if missing or unknown:
    raise CheckpointError(
        f'{path} does not match its config.json ({config}):\n'
        f'  missing tensors: {missing}\n  unknown tensors: {unknown}')
  flat = {}
  for name, (t5x_path, transposed) in names.items():
    flat[t5x_path] = _transposed(weights[name]) if transposed else weights[name]

  scaled = hf.get('scale_decoder_outputs',
                  hf.get('tie_word_embeddings', True) is not False)
  tied = lm_head is None or _equal(lm_head, embedding)
  if tied and scaled:
    config = config.replace(logits_via_embedding=True)
  else:
    kernel = _transposed(embedding if lm_head is None else lm_head)
    if scaled:  # An untied head with HF's 1/sqrt(d): fold the factor in.
      kernel = _scaled(kernel, np.float32(config.emb_dim**-0.5))
    flat['decoder/logits_dense/kernel'] = kernel
  params = unflatten_tree(flat)
  check_params(config, params, path)
  return config, params


def read_hf_t5(path: str) -> Tuple[T5Config, Dict[str, Any]]:
  """Reads a Hugging Face T5 folder into a T5X parameter tree.

  Args:
    path: local folder with config.json and model.safetensors (possibly
      sharded, with model.safetensors.index.json) or pytorch_model.bin.

  Returns:
    (config, params): params as nested dicts of float32 numpy arrays, e.g.
    encoder/layers_0/attention/query/kernel [embed, heads * head_dim].

  Raises:
    CheckpointError: naming missing, unknown, misshapen or unreadable tensors.
  """
  config, lazy = open_hf_t5(path)
  return config, shard_reads.read_whole(lazy, path)


def write_hf_t5(config: T5Config, params: Mapping[str, Any],
                path: str, dtype: str = 'float32') -> None:
  """Writes `params` as a Hugging Face T5 folder: config.json + safetensors.

  The inverse of `read_hf_t5`; the folder loads with
  `transformers.T5ForConditionalGeneration.from_pretrained`. `dtype` is
  'float32' or 'bfloat16' (half the size, T5X's storage type).
  """
  if dtype not in ('float32', 'bfloat16'):
    raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  storage = np.float32 if dtype == 'float32' else ml_dtypes.bfloat16
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  check_params(config, params, 'the parameters to export')
  proj = {v: k for k, v in _ACTIVATIONS.items()}.get(config.mlp_activations)
  if proj is None:
    raise CheckpointError(f'mlp_activations {config.mlp_activations} have no '
                          'Hugging Face feed_forward_proj')
  flat = flatten_tree(params)
  tensors = {}
  for name, (t5x_path, transposed) in hf_names(config).items():
    value = np.asarray(flat[t5x_path], dtype=np.float32)
    tensors[name] = np.ascontiguousarray(value.T if transposed else value, storage)
  if not config.logits_via_embedding:
    tensors['lm_head.weight'] = np.ascontiguousarray(
        np.asarray(flat['decoder/logits_dense/kernel'], np.float32).T, storage)
  hf = {
      'architectures': ['T5ForConditionalGeneration'],
      'model_type': 't5',
      'vocab_size': config.vocab_size,
      'd_model': config.emb_dim,
      'd_kv': config.head_dim,
      'd_ff': config.mlp_dim,
      'num_layers': config.num_encoder_layers,
      'num_decoder_layers': config.num_decoder_layers,
      'num_heads': config.num_heads,
      'relative_attention_num_buckets': config.relative_attention_num_buckets,
      'relative_attention_max_distance':
          config.relative_attention_max_distance,
      'dropout_rate': config.dropout_rate,
      'layer_norm_epsilon': 1e-6,
      'feed_forward_proj': proj,
      # Read by transformers 4 as "tied and scaled", by 5 as "scaled".
      'tie_word_embeddings': bool(config.logits_via_embedding),
      'is_encoder_decoder': True,
      'pad_token_id': 0,
      'eos_token_id': 1,
      'decoder_start_token_id': 0,
  }
  os.makedirs(path, exist_ok=True)
  # transformers checks the 'format' metadata of safetensors files.
  save_file(tensors, os.path.join(path, SAFETENSORS_NAME),
            metadata={'format': 'pt'})
  with open(os.path.join(path, CONFIG_NAME), 'w') as f:
    json.dump(hf, f, indent=2, sort_keys=True)
