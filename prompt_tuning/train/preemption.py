"""Stopping a run on SIGTERM / SIGINT at a step boundary, saved, instead of losing steps.

TPU VMs and schedulers preempt with SIGTERM (then SIGKILL after a grace
period); Ctrl-C sends SIGINT. `StopRequest` turns either into a flag that the
training loop reads between steps: it saves the step reached and returns, and
the process exits 0. Every host must stop at the same step (a save is a
collective), so the flag is OR-ed across processes at each step boundary; on
one host that is the local flag, at no cost. A second SIGINT stops at once,
unsaved (the last checkpoint stays good: saves are atomic).
"""
import signal
import threading
from typing import Optional

import jax
import numpy as np
from absl import logging

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def any_host(flag: bool) -> bool:
  """Whether `flag` is set on any process (every process must call this together)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


class StopRequest:
  """A context in which SIGTERM / SIGINT request a stop instead of killing the process."""

  def __init__(self):
    self.signal_name: Optional[str] = None
    self._previous = {}

  def __enter__(self) -> 'StopRequest':
    if threading.current_thread() is threading.main_thread():  # signals bind only there
      for signum in SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    del frame
    if self.signal_name is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # the user insists: stop now, unsaved
    self.signal_name = signal.Signals(signum).name
    logging.warning('Received %s: saving at the end of the current step, then stopping '
                    '(a second SIGINT stops at once, unsaved).', self.signal_name)

  def requested(self) -> bool:
    """Whether any host received a signal (call at every step boundary, on every host)."""
    return any_host(self.signal_name is not None)
