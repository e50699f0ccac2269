"""Hugging Face PEFT adapters to and from this project's deltas.

    export_peft_adapter('/runs/rte/checkpoint_1000', '/out/rte_lora')
    deltas, variables = import_peft_adapter('/out/rte_lora', config=config)

An adapter folder holds `adapter_config.json` and `adapter_model.safetensors`;
it loads with `peft.PeftModel.from_pretrained(t5, folder)` on the Hugging Face
export of the base (tools/export_hf.py). Three methods carry over, one delta
per adapter, and P-tuning exports:

  ours                 PEFT            tensors (torch layout, [out, in])
  PromptTuning         PROMPT_TUNING   prompt_embeddings [P * submodules, d]
  PTuning (export)     P_TUNING        prompt_embeddings [P, d]: the encoder's
                                       output, which is all PEFT saves
  LoRA                 LORA            <module>.lora_A.weight [r, in] = lora_a.T
                                       <module>.lora_B.weight [out, r] = lora_b.T
  IA3                  IA3             <module>.ia3_l [out, 1] (scales the output)
                                       or [1, in] (feed-forward: scales the input)

<module> is 'base_model.model.' + the Hugging Face module name, e.g.
encoder.block.0.layer.0.SelfAttention.q for encoder/layers_0/attention/query.
No code of the peft library runs here: the files are plain JSON and
safetensors, so exporting needs neither torch nor peft.
"""
import json
import os
import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from prompt_tuning.deltas import combine as combine_lib
from prompt_tuning.deltas.base import Delta, module_leaves
from prompt_tuning.deltas.ia3 import IA3
from prompt_tuning.deltas.lora import LoRA
from prompt_tuning.deltas.p_tuning import PTuning, hidden_size
from prompt_tuning.deltas.prompt import NotRecorded, PromptTuning
from prompt_tuning.model.config import T5Config
from prompt_tuning.model.param_shapes import expected_shapes, flatten_tree, unflatten_tree

Variables = Dict[str, Any]
Tensors = Dict[str, np.ndarray]

CONFIG_NAME = 'adapter_config.json'
WEIGHTS_NAME = 'adapter_model.safetensors'
TORCH_WEIGHTS_NAME = 'adapter_model.bin'  # what PEFT wrote before safetensors
TASK_TYPE = 'SEQ_2_SEQ_LM'
# PEFT's prefix of module tensors in a PeftModel's state dict.
PREFIX = 'base_model.model.'
SUPPORTED = {'prompt': 'PROMPT_TUNING', 'lora': 'LORA', 'ia3': 'IA3'}
# Export only: a P_TUNING file holds the encoder's output, not the encoder (so
# PEFT's own P-tuning cannot resume); read back it would be a plain prompt.
EXPORT_ONLY = {'p_tuning': 'P_TUNING'}
# A regex that matches no path: an IA3 delta with no output-scaled projections.
_NOTHING = r'(?!)'

# (stack, our sublayer) <-> the Hugging Face sublayer of a block.
_SUBLAYERS = {
    ('encoder', 'attention'): '0.SelfAttention',
    ('encoder', 'mlp'): '1.DenseReluDense',
    ('decoder', 'self_attention'): '0.SelfAttention',
    ('decoder', 'encoder_decoder_attention'): '1.EncDecAttention',
    ('decoder', 'mlp'): '2.DenseReluDense',
}
_ATTENTION = {'query': 'q', 'key': 'k', 'value': 'v', 'out': 'o'}
_MLP = r'wi(_\d+)?|wo'


# Module names.


def hf_sublayer_name(path: str) -> str:
  """'encoder/layers_0/attention' -> 'encoder.block.0.layer.0.SelfAttention'."""
  match = re.fullmatch(r'(encoder|decoder)/layers_(\d+)/(\w+)', path)
  sublayer = match and _SUBLAYERS.get((match[1], match[3]))
  if not sublayer:
    raise ValueError(f'{path!r} is not an attention or MLP sub-layer of a T5 layer.')
  return f'{match[1]}.block.{match[2]}.layer.{sublayer}'


def hf_module_name(path: str) -> str:
  """'encoder/layers_0/attention/query' -> 'encoder.block.0.layer.0.SelfAttention.q'."""
  sublayer_path, _, projection = path.rpartition('/')
  try:
    sublayer = hf_sublayer_name(sublayer_path)
  except ValueError:
    sublayer = None
  if sublayer and sublayer_path.endswith('/mlp'):
    projection = projection if re.fullmatch(_MLP, projection) else None
  else:
    projection = _ATTENTION.get(projection)
  if not (sublayer and projection):
    raise ValueError(f'{path!r} is not an attention or MLP projection of a T5 layer; '
                     'PEFT adapters carry only those.')
  return f'{sublayer}.{projection}'


