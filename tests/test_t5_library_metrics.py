"""Our MultiRC metrics against the T5 library's own metric functions: same keys, same values.

T5's `t5/evaluation/metrics.py` is loaded from its file, as
test_t5_library_parity.py loads its preprocessors (the `t5` package cannot
be imported whole here). Its imports for BLEU, ROUGE and SQuAD (sacrebleu,
rouge_score, t5.evaluation.qa_utils) are not installed by the test command;
they stand in as empty modules, which the MultiRC functions never touch.
Its F1 is scikit-learn's, installed with the test extras.
"""
import importlib.util
import os
import sys
import types

import pytest
import seqio

from prompt_tuning.data import postprocessors
from prompt_tuning.data import superglue_tasks  # pylint: disable=unused-import  (registers the tasks)

_UNUSED_BY_MULTIRC = ('sacrebleu', 'rouge_score', 'rouge_score.rouge_scorer',
                      'rouge_score.scoring', 't5', 't5.evaluation', 't5.evaluation.qa_utils')


def _load_t5_metrics(monkeypatch):
  spec = importlib.util.find_spec('t5')
  if spec is None:
    pytest.fail('The T5 library is not installed: pip install --no-deps t5==0.9.4')
  path = os.path.join(spec.submodule_search_locations[0], 'evaluation', 'metrics.py')
  for name in _UNUSED_BY_MULTIRC:
    if name not in sys.modules:
      monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
  for parent, child in (('rouge_score', 'rouge_scorer'), ('rouge_score', 'scoring'),
                        ('t5', 'evaluation'), ('t5.evaluation', 'qa_utils')):
    monkeypatch.setattr(sys.modules[parent], child, sys.modules[f'{parent}.{child}'],
                        raising=False)
  module_spec = importlib.util.spec_from_file_location('t5_library_metrics', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


# (question, target, prediction): question 0 all right; question 1 one answer
# missed; question 2 a false alarm and an unparseable prediction ('Maybe').
ROWS = [(0, 'True', 'True'), (0, 'False', 'False'),
        (1, 'True', 'False'), (1, 'True', 'True'), (1, 'False', 'False'),
        (2, 'False', 'True'), (2, 'True', 'Maybe'), (2, 'True', 'True')]


def test_multirc_metrics_have_the_t5_library_keys_and_values(monkeypatch):
  t5_metrics = _load_t5_metrics(monkeypatch)
  targets = [postprocessors.multirc(t, example={'idx/question': q}, is_target=True)
             for q, t, _ in ROWS]
  predictions = [postprocessors.multirc(p, example={'idx/question': q}) for q, _, p in ROWS]

  # What T5's MultiRC task computes (t5/data/glue_utils.py).
  theirs = {**t5_metrics.multirc_f1_over_all_answers(targets, predictions),
            **t5_metrics.mean_group_metric(t5_metrics.all_match)(targets, predictions)}
  ours = {}
  for metric_fn in seqio.get_mixture_or_task('super_glue_multirc_v102').metric_fns:
    ours.update(metric_fn(targets, predictions))

  assert set(theirs) == {'f1', 'exact_match'}
  assert set(ours) == set(theirs)
  assert ours == pytest.approx(theirs)
  # And not vacuously: question 0 of 3 all right; tp 3, fp 1, fn 2 -> F1 6/9.
  assert ours == pytest.approx({'exact_match': 100 / 3, 'f1': 600 / 9})
