"""GLUE tasks (T5's, taskless and sentinel forms) and the QQP <-> MRPC transfer.

Importing this module registers, from TFDS `glue/<name>:2.0.0`, for each name
in CONFIGS (cola, sst2, mrpc, qqp, stsb, mnli, mnli_matched, mnli_mismatched,
qnli, rte, wnli, ax):

- `glue_<name>_v002` (the T5 library's task), `taskless_glue_<name>_v002`
  and `taskless_glue_<name>_v002_sentinel` (see `task_utils`);
- mixture `glue_v002_proportional` (and its forms) with T5's rates, the
  training-set sizes, without WNLI (as T5);

and the zero-shot transfer of the paper (section 7): a prompt trained on QQP
evaluated on MRPC, and the reverse. `glue_mrpc_from_qqp_v002` is MRPC's
validation split in MRPC's format and metrics, whose postprocessor first
rewrites QQP's label words in the prediction as MRPC's ('duplicate' ->
'equivalent', so 'not_duplicate' -> 'not_equivalent');
`glue_qqp_from_mrpc_v002` is the reverse. Mixture
`glue_mrpc_from_qqp_zeroshot_v002` trains on `glue_qqp_v002` and evaluates
on both; all in the three forms.

MNLI's own task has the splits train, validation_matched,
validation_mismatched, test_matched and test_mismatched; `mnli_matched` /
`mnli_mismatched` have validation and test. All MNLI tasks and AX use the
benchmark word 'mnli', as T5.
"""
import functools
from typing import Dict

import seqio

from prompt_tuning.data import metrics
from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors
from prompt_tuning.data import task_utils

_SPLITS = ['train', 'validation', 'test']
_MNLI_LABELS = ('entailment', 'neutral', 'contradiction')
_ENTAILMENT = ('entailment', 'not_entailment')
# name -> (benchmark word, label names, splits, metrics).
CONFIGS = {
    'cola': ('cola', ('unacceptable', 'acceptable'), _SPLITS,
             [metrics.matthews_corrcoef]),
    'sst2': ('sst2', ('negative', 'positive'), _SPLITS, [metrics.accuracy]),
    'mrpc': ('mrpc', ('not_equivalent', 'equivalent'), _SPLITS,
             [metrics.f1_score_with_invalid, metrics.accuracy]),
    'qqp': ('qqp', ('not_duplicate', 'duplicate'), _SPLITS,
            [metrics.f1_score_with_invalid, metrics.accuracy]),
    'stsb': ('stsb', None, _SPLITS,
             [metrics.pearson_corrcoef, metrics.spearman_corrcoef]),
    'mnli': ('mnli', _MNLI_LABELS,
             ['train', 'validation_matched', 'validation_mismatched',
              'test_matched', 'test_mismatched'], [metrics.accuracy]),
    'mnli_matched': ('mnli', _MNLI_LABELS, ['validation', 'test'], [metrics.accuracy]),
    'mnli_mismatched': ('mnli', _MNLI_LABELS, ['validation', 'test'],
                        [metrics.accuracy]),
    'qnli': ('qnli', _ENTAILMENT, _SPLITS, [metrics.accuracy]),
    'rte': ('rte', _ENTAILMENT, _SPLITS, [metrics.accuracy]),
    'wnli': ('wnli', ('not_entailment', 'entailment'), _SPLITS, [metrics.accuracy]),
    'ax': ('mnli', _MNLI_LABELS, ['test'], []),  # Unlabelled diagnostics.
}

RATES = {
    'glue_cola_v002': 8_551.,
    'glue_sst2_v002': 67_349.,
    'glue_mrpc_v002': 3_668.,
    'glue_qqp_v002': 363_849.,
    'glue_stsb_v002': 5_749.,
    'glue_mnli_v002': 392_702.,
    'glue_qnli_v002': 104_743.,
    'glue_rte_v002': 2_490.,
    'glue_mnli_mismatched_v002': 0.,
    'glue_mnli_matched_v002': 0.,
    'glue_ax_v002': 0.,
}
MIXTURE = 'glue_v002_proportional'
# (trained on, evaluated on) -> words of the first written as the second's.
TRANSFERS = {
    ('qqp', 'mrpc'): {'duplicate': 'equivalent'},
    ('mrpc', 'qqp'): {'equivalent': 'duplicate'},
}


def source(name: str, splits=None) -> seqio.DataSource:
  return seqio.TfdsDataSource(tfds_name=f'glue/{name}:2.0.0',
                              splits=splits or CONFIGS[name][2])


def text_preprocessors(name: str) -> list:
  benchmark, labels, _, _ = CONFIGS[name]
  if name == 'stsb':
    return [preprocessors.stsb]
  return [functools.partial(preprocessors.glue, benchmark_name=benchmark,
                            label_names=labels)]


def postprocess_fn(name: str):
  if name == 'stsb':
    return postprocessors.string_to_float
  return postprocessors.class_id_postprocessor(CONFIGS[name][1])


def register() -> Dict[str, Dict[str, str]]:
  """(Re-)registers every GLUE and transfer task and mixture.

  Returns:
    T5 task or mixture name -> {form: registered name}.
  """
  registered = {}
  for name, (_, _, _, metric_fns) in CONFIGS.items():
    t5_name = f'glue_{name}_v002'
    registered[t5_name] = task_utils.add_forms(
        t5_name, source(name), text_preprocessors(name), postprocess_fn(name),
        metric_fns)
  registered[MIXTURE] = task_utils.add_mixture_forms(MIXTURE, RATES)

  for (trained, evaluated), words in TRANSFERS.items():
    t5_name = f'glue_{evaluated}_from_{trained}_v002'
    registered[t5_name] = task_utils.add_forms(
        t5_name, source(evaluated, ['validation']), text_preprocessors(evaluated),
        postprocessors.translate_labels(words, postprocess_fn(evaluated)),
        CONFIGS[evaluated][3])
    mixture = f'glue_{evaluated}_from_{trained}_zeroshot_v002'
    registered[mixture] = task_utils.add_mixture_forms(
        mixture, {f'glue_{trained}_v002': 1.0, t5_name: 1.0})
  return registered


REGISTERED = register()
