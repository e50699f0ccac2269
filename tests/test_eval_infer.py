"""The eval and infer commands: checkpoints, prompt files, ensembles, scores, bad input."""
import json
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import cli
from prompt_tuning import gin_utils
from prompt_tuning.deltas import PromptTuning
from prompt_tuning.infer import bank as bank_lib
from prompt_tuning.infer import batch_infer, checkpoint_eval, loading
from prompt_tuning.model import SIZES, Transformer, compute_weighted_cross_entropy
from prompt_tuning.model import hf_checkpoint, load_pretrained
from prompt_tuning.model.checkpoints import (DeltaCheckpointer, FingerprintMismatchError,
                                             fingerprint)

REPO = pathlib.Path(__file__).resolve().parents[1]
TESTS = REPO / 'tests'
TASK = 'fixture_sentiment'
LENGTHS = {'inputs': 16, 'targets': 4}
STEPS = (10, 20, 30)
PROMPT_LENGTH = 5
if str(TESTS) not in sys.path:
  sys.path.insert(0, str(TESTS))
import fixture_tasks  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope='module')
def base(tmp_path_factory):
  """Our `tiny` preset with random weights, as a Hugging Face folder: (path, params)."""
  tokens = np.ones((1, 8), np.int32)
  params = nn.unbox(Transformer(SIZES['tiny']).init(jax.random.PRNGKey(0), tokens, tokens,
                                                    tokens)['params'])
  params = jax.tree_util.tree_map(np.asarray, params)
  path = str(tmp_path_factory.mktemp('base') / 'hf')
  hf_checkpoint.write_hf_t5(SIZES['tiny'], params, path)
  return path, load_pretrained(path)[1]


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory, base):
  """A model directory with delta checkpoints at STEPS, each a different random prompt.

  Their metadata is the format written before deltas existed (no `deltas`,
  `trainable_collections`): the loader must still rebuild their prompt.
  """
  path, params = base
  model_dir = tmp_path_factory.mktemp('run')
  checkpointer = DeltaCheckpointer(str(model_dir), keep=None)
  rng = np.random.RandomState(0)
  delta = PromptTuning(length=PROMPT_LENGTH)
  for step in STEPS:
    trainable = delta.with_prompt({}, rng.normal(0, 2.0, (PROMPT_LENGTH, 64)).astype(np.float32))
    checkpointer.save(step, {'step': np.int32(step), 'trainable': trainable,
                             'opt_state': {'v': np.zeros((PROMPT_LENGTH,), np.float32)}},
                      {'base_checkpoint': path, 'base_fingerprint': fingerprint(params),
                       'base_step': 0, 'trainable_collections': ['prompt']},
                      export=lambda directory, t=trainable: delta.export(t, directory))
  checkpointer.close()
  return model_dir


def _bindings(**macros):
  return [f'{name} = {value!r}' for name, value in macros.items()]


def _evaluate(output_dir, **macros):
  """evaluate_checkpoints() as `python -m prompt_tuning.eval` configures it."""
  gin_utils.parse_gin(['gin/models/t5_1_1/tiny.gin', 'gin/runs/eval.gin'], _bindings(
      EVAL_OUTPUT_DIR=str(output_dir), MIXTURE_OR_TASK_NAME=TASK, BATCH_SIZE=16,
      TASK_FEATURE_LENGTHS=LENGTHS, **macros))
  return checkpoint_eval.evaluate_checkpoints()


def _metrics_lines(output_dir):
  text = (pathlib.Path(output_dir) / f'{TASK}-metrics.jsonl').read_text()
  return [json.loads(line) for line in text.splitlines()]


def _predictions(output_dir, step):
  """The predictions seqio's logger wrote, in dataset order."""
  path = pathlib.Path(output_dir) / f'{TASK}-{step:06}.jsonl'
  return [json.loads(line)['prediction'] for line in path.read_text().splitlines()]


@pytest.fixture(scope='module')
def directory_eval(run_dir, tmp_path_factory):
  """Every checkpoint of run_dir, decoded: (output dir, {step: metrics})."""
  output_dir = tmp_path_factory.mktemp('eval_all')
  results = _evaluate(output_dir, CHECKPOINT_PATH=str(run_dir))
  gin.clear_config()
  return output_dir, results


