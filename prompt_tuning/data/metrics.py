"""The T5 library's (Super)GLUE metrics, in percent, without scikit-learn.

Each metric takes the postprocessed targets and predictions (lists, as
SeqIO passes them) and returns a dict of named values in percent (x100), as
T5 reports them:

| task | metrics (keys) |
|---|---|
| most | `accuracy` |
| CB | `mean_3class_f1` (macro F1 over the three classes), `accuracy` |
| MRPC, QQP | `f1` (positive class; an invalid prediction counts as wrong), `accuracy` |
| CoLA | `matthews_corrcoef` |
| STS-B | `pearson_corrcoef`, `spearman_corrcoef` |
| MultiRC | `f1` (F1 over all answers, T5's F1a), `exact_match` (all answers of a question right, averaged over questions: T5's EM) |
| ReCoRD | `em`, `f1` (SQuAD-normalised, max over the gold answers, one prediction per query) |

Predictions that are not a class name arrive as -1 and are always wrong.
`super_glue_average` gives the benchmark score: the mean over tasks of each
task's mean metric.
"""
import collections
import re
import string
from typing import Any, Callable, Dict, Hashable, Mapping, Sequence

import numpy as np
import scipy.stats

MetricFn = Callable[[Sequence[Any], Sequence[Any]], Dict[str, float]]


def _f1(tp: int, fp: int, fn: int) -> float:
  """2tp / (2tp + fp + fn); 0 when there is nothing to score (as sklearn)."""
  denominator = 2 * tp + fp + fn
  return 2 * tp / denominator if denominator else 0.0


def accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> Dict[str, float]:
  """Share of predictions equal to their target."""
  _check_lengths(targets, predictions)
  return {'accuracy': 100 * float(np.mean(
      [t == p for t, p in zip(targets, predictions)]))}


def f1_score_with_invalid(targets: Sequence[int],
                          predictions: Sequence[int]) -> Dict[str, float]:
  """Binary F1 of class 1; a prediction other than 0/1 counts as the wrong class."""
  _check_lengths(targets, predictions)
  targets = np.asarray(targets)
  predictions = np.asarray(predictions)
  invalid = (predictions != 0) & (predictions != 1)
  predictions = np.where(invalid, 1 - targets, predictions)
  tp = int(np.sum((predictions == 1) & (targets == 1)))
  fp = int(np.sum((predictions == 1) & (targets != 1)))
  fn = int(np.sum((predictions != 1) & (targets == 1)))
  return {'f1': 100 * _f1(tp, fp, fn)}


def mean_multiclass_f1(num_classes: int) -> MetricFn:
  """Macro F1 over classes 0..num_classes-1 (key `mean_<n>class_f1`).

  A prediction of -1 is a miss for its true class and a false positive for
  none.
  """
  def metric(targets, predictions):
    _check_lengths(targets, predictions)
    targets = np.asarray(targets)
    predictions = np.asarray(predictions)
    scores = []
    for c in range(num_classes):
      tp = int(np.sum((predictions == c) & (targets == c)))
      fp = int(np.sum((predictions == c) & (targets != c)))
      fn = int(np.sum((predictions != c) & (targets == c)))
      scores.append(_f1(tp, fp, fn))
    return {f'mean_{num_classes}class_f1': 100 * float(np.mean(scores))}
  metric.__name__ = f'mean_{num_classes}class_f1'
  return metric


def matthews_corrcoef(targets: Sequence[int],
                      predictions: Sequence[int]) -> Dict[str, float]:
  """CoLA: multiclass Matthews correlation (invalid -1 is its own class)."""
  _check_lengths(targets, predictions)
  classes = sorted(set(targets) | set(predictions))
  index = {c: i for i, c in enumerate(classes)}
  confusion = np.zeros((len(classes), len(classes)))
  for t, p in zip(targets, predictions):
    confusion[index[t], index[p]] += 1
  true_sums, pred_sums = confusion.sum(axis=1), confusion.sum(axis=0)
  n = confusion.sum()
  covariance = np.trace(confusion) * n - true_sums @ pred_sums
  variance = (n * n - pred_sums @ pred_sums) * (n * n - true_sums @ true_sums)
  value = covariance / np.sqrt(variance) if variance else 0.0
  return {'matthews_corrcoef': 100 * float(value)}


def pearson_corrcoef(targets, predictions) -> Dict[str, float]:
  return {'pearson_corrcoef': 100 * float(scipy.stats.pearsonr(targets, predictions)[0])}


def spearman_corrcoef(targets, predictions) -> Dict[str, float]:
  return {'spearman_corrcoef':
          100 * float(scipy.stats.spearmanr(targets, predictions)[0])}


