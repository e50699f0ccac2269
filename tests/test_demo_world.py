"""The demo world: a deterministic corpus, tasks whose labels are the world's
truth, and both pre-training objectives on demo text worked by hand."""
import re

import numpy as np
import pytest
import seqio
import tensorflow as tf

from prompt_tuning.data import demo_tasks
from prompt_tuning.data import demo_world
from prompt_tuning.data import lm_preprocessors as lp
from prompt_tuning.data import vocab

WORLD = demo_world.make_world(0)
S0 = vocab.sentinel_id(0)


def test_corpus_is_a_function_of_seed_and_split():
  first = demo_world.corpus(demo_world.make_world(0), 'train', 200)
  again = demo_world.corpus(demo_world.make_world(0), 'train', 200)
  assert first == again
  assert demo_world.make_world(0) == demo_world.make_world(0)
  assert demo_world.make_world(1) != demo_world.make_world(0)
  assert demo_world.corpus(demo_world.make_world(1), 'train', 200) != first
  assert demo_world.corpus(WORLD, 'validation', 200) != first
  # A longer corpus extends a shorter one (documents are drawn in sequence).
  assert demo_world.corpus(WORLD, 'train', 300)[:200] == first
  assert demo_world.boolq_examples(WORLD, 'train', 50) == demo_world.boolq_examples(
      demo_world.make_world(0), 'train', 50)


def test_unknown_split_is_an_error():
  with pytest.raises(ValueError, match='Unknown split'):
    demo_world.corpus(WORLD, 'dev', 3)


def _claim(text):
  """(name, attribute, value) of a question or hypothesis, found by words."""
  words = set(re.findall(r'[A-Za-z]+', text))
  [name] = [n for n in demo_world.NAMES if n in words]
  [(attribute, value)] = [(a, v) for a, values in
                          (('city', demo_world.CITIES), ('job', demo_world.JOBS),
                           ('pet', demo_world.PETS), ('colour', demo_world.COLOURS))
                          for v in values if v in words]
  return name, attribute, value


def test_corpus_never_contradicts_the_world():
  # Every "NAME lives in CITY." style sentence of a profile agrees with the world.
  lives = re.compile(r'\b([A-Z][a-z]+) lives in (?:the city of )?([A-Z][a-z]+)\.')
  checked = 0
  for doc in demo_world.corpus(WORLD, 'train', 500):
    for name, city in lives.findall(doc):
      if name in demo_world.NAMES:
        assert WORLD.person(name).city == city, doc
        checked += 1
  assert checked > 50


def test_boolq_labels_are_the_world_s_truth_and_balanced():
  examples = demo_world.boolq_examples(WORLD, 'validation', 1000)
  for ex in examples:
    name, attribute, value = _claim(ex['question'])
    assert ex['label'] == int(WORLD.person(name).value(attribute) == value), ex
    assert name in ex['passage']
    # The passage states the asked attribute: the true value is in it.
    assert WORLD.person(name).value(attribute) in ex['passage']
  assert 0.45 < np.mean([ex['label'] for ex in examples]) < 0.55


def test_rte_labels_are_the_world_s_truth():
  examples = demo_world.rte_examples(WORLD, 'validation', 500)
  for ex in examples:
    name, attribute, value = _claim(ex['hypothesis'])
    entailed = WORLD.person(name).value(attribute) == value
    assert ex['label'] == (0 if entailed else 1), ex
  assert 0.4 < np.mean([ex['label'] for ex in examples]) < 0.6


def _first(name, split='validation'):
  ds = seqio.get_mixture_or_task(name).get_dataset(
      demo_tasks.CLASSIFICATION_LENGTHS, split=split, shuffle=False)
  return next(ds.as_numpy_iterator())


