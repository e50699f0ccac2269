"""The LAMA-style knowledge probe (prompt_tuning/data/demo_probe.py).

Expected labels come from the world's facts (`demo_world.make_world(0)`),
expected texts and token ids are written out by hand.
"""
import numpy as np
import pytest
import seqio

from prompt_tuning.data import demo_probe
from prompt_tuning.data import demo_world
from prompt_tuning.data import vocab
from prompt_tuning.deltas import templates

WORLD = demo_world.make_world(0)
SPLITS = ('train', 'validation', 'test')
EOS = 1


def _examples(name, split):
  ds = seqio.get_mixture_or_task(name).get_dataset(
      demo_probe.TASK_FEATURE_LENGTHS, split=split, shuffle=False, seed=0)
  return list(ds.as_numpy_iterator())


@pytest.mark.parametrize('relation', demo_probe.RELATIONS)
def test_labels_are_the_world_s_facts_and_splits_cover_everyone_once(relation):
  seen = {}
  for split in SPLITS:
    for ex in _examples(f'demo_probe_{relation}_subject', split):
      name = ex['inputs_pretokenized'].decode()
      assert name not in seen, (name, split, seen.get(name))
      seen[name] = split
      assert ex['targets_pretokenized'].decode() == getattr(WORLD.person(name), relation)
  assert sorted(seen) == sorted(demo_world.NAMES)
  counts = {split: list(seen.values()).count(split) for split in SPLITS}
  assert counts == {'train': 24, 'validation': 8, 'test': 16}


def test_splits_are_fixed_and_drawn_per_relation():
  assert demo_probe.split_people('city') == demo_probe.split_people('city')
  tests = {r: demo_probe.split_people(r)['test'] for r in demo_probe.RELATIONS}
  assert len(set(tests.values())) == 4  # one shuffle per relation


@pytest.mark.parametrize('relation,text', [
    ('city', 'Anna lives in'), ('job', 'Anna works as a'), ('pet', 'Anna has a'),
    ('colour', 'The favourite colour of Anna is')])
def test_manual_prompt_is_a_corpus_sentence_cut_before_the_object(relation, text):
  assert demo_probe.prompt_text(relation, 'manual', 'Anna') == text
  # The world writes exactly this sentence with the object and a full stop.
  assert text.replace('Anna', '{n}') + ' {v}.' in demo_world._FACTS[relation]  # pylint: disable=protected-access


@pytest.mark.parametrize('form', demo_probe.FORMS)
def test_inputs_have_no_eos_and_targets_are_the_object_with_eos(form):
  v = vocab.get_vocabulary()
  for relation in demo_probe.RELATIONS:
    for ex in _examples(f'demo_probe_{relation}_{form}', 'validation'):
      assert EOS not in ex['inputs'].tolist()
      assert ex['inputs'].tolist() == v.encode(ex['inputs_pretokenized'].decode())
      obj = ex['targets_pretokenized'].decode()
      assert ex['targets'].tolist() == v.encode(obj) + [EOS]


def test_p_tuning_forms_carry_the_six_markers_in_order_around_the_subject():
  v = vocab.get_vocabulary()
  anna = v.encode('Anna')
  anchors = {'city': 'lives in', 'job': 'works as a', 'pet': 'has a', 'colour': 'likes'}
  for relation in demo_probe.RELATIONS:
    plain = v.encode(demo_probe.prompt_text(relation, 'p_tuning', 'Anna'))
    assert plain == [32099, 32098, 32097] + anna + [32096, 32095, 32094]
    anchored = v.encode(demo_probe.prompt_text(relation, 'p_tuning_anchor', 'Anna'))
    assert anchored == plain + v.encode(anchors[relation])
    # The text is what the delta's own template syntax writes.
    for form in ('p_tuning', 'p_tuning_anchor'):
      assert demo_probe.prompt_text(relation, form, 'Anna') == templates.as_text(
          demo_probe.template(relation, form), 'Anna')
  # And in the registered tasks, for every subject.
  for ex in _examples('demo_probe_pet_p_tuning_anchor', 'test'):
    ids = ex['inputs'].tolist()
    assert [i for i in ids if i >= 32000] == [32099, 32098, 32097, 32096, 32095, 32094]
    assert ids[:3] == [32099, 32098, 32097] and ids[-3:] == v.encode('has a')  # has, ▁, a


