"""Issue 16, items 6-9: validated configuration, finite inputs, reported truncation, one-line errors.

Each case runs the real command (`python -m prompt_tuning.train / infer`)
where a user would meet it, and checks the one line it ends with (no
traceback). Checks that need to look inside (a NaN score, a bank) run in
process. Disk full is faked with RLIMIT_FSIZE in the child process: a write
past the limit fails with EFBIG, as a full disk fails with ENOSPC, and the
command must say so in one line.
"""
import json
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from prompt_tuning.deltas import PromptTuning, initializers
from prompt_tuning.infer import bank as bank_lib
from prompt_tuning.infer import batch_infer, loading, predict
from prompt_tuning.model import SIZES, T5Config, Transformer, hf_checkpoint
from prompt_tuning.model.checkpoints import DeltaCheckpointer, fingerprint

from model_gins import model_gin  # tests/, on the path as pytest's rootdir

REPO = pathlib.Path(__file__).resolve().parents[1]
TESTS = REPO / 'tests'
TASK = 'fixture_sentiment'
LENGTHS = {'inputs': 16, 'targets': 4}
TINY_T5X_GIN = model_gin(T5Config(emb_dim=4, num_heads=2, num_encoder_layers=2,
                                  num_decoder_layers=2, head_dim=2, mlp_dim=8,
                                  dropout_rate=0.0, relative_attention_num_buckets=4))


# The command with writes past 4 KiB failing with EFBIG (SIGXFSZ ignored, else
# it kills the process); set in the child itself, not by forking this one.
_LIMITED = ('import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); '
            'resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)); sys.argv[0] = "{0}"; '
            'runpy.run_module("{0}", run_name="__main__", alter_sys=True)')


def _run(module, *args, limit_file_size=False):
  env = dict(os.environ, PYTHONPATH=f'{TESTS}{os.pathsep}{os.environ.get("PYTHONPATH", "")}')
  command = ['-c', _LIMITED.format(module)] if limit_file_size else ['-m', module]
  return subprocess.run([sys.executable, *command, *args], cwd=REPO, env=env,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                        timeout=600, check=False)


def _one_line_error(proc, prefix):
  """The error line, after checking the command failed with it and no traceback."""
  assert proc.returncode != 0, proc.stdout[-3000:]
  assert 'Traceback' not in proc.stdout, proc.stdout[-3000:]
  lines = [line for line in proc.stdout.splitlines() if line.startswith(prefix)]
  assert lines, proc.stdout[-3000:]
  return lines[-1]


# -- fixtures --------------------------------------------------------------------


@pytest.fixture(scope='module')
def tiny_gin(tmp_path_factory):
  path = tmp_path_factory.mktemp('gin') / 'tiny_t5x.gin'
  path.write_text(TINY_T5X_GIN)
  return str(path)


@pytest.fixture(scope='module')
def base_params():
  tokens = np.ones((1, 8), np.int32)
  params = nn.unbox(Transformer(SIZES['tiny']).init(jax.random.PRNGKey(0), tokens, tokens,
                                                    tokens)['params'])
  return jax.tree_util.tree_map(np.asarray, params)


@pytest.fixture(scope='module')
def base(tmp_path_factory, base_params):
  """Our `tiny` preset with random weights, as a Hugging Face folder."""
  path = str(tmp_path_factory.mktemp('base') / 'hf')
  hf_checkpoint.write_hf_t5(SIZES['tiny'], base_params, path)
  return path


@pytest.fixture(scope='module')
def prompt_file(tmp_path_factory):
  path = tmp_path_factory.mktemp('prompt') / 'prompt.npy'
  np.save(path, np.random.RandomState(0).normal(0, 1, (5, 64)).astype(np.float32))
  return str(path)


def _train_args(tiny_gin, shared_data, model_dir, *extra):
  base_checkpoint = shared_data / 't5x_t5_1_1_tiny' / 'checkpoint_3'
  return [f'--gin_file={tiny_gin}', '--gin_file=gin/prompts/random_uniform.gin',
          '--gin_file=gin/runs/prompt_tune.gin', f"--gin.MODEL_DIR='{model_dir}'",
          f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'", "--gin.MIXTURE_OR_TASK_MODULE='fixture_tasks'",
          f"--gin.INITIAL_CHECKPOINT_PATH='{base_checkpoint}'", '--gin.TRAIN_STEPS=4',
          '--gin.BATCH_SIZE=8', f'--gin.TASK_FEATURE_LENGTHS={LENGTHS}',
          '--gin.LOG_PERIOD=1', '--gin.EVAL_PERIOD=None', '--gin.PROMPT_LENGTH=5', *extra]


