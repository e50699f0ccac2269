"""The sites: the method boundaries of the backbone where deltas attach.

A delta (see `prompt_tuning.deltas`) never edits the backbone: it wraps one or
more of the methods below with `flax.linen.intercept_methods`, while the
model's own `__call__`, `encode` and `decode` run (`attach`). Every caller
(the train step, decoding, evaluation, benches, tools) therefore works
unchanged, and the `params` tree never changes for a method.

Shapes: batch b, input length l (l' after a delta lengthened it), target
length t, query length q, key length k, model width d, heads h, head width
hd, MLP width m.

| site                   | module.method                            | arguments -> result |
|------------------------|------------------------------------------|---------------------|
| encoder_input          | Transformer.embed_encoder_inputs         | tokens [b, l] -> (embedded [b, l', d], mask [b, l']) |
| encoder_mask           | Transformer.encoder_mask                 | tokens [b, l] -> mask [b, l'] (cached decoding's cross-attention mask) |
| encoder_layer          | EncoderLayer.__call__                    | x [b, l', d], bias [b|1, h, l', l'], enable_dropout -> [b, l', d] |
| decoder_layer          | DecoderLayer.__call__                    | x [b, t, d], encoded [b, l', d], self_bias, cross_bias, enable_dropout, decode -> [b, t, d] |
| attention              | MultiHeadDotProductAttention.__call__    | inputs_q [b, q, d], inputs_kv [b, k, d], bias [b|1, h|1, q, k] -> [b, q, d] |
| attention_scores       | MultiHeadDotProductAttention.attend      | query [b, q, h, hd], key [b, k, h, hd], value [b, k, h, hd], bias -> [b, q, h, hd] |
| mlp                    | MlpBlock.__call__                        | x [b, l, d], enable_dropout -> [b, l, d] |
| dense                  | Dense.__call__                           | x [..., in] -> [..., out] (every projection) |
| relative_position_bias | RelativePositionBiases.__call__          | q_length, k_length, bidirectional -> [1, h, q, k] (a stack's relative-position bias) |
| decoder_input          | DecoderOnlyBackbone.embed_decoder_inputs | tokens [b, l], valid [b, l] -> (embedded [b, l', d], valid [b, l']) (decoder-only: DecoderOnlyLM, GPT2LM) |
| decoder_step_input     | DecoderOnlyBackbone.embed_decoder_step   | tokens [b, 1] -> embedded [b, 1, d] (cached decoding's one token; decoder-only) |
| decoder_only_layer     | DecoderOnlyLayer.__call__                | x [b, l, d], bias [b|1, h, l, l], enable_dropout, decode, prefill -> [b, l, d] |

`attention_scores` runs after keys and values are formed, and in cached
decoding after the cache is updated, so key [b, max_len, h, hd] is the whole
cache there: a prefix added at this site is never written to the cache. The
MLP's hidden activation [b, l, m] is the input of its `wo` dense site.
The decoder-only LM (`decoder_only.py`) has `decoder_input` where the
encoder-decoder has `encoder_input` (`INPUT_SITES`: a prompt-family delta
treats both alike). Positions a delta inserts there must all come before
the second token (a prefix, or after BOS); the model drops their outputs.
In cached decoding no delta sees `decoder_input`: the prefill put the
prompt into the cache. Each decoded token is embedded at
`decoder_step_input` instead, where a delta that swaps the embedding of
some ids (pseudo tokens in the text, `PTuningInText`) does so again: the
prefill re-feeds the last input token, which may be one of them. `relative_position_bias` runs once per stack (`encoder/relpos_bias`,
`decoder/relpos_bias`) before its layers; in cached decoding it covers the
whole cache, [1, h, max_len, max_len], and the layers take their row.

A delta that computes something at one site and reads it at another (a
table at the root, used inside `nn.remat`-lifted layers) keeps it in
`scratch(delta)`, a dict that lives while `attach` is active.

Sites are matched by the class name anywhere in the module's MRO (so
`nn.remat`'s lifted layer classes match too) and the method name; the
module's path, e.g. ('encoder', 'layers_0', 'attention', 'query'), is the
`/`-joined string deltas match with regexes.
"""
import contextlib
import dataclasses
import threading
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import flax.linen as nn


@dataclasses.dataclass(frozen=True)
class Site:
  """A method boundary: `owner` is a class of `prompt_tuning.model`, `method` its method."""
  name: str
  owner: str
  method: str
  signature: str