def test_feature_lengths_fit_every_example():
  v = vocab.get_vocabulary()
  longest = {'inputs': 0, 'targets': 0}
  for relation in demo_probe.RELATIONS:
    for form in demo_probe.FORMS:
      for split in SPLITS:
        for name in demo_probe.split_people(relation)[split]:
          longest['inputs'] = max(longest['inputs'], len(v.encode(
              demo_probe.prompt_text(relation, form, name))))
          longest['targets'] = max(longest['targets'], len(v.encode(
              getattr(WORLD.person(name), relation))) + 1)
  for key, length in longest.items():
    assert length <= demo_probe.TASK_FEATURE_LENGTHS[key], (key, length)


def test_multi_token_objects_are_the_five_the_docstring_names():
  v = vocab.get_vocabulary()
  multi = {o for values in demo_world.VALUES.values() for o in values if len(v.encode(o)) > 1}
  assert multi == {'Athens', 'Warsaw', 'baker', 'painter', 'parrot'}


def test_precision_at_1_by_hand():
  post = demo_probe.first_word
  predictions = [post(b'Paris. She works as a'), post('dog'), post('red, blue'),
                 post('At hens'), post('paris'), post('')]
  assert predictions == ['Paris', 'dog', 'red', 'At', 'paris', '']
  targets = ['Paris', 'cat', 'red', 'Athens', 'Paris', 'Rome']
  # Hits: Paris, red; 'At' is not Athens, case counts, an empty decode is wrong.
  assert demo_probe.precision_at_1(targets, predictions) == {
      'precision_at_1': pytest.approx(100 * 2 / 6)}
  with pytest.raises(ValueError, match='2 targets but 1 predictions'):
    demo_probe.precision_at_1(['a', 'b'], ['a'])


def test_metric_runs_through_the_task_s_postprocessor():
  task = seqio.get_mixture_or_task('demo_probe_city_manual')
  targets = [task.postprocess_fn(t, is_target=True) for t in ('Paris', 'Athens')]
  predictions = [task.postprocess_fn(p, is_target=False) for p in ('Paris. He', 'Athens!')]
  scores = [fn(targets, predictions) for fn in task.metric_fns]
  assert scores == [{'precision_at_1': 100.0}]


def test_decoder_features_are_one_sequence_with_loss_on_the_object_only():
  ex = _examples('demo_probe_city_manual', 'validation')[0]
  converter = seqio.DecoderFeatureConverter(pack=False)
  ds = seqio.get_mixture_or_task('demo_probe_city_manual').get_dataset(
      demo_probe.TASK_FEATURE_LENGTHS, split='validation', shuffle=False, seed=0)
  features = next(converter(ds, demo_probe.TASK_FEATURE_LENGTHS).as_numpy_iterator())
  n, m = len(ex['inputs']), len(ex['targets'])
  tokens = features['decoder_target_tokens']
  assert tokens[:n + m].tolist() == ex['inputs'].tolist() + ex['targets'].tolist()
  assert features['decoder_input_tokens'][0] == 0  # BOS
  assert np.array_equal(features['decoder_loss_weights'][:n + m], [0] * n + [1] * m)


def test_mixtures_hold_the_four_relations():
  for form in demo_probe.FORMS:
    mixture = seqio.get_mixture_or_task(f'demo_probe_{form}')
    assert sorted(t.name for t in mixture.tasks) == sorted(
        f'demo_probe_{r}_{form}' for r in ('city', 'job', 'pet', 'colour'))
  assert len(demo_probe.task_names()) == 16


def test_unknown_relation_form_or_split_is_a_one_line_error():
  with pytest.raises(ValueError, match="Unknown relation 'age'"):
    demo_probe.task_name('age', 'manual')
  with pytest.raises(ValueError, match="Unknown form 'cloze'"):
    demo_probe.prompt_text('city', 'cloze', 'Anna')
  with pytest.raises(ValueError, match="Unknown split 'dev'"):
    demo_probe.facts('city', 'dev')