def test_tasks_have_superglue_form():
  row = demo_world.boolq_examples(WORLD, 'validation', 1)[0]
  label = demo_world.BOOLQ_LABELS[row['label']]
  t5 = _first('demo_world_boolq')
  assert t5['inputs_pretokenized'].decode() == (
      f'boolq passage: {row["passage"]} question: {row["question"]}')
  assert t5['targets_pretokenized'].decode() == label
  taskless = _first('taskless_demo_world_boolq')
  assert taskless['inputs_pretokenized'].decode() == (
      f'passage: {row["passage"]} question: {row["question"]}')
  sentinel = _first('taskless_demo_world_boolq_sentinel')
  assert sentinel['targets'][0] == S0
  rte = demo_world.rte_examples(WORLD, 'validation', 1)[0]
  assert _first('demo_world_rte')['inputs_pretokenized'].decode() == (
      f'rte hypothesis: {rte["hypothesis"]} premise: {rte["premise"]}')


def test_classification_lengths_fit_every_example():
  v = vocab.get_vocabulary()
  for split, size in demo_tasks.TASK_SIZES.items():
    for ex in demo_world.boolq_examples(WORLD, split, size):
      text = f'boolq passage: {ex["passage"]} question: {ex["question"]}'
      assert len(v.encode(text)) + 1 <= demo_tasks.CLASSIFICATION_LENGTHS['inputs']
  for split, size in demo_tasks.TASK_SIZES.items():
    for ex in demo_world.genre_examples(WORLD, split, size):
      assert len(v.encode(f'genre text: {ex["text"]}')) + 1 <= (
          demo_tasks.CLASSIFICATION_LENGTHS['inputs'])
  assert len(v.encode('not_entailment')) + 1 <= demo_tasks.CLASSIFICATION_LENGTHS['targets']


def test_genre_labels_name_the_kind_of_document():
  examples = demo_world.genre_examples(WORLD, 'validation', 400)
  for ex in examples:
    genre, text = demo_world.GENRES[ex['label']], ex['text']
    # Hand-written marks of each kind: letters open with 'Dear', quizzes end
    # with a yes/no answer, stories start with a meeting or a visit.
    assert text.startswith('Dear ') == (genre == 'letter'), ex
    assert bool(re.search(r'\? (yes|no|Yes|No)\.$', text)) == (genre == 'quiz'), ex
    if genre == 'story':
      assert re.search(r'\b(visited|travelled|met)\b', text.split('.')[0]), ex
  counts = np.bincount([ex['label'] for ex in examples], minlength=4)
  assert counts.min() > 70  # balanced: 100 each on average


def test_kind_pair_tasks_hold_only_their_two_kinds_labelled_by_name():
  task = seqio.get_mixture_or_task('taskless_demo_world_genre_letter_quiz')
  lengths = demo_tasks.CLASSIFICATION_LENGTHS
  targets = []
  for ex in task.get_dataset(lengths, split='validation', shuffle=False).take(200):
    target, text = ex['targets_pretokenized'].numpy().decode(), ex['inputs_pretokenized'].numpy().decode()
    # The marks of the genre test above: letters open with 'Dear', quizzes end with an answer.
    assert text.startswith('text: Dear ') == (target == 'letter'), text
    assert bool(re.search(r'\? (yes|no|Yes|No)\.$', text)) == (target == 'quiz'), text
    targets.append(target)
  assert 80 < targets.count('letter') < 120
  with pytest.raises(ValueError, match='two different kinds'):
    demo_world.kind_pair_examples(WORLD, 'train', 1, ('letter', 'letter'))


def test_corpus_names_the_kind_of_half_its_documents_and_the_task_never_does():
  # The frozen model learns the genre task's label words from these mentions;
  # the task's own texts must not contain them, or the task would be copying.
  mention = re.compile(r'^(?:A|The) (profile|story|letter|quiz|faq): |'
                       r' (?:This is a|That was a) (profile|story|letter|quiz|faq)\.$|'
                       r' \(a (profile|story|letter|quiz|faq)\)$')
  docs = demo_world.corpus(WORLD, 'train', 1000)
  named = [m for m in map(mention.search, docs) if m]
  assert 400 < len(named) < 600
  # Each mention names the document's real kind, told by its marks.
  for doc in docs:
    m = mention.search(doc)
    if m and 'letter' in m.groups():
      assert 'Dear ' in doc
    if m and 'quiz' in m.groups():
      assert re.search(r'\? (yes|no|Yes|No)\.', doc)
  for ex in demo_world.genre_examples(WORLD, 'train', 1000):
    assert not mention.search(ex['text']), ex