def _infer_args(output_dir, *extra, lengths=None):
  return ['--gin_file=gin/models/t5_1_1/tiny.gin', '--gin_file=gin/runs/infer.gin',
          f"--gin.INFER_OUTPUT_DIR='{output_dir}'", f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
          "--gin.MIXTURE_OR_TASK_MODULE='fixture_tasks'", '--gin.BATCH_SIZE=8',
          f'--gin.TASK_FEATURE_LENGTHS={lengths or LENGTHS}', "--gin.INFER_MODE='score'",
          '--gin_bindings=batch_infer.infer.num_examples = 8', *extra]


# -- 6. configuration validated before any heavy work --------------------------


def test_misspelled_macro_is_refused_with_the_nearest_name(tmp_path, tiny_gin, shared_data):
  proc = _run('prompt_tuning.train', *_train_args(tiny_gin, shared_data, tmp_path / 'run',
                                                  '--gin.TRAIN_STEP=5'))
  line = _one_line_error(proc, 'Configuration error:')
  assert 'unknown macro TRAIN_STEP' in line and 'did you mean TRAIN_STEPS?' in line
  assert not (tmp_path / 'run').exists()  # refused before anything was written


@pytest.mark.parametrize('flag, expected', [
    ("--gin.TRAIN_STEPS='abc'", "TRAIN_STEPS must be a whole number, not the string 'abc'"),
    ('--gin.TRAIN_STEPS=7.5', 'TRAIN_STEPS must be a whole number, not 7.5'),
    ('--gin.CHECKPOINT_PERIOD=0', 'CHECKPOINT_PERIOD must be at least 1, not 0'),
    ('--gin.BATCH_SIZE=0', 'BATCH_SIZE must be at least 1, not 0'),
    ('--gin.MODEL_DIR=/tmp/unquoted', 'strings need quotes'),
    ('MODEL_DIR_IS_A_FILE', 'is a file, not a directory'),
    ('MODEL_DIR_UNDER_A_FILE', 'cannot be created'),
])
@pytest.mark.slow  # a CLI process each (about 10 s)
def test_bad_values_are_named_in_one_line(tmp_path, tiny_gin, shared_data, flag, expected):
  afile = tmp_path / 'afile'
  afile.write_text('not a directory')
  flag = {'MODEL_DIR_IS_A_FILE': f"--gin.MODEL_DIR='{afile}'",
          'MODEL_DIR_UNDER_A_FILE': f"--gin.MODEL_DIR='{afile}/run'"}.get(flag, flag)
  proc = _run('prompt_tuning.train', *_train_args(tiny_gin, shared_data, tmp_path / 'run', flag))
  assert expected in _one_line_error(proc, 'Configuration error:')


# -- 7. non-finite values refused at load; no NaN written ------------------------


@pytest.mark.slow  # a CLI process each (about 10 s)
def test_nan_in_the_base_is_refused_at_load(tmp_path, base_params, prompt_file):
  params = jax.tree_util.tree_map(np.copy, base_params)
  params['token_embedder']['embedding'][3, 7] = np.nan
  hf_checkpoint.write_hf_t5(SIZES['tiny'], params, str(tmp_path / 'nan_base'))
  proc = _run('prompt_tuning.infer', *_infer_args(
      tmp_path / 'out', f"--gin.CHECKPOINT_PATH='{prompt_file}'",
      f"--gin.INITIAL_CHECKPOINT_PATH='{tmp_path / 'nan_base'}'"))
  line = _one_line_error(proc, 'Checkpoint error:')
  assert 'nan_base' in line and 'token_embedder/embedding: 1 of' in line


@pytest.mark.slow  # a CLI process each (about 10 s)
def test_nan_in_a_prompt_file_is_refused(tmp_path, base):
  bad = tmp_path / 'nan_prompt.npy'
  np.save(bad, np.full((5, 64), np.inf, np.float32))
  proc = _run('prompt_tuning.infer', *_infer_args(
      tmp_path / 'out', f"--gin.CHECKPOINT_PATH='{bad}'", f"--gin.INITIAL_CHECKPOINT_PATH='{base}'"))
  line = _one_line_error(proc, 'Checkpoint error:')
  assert 'nan_prompt.npy' in line and '320 of 320' in line
  # The same file as a training initializer (gin/prompts/from_file.gin).
  from prompt_tuning.model.finite import NonFiniteError  # pylint: disable=g-import-not-at-top
  with pytest.raises(NonFiniteError, match='nan_prompt.npy'):
    initializers.from_file(str(bad))


