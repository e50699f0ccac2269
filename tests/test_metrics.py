"""The T5 metrics and postprocessors on hand-worked predictions.

Every expected value below is worked by hand in the comment beside it.
"""
import math

import pytest

from prompt_tuning.data import metrics
from prompt_tuning.data import postprocessors


def test_accuracy_counts_unknown_as_wrong():
  # 'maybe' is no RTE label: class -1, never equal to a target.
  labels = ('entailment', 'not_entailment')
  to_id = postprocessors.class_id_postprocessor(labels)
  predictions = [to_id(p) for p in ['entailment', 'not_entailment', 'maybe']]
  assert predictions == [0, 1, -1]
  assert metrics.accuracy([0, 1, 1], predictions) == {'accuracy': pytest.approx(200 / 3)}
  assert to_id('<unk>') == -1  # A test-split target.


def test_cb_macro_f1_worked_by_hand():
  # targets      e e c c n n   (0 = entailment, 1 = contradiction, 2 = neutral)
  # predictions  e c c c ? e   ('?' is unparseable -> -1)
  # entailment:    tp 1, fp 1 (the last), fn 1 (the second)  -> 2/(2+1+1) = 0.5
  # contradiction: tp 2, fp 1 (the second), fn 0            -> 4/5 = 0.8
  # neutral:       tp 0, fp 0, fn 2                          -> 0
  # macro F1 = (0.5 + 0.8 + 0) / 3 = 0.4333..., accuracy = 3 / 6.
  to_id = postprocessors.class_id_postprocessor(('entailment', 'contradiction', 'neutral'))
  predictions = [to_id(p) for p in ['entailment', 'contradiction', 'contradiction',
                                    'contradiction', 'perhaps', 'entailment']]
  targets = [0, 0, 1, 1, 2, 2]
  assert metrics.mean_multiclass_f1(3)(targets, predictions) == {
      'mean_3class_f1': pytest.approx(100 * 1.3 / 3)}
  assert metrics.accuracy(targets, predictions) == {'accuracy': pytest.approx(50.0)}


def test_binary_f1_invalid_prediction_is_the_wrong_class():
  # targets [1, 1, 0, 0], predictions [1, -1, -1, 0]: the first -1 becomes 0
  # (a miss), the second becomes 1 (a false alarm): tp 1, fp 1, fn 1 -> 2/4.
  assert metrics.f1_score_with_invalid([1, 1, 0, 0], [1, -1, -1, 0]) == {
      'f1': pytest.approx(50.0)}
  # No positive anywhere: F1 is 0, as scikit-learn reports it.
  assert metrics.f1_score_with_invalid([0, 0], [0, 0]) == {'f1': 0.0}


def test_multirc_groups_by_question():
  post = postprocessors.multirc
  # Question 10: three answers, all right. Question 11: the second answer
  # is wrong ('Maybe' -> -1, target 1: a miss). Question 12: 'maybe' -> -1
  # against target 0 counts as a false alarm.
  rows = [  # (question, target, prediction)
      (10, 'True', 'True'), (10, 'False', 'False'), (10, 'True', 'True'),
      (11, 'False', 'False'), (11, 'True', 'Maybe'),
      (12, 'False', 'maybe'),
  ]
  targets = [post(t, example={'idx/question': q}, is_target=True) for q, t, _ in rows]
  predictions = [post(p, example={'idx/question': q}) for q, _, p in rows]
  assert targets[0] == {'value': 1, 'group': 10}
  assert predictions[4] == {'value': -1}
  # F1a over all answers: tp 2, fp 1 (question 12), fn 1 (question 11) -> 4/6.
  assert metrics.multirc_f1_over_all_answers(targets, predictions) == {
      'f1': pytest.approx(400 / 6)}
  # EM: only question 10 is all right -> 1/3.
  assert metrics.multirc_exact_match(targets, predictions) == {
      'exact_match': pytest.approx(100 / 3)}


def test_squad_normalisation():
  assert metrics.normalize_squad('The  Quick, brown fox!') == 'quick brown fox'
  assert metrics.normalize_squad('An apple a day.') == 'apple day'
  # Articles go only as whole words: 'Theater' keeps its 'the'.
  assert metrics.normalize_squad('Theater') == 'theater'


