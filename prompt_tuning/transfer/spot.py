"""Targeted SPoT (Vu et al., 2022): which source prompt to start a target task from.

    library = {'mnli': read_prompt('/runs/mnli'), 'squad': read_prompt('squad.npy'), ...}
    target = read_prompt('/runs/target_short')      # the target's prompt after a short run
    ranking = rank(target, library, 'mean_pooled')  # [('mnli', 0.83), ('squad', 0.41), ...]
    start = top_k_average(library, ranking, k=3)    # or library[ranking[0][0]]

A prompt [L, d] is its task's embedding. The paper's two similarities:

  * 'mean_pooled': the cosine of the two prompts' mean vectors, cos(mean_i a_i, mean_j b_j);
  * 'pairwise':    the mean over all L_a x L_b pairs of cos(a_i, b_j).

Prompts of different lengths compare (both pool over positions); they must
share the width d. The target's embedding is its own prompt after a short
run (the paper: 10K steps), so ranking needs no source to be retrained.
Using the ranking: train from the best source (`gin/runs/spot.gin`), or
from each of the top k and keep the best ("best of top-k"), or from the
top-k prompts averaged with weights sim_r / sum_r sim_r (`top_k_average`).
"""
from typing import Callable, Dict, List, Mapping, Tuple

import numpy as np

METRICS: Dict[str, Callable[[np.ndarray, np.ndarray], float]] = {}
Ranking = List[Tuple[str, float]]


def _unit(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _check(a: np.ndarray, b: np.ndarray) -> None:
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
    raise ValueError(f'Prompts compare as [length, width] with one width; got {a.shape} and '
                     f'{b.shape} (prompts of another model size do not compare).')


def mean_pooled_cosine(a: np.ndarray, b: np.ndarray) -> float:
  """cos(mean of a's vectors, mean of b's vectors) for prompts [L_a, d], [L_b, d]."""
  _check(a, b)
  return float(_unit(a.astype(np.float64).mean(0)) @ _unit(b.astype(np.float64).mean(0)))


def mean_pairwise_cosine(a: np.ndarray, b: np.ndarray) -> float:
  """The mean of cos(a_i, b_j) over all L_a x L_b pairs."""
  _check(a, b)
  return float((_unit(a.astype(np.float64)) @ _unit(b.astype(np.float64)).T).mean())


METRICS.update(mean_pooled=mean_pooled_cosine, pairwise=mean_pairwise_cosine)


def rank(target: np.ndarray, library: Mapping[str, np.ndarray], metric: str = 'mean_pooled'
         ) -> Ranking:
  """[(source name, similarity to `target`)], most similar first (ties by name)."""
  if metric not in METRICS:
    raise ValueError(f'Unknown similarity {metric!r}; one of {sorted(METRICS)}.')
  if not library:
    raise ValueError('The library of source prompts is empty.')
  scores = [(name, METRICS[metric](np.asarray(target), np.asarray(prompt)))
            for name, prompt in library.items()]
  return sorted(scores, key=lambda item: (-item[1], item[0]))


def top_k_average(library: Mapping[str, np.ndarray], ranking: Ranking, k: int) -> np.ndarray:
  """The top-k sources' prompts averaged with weights sim_r / sum of the k sims.

  Raises:
    ValueError: k out of range, the k prompts' shapes differ, or their
      similarities do not sum to a positive number.
  """
  if not 1 <= k <= len(ranking):
    raise ValueError(f'k must be in [1, {len(ranking)}] (the ranked sources), got {k}.')
  top = ranking[:k]
  shapes = {name: np.shape(library[name]) for name, _ in top}
  if len(set(shapes.values())) != 1:
    raise ValueError(f'The top-{k} prompts have different shapes {shapes}; an average needs '
                     'one shape (take the best of them instead).')
  total = sum(score for _, score in top)
  if total <= 0:
    raise ValueError(f'The top-{k} similarities sum to {total:.4f}; weights sim / sum are '
                     'undefined. Take the best source instead.')
  return sum((score / total) * np.asarray(library[name], np.float64)
             for name, score in top).astype(np.float32)


__all__ = ['METRICS', 'mean_pairwise_cosine', 'mean_pooled_cosine', 'rank', 'top_k_average']
