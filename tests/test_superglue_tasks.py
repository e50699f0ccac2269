"""SuperGLUE and GLUE tasks: exact strings on hand-written examples, offline.

TFDS is mocked (`tfds.testing.mock_data`) with the hand-written examples in
MOCK, in TFDS's feature names and dtypes; the local-files source reads the
same examples written as the official release's JSONL. Every expected string
is written out by hand from the rules in ../shared/reference/superglue.md.
"""
import functools
import importlib
import importlib.util
import json
import pathlib

import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from prompt_tuning.data import tasks  # pylint: disable=unused-import
from prompt_tuning.data import glue_tasks, preprocessors, sources, superglue_tasks
from prompt_tuning.data.vocab import get_vocabulary

WSC_TEXT = ('Mark told Pete many lies about himself , which Pete included in '
            'his book .')
WSC_SPECIAL = next(iter(preprocessors.WSC_SPECIAL_CASES))
MULTIRC_PARAGRAPH = ('<b>Sent 1: </b>Tom has a cat.<br><b>Sent 2: </b>'
                     'The cat is black.<br>')
RECORD_PASSAGE = 'Rain fell on Paris.\n@highlight\nParis was wet\n@highlight\nThe Seine rose'
RECORD_QUERY = 'Water filled the streets of @placeholder.'
RECORD_PASSAGE_2 = 'Who won?\n@highlight\nThe Lions said "We did"\n@highlight\nFans cheered'

# (builder, config) -> split -> examples, as TFDS gives them.
MOCK = {
    ('super_glue', 'boolq'): {
        'validation': [dict(question='is the sky blue',
                            passage='The sky is blue on a clear day.', label=1, idx=0)],
        'test': [dict(question='is grass red', passage='Grass is green.', label=-1,
                      idx=7)]},
    ('super_glue', 'cb'): {'validation': [
        dict(premise='It was raining, so Jo stayed in.', hypothesis='Jo stayed in.',
             label=0, idx=0),
        dict(premise='Jo might go.', hypothesis='Jo went.', label=2, idx=1)]},
    ('super_glue', 'copa'): {'validation': [
        dict(premise='The man broke his toe.', choice1='He dropped a hammer on his foot.',
             choice2='He got a hole in his sock.', question='cause', label=0, idx=0)]},
    ('super_glue', 'multirc'): {'validation': [
        dict(paragraph=MULTIRC_PARAGRAPH, question='What color is the cat?',
             answer='Black', label=1, idx=dict(paragraph=0, question=1, answer=2)),
        dict(paragraph=MULTIRC_PARAGRAPH, question='What color is the cat?',
             answer='White', label=0, idx=dict(paragraph=0, question=1, answer=3))]},
    ('super_glue', 'record'): {
        'validation': [
            dict(passage=RECORD_PASSAGE, query=RECORD_QUERY, entities=['Paris', 'Seine'],
                 answers=['Paris'], idx=dict(passage=0, query=0)),
            dict(passage=RECORD_PASSAGE_2,
                 query='@placeholder won the cup.', entities=['Lions', 'The Lions'],
                 answers=['Lions', 'The Lions'], idx=dict(passage=1, query=1))],
        'test': [dict(passage='A.\n@highlight\nB', query='@placeholder?', entities=['B'],
                      answers=[], idx=dict(passage=2, query=2))]},
    ('super_glue', 'rte'): {'validation': [
        dict(premise='Dogs bark loudly.', hypothesis='Dogs make noise.', label=0, idx=0)]},
    ('super_glue', 'wic'): {'validation': [
        dict(word='bank', sentence1='He sat on the bank.',
             sentence2='The bank raised rates.', start1=14, end1=18, start2=4, end2=8,
             label=0, idx=0)]},
    ('super_glue', 'axb'): {'test': [
        dict(sentence1='The cat sat.', sentence2='A cat sat.', label=-1, idx=0)]},
    ('super_glue', 'axg'): {'test': [
        dict(premise='The nurse said she was tired.', hypothesis='The nurse was tired.',
             label=-1, idx=0)]},
    ('super_glue', 'wsc.fixed'): {
        'train': [
            dict(text=WSC_TEXT, span1_index=0, span1_text='Mark', span2_index=12,
                 span2_text='his', label=0, idx=0),
            dict(text=WSC_TEXT, span1_index=2, span1_text='Pete', span2_index=12,
                 span2_text='his', label=1, idx=1)],
        'validation': [
            dict(text=WSC_TEXT, span1_index=0, span1_text='Mark', span2_index=12,
                 span2_text='his', label=0, idx=0),
            dict(text=WSC_SPECIAL, span1_index=5, span1_text='the pony', span2_index=20,
                 span2_text='him', label=0, idx=1)]},
    ('glue', 'sst2'): {'validation': [dict(sentence='a gripping , funny film', label=1,
                                           idx=0)]},
    ('glue', 'cola'): {'validation': [dict(sentence='The book was read by me.', label=1,
                                           idx=0)]},
    ('glue', 'mrpc'): {'validation': [
        dict(sentence1='The firm sold 5 plants.',
             sentence2='Five plants were sold by the firm.', label=1, idx=0)]},
    ('glue', 'qqp'): {'validation': [
        dict(question1='How do I learn Python?',
             question2='What is the best way to learn Python?', label=1, idx=0)]},
    ('glue', 'stsb'): {'validation': [
        dict(sentence1='A man sings.', sentence2='A man is singing.', label=3.27, idx=0)]},
    ('glue', 'qnli'): {'validation': [
        dict(question='Where is Paris?', sentence='Paris is in France.', label=0, idx=0)]},
    ('glue', 'rte'): {'validation': [
        dict(sentence1='Dogs bark loudly.', sentence2='Dogs make noise.', label=1, idx=0)]},
    ('glue', 'wnli'): {'validation': [
        dict(sentence1='The cup fell. It broke.', sentence2='The cup broke.', label=1,
             idx=0)]},
    ('glue', 'mnli'): {
        'validation_matched': [dict(premise='A man plays a guitar.',
                                    hypothesis='A man is making music.', label=0, idx=0)],
        'validation_mismatched': [dict(premise='The report is late.',
                                       hypothesis='The report is early.', label=2,
                                       idx=0)]},
    ('glue', 'mnli_mismatched'): {'validation': [
        dict(premise='The report is late.', hypothesis='The report is early.', label=2,
             idx=0)]},
    ('glue', 'ax'): {'test': [dict(premise='No cat sat.', hypothesis='A cat sat.',
                                   label=-1, idx=0)]},
}