def t5x_module_path(name: str) -> str:
  """'encoder.block.0.layer.0.SelfAttention.q' -> 'encoder/layers_0/attention/query'."""
  match = re.fullmatch(r'(encoder|decoder)\.block\.(\d+)\.layer\.(\d+\.\w+)\.(\w+)', name)
  ours = {(stack, hf): sub for (stack, sub), hf in _SUBLAYERS.items()}
  sublayer = match and ours.get((match[1], match[3]))
  if sublayer == 'mlp':
    projection = match[4] if re.fullmatch(_MLP, match[4]) else None
  else:
    projection = sublayer and {v: k for k, v in _ATTENTION.items()}.get(match[4])
  if not projection:
    raise ValueError(f'{name!r} is not an attention or MLP projection of a T5 block.')
  return f'{match[1]}/layers_{match[2]}/{sublayer}/{projection}'


def _projections(config: T5Config) -> Dict[str, Tuple[int, int]]:
  """{module path: (in, out)} of every dense projection of `config`'s layers."""
  return {path[:-len('/kernel')]: tuple(shape)
          for path, shape in flatten_tree(expected_shapes(config)).items()
          if re.fullmatch(r'(encoder|decoder)/layers_\d+/.*/kernel', path)}


def _check_shape(name: str, shape: Sequence[int], want: Sequence[int], source: str) -> None:
  if tuple(shape) != tuple(want):
    raise ValueError(f'{name} has shape {tuple(shape)} but {source} expects {tuple(want)}.')


def _fits(name: str, path: str, config: Optional[T5Config]) -> Optional[Tuple[int, int]]:
  """(in, out) of the projection at `path` in `config` (None without one)."""
  if config is None:
    return None
  shapes = _projections(config)
  if path not in shapes:
    raise ValueError(f'{name} adapts {path}, which the base model ({config.num_encoder_layers} '
                     f'encoder and {config.num_decoder_layers} decoder layers) lacks.')
  return shapes[path]


# Export: our deltas -> PEFT files.


def peft_files(deltas: Sequence[Delta], variables: Variables,
               config: Optional[T5Config] = None,
               base_model_name_or_path: Optional[str] = None) -> Tuple[Dict[str, Any], Tensors]:
  """(adapter_config.json as a dict, {tensor name: array}) of one delta.

  Args:
    deltas: exactly one PromptTuning (prefix placement), LoRA, IA3 or
      PTuning (prefix template '[P:n] {inputs}') delta.
    variables: its variables (trained or served; `materialize` runs here),
      e.g. {'lora': {'encoder': {'layers_0': ...}}}; 'params' is ignored.
    config: the backbone, to check shapes against (and for the prompt's
      num_layers / num_attention_heads, which PEFT otherwise fills in).
    base_model_name_or_path: recorded in the config for the reader.

  Raises:
    ValueError: several deltas, another kind, a bank, or misfit shapes.
  """
  kinds = [d.kind for d in deltas]
  if len(deltas) != 1 or kinds[0] not in {**SUPPORTED, **EXPORT_ONLY}:
    raise ValueError(f'A PEFT adapter carries exactly one delta of kind {sorted(SUPPORTED)} '
                     f'or, export only, {sorted(EXPORT_ONLY)}; got {kinds or "none"}.')
  (delta,) = deltas
  served = delta.materialize(variables)
  if isinstance(delta, PromptTuning):
    fields, tensors = _prompt_files(delta, served, config)
  elif isinstance(delta, PTuning):
    fields, tensors = _p_tuning_files(delta, served, config)
  elif isinstance(delta, LoRA):
    fields, tensors = _lora_files(delta, served, config)
  else:
    fields, tensors = _ia3_files(delta, served, config)
  adapter_config = {'peft_type': {**SUPPORTED, **EXPORT_ONLY}[delta.kind],
                    'task_type': TASK_TYPE,
                    'base_model_name_or_path': base_model_name_or_path,
                    'inference_mode': True, **fields}
  return adapter_config, {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}