def test_span_corruption_of_a_demo_sentence_by_hand():
  v = vocab.get_vocabulary()
  tokens = v.encode('Anna lives in Paris.')
  pieces = [v.tokenizer.id_to_piece(t) for t in tokens]
  assert pieces == ['▁Anna', '▁lives', '▁in', '▁Paris', '.']
  mask = np.array([0, 1, 1, 0, 1], bool)  # noise: "lives in", "."
  inputs, targets = lp.corrupt_spans(tf.constant(tokens), tf.constant(mask), S0)
  anna, lives, in_, paris, period = tokens
  s1 = vocab.sentinel_id(1)
  assert inputs.numpy().tolist() == [anna, S0, paris, s1]
  assert targets.numpy().tolist() == [S0, lives, in_, s1, period]


def test_prefix_lm_of_a_demo_document_splits_it_without_loss():
  doc = demo_world.corpus(WORLD, 'validation', 1)[0]
  v = vocab.get_vocabulary()
  ds = seqio.get_mixture_or_task('demo_world_prefix_lm').get_dataset(
      demo_tasks.LM_LENGTHS, split='validation', shuffle=False, seed=0)
  ex = next(ds.as_numpy_iterator())
  inputs, targets = ex['inputs'][:-1].tolist(), ex['targets'][:-1].tolist()
  assert inputs and targets
  # inputs + targets is the document's first 63 tokens, cut in two.
  assert inputs + targets == v.encode(doc)[:demo_tasks.LM_LENGTHS['inputs'] - 1]


def test_lm_task_is_each_whole_document_with_eos_and_no_inputs():
  docs = demo_world.corpus(WORLD, 'validation', 3)
  v = vocab.get_vocabulary()
  ds = seqio.get_mixture_or_task(demo_tasks.LM).get_dataset(
      demo_tasks.LM_FEATURE_LENGTHS, split='validation', shuffle=False, seed=0)
  examples = list(ds.take(3).as_numpy_iterator())
  for doc, ex in zip(docs, examples):
    assert 'inputs' not in ex  # a causal LM: the converter makes [BOS, targets]
    assert ex['targets'].tolist() == v.encode(doc) + [1]  # EOS is id 1


def test_lm_length_keeps_every_corpus_document_whole():
  v = vocab.get_vocabulary()
  for split, size in demo_tasks.CORPUS_SIZES.items():
    lengths = [len(ids) + 1 for ids in v.tokenizer.encode(demo_world.corpus(WORLD, split, size))]
    assert max(lengths) <= demo_tasks.LM_TARGETS_LENGTH, split


def test_decoder_only_pretraining_recipe_is_the_lm_task_on_a_4_layer_d128_model():
  import gin  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from prompt_tuning import gin_utils  # pylint: disable=g-import-not-at-top
  from prompt_tuning.model import contract  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    gin_utils.parse_gin(['gin/demo/model_decoder_only_s.gin', 'gin/demo/pretrain_decoder_only.gin'],
                        ["MODEL_DIR = '/tmp/unused'"])
    assert gin_utils.macro('MIXTURE_OR_TASK_NAME') == demo_tasks.LM
    assert gin_utils.macro('TASK_FEATURE_LENGTHS') == demo_tasks.LM_FEATURE_LENGTHS
    assert gin_utils.macro('INITIAL_CHECKPOINT_PATH') is None  # from scratch
    assert gin_utils.macro('TRAINABLE') == ['params/.*']
    config = gin_utils.macro('MODEL_CONFIG')
  finally:
    gin.clear_config()
  model = contract.build(config)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *contract.of(model).init_args(
      demo_tasks.LM_FEATURE_LENGTHS)))['params']
  count = sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(shapes))
  # By hand: tied vocabulary 32128 x 128; per layer q, k, v, o 4 x 128^2, gated
  # MLP 3 x 128 x 256 and two norms of 128; a final norm; one shared relative
  # position bias of 32 buckets x 4 heads.
  assert count == 32128 * 128 + 4 * (4 * 128 ** 2 + 3 * 128 * 256 + 2 * 128) + 128 + 32 * 4
