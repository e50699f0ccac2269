"""SuperGLUE v1.0.2 tasks and mixtures (T5's, taskless and sentinel forms).

Importing this module registers, for each name in CONFIGS (boolq, cb, copa,
multirc, record, rte, wic; axb and axg test only):

- `super_glue_<name>_v102`: the T5 library's task, byte for byte;
- `taskless_super_glue_<name>_v102`: the paper's, benchmark word removed;
- `taskless_super_glue_<name>_v102_sentinel`: taskless with `<extra_id_0>`
  prepended to the targets (the paper's "span corruption + sentinel");

WSC as T5's simple pair: `super_glue_wsc_v102_simple_train` (only examples
whose candidate is the referent, no metrics) and
`super_glue_wsc_v102_simple_eval` (validation and test, accuracy), in the
same three forms, plus the mixture `super_glue_wsc_and_dev_v102_simple` of the
two (and its forms) to train and evaluate WSC in one run.

Mixtures `super_glue_v102_proportional`, `taskless_super_glue_v102_proportional`
and `taskless_super_glue_v102_proportional_sentinel`: every task above with
T5's rates, the number of training examples of each task (0 for the
evaluation-only ones). T5's mixture also has DPR (`dpr_v001_simple`), which is
not part of SuperGLUE and is left out here.

Data: TFDS `super_glue/<name>:1.0.2` (`wsc.fixed` for WSC), or the unzipped
official release when PROMPT_TUNING_SUPERGLUE_DIR is set at import (see
`sources`). `register(data_dir)` re-registers everything for another folder.
"""
import functools
from typing import Dict, Optional

import seqio

from prompt_tuning.data import metrics
from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors
from prompt_tuning.data import sources
from prompt_tuning.data import task_utils

# name -> (benchmark word, text feature order or None for sorted, metrics).
CONFIGS = {
    'boolq': ('boolq', None, [metrics.accuracy]),
    'cb': ('cb', None, [metrics.mean_multiclass_f1(3), metrics.accuracy]),
    'copa': ('copa', None, [metrics.accuracy]),
    'multirc': ('multirc', ('question', 'answer', 'paragraph'),
                [metrics.multirc_f1_over_all_answers, metrics.multirc_exact_match]),
    'record': ('record', None, [metrics.record]),
    'rte': ('rte', None, [metrics.accuracy]),
    # WiC's word offsets are not part of the input.
    'wic': ('wic', ('sentence1', 'sentence2', 'word'), [metrics.accuracy]),
    # The diagnostics are cast as RTE and have only an unlabelled test split.
    'axb': ('rte', None, []),
    'axg': ('rte', None, []),
}

# T5's mixing rates: training examples per task (ReCoRD counted once per
# answer, WSC only its correct-referent examples).
RATES = {
    'super_glue_wsc_v102_simple_train': 259.,
    'super_glue_wsc_v102_simple_eval': 0.,
    'super_glue_boolq_v102': 9_427.,
    'super_glue_cb_v102': 250.,
    'super_glue_copa_v102': 400.,
    'super_glue_multirc_v102': 27_243.,
    'super_glue_record_v102': 138_854.,
    'super_glue_rte_v102': 2_490.,
    'super_glue_wic_v102': 5_428.,
    'super_glue_axb_v102': 0.,
    'super_glue_axg_v102': 0.,
}
MIXTURE = 'super_glue_v102_proportional'
WSC_MIXTURE = 'super_glue_wsc_and_dev_v102_simple'
_AXB_AS_RTE = {'premise': 'sentence1', 'hypothesis': 'sentence2', 'label': 'label',
               'idx': 'idx'}


def text_preprocessors(name: str) -> list:
  """The T5 library's text preprocessing of SuperGLUE config `name`."""
  if name == 'record':
    return [preprocessors.record]
  benchmark, feature_names, _ = CONFIGS[name]
  steps = []
  if name == 'axb':
    steps.append(functools.partial(seqio.preprocessors.rekey, key_map=_AXB_AS_RTE))
  steps.append(functools.partial(
      preprocessors.glue, benchmark_name=benchmark,
      label_names=sources.LABEL_NAMES[name], feature_names=feature_names))
  return steps


def postprocess_fn(name: str):
  """The T5 library's postprocessor of SuperGLUE config `name`."""
  if name == 'multirc':
    return postprocessors.multirc
  if name == 'record':
    return postprocessors.record
  return postprocessors.class_id_postprocessor(sources.LABEL_NAMES[name])


def register(data_dir: Optional[str] = None) -> Dict[str, Dict[str, str]]:
  """(Re-)registers every SuperGLUE task and mixture.

  Args:
    data_dir: the unzipped official release, or None for TFDS.

  Returns:
    T5 task or mixture name -> {form: registered name}.
  """
  registered = {}
  for name, (_, _, metric_fns) in CONFIGS.items():
    t5_name = f'super_glue_{name}_v102'
    registered[t5_name] = task_utils.add_forms(
        t5_name, sources.super_glue_source(name, data_dir=data_dir),
        text_preprocessors(name), postprocess_fn(name), metric_fns)

  wsc = {
      'super_glue_wsc_v102_simple_train': (['train'], True, None, []),
      'super_glue_wsc_v102_simple_eval': (['validation', 'test'], False,
                                          postprocessors.wsc_simple,
                                          [metrics.accuracy]),
  }
  for t5_name, (splits, correct_only, post, metric_fns) in wsc.items():
    registered[t5_name] = task_utils.add_forms(
        t5_name, sources.super_glue_source('wsc.fixed', splits, data_dir),
        [functools.partial(preprocessors.wsc_simple,
                           correct_referent_only=correct_only)],
        post, metric_fns)

  registered[MIXTURE] = task_utils.add_mixture_forms(MIXTURE, RATES)
  registered[WSC_MIXTURE] = task_utils.add_mixture_forms(
      WSC_MIXTURE, {name: 1.0 for name in wsc})
  return registered


REGISTERED = register(sources.data_dir_from_env())
