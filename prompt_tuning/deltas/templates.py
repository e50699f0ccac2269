"""P-tuning templates: where pseudo-prompt tokens, anchor tokens and the input go.

A template is text with three kinds of markers:

    [P:n]      n pseudo-prompt positions (rows of the P-tuning prompt, in order)
    [T:58,3]   anchor tokens given as ids (the canonical form)
    {inputs}   the example's own tokens (exactly once)

and anchor text between them ("?", "Question:"), tokenized with a
SentencePiece vocabulary into anchor tokens. The original P-tuning template
(3, 3, 3) around the input and the answer slot reads, for T5, e.g.

    '[P:3] {inputs} [P:3] ? [P:3]'   ->   '[P:3] {inputs} [P:3] [T:58] [P:3]'

`Template.canonical` is the id form: it rebuilds the template without the
vocabulary file (what a checkpoint records).

Written into the text instead (`as_text`, for `p_tuning.PTuningInText`):
pseudo-prompt position k becomes the T5 sentinel '<extra_id_k>', which the
delta's embedding replaces by prompt row k, as the original P-tuning code
puts a pseudo token into the query and swaps its embedding:

    as_text('[P:2] {inputs} [P:1] lives in', 'Anna')
        -> '<extra_id_0> <extra_id_1> Anna <extra_id_2> lives in'

(spaces between sentinels: seqio's T5 vocabulary only finds a sentinel at
the start of the text or after a space).

Placement (`place`): per example, with T template positions (P pseudo + A
anchor tokens) and inputs [b, L], the output [b, L + T] is the template
positions before `{inputs}`, the example's real tokens, the template
positions after `{inputs}`, then padding. The real tokens are those up to
the last non-zero one. If that last token is the EOS (id 1, which seqio
appends to inputs), it goes after the template's trailing positions instead:
T5 was pretrained with the EOS closing the whole encoder input, so
'[P:3] {inputs} [P:3]' gives [p p p x1 .. xn p p p EOS pad ..], not
[p p p x1 .. xn EOS p p p pad ..]. Template positions are always valid; the
input's positions keep their mask (interior padding stays masked).
"""
import dataclasses
import functools
import re
from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
EOS_ID = 1  # T5's SentencePiece vocabulary (and seqio's append_eos)
INPUTS = '{inputs}'
_MARKER = re.compile(r'\[([^\[\]]*)\]|\{([^{}]*)\}')
_SYNTAX = ('use [P:n] for n pseudo-prompt tokens, [T:id,...] for anchor token ids, '
           '{inputs} for the input, and plain text for anchor words')


@dataclasses.dataclass(frozen=True)
class Block:
  """One piece of a template: 'prompt' (count positions), 'tokens' (ids) or 'inputs'."""
  kind: str
  count: int = 0
  ids: Tuple[int, ...] = ()

  @property
  def text(self) -> str:
    if self.kind == 'prompt':
      return f'[P:{self.count}]'
    if self.kind == 'tokens':
      return f'[T:{",".join(map(str, self.ids))}]'
    return INPUTS

  @property
  def size(self) -> int:
    return {'prompt': self.count, 'tokens': len(self.ids), 'inputs': 0}[self.kind]


@dataclasses.dataclass(frozen=True)
class Template:
  """A parsed template: its blocks, with `{inputs}` among them exactly once."""
  blocks: Tuple[Block, ...]

  @property
  def canonical(self) -> str:
    """The template with anchors as ids, e.g. '[P:3] {inputs} [T:58] [P:3]'."""
    return ' '.join(block.text for block in self.blocks)

  @property
  def num_prompt(self) -> int:
    """P: the pseudo-prompt positions, the rows of the prompt [P, d]."""
    return sum(b.count for b in self.blocks if b.kind == 'prompt')

  @property
  def length(self) -> int:
    """T: all template positions (pseudo-prompt and anchor tokens)."""
    return sum(b.size for b in self.blocks)

  @property
  def num_before(self) -> int:
    """Template positions before `{inputs}`."""
    index = [b.kind for b in self.blocks].index('inputs')
    return sum(b.size for b in self.blocks[:index])

  @property
  def is_prefix(self) -> bool:
    """Whether this is '[P:n] {inputs}': prompt tuning's (and PEFT's) placement."""
    return self.num_before == self.length == self.num_prompt

  def rows(self) -> Tuple[np.ndarray, np.ndarray]:
    """(prompt_row [T], anchor_id [T]) of the template positions, in order.

    prompt_row is the prompt row a pseudo position shows (-1 at anchors);
    anchor_id the token an anchor position shows (0 at pseudo positions).
    """
    prompt_row, anchor_id, next_row = [], [], 0
    for block in self.blocks:
      if block.kind == 'prompt':
        prompt_row += range(next_row, next_row + block.count)
        anchor_id += [0] * block.count
        next_row += block.count
      elif block.kind == 'tokens':
        prompt_row += [-1] * len(block.ids)
        anchor_id += block.ids
    return np.asarray(prompt_row, np.int32), np.asarray(anchor_id, np.int32)