def _tensor(key, value, config):
  if isinstance(value, dict):
    return {k: tf.constant(v, tf.int32) for k, v in value.items()}
  if key == 'label':  # TFDS ClassLabel is int64; STS-B's score is float32.
    return tf.constant(value, tf.float32 if config == 'stsb' else tf.int64)
  if isinstance(value, list):
    return tf.constant(value, tf.string, shape=[len(value)])
  return tf.constant(value, tf.int32 if isinstance(value, int) else tf.string)


def _as_dataset(builder, split, **unused_kwargs):
  config = builder.builder_config.name
  examples = MOCK[(builder.name, config)][str(split)]
  datasets = [tf.data.Dataset.from_tensors({k: _tensor(k, v, config) for k, v in ex.items()})
              for ex in examples]
  return functools.reduce(lambda a, b: a.concatenate(b), datasets)


_CACHE = {}


def examples(task_name, split='validation'):
  """The task's preprocessed examples (tokenized, with *_pretokenized).

  Cached per registered Task object (kept alive in the cache, so a task
  registered again is read again).
  """
  task = seqio.get_mixture_or_task(task_name)
  key = (task_name, split, id(task))
  if key not in _CACHE:
    with tfds.testing.mock_data(as_dataset_fn=_as_dataset):
      ds = task.get_dataset(sequence_length=None, split=split, shuffle=False,
                            try_in_mem_cache=False)
      _CACHE[key] = (task, list(ds.as_numpy_iterator()))
  return _CACHE[key][1]


def texts(task_name, split='validation'):
  return [(ex['inputs_pretokenized'].decode(), ex['targets_pretokenized'].decode())
          for ex in examples(task_name, split)]


def check_forms(t5_name, expected, split='validation', forms=3):
  """T5 form as `expected`; taskless/sentinel without the first word."""
  assert texts(t5_name, split) == expected
  if forms == 1:
    return
  taskless = [(inputs.split(' ', 1)[1], target) for inputs, target in expected]
  assert texts(f'taskless_{t5_name}', split) == taskless
  assert texts(f'taskless_{t5_name}_sentinel', split) == taskless