def test_directory_evaluates_every_checkpoint_in_step_order(directory_eval):
  output_dir, results = directory_eval
  lines = _metrics_lines(output_dir)
  assert [line['step'] for line in lines] == list(STEPS)
  assert all('accuracy' in line for line in lines)
  assert sorted(results) == list(STEPS)
  for step in STEPS:
    assert len(_predictions(output_dir, step)) == 32


def test_one_checkpoint_and_its_prompt_file(directory_eval, run_dir, base, tmp_path):
  output_dir, results = directory_eval
  single = _evaluate(tmp_path / 'one', CHECKPOINT_PATH=str(run_dir / 'checkpoint_20'))
  assert [line['step'] for line in _metrics_lines(tmp_path / 'one')] == [20]
  assert single[20] == results[20]
  assert _predictions(tmp_path / 'one', 20) == _predictions(output_dir, 20)

  # The .npy written beside the checkpoint, on the base named explicitly.
  gin.clear_config()
  from_file = _evaluate(tmp_path / 'npy', CHECKPOINT_PATH=str(run_dir / 'checkpoint_20' /
                                                               'prompt.npy'),
                        INITIAL_CHECKPOINT_PATH=base[0])
  assert from_file[None] == results[20]
  assert _predictions(tmp_path / 'npy', -1) == _predictions(output_dir, 20)


def test_ensemble_of_one_prompt_twice_is_that_prompt(directory_eval, run_dir, tmp_path):
  output_dir, results = directory_eval
  twice = _evaluate(tmp_path, PROMPT_FILES=[str(run_dir / 'checkpoint_20')] * 2)
  assert twice[None] == results[20]
  assert _predictions(tmp_path, -1) == _predictions(output_dir, 20)


def test_ensemble_of_three_is_their_majority_vote(directory_eval, run_dir, tmp_path):
  output_dir, _ = directory_eval
  order = (20, 10, 30)  # prompt 0 (the tie-breaker) is the one most often outvoted
  checkpoints = [str(run_dir / f'checkpoint_{step}') for step in order]
  _evaluate(tmp_path / 'decode', PROMPT_FILES=checkpoints)
  separate = [_predictions(output_dir, step) for step in order]
  voted = bank_lib.majority_vote([p for row in zip(*separate) for p in row], 3)
  assert _predictions(tmp_path / 'decode', -1) == voted

  # Rank classification: 2 labels, so 3 voters always have a strict majority.
  labels = ['positive', 'negative']
  gin.clear_config()
  singles = _evaluate(tmp_path / 'rank_single', CHECKPOINT_PATH=str(run_dir),
                      RANK_CLASSIFICATION_LABELS=labels)
  gin.clear_config()
  ensemble = _evaluate(tmp_path / 'rank_ensemble', PROMPT_FILES=checkpoints,
                       RANK_CLASSIFICATION_LABELS=labels)
  separate = [_predictions(tmp_path / 'rank_single', step) for step in order]
  voted = bank_lib.majority_vote([p for row in zip(*separate) for p in row], 3)
  assert _predictions(tmp_path / 'rank_ensemble', -1) == voted
  assert any(v != s for v, s in zip(voted, separate[0]))  # the vote really decides
  targets = [t for _, t in fixture_tasks._examples('validation', 32)]  # pylint: disable=protected-access
  accuracy = 100.0 * np.mean([v == t for v, t in zip(voted, targets)])
  assert ensemble[None][TASK]['accuracy'] == pytest.approx(accuracy)
  assert len({s[TASK]['accuracy'] for s in singles.values()}) > 1


def _run(module, *args):
  env = dict(os.environ, PYTHONPATH=f'{TESTS}{os.pathsep}{os.environ.get("PYTHONPATH", "")}')
  return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, env=env,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                        timeout=600, check=False)


