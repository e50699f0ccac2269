"""The T5 vocabulary: SentencePiece `cc_all.32000` plus 100 sentinel ids.

32,100 ids in all (the model's embedding has 32,128 rows, padded); sentinel
`<extra_id_0>` is id 32099, counting down. The SentencePiece model shipped in
`prompt_tuning/assets` is the real one; point VOCABULARY_PATH (or
$PROMPT_TUNING_VOCABULARY) elsewhere to use another copy, e.g.
gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model.
"""
import functools
import os
from typing import Optional

import seqio

EXTRA_IDS = 100
PACKAGED_MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              'assets', 't5_sentencepiece.model')


def default_path() -> str:
  return os.environ.get('PROMPT_TUNING_VOCABULARY', PACKAGED_MODEL)


@functools.lru_cache(maxsize=None)
def get_vocabulary(path: Optional[str] = None) -> seqio.SentencePieceVocabulary:
  """The T5 vocabulary (one shared instance per path)."""
  return seqio.SentencePieceVocabulary(path or default_path(), extra_ids=EXTRA_IDS)


def sentinel_id(index: int, vocabulary: Optional[seqio.Vocabulary] = None) -> int:
  """Id of `<extra_id_{index}>`: the last id first (32099 for index 0)."""
  vocabulary = vocabulary or get_vocabulary()
  return vocabulary.vocab_size - 1 - index