def _prompt_files(delta: PromptTuning, variables: Variables,
                  config: Optional[T5Config]) -> Tuple[Dict[str, Any], Tensors]:
  if delta.combine is not combine_lib.prefix:
    raise ValueError(f'PEFT prepends the prompt to the input; this prompt is placed with '
                     f'{combine_lib.name_of(delta.combine)!r}.')
  prompt = delta.prompt_of(variables)  # [P, d]
  if prompt.ndim != 2:
    raise ValueError(f'A prompt bank {prompt.shape} is not one PEFT adapter.')
  if config is not None:
    _check_shape('The prompt', prompt.shape, (delta.length, config.emb_dim), 'the base model')
  fields = {
      'num_virtual_tokens': int(prompt.shape[0]),
      'token_dim': int(prompt.shape[1]),
      # PEFT defaults to 2 for T5 and stores 2P rows, but prompt tuning feeds
      # only the first P to the encoder; 1 stores exactly our prompt.
      'num_transformer_submodules': 1,
      'num_attention_heads': config.num_heads if config else None,
      'num_layers': config.num_encoder_layers if config else None,
      # The values are loaded: PEFT must neither sample nor read a tokenizer.
      'prompt_tuning_init': 'RANDOM',
      'prompt_tuning_init_text': None,
      'tokenizer_name_or_path': None,
  }
  return fields, {'prompt_embeddings': prompt}


def _p_tuning_files(delta: PTuning, variables: Variables,
                    config: Optional[T5Config]) -> Tuple[Dict[str, Any], Tensors]:
  if not delta.parsed.is_prefix:
    raise ValueError(f'PEFT prepends the P-tuning prompt to the input; the template '
                     f'{delta.template!r} is not a prefix "[P:n] {{inputs}}".')
  prompt = delta.prompt_of(variables)  # [P, d], the encoder's output
  if prompt.ndim != 2:
    raise ValueError(f'A prompt bank {prompt.shape} is not one PEFT adapter.')
  if config is not None:
    _check_shape('The P-tuning prompt', prompt.shape, (delta.length, config.emb_dim),
                 'the base model')
  width = int(prompt.shape[1])
  fields = {
      'num_virtual_tokens': int(prompt.shape[0]),
      'token_dim': width,
      # 1: the stored rows are exactly the encoder's prompt (PEFT's T5 default
      # of 2 would run its encoder over 2P tokens and use the first P).
      'num_transformer_submodules': 1,
      'num_attention_heads': config.num_heads if config else None,
      'num_layers': config.num_encoder_layers if config else None,
      # What the encoder was, for the reader; PEFT in inference mode builds
      # no encoder and serves prompt_embeddings as they are.
      'encoder_reparameterization_type': delta.encoder.upper(),
      'encoder_hidden_size': hidden_size(delta.encoder, delta.hidden, width),
      'encoder_num_layers': 2,
      'encoder_dropout': 0.0,
  }
  return fields, {'prompt_embeddings': prompt}


def _leaves(delta: Delta, variables: Variables, leaf: str) -> Dict[str, np.ndarray]:
  """{module path: array} of `delta`'s leaves named `leaf`."""
  found = module_leaves(variables, delta.collection, leaf)
  if not found:
    raise ValueError(f'No {delta.kind} variables ({delta.collection}/.../{leaf}) to export; '
                     f'the variables hold {sorted(variables)}.')
  return found


def _lora_files(delta: LoRA, variables: Variables,
                config: Optional[T5Config]) -> Tuple[Dict[str, Any], Tensors]:
  factors_a = _leaves(delta, variables, 'lora_a')
  factors_b = _leaves(delta, variables, 'lora_b')
  tensors, modules = {}, []
  for path, a in sorted(factors_a.items()):
    b = factors_b[path]
    if a.ndim != 2:
      raise ValueError(f'A bank of LoRA factors {a.shape} is not one PEFT adapter.')
    fit = _fits(f'lora/{path}', path, config)
    if fit is not None:
      _check_shape(f'lora/{path}/lora_a', a.shape, (fit[0], delta.rank), 'the base model')
      _check_shape(f'lora/{path}/lora_b', b.shape, (delta.rank, fit[1]), 'the base model')
    module = hf_module_name(path)
    modules.append(module)
    tensors[f'{PREFIX}{module}.lora_A.weight'] = a.T
    tensors[f'{PREFIX}{module}.lora_B.weight'] = b.T
  fields = {
      'r': delta.rank, 'lora_alpha': delta.alpha, 'lora_dropout': delta.dropout,
      'use_rslora': delta.use_rslora,
      # Full module names: PEFT adapts exactly these (a name matches itself).
      'target_modules': modules,
      'bias': 'none', 'fan_in_fan_out': False, 'init_lora_weights': True,
      'use_dora': False, 'modules_to_save': None,
  }
  return fields, tensors