def test_infer_cli_predicts_every_validation_example(directory_eval, run_dir, tmp_path):
  output_dir, _ = directory_eval
  proc = _run('prompt_tuning.infer', '--gin_file=gin/models/t5_1_1/tiny.gin',
              '--gin_file=gin/runs/infer.gin', f"--gin.CHECKPOINT_PATH='{run_dir}'",
              f"--gin.INFER_OUTPUT_DIR='{tmp_path}'",
              "--gin.MIXTURE_OR_TASK_NAME='fixture_sentiment_mixture'",
              "--gin.MIXTURE_OR_TASK_MODULE='fixture_tasks'", '--gin.BATCH_SIZE=16',
              f'--gin.TASK_FEATURE_LENGTHS={LENGTHS}')
  assert proc.returncode == 0, proc.stdout[-3000:]
  examples = list(fixture_tasks._examples('validation', 32))  # pylint: disable=protected-access
  for task in (TASK, 'fixture_sentiment_shouted'):  # one file per task of the mixture
    lines = (tmp_path / f'{task}-validation-predict.jsonl').read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r['inputs'], r['targets']) for r in records] == examples
    # The latest checkpoint's greedy decoding, as the eval command decoded it.
    assert [r['prediction'] for r in records] == _predictions(output_dir, STEPS[-1])
    if task == TASK:  # no postprocessor
      assert all('postprocessed_prediction' not in r for r in records)
    else:
      assert all(r['postprocessed_prediction'] == r['prediction'].upper() for r in records)


def _infer_scores(output_dir, **macros):
  gin_utils.parse_gin(['gin/models/t5_1_1/tiny.gin', 'gin/runs/infer.gin'], _bindings(
      INFER_OUTPUT_DIR=str(output_dir), MIXTURE_OR_TASK_NAME=TASK, BATCH_SIZE=16,
      TASK_FEATURE_LENGTHS=LENGTHS, INFER_MODE='score', **macros))
  path = batch_infer.infer()[TASK]
  return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


def test_infer_scores_are_minus_the_teacher_forced_loss(run_dir, base, tmp_path):
  records = _infer_scores(tmp_path, CHECKPOINT_PATH=str(run_dir / 'checkpoint_10'))
  assert len(records) == 32

  # Independently: the checkpoint's prompt on the base, T5X's loss per example.
  prompt = np.load(run_dir / 'checkpoint_10' / 'prompt.npy')
  model = Transformer(SIZES['tiny'], deltas=(PromptTuning(length=PROMPT_LENGTH),))
  variables = {'params': base[1], 'prompt': {'prompt': {'prompt': prompt}}}
  vocabulary = fixture_tasks.VOCABULARY
  examples = list(fixture_tasks._examples('validation', 32))  # pylint: disable=protected-access
  assert [(r['inputs'], r['targets']) for r in records] == examples

  def padded(texts):
    ids = [vocabulary.encode(text) + [1] for text in texts]
    out = np.zeros((len(ids), max(map(len, ids))), np.int32)
    for row, tokens in enumerate(ids):
      out[row, :len(tokens)] = tokens
    return jnp.asarray(out)

  enc, tgt = padded([e[0] for e in examples]), padded([e[1] for e in examples])
  dec = jnp.concatenate([jnp.zeros_like(tgt[:, :1]), tgt[:, :-1]], axis=1)
  logits = jax.jit(model.apply)(variables, enc, dec, tgt)
  # T5X's loss (no z-loss), one example at a time.
  losses = [float(compute_weighted_cross_entropy(logits[i:i + 1], tgt[i:i + 1], z_loss=0.0)[0])
            for i in range(len(examples))]
  np.testing.assert_allclose([r['score'] for r in records], -np.asarray(losses),
                             rtol=1e-5, atol=1e-4)

  # An ensemble's score is the mean of its prompts' scores.
  gin.clear_config()
  other = _infer_scores(tmp_path / 'other', CHECKPOINT_PATH=str(run_dir / 'checkpoint_30'))
  gin.clear_config()
  both = _infer_scores(tmp_path / 'both', PROMPT_FILES=[str(run_dir / 'checkpoint_10'),
                                                        str(run_dir / 'checkpoint_30')])
  np.testing.assert_allclose([r['score'] for r in both],
                             [(a['score'] + b['score']) / 2 for a, b in zip(records, other)],
                             rtol=1e-5)
  # The same ensemble served 5 rows at a time inside each pass (32 rows per
  # batch of 16 x 2 members: passes of 5, the last one padded).
  gin.clear_config()
  chunked = _infer_scores(tmp_path / 'chunked', ROWS_PER_PASS=5, PROMPT_FILES=[
      str(run_dir / 'checkpoint_10'), str(run_dir / 'checkpoint_30')])
  np.testing.assert_allclose([r['score'] for r in chunked], [r['score'] for r in both],
                             rtol=1e-5)