@functools.lru_cache(maxsize=None)
def _sentencepiece(path: str):
  import sentencepiece  # pylint: disable=g-import-not-at-top
  return sentencepiece.SentencePieceProcessor(model_file=path)


def _anchor(text: str, spec: str, vocabulary: Optional[str]) -> Block:
  if re.search(r'[\[\]{}]', text):
    raise ValueError(f'Unknown or unbalanced marker in {text!r} of the P-tuning template '
                     f'{spec!r}: {_SYNTAX}.')
  if vocabulary is None:
    raise ValueError(f'The P-tuning template {spec!r} has anchor text {text!r} but no '
                     'vocabulary: set vocabulary to a SentencePiece model (e.g. '
                     't5_sentencepiece.model), or write the anchor as ids, [T:id,...].')
  ids = tuple(int(i) for i in _sentencepiece(vocabulary).encode(text))
  if not ids:
    raise ValueError(f'The anchor text {text!r} of the P-tuning template {spec!r} '
                     'tokenizes to no tokens.')
  return Block('tokens', ids=ids)


def _marker(marker: str, spec: str) -> Block:
  if marker == INPUTS:
    return Block('inputs')
  match = re.fullmatch(r'\[\s*([PT])\s*:\s*([\d\s,]+)\]', marker)
  if not match:
    raise ValueError(f'Unknown marker {marker!r} in the P-tuning template {spec!r}: '
                     f'{_SYNTAX}.')
  numbers = [int(n) for n in match[2].replace(',', ' ').split()]
  if match[1] == 'P':
    if len(numbers) != 1 or numbers[0] < 1:
      raise ValueError(f'{marker!r} in the P-tuning template {spec!r}: a pseudo-prompt '
                       'block needs one count of at least 1, e.g. [P:3].')
    return Block('prompt', count=numbers[0])
  if not numbers or 0 in numbers:
    raise ValueError(f'{marker!r} in the P-tuning template {spec!r}: anchor ids are '
                     'positive token ids (0 is padding), e.g. [T:58] or [T:58,3].')
  return Block('tokens', ids=tuple(numbers))


@functools.lru_cache(maxsize=None)
def parse(spec: str, vocabulary: Optional[str] = None) -> Template:
  """The template of `spec`; anchor text is tokenized with `vocabulary` (a .model path).

  Raises:
    ValueError: no or several `{inputs}`, an unknown marker, [P:0], no
      pseudo-prompt block, or anchor text without a vocabulary.
  """
  if not isinstance(spec, str):
    raise ValueError(f'A P-tuning template is a string such as "[P:3] {INPUTS} [P:3]", '
                     f'got {spec!r}.')
  blocks, position = [], 0
  for match in list(_MARKER.finditer(spec)) + [None]:
    text = spec[position:match.start() if match else len(spec)].strip()
    if text:
      blocks.append(_anchor(text, spec, vocabulary))
    if match:
      blocks.append(_marker(match[0], spec))
      position = match.end()
  slots = sum(b.kind == 'inputs' for b in blocks)
  if slots != 1:
    raise ValueError(f'The P-tuning template {spec!r} has {slots} {INPUTS} slots; it needs '
                     f'exactly one, where the input goes, e.g. "[P:3] {INPUTS} [P:3]".')
  if not any(b.kind == 'prompt' for b in blocks):
    raise ValueError(f'The P-tuning template {spec!r} has no pseudo-prompt block; add '
                     'one, e.g. [P:3].')
  return Template(tuple(blocks))


def marker(row: int) -> str:
  """The text of pseudo-prompt position `row` in `as_text`: a T5 sentinel."""
  return f'<extra_id_{row}>'


