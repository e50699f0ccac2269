"""What the commands print: the run's own lines, progress bars, and the libraries' noise off.

`setup(verbose)` is called by every command (`prompt_tuning.cli` for
`python -m prompt_tuning.{train,eval,infer}`, and `tools/demo.py`) before
TensorFlow or JAX is imported. By default:

- TensorFlow's and XLA's C++ logging is off (`TF_CPP_MIN_LOG_LEVEL=3`, also
  over an inherited value: a parent process that imported TensorFlow passes
  on the 1 it sets), and the lines TensorFlow prints while it loads,
  before it reads that variable (oneDNN, "Could not find cuda drivers",
  "All log messages before absl::InitializeLog()"), are dropped;
- Python logging shows this project's records from INFO up, JAX's from
  WARNING up (a GPU it cannot use) and every library's errors; the other
  libraries' INFO and WARNING lines (Orbax, SeqIO, TensorFlow) are hidden;
- when stderr is a terminal, training and evaluation draw a progress bar
  (`bar`: ETA, loss, tokens/s) and the trainer's periodic `step N/M ...` line
  is not printed (TensorBoard still gets its scalars). When stderr is not a
  terminal (a log file, a pipe, CI) there is no bar and the periodic lines are
  printed as before, so a log never fills with carriage returns.

`verbose=True` (`--verbose`) leaves the environment and the log records
alone: every library's lines come back, as before this module; on a terminal
the bars are drawn too, with the periodic lines above them.
"""
import contextlib
import dataclasses
import logging as std_logging
import os
import re
import sys
import tempfile
from typing import Any, Iterator, Optional

from absl import flags
from absl import logging
from rich import console as rich_console
from rich import progress
from rich.text import Text

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# What TensorFlow's C++ runtime prints while it loads: glog-style INFO and
# WARNING lines, and absl's note that it logs before its initialization.
_NATIVE_NOISE = re.compile(r'[IW]\d{4} |WARNING: All log messages before absl::InitializeLog')
# `logging.info(..., extra=REPLACED_BY_BAR)`: a periodic line that a progress bar shows live.
REPLACED_BY_BAR = {'replaced_by_bar': True}


@dataclasses.dataclass
class _State:
  configured: bool = False
  console: Optional[rich_console.Console] = None
  live: Optional[progress.Progress] = None  # the bars on screen, one display for all


_STATE = _State()


def setup(verbose: bool) -> None:
  """Quiets the libraries (unless `verbose`) and decides whether bars are drawn.

  Call before TensorFlow is imported: it reads its log level when it loads.
  """
  _STATE.configured = True
  _STATE.console = rich_console.Console(stderr=True)
  if not flags.FLAGS.is_parsed():
    # A command with its own argument parser (tools/demo.py): absl's defaults,
    # INFO as under absl's app.run, and no "logging before flag parsing" note.
    flags.FLAGS.mark_as_parsed()
    logging.set_verbosity(logging.INFO)
  logging.use_absl_handler()
  # Records are written to the sys.stderr of the moment, which a live bar
  # redirects above itself (absl otherwise keeps the stream it started with).
  flags.FLAGS.logtostderr = True
  if verbose:
    return
  os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'
  with _native_stderr_filtered():
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import,import-outside-toplevel
  logging.get_absl_handler().addFilter(_shown)


def bars_shown() -> bool:
  """Whether progress bars are drawn: a command set the console up on a terminal."""
  return bool(_STATE.configured and _STATE.console.is_terminal)


def _shown(record: std_logging.LogRecord) -> bool:
  """The default console's choice of log records (see the module docstring)."""
  if getattr(record, 'replaced_by_bar', False) and bars_shown():
    return False
  if record.levelno >= std_logging.ERROR:
    return True
  if record.name == 'jax' or record.name.startswith('jax.'):
    return record.levelno >= std_logging.WARNING
  return record.pathname.startswith(_PACKAGE_DIR + os.sep)


@contextlib.contextmanager
def _native_stderr_filtered() -> Iterator[None]:
  """Captures what C++ code writes to file descriptor 2 meanwhile; passes on all but the noise."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      lines = captured.read().decode('utf-8', 'replace').splitlines(keepends=True)
      sys.stderr.write(''.join(line for line in lines if not _NATIVE_NOISE.match(line)))


class _StatsColumn(progress.ProgressColumn):
  """The bar's loss (when given) and tokens/s (the bar's speed x tokens per unit so far)."""

  def render(self, task: progress.Task) -> Text:
    parts = []
    if task.fields.get('loss') is not None:
      parts.append(f'loss {task.fields["loss"]:.4f}')
    if task.speed and task.completed:
      parts.append(f'{task.speed * task.fields["tokens"] / task.completed:,.0f} tokens/s')
    return Text('  '.join(parts))


class Bar:
  """One progress bar; every method does nothing when bars are not drawn."""

  def __init__(self, task: Optional[progress.TaskID] = None):
    self._task, self._tokens, self._pending = task, 0, None

  @property
  def shown(self) -> bool:
    return self._task is not None

  def set_total(self, total: int) -> None:
    """The units to do, once known (a training run knows its steps once it has resumed)."""
    if self._task is not None:
      _STATE.live.update(self._task, total=total)

  def advance(self, units: int = 1, tokens: int = 0, **fields: Any) -> None:
    """`units` done (steps, examples) holding `tokens` tokens; fields are values or callables.

    Shown one call late, when the previous call's callables are read (e.g. a
    training step's loss, which waits for that step): the bar then counts
    work done, not work queued by JAX's asynchronous dispatch, and the loop
    still keeps one step in flight.
    """
    if self._task is None:
      return
    self.flush()
    self._pending = units, tokens, fields

  def flush(self) -> None:
    """Shows what the last `advance` reported."""
    if self._pending is None:
      return
    units, tokens, fields = self._pending
    self._pending = None
    self._tokens += tokens
    _STATE.live.update(self._task, advance=units, tokens=self._tokens,
                       **{k: v() if callable(v) else v for k, v in fields.items()})


@contextlib.contextmanager
def bar(description: str, total: Optional[int] = None) -> Iterator[Bar]:
  """A progress bar for `total` units (None: not known yet) while the block runs.

  Bars opened inside another (an evaluation during training) show below it
  and go when done; the outermost one stays on screen as its final state.
  """
  if not bars_shown():
    yield Bar()
    return
  if _STATE.live is None:
    _STATE.live = progress.Progress(
        progress.TextColumn('{task.description}'), progress.BarColumn(),
        progress.MofNCompleteColumn(), progress.TextColumn('elapsed'),
        progress.TimeElapsedColumn(), progress.TextColumn('ETA'), progress.TimeRemainingColumn(),
        _StatsColumn(), console=_STATE.console)
    _STATE.live.start()
  task = _STATE.live.add_task(description, total=total, tokens=0)
  shown = Bar(task)
  try:
    yield shown
    shown.flush()
  finally:
    if len(_STATE.live.tasks) > 1:
      _STATE.live.remove_task(task)
    else:
      _STATE.live.stop()
      _STATE.live = None