def test_nan_in_a_delta_checkpoint_and_a_bank_is_refused(tmp_path, base, base_params):
  checkpointer = DeltaCheckpointer(str(tmp_path / 'run'), keep=None)
  delta = PromptTuning(length=5)
  prompt = np.zeros((5, 64), np.float32)
  prompt[2, 2] = np.nan
  checkpointer.save(1, {'step': np.int32(1), 'trainable': delta.with_prompt({}, prompt)},
                    {'base_checkpoint': base, 'base_fingerprint': fingerprint(base_params),
                     'base_step': 0, 'deltas': [delta.to_config()]})
  checkpointer.close()
  from prompt_tuning.model.finite import NonFiniteError  # pylint: disable=g-import-not-at-top
  loader = loading.VariableLoader(Transformer(SIZES['tiny']))
  with pytest.raises(NonFiniteError, match=r'checkpoint_1 .*prompt/prompt/prompt: 1 of 320'):
    loader.checkpoint(str(tmp_path / 'run'))
  good = delta.with_prompt({}, np.zeros((5, 64), np.float32))
  with pytest.raises(NonFiniteError, match='Member 1 of the bank'):
    bank_lib.stack([good, delta.with_prompt({}, prompt)], (delta,))


def test_non_finite_scores_are_written_as_null(tmp_path, base, prompt_file, monkeypatch):
  from prompt_tuning import gin_utils  # pylint: disable=g-import-not-at-top
  real = predict.score
  monkeypatch.setattr(predict, 'score', lambda *a: real(*a) * np.nan)
  if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
  gin_utils.parse_gin(['gin/models/t5_1_1/tiny.gin', 'gin/runs/infer.gin'], [
      f"INFER_OUTPUT_DIR = '{tmp_path}'", f"MIXTURE_OR_TASK_NAME = '{TASK}'",
      "MIXTURE_OR_TASK_MODULE = 'fixture_tasks'", 'BATCH_SIZE = 8', "INFER_MODE = 'score'",
      f'TASK_FEATURE_LENGTHS = {LENGTHS}', f"CHECKPOINT_PATH = '{prompt_file}'",
      f"INITIAL_CHECKPOINT_PATH = '{base}'", 'batch_infer.infer.num_examples = 8'])
  text = pathlib.Path(batch_infer.infer()[TASK]).read_text()
  assert 'NaN' not in text  # JSON has no NaN: strict parsers refuse the file
  assert [json.loads(line)['score'] for line in text.splitlines()] == [None] * 8


# -- 8. truncation reported, or refused -----------------------------------------


@pytest.mark.slow  # a CLI process each (about 10 s)
def test_infer_reports_truncated_inputs(tmp_path, base, prompt_file):
  short = {'inputs': 6, 'targets': 4}
  common = (f"--gin.CHECKPOINT_PATH='{prompt_file}'", f"--gin.INITIAL_CHECKPOINT_PATH='{base}'")
  proc = _run('prompt_tuning.infer', *_infer_args(tmp_path, *common, lengths=short))
  assert proc.returncode == 0, proc.stdout[-3000:]
  records = [json.loads(line) for line in
             (tmp_path / f'{TASK}-validation-score.jsonl').read_text().splitlines()]
  cut = [r for r in records if r['truncated']]
  assert cut and all(r['original_lengths']['inputs'] > 6 for r in cut)
  assert all('original_lengths' not in r for r in records if not r['truncated'])
  assert f'{len(cut)} of 8 examples longer than TASK_FEATURE_LENGTHS' in proc.stdout

  proc = _run('prompt_tuning.infer', *_infer_args(tmp_path / 'refused', *common,
                                                  '--gin.REFUSE_TRUNCATION=True', lengths=short))
  line = _one_line_error(proc, 'Configuration error:')
  assert "TASK_FEATURE_LENGTHS['inputs'] = 6" in line and 'REFUSE_TRUNCATION' in line


def test_eval_counts_truncated_examples():
  if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
  import fixture_tasks  # pylint: disable=g-import-not-at-top,unused-import
  from prompt_tuning.gin_utils import ConfigurationError  # pylint: disable=g-import-not-at-top
  from prompt_tuning.infer.evaluation import InferenceEvaluator  # pylint: disable=g-import-not-at-top
  lengths = {'inputs': 6, 'targets': 4}
  expected = sum(len(fixture_tasks.VOCABULARY.encode(text)) + 1 > 6
                 for text, _ in fixture_tasks._examples('validation', 32))  # pylint: disable=protected-access
  assert InferenceEvaluator(TASK, lengths, 8).over_length == {TASK: expected} and expected
  with pytest.raises(ConfigurationError, match='REFUSE_TRUNCATION'):
    _ = InferenceEvaluator(TASK, lengths, 8, refuse_truncation=True).over_length