# -- bad input ------------------------------------------------------------------


def test_a_base_with_another_fingerprint_is_refused(run_dir, base, tmp_path):
  other = jax.tree_util.tree_map(lambda x: x * 1.5, base[1])
  hf_checkpoint.write_hf_t5(SIZES['tiny'], other, str(tmp_path / 'other'))
  loader = loading.VariableLoader(Transformer(SIZES['tiny']), str(tmp_path / 'other'))
  with pytest.raises(FingerprintMismatchError, match='fingerprint'):
    loader.checkpoint(str(run_dir / 'checkpoint_10'))
  with pytest.raises(FingerprintMismatchError, match='fingerprint'):
    loader.members([str(run_dir / 'checkpoint_10')])


def test_prompts_of_different_shapes_are_refused(run_dir, base, tmp_path):
  bad = tmp_path / 'long.npy'
  np.save(bad, np.zeros((PROMPT_LENGTH + 2, 64), np.float32))
  loader = loading.VariableLoader(Transformer(SIZES['tiny']), base[0])
  with pytest.raises(ValueError, match=r'one shape.*\(5, 64\).*long.npy \(7, 64\)'):
    loader.members([str(run_dir / 'checkpoint_10' / 'prompt.npy'), str(bad)])


def test_missing_checkpoints_and_bases_are_named(run_dir, tmp_path):
  loader = loading.VariableLoader(Transformer(SIZES['tiny']))
  with pytest.raises(FileNotFoundError, match='checkpoint_5 does not exist'):
    loader.checkpoint(str(run_dir / 'checkpoint_5'))
  with pytest.raises(FileNotFoundError, match='nowhere.*does not exist'):
    loader.load(str(tmp_path / 'nowhere'))
  with pytest.raises(FileNotFoundError, match='nowhere.npy does not exist'):
    loader.load(prompt_files=[str(tmp_path / 'nowhere.npy')])
  with pytest.raises(gin_utils.ConfigurationError, match='INITIAL_CHECKPOINT_PATH'):
    loader.load(str(run_dir / 'checkpoint_10' / 'prompt.npy'))
  with pytest.raises(gin_utils.ConfigurationError, match='exactly one'):
    loader.load()


def test_configuration_errors_exit_with_one_line(tmp_path):
  parse = lambda: gin_utils.parse_gin(['gin/models/t5_1_1/tiny.gin', 'gin/runs/eval.gin'],
                                      _bindings(MIXTURE_OR_TASK_NAME=TASK))
  with pytest.raises(SystemExit, match='Configuration error: .*EVAL_OUTPUT_DIR'):
    cli.call_reporting_configuration_errors(parse)
  missing = lambda: loading.VariableLoader(None).checkpoint(str(tmp_path / 'checkpoint_1'))
  with pytest.raises(SystemExit, match='Configuration error: .*does not exist'):
    cli.call_reporting_configuration_errors(missing)
  with pytest.raises(ZeroDivisionError):  # a bug still shows its traceback
    cli.call_reporting_configuration_errors(lambda: 1 / 0)


def test_rank_classification_labels_may_hold_a_sentinel():
  from prompt_tuning.data import demo_tasks  # pylint: disable=g-import-not-at-top,unused-import
  from prompt_tuning.data import vocab  # pylint: disable=g-import-not-at-top
  from prompt_tuning.infer.evaluation import InferenceEvaluator  # pylint: disable=g-import-not-at-top
  v = vocab.get_vocabulary()
  evaluator = InferenceEvaluator(
      'taskless_demo_world_boolq_sentinel', {'inputs': 8, 'targets': 4}, 2,
      rank_classification_labels=['<extra_id_0> no', 'yes'])
  # By hand: sentinel 0 is the last real id, 32099; then the word's pieces, EOS.
  assert evaluator._label_tokens() == [[32099] + v.encode('no') + [1], v.encode('yes') + [1]]