# ----------------------------------------------------------- SuperGLUE ---

SUPER_GLUE_EXPECTED = {
    'boolq': [('boolq passage: The sky is blue on a clear day. question: is the sky blue',
               'True')],
    'cb': [('cb hypothesis: Jo stayed in. premise: It was raining, so Jo stayed in.',
            'entailment'),
           ('cb hypothesis: Jo went. premise: Jo might go.', 'neutral')],
    'copa': [('copa choice1: He dropped a hammer on his foot. choice2: He got a hole in '
              'his sock. premise: The man broke his toe. question: cause', 'choice1')],
    # <b>, </b> removed and <br> -> space: the paragraph ends in a space.
    'multirc': [('multirc question: What color is the cat? answer: Black paragraph: '
                 'Sent 1: Tom has a cat. Sent 2: The cat is black. ', 'True'),
                ('multirc question: What color is the cat? answer: White paragraph: '
                 'Sent 1: Tom has a cat. Sent 2: The cat is black. ', 'False')],
    # '.\n@highlight\n' -> '. ' and 'wet\n@highlight\n' -> 'wet. '; after '?' and '"'
    # only a space. One example per answer.
    'record': [('record query: Water filled the streets of @placeholder. entities: '
                'Paris, Seine passage: Rain fell on Paris. Paris was wet. The Seine rose',
                'Paris')] + [
                   ('record query: @placeholder won the cup. entities: Lions, The Lions '
                    'passage: Who won? The Lions said "We did" Fans cheered', answer)
                   for answer in ('Lions', 'The Lions')],
    'rte': [('rte hypothesis: Dogs make noise. premise: Dogs bark loudly.', 'entailment')],
    'wic': [('wic sentence1: He sat on the bank. sentence2: The bank raised rates. '
             'word: bank', 'False')],
}
TEST_SPLIT_EXPECTED = {
    'boolq': [('boolq passage: Grass is green. question: is grass red', '<unk>')],
    'record': [('record query: @placeholder? entities: B passage: A. B', '<unk>')],
    # The diagnostics are cast as RTE; axb's sentence1 is the premise.
    'axb': [('rte hypothesis: A cat sat. premise: The cat sat.', '<unk>')],
    'axg': [('rte hypothesis: The nurse was tired. premise: The nurse said she was '
             'tired.', '<unk>')],
}
WSC_EXPECTED = {
    # Training keeps only the example whose candidate (Pete) is the referent.
    'train': [('wsc: Mark told Pete many lies about himself , which Pete included in '
               '*his* book .', 'Pete')],
    'validation': [
        ('wsc: Mark told Pete many lies about himself , which Pete included in *his* '
         'book .', 'Mark'),
        # One of T5's two hand-blanked texts (its span2_index is off).
        ('wsc: The boy continued to whip the pony , and eventually the pony threw him '
         'over. John laughed out quite loud. "Good for *him* ," he said.', 'the pony')],
}


@pytest.mark.parametrize('name', sorted(SUPER_GLUE_EXPECTED))
def test_super_glue_strings(name):
  check_forms(f'super_glue_{name}_v102', SUPER_GLUE_EXPECTED[name])


@pytest.mark.parametrize('name', sorted(TEST_SPLIT_EXPECTED))
def test_super_glue_test_split_is_unk(name):
  # The forms add the same steps to every split; the T5 form suffices here.
  check_forms(f'super_glue_{name}_v102', TEST_SPLIT_EXPECTED[name], split='test',
              forms=1)


def test_wsc_simple_train_and_eval():
  check_forms('super_glue_wsc_v102_simple_train', WSC_EXPECTED['train'], 'train')
  check_forms('super_glue_wsc_v102_simple_eval', WSC_EXPECTED['validation'])
  [first, _] = examples('super_glue_wsc_v102_simple_eval')
  assert (first['label'], first['idx']) == (0, 0)
  assert seqio.get_mixture_or_task('super_glue_wsc_v102_simple_train').splits == ('train',)


def test_index_fields_kept_for_the_metrics():
  multirc = examples('super_glue_multirc_v102')[1]
  assert [multirc[f'idx/{k}'] for k in ('paragraph', 'question', 'answer')] == [0, 1, 3]
  record = examples('super_glue_record_v102')[2]
  assert (record['idx/passage'], record['idx/query']) == (1, 1)
  assert record['answers'].tolist() == [b'Lions', b'The Lions']
  assert examples('super_glue_cb_v102')[1]['idx'] == 1