SITES: Tuple[Site, ...] = (
    Site('encoder_input', 'Transformer', 'embed_encoder_inputs',
         'tokens [b, l] -> (embedded [b, l\', d], mask [b, l\'])'),
    Site('encoder_mask', 'Transformer', 'encoder_mask', 'tokens [b, l] -> mask [b, l\']'),
    Site('encoder_layer', 'EncoderLayer', '__call__',
         'x [b, l, d], bias [b|1, h, l, l], enable_dropout -> [b, l, d]'),
    Site('decoder_layer', 'DecoderLayer', '__call__',
         'x [b, t, d], encoded [b, l, d], self_bias, cross_bias, enable_dropout, decode '
         '-> [b, t, d]'),
    Site('attention', 'MultiHeadDotProductAttention', '__call__',
         'inputs_q [b, q, d], inputs_kv [b, k, d], bias [b|1, h|1, q, k] -> [b, q, d]'),
    Site('attention_scores', 'MultiHeadDotProductAttention', 'attend',
         'query [b, q, h, hd], key [b, k, h, hd], value [b, k, h, hd], bias, enable_dropout '
         '-> [b, q, h, hd]'),
    Site('mlp', 'MlpBlock', '__call__', 'x [b, l, d], enable_dropout -> [b, l, d]'),
    Site('dense', 'Dense', '__call__', 'x [..., in] -> [..., out]'),
    Site('relative_position_bias', 'RelativePositionBiases', '__call__',
         'q_length, k_length, bidirectional -> [1, h, q, k]'),
    Site('decoder_input', 'DecoderOnlyBackbone', 'embed_decoder_inputs',
         'tokens [b, l], valid [b, l] -> (embedded [b, l\', d], valid [b, l\'])'),
    Site('decoder_step_input', 'DecoderOnlyBackbone', 'embed_decoder_step',
         'tokens [b, 1] -> embedded [b, 1, d]'),
    Site('decoder_only_layer', 'DecoderOnlyLayer', '__call__',
         'x [b, l, d], bias [b|1, h, l, l], enable_dropout, decode, prefill -> [b, l, d]'),
)
# Where each backbone embeds the tokens a prompt joins: deltas treat them alike.
INPUT_SITES = ('encoder_input', 'decoder_input')
SITES_BY_NAME: Dict[str, Site] = {site.name: site for site in SITES}
_BY_METHOD: Dict[Tuple[str, str], Site] = {(s.owner, s.method): s for s in SITES}


def get_site(name: str) -> Site:
  """The site called `name`; an unknown name is an error listing the sites."""
  if name not in SITES_BY_NAME:
    raise ValueError(f'Unknown site {name!r}; the sites are {sorted(SITES_BY_NAME)} '
                     '(prompt_tuning/model/sites.py).')
  return SITES_BY_NAME[name]


def site_of(module: nn.Module, method_name: str) -> Optional[Site]:
  """The site a call of `module.method_name` is, or None."""
  for cls in type(module).__mro__:
    site = _BY_METHOD.get((cls.__name__, method_name))
    if site is not None:
      return site
  return None


def module_path(module: nn.Module) -> str:
  """'encoder/layers_0/attention/query': the module's path, as deltas match it."""
  return '/'.join(module.path)


# A delta's handler: (site, next_fun, args, kwargs, module) -> the site's result.
Handler = Callable[[Site, Callable[..., Any], tuple, dict, nn.Module], Any]

_attached = threading.local()


@contextlib.contextmanager
def attach(deltas: Sequence[Any]) -> Iterator[None]:
  """Runs the body with every delta's handlers wrapped around their sites.

  Each delta has `sites` (names) and `intercept(site, next_fun, args, kwargs,
  module)`; deltas wrap in order, the first one outermost. Re-entering with
  the same deltas (`__call__` runs `encode` and `decode`) attaches once.
  """
  deltas = tuple(deltas)
  active = getattr(_attached, 'deltas', None)
  if not deltas or active == deltas:
    yield
    return
  by_site: Dict[str, list] = {}
  for delta in deltas:
    for name in delta.sites:
      by_site.setdefault(get_site(name).name, []).append(delta)

  def interceptor(next_fun, args, kwargs, context):
    site = site_of(context.module, context.method_name)
    if site is None or site.name not in by_site:
      return next_fun(*args, **kwargs)
    fun = next_fun
    for delta in reversed(by_site[site.name]):
      fun = _bind(delta, site, fun, context.module)
    return fun(*args, **kwargs)

  scratches = getattr(_attached, 'scratch', None)
  _attached.deltas, _attached.scratch = deltas, {}
  try:
    with nn.intercept_methods(interceptor):
      yield
  finally:
    _attached.deltas, _attached.scratch = active, scratches


def scratch(delta: Any) -> Dict[str, Any]:
  """`delta`'s own dict for the current attachment: values one site leaves for another.

  Created empty when `attach` starts and shared by the re-entrant `encode` and
  `decode` inside `__call__`; gone when it ends, so nothing outlives one apply.
  Values may be traced arrays of that apply (read inside `nn.remat`-lifted
  layers too).
  """
  store = getattr(_attached, 'scratch', None)
  if store is None:
    raise RuntimeError('sites.scratch is only available while deltas are attached '
                       '(inside Transformer.__call__, encode or decode).')
  return store.setdefault(delta, {})


def _bind(delta: Any, site: Site, next_fun: Callable[..., Any], module: nn.Module
          ) -> Callable[..., Any]:
  return lambda *args, **kwargs: delta.intercept(site, next_fun, args, kwargs, module)


__all__ = ['INPUT_SITES', 'SITES', 'SITES_BY_NAME', 'Site', 'attach', 'get_site', 'module_path',
           'scratch',
           'site_of']