def test_record_max_over_answers_one_prediction_per_query():
  post = postprocessors.record

  def target(passage, query, answers):
    return post(None, example={'answers': [a.encode() for a in answers],
                               'idx/passage': passage, 'idx/query': query},
                is_target=True)

  targets = [
      target(0, 0, ['Barack Obama', 'Obama']),
      target(0, 0, ['Barack Obama', 'Obama']),  # the same query, second answer
      target(0, 1, ['the United States']),
      target(1, 0, ['Angela Merkel', 'Merkel']),
  ]
  predictions = [post(p) for p in ['the Obama.', 'Paris', 'United States of America',
                                   'Angela']]
  assert targets[0] == {'value': ['Barack Obama', 'Obama'], 'group': (0, 0)}
  # (0, 0): 'the Obama.' -> 'obama' equals 'obama': EM 1, F1 1. Its second
  #   copy ('Paris') is not scored.
  # (0, 1): 'united states of america' vs 'united states': EM 0,
  #   precision 2/4, recall 2/2 -> F1 2/3.
  # (1, 0): 'angela' vs 'merkel' F1 0, vs 'angela merkel' precision 1,
  #   recall 1/2 -> 2/3; max 2/3, EM 0.
  # EM = 1/3, F1 = (1 + 2/3 + 2/3) / 3 = 7/9.
  result = metrics.record(targets, predictions)
  assert result == {'em': pytest.approx(100 / 3), 'f1': pytest.approx(700 / 9)}


def test_wsc_simple_subset_rule():
  def predict(prediction, candidate):
    return postprocessors.wsc_simple(
        prediction, example={'targets_pretokenized': candidate.encode(), 'label': 1})

  assert predict('Bartender', 'the bartender') == 1  # case and determiners ignored
  assert predict('mark and pete', 'Mark') == 1  # candidate words within prediction
  assert predict('hat', "Bob's hat") == 0  # one side has an apostrophe
  assert predict('the cat', 'the dog') == 0
  assert predict('the', 'the dog') == -1  # nothing left: empty
  assert postprocessors.wsc_simple('x', example={'label': 0}, is_target=True) == 0
  # Labels say whether the candidate is the referent: [1, 0, 0, 0, 0] against
  # [1, 1, 0, 0, -1] -> right, wrong, right, right, wrong = 3/5.
  assert metrics.accuracy([1, 0, 0, 0, 0], [1, 1, 0, 0, -1]) == {
      'accuracy': pytest.approx(60.0)}


def test_sentinel_and_transfer_postprocessing():
  to_id = postprocessors.class_id_postprocessor(('not_equivalent', 'equivalent'))
  strip = postprocessors.with_sentinel_removed(to_id)
  assert strip('<extra_id_0> equivalent') == 1
  assert strip('<extra_id_0>not_equivalent') == 0
  assert strip('equivalent') == 1  # a target (pretokenized, no sentinel)
  assert strip('<extra_id_0>') == -1
  qqp_to_mrpc = postprocessors.translate_labels({'duplicate': 'equivalent'}, to_id)
  assert [qqp_to_mrpc(p) for p in ['duplicate', 'not_duplicate', 'yes']] == [1, 0, -1]


def test_matthews_and_correlations():
  # tp 1, fn 1, tn 2, fp 0: (1*2 - 0*1) / sqrt(1 * 2 * 2 * 3) = 2 / sqrt(12).
  assert metrics.matthews_corrcoef([1, 1, 0, 0], [1, 0, 0, 0]) == {
      'matthews_corrcoef': pytest.approx(100 * 2 / math.sqrt(12))}
  assert metrics.matthews_corrcoef([1, 0], [1, 1])['matthews_corrcoef'] == 0.0
  # x = 1 2 3, y = 1 2 4: deviations (-1 0 1), (-4/3 -1/3 5/3), covariance
  # sum 3, r = 3 / (sqrt(2) * sqrt(42) / 3) = 9 / sqrt(84); ranks agree.
  assert metrics.pearson_corrcoef([1, 2, 3], [1, 2, 4]) == {
      'pearson_corrcoef': pytest.approx(100 * 9 / math.sqrt(84))}
  assert metrics.spearman_corrcoef([1, 2, 3], [1, 2, 4]) == {
      'spearman_corrcoef': pytest.approx(100.0)}
  assert postprocessors.string_to_float('3.2') == 3.2
  assert postprocessors.string_to_float('three') == -1.0


def test_super_glue_average():
  # Task means 80, (70 + 90) / 2 = 80, (60 + 20) / 2 = 40; axb has none.
  results = {'boolq': {'accuracy': 80.0},
             'cb': {'mean_3class_f1': 70.0, 'accuracy': 90.0},
             'multirc': {'f1': 60.0, 'exact_match': 20.0},
             'axb': {}}
  assert metrics.super_glue_average(results) == pytest.approx(200 / 3)
  with pytest.raises(ValueError):
    metrics.super_glue_average({'axb': {}})


def test_lengths_must_match():
  with pytest.raises(ValueError, match='2 targets but 1 predictions'):
    metrics.accuracy([0, 1], [0])