def _ia3_files(delta: IA3, variables: Variables,
               config: Optional[T5Config]) -> Tuple[Dict[str, Any], Tensors]:
  tensors, modules, feedforward = {}, [], []
  for path, scale in sorted(_leaves(delta, variables, 'scale').items()):
    if scale.ndim != 1:
      raise ValueError(f'A bank of IA3 scales {scale.shape} is not one PEFT adapter.')
    module = hf_module_name(path)
    modules.append(module)
    # IA3 checks the feed-forward pattern first: those scale the input.
    is_feedforward = bool(re.fullmatch(delta.feedforward, path))
    fit = _fits(f'ia3/{path}', path, config)
    if fit is not None:
      _check_shape(f'ia3/{path}/scale', scale.shape, (fit[0 if is_feedforward else 1],),
                   'the base model')
    if is_feedforward:
      feedforward.append(module)
    tensors[f'{PREFIX}{module}.ia3_l'] = scale[None, :] if is_feedforward else scale[:, None]
  fields = {'target_modules': modules, 'feedforward_modules': feedforward,
            'fan_in_fan_out': False, 'init_ia3_weights': True, 'modules_to_save': None}
  return fields, tensors


def write_adapter(out_dir: str, adapter_config: Mapping[str, Any], tensors: Mapping[str, Any]
                  ) -> str:
  """Writes adapter_config.json and adapter_model.safetensors into `out_dir`."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  # PEFT, like transformers, checks the 'format' metadata of safetensors files.
  save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()},
            os.path.join(out_dir, WEIGHTS_NAME), metadata={'format': 'pt'})
  with open(os.path.join(out_dir, CONFIG_NAME), 'w') as f:
    json.dump(dict(adapter_config), f, indent=2, sort_keys=True)
  return out_dir


def export_peft_adapter(checkpoint_dir: str, out_dir: str,
                        base_model_name_or_path: Optional[str] = None) -> str:
  """Writes the delta of a checkpoint as a PEFT adapter folder; returns `out_dir`.

  Args:
    checkpoint_dir: checkpoint_<step>, or a MODEL_DIR (its latest).
    out_dir: the folder to write (created; files in it are replaced).
    base_model_name_or_path: recorded in adapter_config.json; by default the
      checkpoint's recorded base (give the Hugging Face export of it, which
      PEFT users load, when the base is a T5X checkpoint).
  """
  # pylint: disable=g-import-not-at-top
  from prompt_tuning.deltas.records import recorded_deltas
  from prompt_tuning.model import checkpoints
  directory = checkpoints.resolve_checkpoint(checkpoint_dir)
  metadata = checkpoints.read_metadata(directory)
  variables = checkpoints.read_delta(directory)
  deltas = recorded_deltas(metadata, variables)
  fields = metadata.get('model_config')
  # DecoderOnlyConfig's `num_layers`, GPT2Config's `n_layer`: a decoder-only run.
  if fields and ('num_layers' in fields or 'n_layer' in fields):
    raise ValueError(f'{directory} was trained on the decoder-only LM; PEFT adapter export '
                     'covers the T5 encoder-decoder only.')
  config = T5Config(**fields) if fields else None
  adapter_config, tensors = peft_files(
      deltas, variables, config, base_model_name_or_path or metadata.get('base_checkpoint'))
  return write_adapter(out_dir, adapter_config, tensors)


# Import: PEFT files -> our deltas.


def read_adapter(adapter_dir: str) -> Tuple[Dict[str, Any], Tensors]:
  """(adapter_config.json, {tensor name: float32 array}) of a PEFT adapter folder."""
  from prompt_tuning.model import hf_checkpoint  # pylint: disable=g-import-not-at-top
  config_path = os.path.join(adapter_dir, CONFIG_NAME)
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f'{adapter_dir} is not a PEFT adapter: it has no {CONFIG_NAME}.')
  with open(config_path) as f:
    adapter_config = json.load(f)
  # The readers of Hugging Face weights: bfloat16 files, pickles through torch.
  for name, reader in ((WEIGHTS_NAME, hf_checkpoint.read_safetensors),
                       (TORCH_WEIGHTS_NAME, hf_checkpoint.read_torch)):
    if os.path.isfile(os.path.join(adapter_dir, name)):
      return adapter_config, reader(os.path.join(adapter_dir, name))
  raise FileNotFoundError(f'{adapter_dir} has no adapter weights ({WEIGHTS_NAME} or '
                          f'{TORCH_WEIGHTS_NAME}).')


def import_peft_adapter(adapter_dir: str, config: Optional[T5Config] = None
                        ) -> Tuple[Tuple[Delta, ...], Variables]:
  """The delta and its variables of a PEFT PROMPT_TUNING, LORA or IA3 adapter.

  Args:
    adapter_dir: a folder with adapter_config.json and adapter_model.safetensors
      (or .bin), as `PeftModel.save_pretrained` writes for a T5 model.
    config: the backbone the delta will run on; when given, every tensor must
      fit its shapes.

  Returns:
    ((delta,), variables), e.g. (LoRA(...),) and
    {'lora': {'encoder': {'layers_0': {'attention': {'query': {'lora_a': [in, r],
    'lora_b': [r, out]}}}}}}, to use as
    `Transformer(config, deltas).apply({'params': params, **variables}, ...)`.

  Raises:
    ValueError: another peft_type, options with no counterpart here, or a
      tensor whose shape fits neither its config nor `config` (named with
      both shapes).
  """
  adapter_config, tensors = read_adapter(adapter_dir)
  peft_type = adapter_config.get('peft_type')
  readers = {'PROMPT_TUNING': _import_prompt, 'LORA': _import_lora, 'IA3': _import_ia3}
  if peft_type not in readers:
    raise ValueError(f'{adapter_dir}: peft_type {peft_type!r} is not supported; supported: '
                     f'{sorted(readers)}.')
  return readers[peft_type](adapter_dir, adapter_config, tensors, config)


def _unsupported_options(adapter_dir: str, adapter_config: Mapping[str, Any],
                         defaults: Mapping[str, Any]) -> None:
  """Options our delta cannot express must be at PEFT's defaults (falsy)."""
  for field, default in defaults.items():
    value = adapter_config.get(field, default)
    if value not in (default, None, False, {}, []):
      raise ValueError(f'{adapter_dir}: {field}={value!r} has no counterpart here '
                       f'(supported: {default!r}).')