# ---------------------------------------------------------------- MultiRC --


def multirc_f1_over_all_answers(targets: Sequence[Mapping[str, Any]],
                                predictions: Sequence[Mapping[str, Any]]
                                ) -> Dict[str, float]:
  """F1a: binary F1 over every answer option of every question, as T5 names it (`f1`)."""
  return f1_score_with_invalid([t['value'] for t in targets], [p['value'] for p in predictions])


def multirc_exact_match(targets: Sequence[Mapping[str, Any]],
                        predictions: Sequence[Mapping[str, Any]]
                        ) -> Dict[str, float]:
  """EM: a question counts when all its answers are right; mean over questions.

  Named `exact_match` as T5's `mean_group_metric(all_match)` names it.
  """
  _check_lengths(targets, predictions)
  groups = collections.defaultdict(list)
  for t, p in zip(targets, predictions):
    groups[t['group']].append(t['value'] == p['value'])
  return {'exact_match': 100 * float(np.mean([all(v) for v in groups.values()]))}


# ------------------------------------------------------- SQuAD and ReCoRD --


def normalize_squad(text: str) -> str:
  """The official SQuAD normalisation: lower case, no punctuation or articles."""
  text = ''.join(c for c in text.lower() if c not in string.punctuation)
  text = re.sub(r'\b(a|an|the)\b', ' ', text)
  return ' '.join(text.split())


def _token_f1(target: str, prediction: str) -> float:
  predicted, gold = prediction.split(), target.split()
  same = sum((collections.Counter(predicted) & collections.Counter(gold)).values())
  if same == 0:
    return 0.0
  precision, recall = same / len(predicted), same / len(gold)
  return 2 * precision * recall / (precision + recall)


def squad(targets: Sequence[Sequence[str]],
          predictions: Sequence[str]) -> Dict[str, float]:
  """SQuAD EM and F1, each the max over an example's gold answers."""
  _check_lengths(targets, predictions)
  em, f1 = [], []
  for answers, prediction in zip(targets, predictions):
    answers = [normalize_squad(a) for a in answers]
    prediction = normalize_squad(prediction)
    em.append(max(float(a == prediction) for a in answers))
    f1.append(max(_token_f1(a, prediction) for a in answers))
  return {'em': 100 * float(np.mean(em)), 'f1': 100 * float(np.mean(f1))}


def deduplicate(metric_fn: MetricFn, group_key: str = 'group',
                value_key: str = 'value') -> MetricFn:
  """`metric_fn` on the first example of each group only.

  ReCoRD repeats a query once per gold answer; each query is scored once.
  """
  def metric(targets, predictions):
    _check_lengths(targets, predictions)
    seen = set()
    kept_targets, kept_predictions = [], []
    for t, p in zip(targets, predictions):
      if t[group_key] in seen:
        continue
      seen.add(t[group_key])
      kept_targets.append(t[value_key])
      kept_predictions.append(p[value_key])
    return metric_fn(kept_targets, kept_predictions)
  metric.__name__ = f'deduplicated_{metric_fn.__name__}'
  return metric


# ReCoRD: SQuAD EM / F1, max over the answers, one prediction per (passage, query).
record = deduplicate(squad)


# ----------------------------------------------------------- the average --


def super_glue_average(results: Mapping[Hashable, Mapping[str, float]]) -> float:
  """SuperGLUE score: the mean over tasks of each task's mean metric.

  Args:
    results: task -> its metrics, e.g. {'cb': {'mean_3class_f1': 80,
      'accuracy': 90}, 'rte': {'accuracy': 70}}. Tasks without metrics
      (the test-only diagnostics) are left out.

  Returns:
    The score, in the units of the metrics (percent).
  """
  means = [float(np.mean(list(m.values()))) for m in results.values() if m]
  if not means:
    raise ValueError('super_glue_average needs at least one task with metrics.')
  return float(np.mean(means))


def _check_lengths(targets: Sequence[Any], predictions: Sequence[Any]) -> None:
  if len(targets) != len(predictions):
    raise ValueError(f'{len(targets)} targets but {len(predictions)} predictions.')


def mean_metric(results: Mapping[str, Mapping[str, float]]) -> float:
  """One number for early stopping: the mean over tasks of each task's mean metric.

  T5's SuperGLUE score is computed this way; a task with one metric counts it.
  """
  per_task = [float(np.mean(list(m.values()))) for m in results.values() if m]
  if not per_task:
    raise ValueError('No metrics to select a checkpoint by.')
  return float(np.mean(per_task))