def test_token_ids_are_the_vocabulary_encoding_plus_eos():
  vocabulary = get_vocabulary()
  [t5] = examples('super_glue_rte_v102')
  [sentinel] = examples('taskless_super_glue_rte_v102_sentinel')
  eos = vocabulary.eos_id
  assert t5['inputs'].tolist() == vocabulary.encode(
      'rte hypothesis: Dogs make noise. premise: Dogs bark loudly.') + [eos]
  assert t5['targets'].tolist() == vocabulary.encode('entailment') + [eos]
  assert sentinel['inputs'].tolist() == vocabulary.encode(
      'hypothesis: Dogs make noise. premise: Dogs bark loudly.') + [eos]
  # The sentinel is one id (32099) before the label, not text.
  assert sentinel['targets'].tolist() == [32099] + vocabulary.encode('entailment') + [eos]
  assert vocabulary.decode(sentinel['targets'].tolist()) == '<extra_id_0> entailment'


def test_postprocess_and_metrics_through_the_tasks():
  cb = seqio.get_mixture_or_task('taskless_super_glue_cb_v102_sentinel')
  predictions = [cb.postprocess_fn(p, example={}, is_target=False)
                 for p in ['<extra_id_0> entailment', '<extra_id_0> neutral', 'neutral',
                           '<extra_id_0> maybe']]
  assert predictions == [0, 2, 2, -1]
  results = {}
  for metric_fn in cb.metric_fns:
    results.update(metric_fn([0, 2, 1, 1], predictions))
  # entailment F1 1, neutral tp 1 fp 1 -> 2/3, contradiction 0; accuracy 2/4.
  assert results == {'mean_3class_f1': pytest.approx(100 * (1 + 2 / 3) / 3),
                     'accuracy': pytest.approx(50.0)}
  wsc = seqio.get_mixture_or_task('taskless_super_glue_wsc_v102_simple_eval_sentinel')
  example = {'targets_pretokenized': b'the pony', 'label': 1}
  assert wsc.postprocess_fn('<extra_id_0> Pony', example=example) == 1
  assert wsc.postprocess_fn('the pony', example=example, is_target=True) == 1
  record = seqio.get_mixture_or_task('super_glue_record_v102')
  assert [f.__name__ for f in record.metric_fns] == ['deduplicated_squad']
  assert record.postprocess_fn('Paris') == {'value': 'Paris'}


def evaluate(task_name, predictions, monkeypatch):
  """Metrics from SeqIO's Evaluator with `predictions` as the decoded outputs."""
  vocabulary = get_vocabulary()
  # Mocked TFDS has no split sizes; SeqIO asks for them only to decide caching.
  monkeypatch.setattr(seqio.TfdsDataSource, 'num_input_examples',
                      lambda self, split: None)

  def predict_fn(dataset):
    del dataset  # The predictions are given, in the examples' order.
    # Padded to one length, as a model's decodes are.
    return [(i, (vocabulary.encode(p) + [1] + [0] * 12)[:12])
            for i, p in enumerate(predictions)]

  with tfds.testing.mock_data(as_dataset_fn=_as_dataset):
    evaluator = seqio.Evaluator(
        task_name, feature_converter=seqio.EncDecFeatureConverter(pack=False),
        eval_split='validation', use_cached=False, sequence_length=None)
    results, _ = evaluator.evaluate(compute_metrics=True, predict_fn=predict_fn,
                                    score_fn=None)
    return results.result()[task_name]


def test_seqio_evaluator_end_to_end(monkeypatch):
  # MultiRC: answers True/False of one question, both predicted True:
  # tp 1, fp 1 -> F1a 2/3; the question is not all right -> EM 0.
  assert evaluate('super_glue_multirc_v102', ['True', 'True'], monkeypatch) == {
      'f1': pytest.approx(200 / 3), 'exact_match': 0.0}
  # ReCoRD, sentinel form: the sentinel is stripped; query 1 is predicted by
  # its first copy ('the Lions' normalises to 'lions'), the second is ignored.
  assert evaluate('taskless_super_glue_record_v102_sentinel',
                  ['<extra_id_0> Paris', '<extra_id_0> the Lions', 'wrong'],
                  monkeypatch) == {'em': 100.0, 'f1': 100.0}


