"""The T5.1.1 parameter tree as shapes, and a check that a loaded tree fits.

The shapes are written down from the T5X parameter layout (see
reference/t5x.md, "Parameter tree") rather than derived from our Flax modules,
so that a checkpoint reader can reject a tree whose shapes do not fit together
before any model is built, and so that a drift between the model and the T5X
layout shows up as a test failure instead of a silently mis-loaded checkpoint.

Paths are '/'-joined, e.g. 'encoder/layers_0/attention/query/kernel'.
"""
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple, Union

from prompt_tuning.model import gpt2
from prompt_tuning.model.config import DecoderOnlyConfig, T5Config

Shape = Tuple[int, ...]
# How many names of each kind an error message lists before summarising.
_MAX_LISTED = 20


class CheckpointError(ValueError):
  """A checkpoint is missing, unreadable, or does not fit the T5.1.1 layout."""


def _mlp_shapes(config: T5Config) -> Dict[str, Any]:
  d, f = config.emb_dim, config.mlp_dim
  # T5X names a single input projection 'wi' and several 'wi_0', 'wi_1', ...
  if len(config.mlp_activations) == 1:
    names = ['wi']
  else:
    names = [f'wi_{i}' for i in range(len(config.mlp_activations))]
  shapes = {name: {'kernel': (d, f)} for name in names}
  shapes['wo'] = {'kernel': (f, d)}
  return shapes


def _attention_shapes(config: T5Config) -> Dict[str, Any]:
  d, kv = config.emb_dim, config.num_heads * config.head_dim
  return {
      'query': {'kernel': (d, kv)},
      'key': {'kernel': (d, kv)},
      'value': {'kernel': (d, kv)},
      'out': {'kernel': (kv, d)},
  }


def _decoder_only_shapes(config: DecoderOnlyConfig) -> Dict[str, Any]:
  """T5X's decoder-only tree: everything under `decoder/`, the embedder included."""
  d = config.emb_dim
  decoder: Dict[str, Any] = {
      'token_embedder': {'embedding': (config.vocab_size, d)},
      'relpos_bias': {'rel_embedding': (config.num_heads,
                                        config.relative_attention_num_buckets)}}
  for i in range(config.num_layers):
    decoder[f'layers_{i}'] = {
        'pre_self_attention_layer_norm': {'scale': (d,)},
        'self_attention': _attention_shapes(config),
        'pre_mlp_layer_norm': {'scale': (d,)},
        'mlp': _mlp_shapes(config),
    }
  decoder['decoder_norm'] = {'scale': (d,)}
  if not config.logits_via_embedding:
    decoder['logits_dense'] = {'kernel': (d, config.vocab_size)}
  return {'decoder': decoder}


def is_decoder_only_tree(params: Mapping[str, Any]) -> bool:
  """Whether a T5X parameter tree is decoder-only (its embedder under `decoder/`)."""
  return 'encoder' not in params and 'token_embedder' in params.get('decoder', {})


# Each architecture: how an error names its checkpoints, and the model gins that fit them.
_ARCHITECTURES = {
    'encoder_decoder': ('an encoder-decoder checkpoint (T5)', 'encoder-decoder (T5Config)',
                        'gin/models/t5_1_1/*.gin'),
    'decoder_only': ("a decoder-only checkpoint (T5X's decoder-only LM)",
                     'decoder-only (DecoderOnlyConfig)', 'gin/models/decoder_only/*.gin'),
    'gpt2': ('a decoder-only checkpoint (GPT-2)', 'GPT-2 (GPT2Config)',
             'gin/models/gpt2/*.gin'),
}


def _tree_architecture(params: Mapping[str, Any]) -> str:
  """Which backbone a parameter tree is: GPT-2 alone has learned positions at the root."""
  if 'position_embedder' in params:
    return 'gpt2'
  return 'decoder_only' if is_decoder_only_tree(params) else 'encoder_decoder'


def _config_architecture(config) -> str:
  if isinstance(config, gpt2.GPT2Config):
    return 'gpt2'
  return 'decoder_only' if isinstance(config, DecoderOnlyConfig) else 'encoder_decoder'


def _architecture_error(config, params: Mapping[str, Any], source: str) -> Optional[str]:
  """One line when `params` is another architecture than `config`, else None."""
  have, want = _tree_architecture(params), _config_architecture(config)
  if have == want or not params:
    return None
  checkpoint, _, gin_files = _ARCHITECTURES[have]
  _, configured, _ = _ARCHITECTURES[want]
  return (f'{source} is {checkpoint}, but the model configuration is {configured}: use a '
          f'model gin of its architecture ({gin_files}) or a checkpoint of the configured one.')