def as_text(spec: str, inputs: str) -> str:
  """The template `spec` written out around `inputs`, pseudo positions as sentinels.

  Anchor words stay words (the task's vocabulary tokenizes them with the
  rest); anchors given as ids ([T:...]) have no text and are refused.
  """
  pieces, row, slots, position = [], 0, 0, 0
  for match in list(_MARKER.finditer(spec)) + [None]:
    text = spec[position:match.start() if match else len(spec)].strip()
    if text:
      if re.search(r'[\[\]{}]', text):
        raise ValueError(f'Unknown or unbalanced marker in {text!r} of the P-tuning '
                         f'template {spec!r}: {_SYNTAX}.')
      pieces.append(text)
    if match is None:
      break
    block = _marker(match[0], spec)
    if block.kind == 'tokens':
      raise ValueError(f'The template {spec!r} gives anchors as ids ({match[0]}); written '
                       'into the text they need to be words, e.g. "[P:3] {inputs} lives in".')
    if block.kind == 'inputs':
      pieces.append(inputs)
      slots += 1
    else:
      pieces += [marker(k) for k in range(row, row + block.count)]
      row += block.count
    position = match.end()
  if slots != 1 or not row:
    raise ValueError(f'The P-tuning template {spec!r} needs exactly one {INPUTS} and at '
                     f'least one pseudo-prompt block, e.g. "[P:3] {INPUTS} [P:3]".')
  return ' '.join(pieces)


def markers_only(spec: str) -> str:
  """`spec` without its anchor words: its [P:n], [T:...] and {inputs} markers."""
  return ' '.join(match[0] for match in _MARKER.finditer(spec))


def place(template: Template, template_embedded: Array, embedded: Array, mask: Array,
          tokens: Array, eos_id: Optional[int] = EOS_ID) -> Tuple[Array, Array]:
  """The template around each example's tokens (see the module docstring).

  Args:
    template_embedded: [b|1, T, d] the template positions, embedded, in order.
    embedded: [b, L, d] the embedded input tokens.
    mask: [b, L] booleans, True at real tokens.
    tokens: [b, L] the input ids (they say where each example ends).
    eos_id: a last real token with this id is moved after the template;
      None keeps it in the `{inputs}` slot.

  Returns:
    combined [b, L + T, d] and mask [b, L + T].
  """
  batch, length = tokens.shape
  size, before = template.length, template.num_before
  if template_embedded.shape[-2] != size:
    raise ValueError(f'{size} template positions, but {template_embedded.shape[-2]} '
                     'embedded ones.')
  rows = jnp.arange(batch)[:, None]
  real = jnp.max(jnp.where(tokens > 0, jnp.arange(length) + 1, 0), axis=1)  # [b]
  last = tokens[jnp.arange(batch), jnp.maximum(real - 1, 0)]
  moved = (real > 0) & (last == eos_id) if eos_id is not None else jnp.zeros_like(real, bool)
  kept = (real - moved)[:, None]  # [b, 1]: the real tokens placed in the slot
  out = jnp.arange(length + size)[None, :]  # [1, L + T]
  in_slot = (out >= before) & (out < before + kept)
  is_template = (out < before) | ((out >= before + kept) & (out < kept + size))
  # After the trailing template positions, output j shows input j - T: the
  # moved EOS (input kept) first, then the padding, each input exactly once.
  source = jnp.clip(jnp.where(in_slot, out - before, out - size), 0, length - 1)
  template_index = jnp.clip(jnp.where(out < before, out, out - kept), 0, size - 1)
  shown = jnp.broadcast_to(template_embedded, (batch,) + template_embedded.shape[1:])
  combined = jnp.where(is_template[..., None], shown.astype(embedded.dtype)[rows, template_index],
                       embedded[rows, source])
  return combined, jnp.where(is_template, True, mask.astype(bool)[rows, source])


def placed_mask(template: Template, mask: Array, tokens: Array,
                eos_id: Optional[int] = EOS_ID) -> Array:
  """The mask of `place` alone [b, L + T] (no embeddings are read)."""
  batch, length = tokens.shape
  empty = jnp.zeros((batch, length, 0), jnp.float32)
  return place(template, jnp.zeros((1, template.length, 0), jnp.float32), empty, mask,
               tokens, eos_id)[1]


def check_anchor_ids(template: Template, vocab_size: int) -> None:
  """Anchor ids must be rows of the embedding table (a gather would clamp them)."""
  ids: Sequence[int] = [i for b in template.blocks for i in b.ids]
  if ids and max(ids) >= vocab_size:
    raise ValueError(f'The P-tuning template {template.canonical!r} has anchor id '
                     f'{max(ids)}, but the vocabulary has {vocab_size} ids: wrong vocabulary?')


__all__ = ['Block', 'EOS_ID', 'Template', 'as_text', 'check_anchor_ids', 'marker', 'markers_only', 'parse', 'place',
           'placed_mask']