# ---------------------------------------------------------------- GLUE ---

GLUE_EXPECTED = {
    'sst2': [('sst2 sentence: a gripping , funny film', 'positive')],
    'cola': [('cola sentence: The book was read by me.', 'acceptable')],
    'mrpc': [('mrpc sentence1: The firm sold 5 plants. sentence2: Five plants were sold '
              'by the firm.', 'equivalent')],
    'qqp': [('qqp question1: How do I learn Python? question2: What is the best way to '
             'learn Python?', 'duplicate')],
    # 3.27 * 5 = 16.35 rounds to 16; 16 / 5 = 3.2.
    'stsb': [('stsb sentence1: A man sings. sentence2: A man is singing.', '3.2')],
    'qnli': [('qnli question: Where is Paris? sentence: Paris is in France.', 'entailment')],
    'rte': [('rte sentence1: Dogs bark loudly. sentence2: Dogs make noise.',
             'not_entailment')],
    'wnli': [('wnli sentence1: The cup fell. It broke. sentence2: The cup broke.',
              'entailment')],
    'mnli_mismatched': [('mnli hypothesis: The report is early. premise: The report is '
                         'late.', 'contradiction')],
}


@pytest.mark.parametrize('name', sorted(GLUE_EXPECTED))
def test_glue_strings(name):
  check_forms(f'glue_{name}_v002', GLUE_EXPECTED[name])


def test_mnli_matched_and_mismatched_splits_and_ax():
  assert texts('glue_mnli_v002', 'validation_matched') == [
      ('mnli hypothesis: A man is making music. premise: A man plays a guitar.',
       'entailment')]
  assert texts('glue_mnli_v002', 'validation_mismatched') == GLUE_EXPECTED[
      'mnli_mismatched']
  assert texts('glue_ax_v002', 'test') == [
      ('mnli hypothesis: A cat sat. premise: No cat sat.', '<unk>')]


def test_qqp_mrpc_transfer():
  # MRPC's validation data and format; predictions in QQP's words.
  assert texts('taskless_glue_mrpc_from_qqp_v002') == [
      ('sentence1: The firm sold 5 plants. sentence2: Five plants were sold by the '
       'firm.', 'equivalent')]
  task = seqio.get_mixture_or_task('glue_mrpc_from_qqp_v002')
  assert task.splits == ('validation',)
  post = [task.postprocess_fn(p, example={})
          for p in ['duplicate', 'not_duplicate', 'equivalent', 'yes']]
  assert post == [1, 0, 1, -1]
  assert task.postprocess_fn('equivalent', example={}, is_target=True) == 1
  reverse = seqio.get_mixture_or_task('taskless_glue_qqp_from_mrpc_v002_sentinel')
  assert reverse.postprocess_fn('<extra_id_0> not_equivalent', example={}) == 0
  mixture = seqio.get_mixture_or_task('taskless_glue_mrpc_from_qqp_zeroshot_v002')
  assert sorted(t.name for t in mixture.tasks) == [
      'taskless_glue_mrpc_from_qqp_v002', 'taskless_glue_qqp_v002']
  assert [f.__name__ for f in task.metric_fns] == ['f1_score_with_invalid', 'accuracy']


# ------------------------------------------------------------ registry ---


def test_registry_names_mixtures_and_reimport():
  for name in list(superglue_tasks.CONFIGS) + ['wsc_v102_simple_train',
                                               'wsc_v102_simple_eval']:
    t5_name = f'super_glue_{name}_v102' if 'wsc' not in name else f'super_glue_{name}'
    for registered in (t5_name, f'taskless_{t5_name}', f'taskless_{t5_name}_sentinel'):
      assert registered in seqio.TaskRegistry.names()
  for name in glue_tasks.CONFIGS:
    assert f'taskless_glue_{name}_v002_sentinel' in seqio.TaskRegistry.names()
  importlib.reload(superglue_tasks)  # re-registration replaces, never fails
  importlib.reload(glue_tasks)
  mixture = seqio.get_mixture_or_task('taskless_super_glue_v102_proportional')
  rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
  assert rates['taskless_super_glue_record_v102'] == 138_854
  assert rates['taskless_super_glue_wsc_v102_simple_train'] == 259
  assert rates['taskless_super_glue_axb_v102'] == 0
  assert len(rates) == 11
  # The mixture holds the tasks registered now, not replaced ones.
  assert mixture.tasks[0] is seqio.TaskRegistry.get(mixture.tasks[0].name)