# -- 9. one-line errors ------------------------------------------------------------


@pytest.mark.slow  # a CLI process each (about 10 s)
def test_a_file_that_is_not_npy_is_not_called_a_pickle(tmp_path, base):
  text = tmp_path / 'prompt.npy'
  text.write_text('0.1 0.2 0.3\n')
  proc = _run('prompt_tuning.infer', *_infer_args(
      tmp_path / 'out', f"--gin.CHECKPOINT_PATH='{text}'", f"--gin.INITIAL_CHECKPOINT_PATH='{base}'"))
  line = _one_line_error(proc, 'Configuration error:')
  assert 'is not a .npy file' in line and 'pickle' not in proc.stdout


@pytest.mark.slow  # a CLI process each (about 10 s)
def test_a_gin_file_that_is_not_utf8_is_named_with_its_line(tmp_path, tiny_gin, shared_data):
  latin1 = tmp_path / 'extra.gin'
  latin1.write_bytes(b'# comment\n# caf\xe9\nLOG_PERIOD = 1\n')
  proc = _run('prompt_tuning.train', *_train_args(tiny_gin, shared_data, tmp_path / 'run',
                                                  f'--gin_file={latin1}'))
  line = _one_line_error(proc, 'Configuration error:')
  assert 'extra.gin line 2 is not UTF-8' in line


def test_a_data_file_that_is_not_utf8_is_named_with_its_line(tmp_path):
  from prompt_tuning.data import sources  # pylint: disable=g-import-not-at-top
  from prompt_tuning.gin_utils import ConfigurationError  # pylint: disable=g-import-not-at-top
  path = tmp_path / 'val.jsonl'
  row = b'{"premise": "a", "hypothesis": "b", "label": "entailment", "idx": 0}\n'
  path.write_bytes(row + row.replace(b'"a"', b'"caf\xe9"'))
  with pytest.raises(ConfigurationError, match='val.jsonl line 2 is not UTF-8'):
    list(sources.read_examples(str(path), 'rte'))


@pytest.mark.slow  # a CLI process each (about 10 s)
def test_checkpoint_errors_are_one_line_and_verbose_shows_the_traceback(
    tmp_path, tiny_gin, shared_data):
  (tmp_path / 'empty').mkdir()
  args = _train_args(tiny_gin, shared_data, tmp_path / 'run',
                     f"--gin.INITIAL_CHECKPOINT_PATH='{tmp_path / 'empty'}'")
  line = _one_line_error(_run('prompt_tuning.train', *args), 'Checkpoint error:')
  assert 'empty holds no pretrained model' in line
  proc = _run('prompt_tuning.train', *args, '--verbose')
  assert proc.returncode != 0 and 'Traceback' in proc.stdout
  assert 'Checkpoint error:' in proc.stdout


@pytest.mark.slow  # a CLI process each (about 10 s)
def test_disk_full_is_reported_as_such(tmp_path, base, prompt_file):
  proc = _run('prompt_tuning.infer', *_infer_args(
      tmp_path, f"--gin.CHECKPOINT_PATH='{prompt_file}'",
      f"--gin.INITIAL_CHECKPOINT_PATH='{base}'", "--gin.INFER_MODE='predict'",
      '--gin_bindings=batch_infer.infer.num_examples = None'), limit_file_size=True)
  line = _one_line_error(proc, 'Disk error:')
  assert 'File too large' in line or 'No space left' in line
  assert not list(tmp_path.glob('*.tmp'))  # no half-written output left behind


@pytest.mark.slow
def test_resume_with_another_prompt_length_says_what_changed(tmp_path, tiny_gin, shared_data):
  model_dir = tmp_path / 'run'
  proc = _run('prompt_tuning.train', *_train_args(tiny_gin, shared_data, model_dir))
  assert proc.returncode == 0, proc.stdout[-3000:]
  proc = _run('prompt_tuning.train', *_train_args(tiny_gin, shared_data, model_dir,
                                                  '--gin.TRAIN_STEPS=6', '--gin.PROMPT_LENGTH=6'))
  # The shapes are checked before Orbax reads anything, so no background read
  # is left to print at exit (CI saw those tracebacks when Orbax found it).
  line = _one_line_error(proc, 'Checkpoint error:')
  assert 'PROMPT_LENGTH' in line and 'strict=False' not in proc.stdout
  assert 'saved [5, ' in line and 'configured [6, ' in line, line
