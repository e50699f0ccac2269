"""Interpreting a prompt: its nearest vocabulary tokens (the paper's section 7).

Each prompt vector is compared by cosine similarity with every row of the
frozen embedding table; the top-k rows are its nearest neighbours.
"""
from typing import List, Tuple

import numpy as np


def nearest_neighbors(prompt: np.ndarray, embedding: np.ndarray, top_k: int = 5,
                      max_id: int = None) -> Tuple[np.ndarray, np.ndarray]:
  """Top-k token ids and cosine similarities for each prompt position.

  Args:
    prompt: [length, embed].
    embedding: [vocab, embed], the frozen token embeddings.
    top_k: neighbours per position.
    max_id: only ids below this count (e.g. 32100: the real vocabulary, not
      the padding rows of the 32128-row table).

  Returns:
    (ids [length, top_k], similarities [length, top_k]), most similar first.
  """
  table = np.asarray(embedding, np.float32)[:max_id]
  unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  similarity = unit(np.asarray(prompt, np.float32)) @ unit(table).T   # [length, vocab]
  ids = np.argsort(-similarity, axis=-1, kind='stable')[:, :top_k]
  return ids, np.take_along_axis(similarity, ids, axis=-1)


def describe(ids: np.ndarray, similarities: np.ndarray,
             id_to_piece) -> List[str]:
  """One line per prompt position: 'position: piece (similarity), ...'."""
  return [f'{i:3d}: ' + ', '.join(f'{id_to_piece(int(t))!r} ({s:.2f})'
                                  for t, s in zip(row_ids, row_sims))
          for i, (row_ids, row_sims) in enumerate(zip(ids, similarities))]
