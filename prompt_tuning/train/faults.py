"""Test-only fault injection, driven by environment variables (unset: no effect).

The reliability tests (tests/test_reliability.py) kill or slow a real
`python -m prompt_tuning.train` at chosen points to check that nothing is
lost:

    PROMPT_TUNING_TEST_CRASH_AT=<point>   os._exit(97) when the run reaches
                                          <point> (names below), the way a
                                          SIGKILL or a lost VM would stop it
    PROMPT_TUNING_TEST_STEP_SECONDS=<s>   sleep s seconds after every step, so
                                          that a test can signal a running step

Points: 'checkpoint_committed' (a periodic checkpoint is committed, its
prompt.npy not yet written), 'best_saved' (a new best checkpoint is written,
the record not yet switched), 'best_recorded' (the record switched, the old
best not yet deleted), 'evaluation_started' (a step's evaluation began, after
its checkpoint was saved).
"""
import os
import time

CRASH_EXIT_CODE = 97


def crash_point(name: str) -> None:
  """Exits at once, without clean-up, when the test asked to crash at `name`."""
  if os.environ.get('PROMPT_TUNING_TEST_CRASH_AT') == name:
    os._exit(CRASH_EXIT_CODE)  # pylint: disable=protected-access


def step_pause() -> None:
  seconds = float(os.environ.get('PROMPT_TUNING_TEST_STEP_SECONDS', 0) or 0)
  if seconds:
    time.sleep(seconds)
