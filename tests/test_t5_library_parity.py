"""Our SuperGLUE/GLUE text preprocessing against the T5 library's own functions.

The `t5` package (0.9.4, installed without its dependencies by the test
command) cannot be imported whole here (it needs Mesh TensorFlow), but its
`t5/data/preprocessors.py` needs only seqio, TensorFlow, gin and babel, so it
is loaded from its file. Every hand-written example of
tests/test_superglue_tasks.py goes through both pipelines; the strings must
be byte-identical. Label names come from the TFDS builder configs, as T5's
tasks take them.
"""
import functools
import importlib.util
import os

import pytest
import tensorflow_datasets as tfds

from prompt_tuning.data import glue_tasks, preprocessors, superglue_tasks

import test_superglue_tasks as examples  # the hand-written examples (MOCK)


def _load_t5_preprocessors():
  spec = importlib.util.find_spec('t5')
  if spec is None:
    pytest.fail('The T5 library is not installed: pip install --no-deps t5==0.9.4')
  path = os.path.join(spec.submodule_search_locations[0], 'data', 'preprocessors.py')
  module_spec = importlib.util.spec_from_file_location('t5_library_preprocessors', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


T5 = _load_t5_preprocessors()


def _label_classes(benchmark: str, config: str):
  configs = {c.name: c for c in tfds.builder_cls(benchmark).BUILDER_CONFIGS}
  return configs[config].label_classes


def _t5_text_preprocessor(benchmark: str, config: str):
  """The text steps of T5's task for a config (t5/data/tasks.py, glue_utils)."""
  if config == 'axb':
    # T5's task renames axb's sentence1/sentence2 first, then treats it as RTE.
    rekey = functools.partial(T5.rekey, key_map={
        'premise': 'sentence1', 'hypothesis': 'sentence2', 'label': 'label', 'idx': 'idx'})
    glue = _t5_text_preprocessor(benchmark, 'axg')
    return lambda dataset: glue(rekey(dataset))
  if config == 'record':
    return T5.record
  if config == 'stsb':
    return T5.stsb
  name = {'axb': 'rte', 'axg': 'rte', 'ax': 'mnli'}.get(config, config)
  name = 'mnli' if 'mnli' in config else name
  feature_names = {'multirc': ('question', 'answer', 'paragraph'),
                   'wic': ('sentence1', 'sentence2', 'word')}.get(config)
  return functools.partial(T5.glue, benchmark_name=name,
                           label_names=_label_classes(benchmark, config),
                           feature_names=feature_names)


def _raw(benchmark, config, split):
  fake_builder = type('Builder', (), {'name': benchmark,
                                      'builder_config': type('C', (), {'name': config})})
  return examples._as_dataset(fake_builder, split)  # pylint: disable=protected-access


def _strings(dataset):
  return [(ex['inputs'].decode(), ex['targets'].decode())
          for ex in dataset.as_numpy_iterator()]


OUR_TEXT_PREPROCESSORS = {'super_glue': superglue_tasks.text_preprocessors,
                          'glue': glue_tasks.text_preprocessors}
CASES = [(benchmark, config, split) for (benchmark, config), splits in examples.MOCK.items()
         if config != 'wsc.fixed' for split in splits]


@pytest.mark.parametrize('benchmark,config,split', CASES)
def test_text_matches_the_t5_library(benchmark, config, split):
  ours = _raw(benchmark, config, split)
  for step in OUR_TEXT_PREPROCESSORS[benchmark](config):
    ours = step(ours)
  theirs = _t5_text_preprocessor(benchmark, config)(_raw(benchmark, config, split))
  assert _strings(ours) == _strings(theirs)


@pytest.mark.parametrize('split', ['train', 'validation'])
def test_wsc_simple_matches_the_t5_library(split):
  ours = preprocessors.wsc_simple(_raw('super_glue', 'wsc.fixed', split),
                                  correct_referent_only=(split == 'train'))
  theirs = T5.wsc_simple(_raw('super_glue', 'wsc.fixed', split),
                         correct_referent_only=(split == 'train'))
  assert _strings(ours) == _strings(theirs)