def test_label_names_match_tfds():
  for name, labels in sources.LABEL_NAMES.items():
    config = tfds.text.super_glue.SuperGlue.builder_configs[name]
    assert tuple(config.label_classes) == labels, name
  for name, (_, labels, _, _) in glue_tasks.CONFIGS.items():
    config = tfds.text.glue.Glue.builder_configs[name]
    assert tuple(config.label_classes or ()) == tuple(labels or ()), name


# --------------------------------------------------------- local files ---


def _span(text, word, start=0):
  """ReCoRD's entity offsets: first and last character, inclusive."""
  first = text.index(word, start)
  return dict(start=first, end=first + len(word) - 1)


def _release_rows():
  """The MOCK examples as the official release writes them."""
  return {
      'BoolQ': {'val.jsonl': [dict(question='is the sky blue',
                                   passage='The sky is blue on a clear day.', label=True,
                                   idx=0)],
                'test.jsonl': [dict(question='is grass red', passage='Grass is green.',
                                    idx=7)]},
      'CB': {'val.jsonl': [
          dict(premise='It was raining, so Jo stayed in.', hypothesis='Jo stayed in.',
               label='entailment', idx=0),
          dict(premise='Jo might go.', hypothesis='Jo went.', label='neutral', idx=1)]},
      'COPA': {'val.jsonl': [dict(premise='The man broke his toe.',
                                  choice1='He dropped a hammer on his foot.',
                                  choice2='He got a hole in his sock.', question='cause',
                                  label=0, idx=0)]},
      # One passage, its questions, their answers: flattened per answer.
      'MultiRC': {'val.jsonl': [dict(idx=0, version=1.1, passage=dict(
          text=MULTIRC_PARAGRAPH, questions=[dict(
              question='What color is the cat?', idx=1,
              answers=[dict(text='Black', idx=2, label=1),
                       dict(text='White', idx=3, label=0)])]))]},
      # Entities are inclusive character spans (Paris twice), answers texts.
      'ReCoRD': {
          'val.jsonl': [
              dict(idx=0, source='x', passage=dict(text=RECORD_PASSAGE, entities=[
                  _span(RECORD_PASSAGE, 'Paris'), _span(RECORD_PASSAGE, 'Paris', 20),
                  _span(RECORD_PASSAGE, 'Seine')]), qas=[dict(
                      query=RECORD_QUERY, idx=0,
                      answers=[dict(_span(RECORD_PASSAGE, 'Paris'), text='Paris')])]),
              dict(idx=1, source='x', passage=dict(text=RECORD_PASSAGE_2, entities=[
                  _span(RECORD_PASSAGE_2, 'The Lions'), _span(RECORD_PASSAGE_2, 'Lions')]),
                   qas=[dict(query='@placeholder won the cup.', idx=1, answers=[
                       dict(_span(RECORD_PASSAGE_2, 'The Lions'), text='The Lions'),
                       dict(_span(RECORD_PASSAGE_2, 'Lions'), text='Lions'),
                       dict(_span(RECORD_PASSAGE_2, 'Lions'), text='Lions')])])],
          # Test queries have no answers.
          'test.jsonl': [dict(idx=2, source='x', passage=dict(
              text='A.\n@highlight\nB', entities=[_span('A.\n@highlight\nB', 'B')]),
                              qas=[dict(query='@placeholder?', idx=2)])]},
      'RTE': {'val.jsonl': [dict(premise='Dogs bark loudly.', hypothesis='Dogs make noise.',
                                 label='entailment', idx=0)]},
      'WiC': {'val.jsonl': [dict(word='bank', sentence1='He sat on the bank.',
                                 sentence2='The bank raised rates.', start1=14, end1=18,
                                 start2=4, end2=8, label=False, idx=0, version=1.1)]},
      'WSC': {'train.jsonl': [
          dict(text=WSC_TEXT, target=dict(span1_index=0, span1_text='Mark',
                                          span2_index=12, span2_text='his'),
               label=False, idx=0),
          dict(text=WSC_TEXT, target=dict(span1_index=2, span1_text='Pete',
                                          span2_index=12, span2_text='his'),
               label=True, idx=1)]},
      'AX-b': {'AX-b.jsonl': [dict(sentence1='The cat sat.', sentence2='A cat sat.',
                                   idx=0, logic='Negation')]},
  }