def _modules(adapter_dir: str, tensors: Tensors, suffixes: Sequence[str]
             ) -> Dict[str, Dict[str, np.ndarray]]:
  """{module path: {suffix: array}} of tensors '<PREFIX><module>.<suffix>'."""
  pattern = '|'.join(re.escape(s) for s in suffixes)
  modules: Dict[str, Dict[str, np.ndarray]] = {}
  for name, value in sorted(tensors.items()):
    match = re.fullmatch(rf'(?:{re.escape(PREFIX)})?(.+)\.({pattern})', name)
    if not match:
      raise ValueError(f'{adapter_dir}: unexpected tensor {name} (expected '
                       f'<module>.{"|".join(suffixes)}).')
    try:
      path = t5x_module_path(match[1])
    except ValueError as e:
      raise ValueError(f'{adapter_dir}: tensor {name}: {e}') from None
    modules.setdefault(path, {})[match[2]] = value
  if not modules:
    raise ValueError(f'{adapter_dir}: the adapter holds no tensors.')
  return modules


def _alternation(paths: Sequence[str]) -> str:
  """A regex that matches exactly `paths` (nothing when there are none)."""
  return '|'.join(re.escape(p) for p in sorted(paths)) or _NOTHING


def _import_prompt(adapter_dir: str, adapter_config: Mapping[str, Any], tensors: Tensors,
                   config: Optional[T5Config]) -> Tuple[Tuple[Delta, ...], Variables]:
  if set(tensors) != {'prompt_embeddings'}:
    raise ValueError(f'{adapter_dir}: a PROMPT_TUNING adapter holds prompt_embeddings '
                     f'alone, not {sorted(tensors)}.')
  length = int(adapter_config['num_virtual_tokens'])
  # PEFT's own default: T5 (SEQ_2_SEQ_LM) stores 2P rows, the first P prompt the encoder.
  submodules = adapter_config.get('num_transformer_submodules') or (
      2 if adapter_config.get('task_type') == TASK_TYPE else 1)
  embeddings = tensors['prompt_embeddings']
  width = adapter_config.get('token_dim') or embeddings.shape[-1]
  _check_shape(f'{adapter_dir}: prompt_embeddings', embeddings.shape,
               (length * submodules, width), 'its adapter_config.json')
  if config is not None:
    _check_shape(f'{adapter_dir}: prompt_embeddings', embeddings.shape,
                 (length * submodules, config.emb_dim), 'the base model')
  delta = PromptTuning(length=length, init=NotRecorded(f'the PEFT adapter {adapter_dir}'))
  return (delta,), delta.with_prompt({}, embeddings[:length])