def expected_shapes(config: Union[T5Config, DecoderOnlyConfig]) -> Dict[str, Any]:
  """Returns the T5X parameter tree of `config` with shape tuples as leaves."""
  if isinstance(config, DecoderOnlyConfig):
    return _decoder_only_shapes(config)
  if isinstance(config, gpt2.GPT2Config):
    return gpt2.parameter_shapes(config)
  d = config.emb_dim
  norm = {'scale': (d,)}
  relpos = {
      'rel_embedding': (config.num_heads,
                        config.relative_attention_num_buckets)
  }
  encoder: Dict[str, Any] = {'relpos_bias': relpos}
  for i in range(config.num_encoder_layers):
    encoder[f'layers_{i}'] = {
        'pre_attention_layer_norm': dict(norm),
        'attention': _attention_shapes(config),
        'pre_mlp_layer_norm': dict(norm),
        'mlp': _mlp_shapes(config),
    }
  encoder['encoder_norm'] = dict(norm)

  decoder: Dict[str, Any] = {'relpos_bias': dict(relpos)}
  for i in range(config.num_decoder_layers):
    decoder[f'layers_{i}'] = {
        'pre_self_attention_layer_norm': dict(norm),
        'self_attention': _attention_shapes(config),
        'pre_cross_attention_layer_norm': dict(norm),
        'encoder_decoder_attention': _attention_shapes(config),
        'pre_mlp_layer_norm': dict(norm),
        'mlp': _mlp_shapes(config),
    }
  decoder['decoder_norm'] = dict(norm)
  if not config.logits_via_embedding:
    decoder['logits_dense'] = {'kernel': (d, config.vocab_size)}

  return {
      'token_embedder': {'embedding': (config.vocab_size, d)},
      'encoder': encoder,
      'decoder': decoder,
  }


def flatten_tree(tree: Mapping[str, Any], prefix: str = '') -> Dict[str, Any]:
  """Flattens nested dicts into {'a/b/c': leaf}; empty dicts vanish."""
  flat = {}
  for key, value in tree.items():
    path = f'{prefix}/{key}' if prefix else str(key)
    if isinstance(value, Mapping):
      flat.update(flatten_tree(value, path))
    else:
      flat[path] = value
  return flat


def unflatten_tree(flat: Mapping[str, Any]) -> Dict[str, Any]:
  """Inverse of `flatten_tree`."""
  tree: Dict[str, Any] = {}
  for path, value in flat.items():
    *parents, leaf = path.split('/')
    node = tree
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  return tree


def _listing(title: str, lines: Iterable[str]) -> str:
  lines = sorted(lines)
  shown = lines[:_MAX_LISTED]
  more = len(lines) - len(shown)
  text = f'{title} ({len(lines)}):\n' + '\n'.join(f'  {l}' for l in shown)
  if more:
    text += f'\n  ... and {more} more'
  return text


def check_params(config: Union[T5Config, DecoderOnlyConfig], params: Mapping[str, Any],
                 source: str) -> None:
  """Raises CheckpointError unless `params` has exactly the tree of `config`.

  Args:
    config: the configuration the parameters should fit.
    params: nested dict of arrays (anything with a `.shape`).
    source: where the parameters came from (a path), named in the error.

  Raises:
    CheckpointError: listing missing paths, unexpected paths and paths whose
      shape differs from the expected one.
  """
  wrong_architecture = _architecture_error(config, params, source)
  if wrong_architecture:
    raise CheckpointError(wrong_architecture)
  want = flatten_tree(expected_shapes(config))
  have = flatten_tree(params)
  missing = [p for p in want if p not in have]
  unexpected = [p for p in have if p not in want]
  mismatched = []
  for path in want.keys() & have.keys():
    shape = tuple(getattr(have[path], 'shape', ()))
    if shape != want[path]:
      mismatched.append(
          f'{path}: got {list(shape)}, expected {list(want[path])}')
  if not (missing or unexpected or mismatched):
    return
  parts = [f'parameters from {source} do not fit the parameter layout of {config}']
  if missing:
    parts.append(_listing('missing', missing))
  if unexpected:
    parts.append(_listing('unexpected', unexpected))
  if mismatched:
    parts.append(_listing('shape mismatches', mismatched))
  raise CheckpointError('\n'.join(parts))
