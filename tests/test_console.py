"""What a command prints (prompt_tuning/console.py): a tiny training job with evaluation
through `python -m prompt_tuning.train`, its console read as a user sees it.

By default only this project's lines and the progress; `--verbose` brings every
library's lines back; on a terminal (a pseudo-terminal here) progress bars
replace the periodic lines.
"""
import io
import os
import pty
import re
import subprocess
import sys
import threading

from rich import console as rich_console

from prompt_tuning import console
from test_train import REPO, TESTS, _args, base_checkpoint, tiny_gin  # pylint: disable=unused-import

PACKAGE_FILES = {p.name for p in (REPO / 'prompt_tuning').rglob('*.py')}
# An absl / glog line: level, date, time, thread, file:line].
ABSL_LINE = re.compile(r'^[IWEF]\d{4} [\d:.]+ +\d+ ([\w.]+):\d+\]', re.M)
# What TensorFlow, XLA and CUDA print on their own, and library lines whose
# file names could pass for ours (seqio's evaluation.py).
NATIVE_NOISE = ('oneDNN', 'cuda', 'CUDA', 'absl::InitializeLog', 'cpu_feature_guard',
                'Initializing Evaluator', 'Time computing metrics')
STEPS = 4


def _job(tiny_gin, base_checkpoint, model_dir, *extra):
  return [sys.executable, '-m', 'prompt_tuning.train'] + _args(
      tiny_gin, base_checkpoint, model_dir, steps=STEPS,
      extra=['--gin.LOG_PERIOD=2', f'--gin.EVAL_PERIOD={STEPS}', '--gin.EVAL_STEPS=1',
             *extra])


def _env():
  env = dict(os.environ, PYTHONPATH=f'{TESTS}{os.pathsep}{os.environ.get("PYTHONPATH", "")}')
  # The default under test. TF_CPP_MIN_LOG_LEVEL stays as this process has
  # it: importing TensorFlow here set it to 1, which the command overrides.
  env.pop('PROMPT_TUNING_VERBOSE', None)
  return env


def _run(command) -> str:
  result = subprocess.run(command, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stdout[-3000:]
  return result.stdout


def _run_on_a_terminal(command) -> str:
  """The command's stdout and stderr on a pseudo-terminal, ANSI codes removed."""
  controller, terminal = pty.openpty()
  proc = subprocess.Popen(command, cwd=REPO, env=dict(_env(), COLUMNS='150'), stdout=terminal,
                          stderr=terminal, stdin=subprocess.DEVNULL)
  os.close(terminal)
  chunks = []

  def read():  # drained while it runs: a full terminal buffer would block the child
    while True:
      try:
        chunk = os.read(controller, 65536)
      except OSError:  # EIO: every copy of the terminal's other end is closed
        return
      if not chunk:
        return
      chunks.append(chunk)

  reader = threading.Thread(target=read)
  reader.start()
  returncode = proc.wait(timeout=600)
  reader.join(timeout=60)
  os.close(controller)
  out = b''.join(chunks).decode('utf-8', 'replace')
  assert returncode == 0, out[-3000:]
  return re.sub(r'\x1b\[[0-9;?]*[A-Za-z]', '', out)


def test_default_console_is_the_runs_own_lines(tmp_path, tiny_gin, base_checkpoint):
  out = _run(_job(tiny_gin, base_checkpoint, tmp_path / 'run'))
  for noise in NATIVE_NOISE:
    assert noise not in out, out
  files = set(ABSL_LINE.findall(out))
  assert files and files <= PACKAGE_FILES, files - PACKAGE_FILES
  # The progress (not a terminal: the periodic lines) and the final metrics.
  assert re.search(rf'step {3 + STEPS}/{3 + STEPS} .* tokens/s .* ETA ', out), out
  assert re.search(rf"step {3 + STEPS} inference_eval: {{'fixture_sentiment': "
                   r"{'accuracy': [\d.]+}}", out), out
  assert '━' not in out and '\r' not in out  # no bar in a log


def test_verbose_brings_every_librarys_lines_back(tmp_path, tiny_gin, base_checkpoint):
  quiet = _run(_job(tiny_gin, base_checkpoint, tmp_path / 'quiet'))
  verbose = _run(_job(tiny_gin, base_checkpoint, tmp_path / 'verbose', '--verbose'))
  files = set(ABSL_LINE.findall(verbose))
  # Orbax's, clu's and seqio's own lines.
  assert {'checkpoint_manager.py', 'logging_writer.py', 'dataset_providers.py'} <= files, files
  assert len(verbose.splitlines()) > 3 * len(quiet.splitlines())
  assert re.search(rf'step {3 + STEPS}/{3 + STEPS} .* tokens/s .* ETA ', verbose)


def test_a_terminal_gets_progress_bars(tmp_path, tiny_gin, base_checkpoint):
  out = _run_on_a_terminal(_job(tiny_gin, base_checkpoint, tmp_path / 'run'))
  for noise in NATIVE_NOISE:
    assert noise not in out, out
  # The training bar, with its loss and speed, and the evaluation's bar.
  # (Columns line up across bars, so the spaces vary.)
  assert re.search(rf'Training +[━╸╺]+ +{STEPS}/{STEPS} +elapsed [\d:]+ ETA [\d:]+ loss [\d.]+ +'
                   r'[\d,]+ tokens/s', out), out[-3000:]
  # (An evaluation bar goes when it is done: what it showed depends on when
  # the display refreshed, so only its presence is asserted here.)
  assert re.search(r'Inference +[━╸╺]+ +\d+/32 +elapsed [\d:]+ ETA ', out), out[-3000:]
  # The bar shows what the periodic line would; the metrics are still printed.
  assert not re.search(r'step \d+/\d+ \(', out), out[-3000:]
  assert f'step {3 + STEPS} inference_eval:' in out


def test_a_bar_shows_each_report_once_the_next_one_comes(monkeypatch):
  # In process, on a terminal of its own: a training step's loss is read when
  # the next step is queued, so the bar counts steps done, not steps queued.
  screen = rich_console.Console(file=io.StringIO(), force_terminal=True, width=150)
  monkeypatch.setattr(console, '_STATE', console._State(configured=True, console=screen))  # pylint: disable=protected-access
  read = []
  with console.bar('Training', total=3) as bar:
    assert bar.shown
    task = console._STATE.live.tasks[0]  # pylint: disable=protected-access
    bar.advance(tokens=100, loss=lambda: read.append(1) or 2.5)
    assert task.completed == 0 and not read
    bar.advance(tokens=50, loss=lambda: 1.25)
    assert task.completed == 1 and read == [1]
    assert task.fields['loss'] == 2.5 and task.fields['tokens'] == 100
  # The last report is shown when the bar closes; the display stops with it.
  assert task.completed == 2 and task.fields['loss'] == 1.25 and task.fields['tokens'] == 150
  assert console._STATE.live is None  # pylint: disable=protected-access
  assert 'Training' in screen.file.getvalue() and 'loss 1.2500' in screen.file.getvalue()