def _import_lora(adapter_dir: str, adapter_config: Mapping[str, Any], tensors: Tensors,
                 config: Optional[T5Config]) -> Tuple[Tuple[Delta, ...], Variables]:
  _unsupported_options(adapter_dir, adapter_config, {
      'bias': 'none', 'use_dora': False, 'lora_bias': False, 'rank_pattern': {},
      'alpha_pattern': {}, 'modules_to_save': None, 'trainable_token_indices': None,
      'alora_invocation_tokens': None, 'layer_replication': None, 'target_parameters': None})
  rank = int(adapter_config.get('r', 8))
  flat = {}
  for path, factors in _modules(adapter_dir, tensors, ('lora_A.weight', 'lora_B.weight')).items():
    name = f'{PREFIX}{hf_module_name(path)}'
    if set(factors) != {'lora_A.weight', 'lora_B.weight'}:
      raise ValueError(f'{adapter_dir}: {name} has {sorted(factors)}, not both LoRA factors.')
    a, b = factors['lora_A.weight'], factors['lora_B.weight']  # [r, in], [out, r]
    _check_shape(f'{adapter_dir}: {name}.lora_A.weight', a.shape, (rank, a.shape[-1]),
                 f'its adapter_config.json (r={rank})')
    _check_shape(f'{adapter_dir}: {name}.lora_B.weight', b.shape, (b.shape[0], rank),
                 f'its adapter_config.json (r={rank})')
    fit = _fits(f'{adapter_dir}: {name}', path, config)
    if fit is not None:
      _check_shape(f'{adapter_dir}: {name}.lora_A.weight', a.shape, (rank, fit[0]),
                   'the base model')
      _check_shape(f'{adapter_dir}: {name}.lora_B.weight', b.shape, (fit[1], rank),
                   'the base model')
    flat[f'{path}/lora_a'], flat[f'{path}/lora_b'] = a.T, b.T
  delta = LoRA(rank=rank, alpha=float(adapter_config.get('lora_alpha', 8)),
               dropout=float(adapter_config.get('lora_dropout') or 0.0),
               targets=_alternation([p[:-len('/lora_a')] for p in flat if p.endswith('/lora_a')]),
               use_rslora=bool(adapter_config.get('use_rslora', False)))
  return (delta,), {delta.collection: unflatten_tree(flat)}


def _peft_feedforward(adapter_config: Mapping[str, Any], module: str) -> bool:
  """Whether PEFT treats `module` as feed-forward (its own matching rule)."""
  feedforward = adapter_config.get('feedforward_modules') or []
  if isinstance(feedforward, str):
    return bool(re.fullmatch(feedforward, module))
  return any(module.endswith(name) for name in feedforward)


def _import_ia3(adapter_dir: str, adapter_config: Mapping[str, Any], tensors: Tensors,
                config: Optional[T5Config]) -> Tuple[Tuple[Delta, ...], Variables]:
  _unsupported_options(adapter_dir, adapter_config, {'modules_to_save': None})
  flat, scaled_outputs, scaled_inputs = {}, [], []
  for path, found in _modules(adapter_dir, tensors, ('ia3_l',)).items():
    module = hf_module_name(path)
    scale = found['ia3_l']
    is_feedforward = _peft_feedforward(adapter_config, module)
    size = scale.size
    want = (1, size) if is_feedforward else (size, 1)
    source = f'its adapter_config.json ({"" if is_feedforward else "not "}feed-forward)'
    _check_shape(f'{adapter_dir}: {PREFIX}{module}.ia3_l', scale.shape, want, source)
    fit = _fits(f'{adapter_dir}: {PREFIX}{module}', path, config)
    if fit is not None:
      want = (1, fit[0]) if is_feedforward else (fit[1], 1)
      _check_shape(f'{adapter_dir}: {PREFIX}{module}.ia3_l', scale.shape, want, 'the base model')
    (scaled_inputs if is_feedforward else scaled_outputs).append(path)
    flat[f'{path}/scale'] = scale.reshape(-1)
  delta = IA3(targets=_alternation(scaled_outputs), feedforward=_alternation(scaled_inputs))
  return (delta,), {delta.collection: unflatten_tree(flat)}


__all__ = ['export_peft_adapter', 'hf_module_name', 'import_peft_adapter', 'peft_files',
           'read_adapter', 't5x_module_path', 'write_adapter']
