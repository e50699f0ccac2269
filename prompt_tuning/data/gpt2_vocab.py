"""GPT-2's byte-level BPE as a seqio vocabulary, read from a local folder.

    vocabulary = GPT2Vocabulary('/path/to/gpt2')   # vocab.json + merges.txt
    ids = vocabulary.encode('Hello world')         # [15496, 995] with GPT-2's files

The folder is a Hugging Face GPT-2 tokenizer's (nothing is downloaded). The
tokenizer is the `tokenizers` library's BPE with GPT-2's settings: byte-level
pre-tokenization with GPT-2's split pattern and no prefix space, so every
string round-trips exactly. `<|endoftext|>` is EOS (and BOS, as in GPT-2);
written in text it encodes to its id.

GPT-2 has no padding token and id 0 is '!', so `pad_id` is the EOS id (the
usual GPT-2 convention): seqio's `decode_tf` fills everything after the
first EOS with `pad_id`, which decoding then drops. `zero_is_token` tells
the model contract so: a task on this vocabulary gets
`model.gpt2_features.GPT2DecoderFeatureConverter` (loss weights from lengths, not
from ids != 0; `<|endoftext|>` as BOS) instead of seqio's zero conventions.
"""
import hashlib
import os
from typing import Iterable, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf
import tokenizers
from tokenizers import decoders, models, pre_tokenizers

VOCAB_NAME = 'vocab.json'
MERGES_NAME = 'merges.txt'
EOS_TOKEN = '<|endoftext|>'


class GPT2Vocabulary(seqio.Vocabulary):
  """Byte-level BPE from `path`/vocab.json and `path`/merges.txt; no extra ids."""
  # Id 0 is a real token ('!' in GPT-2), not padding: read by
  # `model.gpt2_features.zero_is_token`, which picks the feature converter.
  zero_is_token = True

  def __init__(self, path: str, eos_token: str = EOS_TOKEN):
    """Loads the tokenizer; ValueError if a file or the EOS token is missing."""
    super().__init__(extra_ids=0)
    files = [os.path.join(path, name) for name in (VOCAB_NAME, MERGES_NAME)]
    absent = [f for f in files if not os.path.isfile(f)]
    if absent:
      raise ValueError(f'{path} is not a GPT-2 tokenizer folder: {absent} missing '
                       f'(expected {VOCAB_NAME} and {MERGES_NAME}, as Hugging Face saves them)')
    self._path = path
    tokenizer = tokenizers.Tokenizer(models.BPE.from_file(*files))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    if tokenizer.token_to_id(eos_token) is None:
      raise ValueError(f'{files[0]} has no {eos_token!r} token; pass eos_token= the '
                       'end-of-text token of this vocabulary')
    # Registered as special: matched whole in text, dropped when decoding.
    tokenizer.add_special_tokens([tokenizers.AddedToken(eos_token, special=True)])
    self._tokenizer = tokenizer
    self._eos_id = tokenizer.token_to_id(eos_token)
    digest = hashlib.sha256(eos_token.encode())
    for name in files:
      with open(name, 'rb') as f:
        digest.update(f.read())
    self._fingerprint = digest.hexdigest()

  @property
  def eos_id(self) -> int:
    return self._eos_id

  @property
  def bos_id(self) -> int:
    return self._eos_id

  @property
  def pad_id(self) -> int:
    return self._eos_id

  @property
  def unk_id(self) -> Optional[int]:
    return None  # byte-level: every string is representable

  @property
  def _base_vocab_size(self) -> int:
    return self._tokenizer.get_vocab_size(with_added_tokens=True)

  def _encode(self, s: str) -> Sequence[int]:
    return self._tokenizer.encode(s, add_special_tokens=False).ids

  def _decode(self, ids: Iterable[int]) -> str:
    return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """A scalar string -> int32 ids [length]."""
    if s.shape.rank not in (0, None):
      raise ValueError(f'GPT2Vocabulary.encode_tf takes one string, got shape {s.shape}')
    encode = lambda t: np.asarray(self._encode(t.numpy().decode('utf-8')), np.int32)
    ids = tf.py_function(encode, [s], tf.int32)
    return tf.ensure_shape(ids, [None])

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """int ids [..., length] -> strings [...]."""

    def decode(t):
      rows = t.numpy()
      flat = rows.reshape(-1, rows.shape[-1])
      texts = [self._decode(row).encode('utf-8') for row in flat]
      return np.array(texts, dtype=object).reshape(rows.shape[:-1])

    texts = tf.py_function(decode, [ids], tf.string)
    return tf.ensure_shape(texts, ids.shape[:-1])

  def __eq__(self, other) -> bool:
    return (isinstance(other, GPT2Vocabulary) and
            self._fingerprint == other._fingerprint)

  def __hash__(self) -> int:
    return hash(self._fingerprint)

  def __str__(self) -> str:
    return f'GPT2Vocabulary({self._path!r}, size={self.vocab_size})'