@pytest.fixture
def release_dir(tmp_path):
  for folder, files in _release_rows().items():
    (tmp_path / folder).mkdir()
    for filename, rows in files.items():
      (tmp_path / folder / filename).write_text(
          ''.join(json.dumps(row) + '\n' for row in rows))
  superglue_tasks.register(str(tmp_path))
  yield tmp_path
  superglue_tasks.register(sources.data_dir_from_env())


def test_local_release_gives_the_same_strings(release_dir):
  del release_dir
  # The same source serves every form: the T5 form shows it (and one taskless).
  for name in ('boolq', 'cb', 'copa', 'multirc', 'rte', 'wic'):
    check_forms(f'super_glue_{name}_v102', SUPER_GLUE_EXPECTED[name], forms=1)
  # ReCoRD: entities and answers read from offsets, deduplicated and sorted.
  check_forms('super_glue_record_v102', SUPER_GLUE_EXPECTED['record'])
  assert texts('super_glue_boolq_v102', 'test') == TEST_SPLIT_EXPECTED['boolq']
  assert texts('super_glue_record_v102', 'test') == TEST_SPLIT_EXPECTED['record']
  assert texts('super_glue_axb_v102', 'test') == TEST_SPLIT_EXPECTED['axb']
  assert texts('super_glue_wsc_v102_simple_train', 'train') == WSC_EXPECTED['train']
  multirc = examples('super_glue_multirc_v102')[1]
  assert [multirc[f'idx/{k}'] for k in ('paragraph', 'question', 'answer')] == [0, 1, 3]


def test_local_release_flattening_and_errors(release_dir):
  rows = _release_rows()
  [record] = sources.flatten('record', rows['ReCoRD']['val.jsonl'][0])
  assert record['entities'] == ['Paris', 'Seine']
  assert record['idx'] == {'passage': 0, 'query': 0}
  flat = list(sources.flatten('multirc', rows['MultiRC']['val.jsonl'][0]))
  assert [(f['answer'], f['label'], f['idx']['answer']) for f in flat] == [
      ('Black', 1, 2), ('White', 0, 3)]
  # TFDS's WSC repairs: first letter cased as the word, trailing '.' dropped.
  fixed = sources.fix_wsc_spans(dict(text='The trophy does not fit because it is big .',
                                     span1_index=0, span1_text='the trophy.',
                                     span2_index=6, span2_text='It'))
  assert (fixed['span1_text'], fixed['span2_text']) == ('The trophy', 'it')
  with pytest.raises(FileNotFoundError, match='PROMPT_TUNING_SUPERGLUE_DIR'):
    examples('super_glue_cb_v102', 'train')  # CB/train.jsonl was not written
  assert isinstance(seqio.get_mixture_or_task('super_glue_rte_v102').source,
                    seqio.FunctionDataSource)


# --------------------------------------------------------- show_tasks ---


def _show_tasks():
  path = pathlib.Path(__file__).resolve().parents[1] / 'tools' / 'show_tasks.py'
  spec = importlib.util.spec_from_file_location('show_tasks', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_show_tasks(capsys, monkeypatch):
  show_tasks = _show_tasks()
  assert show_tasks.main(['wic_v102']) == 0
  listed = capsys.readouterr().out
  assert 'taskless_super_glue_wic_v102_sentinel' in listed and 'glue_rte' not in listed
  monkeypatch.setattr(show_tasks, 'check_prepared', lambda task: None)
  with tfds.testing.mock_data(as_dataset_fn=_as_dataset):
    assert show_tasks.main(['--task', 'taskless_super_glue_rte_v102', '-n', '1']) == 0
  shown = capsys.readouterr().out
  inputs = 'hypothesis: Dogs make noise. premise: Dogs bark loudly.'
  tokens = len(get_vocabulary().encode(inputs)) + 1
  assert f"inputs: '{inputs}'  ({tokens} tokens)" in shown
  assert "premise: 'Dogs bark loudly.'" in shown  # the raw example
  assert show_tasks.main(['--task', 'no_such_task']) == 2
  assert show_tasks.main(['--task', 'super_glue_axb_v102', '--split', 'train']) == 2
  assert show_tasks.main(['--task', 'super_glue_v102_proportional']) == 0
  assert 'super_glue_record_v102' in capsys.readouterr().out
