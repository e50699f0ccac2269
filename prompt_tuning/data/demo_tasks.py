"""SeqIO tasks over the demo world (`demo_world.py`): the embedded default.

Importing this module registers, all generated in memory from seed 0 (no
download, no files):

  demo_world_span_corruption   T5 pre-training on the world's corpus
  demo_world_prefix_lm         LM adaptation on the same corpus
  demo_world_lm                causal LM on the same corpus, for decoder-only
                                 pre-training (T5X's decoder-only LM setting):
                                 each whole document is 'targets' (+ EOS), no
                                 'inputs'; fits LM_TARGETS_LENGTH = 128
  demo_world_boolq             BoolQ-like yes/no questions over a passage,
  taskless_demo_world_boolq      in the three forms of `task_utils`
  taskless_demo_world_boolq_sentinel
  demo_world_rte               RTE-like entailment, same three forms
  demo_world_genre             which kind of document a text is (4 classes),
                                 'genre text: ...', same three forms
  demo_world_genre_profile_story  genre narrowed to two kinds (labels those kinds),
  demo_world_genre_letter_quiz      inputs as genre's, same forms: tasks related
                                    to genre, for SPoT transfer
  ...

The classification tasks are built exactly as SuperGLUE's (the same `glue`
text preprocessor, so 'boolq passage: ... question: ...' and 'rte
hypothesis: ... premise: ...'), with accuracy as the metric. BoolQ's labels
here are 'no'/'yes' (SuperGLUE's are 'False'/'True'): the corpus answers
questions with yes and no, the way web text does. Sizes: corpus 50,000 train
and 1,000 validation documents; each task 5,000 train, 1,000 validation and
1,000 test examples, half of each class.
"""
import functools
from typing import Dict, List

import seqio
import tensorflow as tf

from prompt_tuning.data import demo_world
from prompt_tuning.data import lm_tasks
from prompt_tuning.data import metrics
from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors
from prompt_tuning.data import task_utils

WORLD_SEED = 0
CORPUS_SIZES = {'train': 50_000, 'validation': 1_000}
TASK_SIZES = {'train': 5_000, 'validation': 1_000, 'test': 1_000}
CORPUS = 'demo_world'
BOOLQ = 'demo_world_boolq'
RTE = 'demo_world_rte'
GENRE = 'demo_world_genre'
# Lengths that fit every example (the longest input is 115 tokens with EOS).
# Genre narrowed to two kinds (SPoT's related source tasks): demo_world_genre_profile_story, ...
KIND_PAIRS = {'genre_profile_story': ('profile', 'story'), 'genre_letter_quiz': ('letter', 'quiz')}
CLASSIFICATION_LENGTHS = {'inputs': 120, 'targets': 8}
LM_LENGTHS = {'inputs': 64, 'targets': 64}
# demo_world_lm: the longest corpus document is 127 tokens with EOS (train;
# validation 116), the mean 61, the median 61, the 99th percentile 102-105:
# 128 keeps every document whole.
LM = f'{CORPUS}_lm'
LM_TARGETS_LENGTH = 128
LM_FEATURE_LENGTHS = {'targets': LM_TARGETS_LENGTH}


@functools.lru_cache(maxsize=None)
def _examples(kind: str, split: str) -> Dict[str, List]:
  """Column-wise examples of `kind` ('corpus', 'boolq', 'rte') for `split`."""
  world = demo_world.make_world(WORLD_SEED)
  if kind == 'corpus':
    return {'text': demo_world.corpus(world, split, CORPUS_SIZES[split])}
  if kind in KIND_PAIRS:
    rows = demo_world.kind_pair_examples(world, split, TASK_SIZES[split], KIND_PAIRS[kind])
    return {key: [row[key] for row in rows] for key in rows[0]}
  make = {'boolq': demo_world.boolq_examples, 'rte': demo_world.rte_examples,
          'genre': demo_world.genre_examples}[kind]
  rows = make(world, split, TASK_SIZES[split])
  return {key: [row[key] for row in rows] for key in rows[0]}


def _source(kind: str, splits) -> seqio.FunctionDataSource:
  def dataset_fn(split: str, shuffle_files: bool, seed=None) -> tf.data.Dataset:
    del shuffle_files, seed  # one in-memory "file"; seqio shuffles examples
    return tf.data.Dataset.from_tensor_slices(_examples(kind, split))
  return seqio.FunctionDataSource(dataset_fn, splits=list(splits))


def lm_preprocessors() -> list:
  """Whole document -> 'targets' tokens + EOS; no 'inputs' (a causal LM's examples)."""
  return [functools.partial(seqio.preprocessors.rekey, key_map={'targets': 'text'}),
          seqio.preprocessors.tokenize,
          seqio.CacheDatasetPlaceholder(),
          seqio.preprocessors.append_eos_after_trim]


def register() -> None:
  """(Re-)registers the corpus objectives and the classification tasks."""
  corpus = _source('corpus', CORPUS_SIZES)
  for objective in lm_tasks.OBJECTIVES:
    task_utils.add_task(f'{CORPUS}_{objective}', corpus,
                        lm_tasks.objective_preprocessors(objective))
  task_utils.add_task(LM, corpus, lm_preprocessors())
  classification = [(BOOLQ, 'boolq', 'boolq', demo_world.BOOLQ_LABELS),
                    (RTE, 'rte', 'rte', demo_world.RTE_LABELS),
                    (GENRE, 'genre', 'genre', demo_world.GENRES)]
  # Inputs as genre's ('genre text: ...'): the prompt alone tells the tasks apart.
  classification += [(f'{CORPUS}_{kind}', kind, 'genre', KIND_PAIRS[kind])
                     for kind in KIND_PAIRS]
  for name, kind, benchmark, labels in classification:
    task_utils.add_forms(
        name, _source(kind, TASK_SIZES),
        [functools.partial(preprocessors.glue, benchmark_name=benchmark, label_names=labels)],
        postprocessors.class_id_postprocessor(labels), [metrics.accuracy])


register()
