"""Nothing lost, nothing silent: the trainer under signals, rivals, kills and damage (issue 16).

Each test reproduces a fault as it happens to a real run: a signal sent to a
running `python -m prompt_tuning.train`, two processes on one MODEL_DIR, a
kill at a chosen point (`prompt_tuning.train.faults`' test hooks), damaged
checkpoint files. Setup-only runs go in-process where that is faster.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import gin
import numpy as np
import pytest

from test_train import (BASE_STEP, REPO, TESTS, _args, _train_in_process,  # pylint: disable=unused-import
                        base_checkpoint, random_tiny_hf, tiny_gin)

CRASH_EXIT_CODE = 97  # prompt_tuning.train.faults.CRASH_EXIT_CODE
DROPOUT = ['--gin.DROPOUT_RATE=0.1']  # so that a resumed run must also restore the rngs' step


def _run_cli(args, **env):
  """`python -m prompt_tuning.train` with `env` added to the environment (test hooks)."""
  env = dict(os.environ, **env,
             PYTHONPATH=f'{TESTS}{os.pathsep}{os.environ.get("PYTHONPATH", "")}')
  return subprocess.Popen([sys.executable, '-m', 'prompt_tuning.train', *args], cwd=REPO,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _checkpoints(model_dir):
  return sorted(int(p.name.split('_')[1]) for p in model_dir.glob('checkpoint_*')
                if p.is_dir() and '.orbax' not in p.name)


def _read_until(proc, marker, timeout=300):
  """The process's output up to the line holding `marker` (the rest stays unread)."""
  lines, deadline = [], time.time() + timeout
  while time.time() < deadline:
    line = proc.stdout.readline()
    if not line:
      break
    lines.append(line)
    if marker in line:
      return ''.join(lines)
  raise AssertionError(f'{marker!r} never appeared:\n' + ''.join(lines)[-3000:])


# -- 1. preemption --------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_and_sigint_save_at_the_next_step_and_resume_bitwise(
    tmp_path, tiny_gin, base_checkpoint):
  extra = ['--gin.CHECKPOINT_PERIOD=100'] + DROPOUT  # no periodic save before the end
  slow = {'PROMPT_TUNING_TEST_STEP_SECONDS': '0.5'}
  args = lambda d: _args(tiny_gin, base_checkpoint, tmp_path / d, steps=12, extra=extra)
  straight = _run_cli(args('straight'))
  victims, outputs = {}, {}
  for sig in (signal.SIGTERM, signal.SIGINT):
    # One victim at a time: one whose output nobody reads meanwhile would run
    # to its end before its signal (its quiet log never fills the pipe).
    proc = victims[sig] = _run_cli(args(sig.name), **slow)
    head = _read_until(proc, f'step {BASE_STEP + 4}/')
    proc.send_signal(sig)
    tail, _ = proc.communicate(timeout=300)
    outputs[sig] = head + tail
  for sig, proc in victims.items():
    out, model_dir = outputs[sig], tmp_path / sig.name
    assert proc.returncode == 0, f'{sig.name}: rc {proc.returncode}\n{out[-3000:]}'
    steps = _checkpoints(model_dir)
    assert len(steps) == 1 and BASE_STEP + 4 <= steps[0] < BASE_STEP + 12, (steps, out[-2000:])
    assert (f'Stopped by {sig.name} at step {steps[0]}: saved '
            f'{model_dir}/checkpoint_{steps[0]}') in out
    assert (model_dir / f'checkpoint_{steps[0]}' / 'prompt.npy').exists()
    assert 'Traceback' not in out
  resumed = {sig: _run_cli(args(sig.name)) for sig in victims}
  out_straight, _ = straight.communicate(timeout=600)
  assert straight.returncode == 0, out_straight[-2000:]
  final = np.load(tmp_path / 'straight' / f'checkpoint_{BASE_STEP + 12}' / 'prompt.npy')
  for sig, proc in resumed.items():
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-2000:]
    assert f'Resumed from {tmp_path / sig.name}/checkpoint_' in out
    np.testing.assert_array_equal(
        np.load(tmp_path / sig.name / f'checkpoint_{BASE_STEP + 12}' / 'prompt.npy'), final)


# -- 2. the run lock ------------------------------------------------------------


@pytest.mark.slow
def test_two_runs_started_together_on_one_model_dir(tmp_path, tiny_gin, base_checkpoint):
  model_dir = tmp_path / 'run'
  slow = {'PROMPT_TUNING_TEST_STEP_SECONDS': '0.3'}
  args = _args(tiny_gin, base_checkpoint, model_dir, steps=12)
  procs = [_run_cli(args, **slow), _run_cli(args, **slow)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  codes = [p.returncode for p in procs]
  assert sorted(c == 0 for c in codes) == [False, True], (codes, outs[0][-1500:], outs[1][-1500:])
  winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
  last = outs[loser].strip().splitlines()[-1]
  assert 'is in use by another run' in last, outs[loser][-2000:]
  assert f'host {socket.gethostname()}, pid {procs[winner].pid}, started ' in last
  assert f'delete {model_dir}/run.lock' in last
  assert 'Traceback' not in outs[loser] and 'FileExistsError' not in outs[loser]
  # The winner ran to the end, alone; the lock went with it.
  assert _checkpoints(model_dir) == [BASE_STEP + 12]
  assert not (model_dir / 'run.lock').exists()


def _dead_pid():
  proc = subprocess.Popen([sys.executable, '-c', 'pass'])
  proc.wait()
  return proc.pid


def test_stale_lock_of_a_dead_process_on_this_host_is_taken_over(
    tmp_path, tiny_gin, base_checkpoint, caplog):
  model_dir = tmp_path / 'run'
  model_dir.mkdir()
  (model_dir / 'run.lock').write_text(json.dumps(
      {'host': socket.gethostname(), 'pid': _dead_pid(), 'started': '2024-01-01 00:00:00 UTC'}))
  with caplog.at_level('WARNING'):
    _train_in_process(_args(tiny_gin, base_checkpoint, model_dir, steps=1))
  assert 'Taking over the stale lock' in caplog.text
  assert _checkpoints(model_dir) == [BASE_STEP + 1] and not (model_dir / 'run.lock').exists()


def test_lock_of_another_host_is_refused_with_how_to_clear_it(tmp_path, tiny_gin,
                                                             base_checkpoint):
  model_dir = tmp_path / 'run'
  model_dir.mkdir()
  lock = {'host': 'tpu-vm-7', 'pid': 4242, 'started': '2024-01-01 00:00:00 UTC'}
  (model_dir / 'run.lock').write_text(json.dumps(lock))
  with pytest.raises(ValueError, match=r'in use by another run \(host tpu-vm-7, pid 4242, '
                     r'started 2024-01-01 00:00:00 UTC\).*stale.*delete .*run\.lock'):
    _train_in_process(_args(tiny_gin, base_checkpoint, model_dir, steps=1))
  assert json.loads((model_dir / 'run.lock').read_text()) == lock  # not ours to remove
  assert not _checkpoints(model_dir)


# -- 3. the best checkpoint and the exports ---------------------------------------


@pytest.mark.slow
def test_best_checkpoint_survives_a_kill_between_its_save_and_its_record(tmp_path,
                                                                       random_tiny_hf):
  model_dir = tmp_path / 'run'
  args = _args('gin/models/t5_1_1/tiny.gin', random_tiny_hf, model_dir, steps=20, base_step=0,
               extra=['--gin.EVAL_PERIOD=10', '--gin.EVAL_STEPS=2',
                      '--gin.CHECKPOINT_PERIOD=10'])
  killed = _run_cli(args, PROMPT_TUNING_TEST_CRASH_AT='best_saved')
  out, _ = killed.communicate(timeout=600)
  assert killed.returncode == CRASH_EXIT_CODE, out[-2000:]
  assert not (model_dir / 'best' / 'best.json').exists()  # killed before the record

  rerun = _run_cli(args)
  out, _ = rerun.communicate(timeout=600)
  assert rerun.returncode == 0, out[-2000:]
  assert 'The best checkpoint is best/checkpoint_10' in out  # adopted, not lost
  lines = (model_dir / 'inference_eval' / 'fixture_sentiment-metrics.jsonl').read_text()
  scores = {r['step']: r['accuracy'] for r in map(json.loads, lines.splitlines())}
  assert sorted(scores) == [10, 20]
  best = json.loads((model_dir / 'best' / 'best.json').read_text())
  assert best['step'] == max(scores, key=lambda s: (scores[s], -s))
  assert _checkpoints(model_dir / 'best') == [best['step']]
  assert (model_dir / 'best' / f'checkpoint_{best["step"]}' / 'prompt.npy').exists()


@pytest.mark.slow
def test_last_step_killed_before_its_evaluation_is_evaluated_on_resume(tmp_path,
                                                                       random_tiny_hf):
  model_dir = tmp_path / 'run'
  args = _args('gin/models/t5_1_1/tiny.gin', random_tiny_hf, model_dir, steps=10, base_step=0,
               extra=['--gin.EVAL_PERIOD=10', '--gin.EVAL_STEPS=2',
                      '--gin.CHECKPOINT_PERIOD=10'])
  killed = _run_cli(args, PROMPT_TUNING_TEST_CRASH_AT='evaluation_started')
  out, _ = killed.communicate(timeout=600)
  assert killed.returncode == CRASH_EXIT_CODE, out[-2000:]
  assert _checkpoints(model_dir) == [10]  # trained and saved, never evaluated
  metrics = model_dir / 'inference_eval' / 'fixture_sentiment-metrics.jsonl'
  assert not metrics.exists()

  rerun = _run_cli(args)
  out, _ = rerun.communicate(timeout=600)
  assert rerun.returncode == 0, out[-2000:]
  assert 'Step 10 was saved but not evaluated' in out
  assert [json.loads(r)['step'] for r in metrics.read_text().splitlines()] == [10]
  assert json.loads((model_dir / 'best' / 'best.json').read_text())['step'] == 10

  again = _run_cli(args)  # a finished run is not evaluated twice
  out, _ = again.communicate(timeout=600)
  assert again.returncode == 0, out[-2000:]
  assert 'not evaluated' not in out
  assert len(metrics.read_text().splitlines()) == 1


@pytest.mark.parametrize('crash_at', ['best_saved', 'best_recorded', None])
def test_best_record_and_checkpoint_agree_after_a_kill_at_any_point(tmp_path, monkeypatch,
                                                                   crash_at):
  """The tracker's protocol alone, with the kill at each of its points."""
  from prompt_tuning.train import faults  # pylint: disable=g-import-not-at-top
  from prompt_tuning.train.best import BestCheckpointTracker  # pylint: disable=g-import-not-at-top

  def state(value):
    return {'step': np.int32(0), 'trainable': {'prompt': np.full((2, 3), value, np.float32)}}

  def save(step, value):
    return lambda to, extra: to.save(step, state(value), {'base_step': 0, **extra},
                                     lambda d: np.save(os.path.join(d, 'prompt.npy'),
                                                       state(value)['trainable']['prompt']))

  tracker = BestCheckpointTracker(str(tmp_path))
  tracker.update(10, 0.5, {'t': {'accuracy': 50.0}}, save(10, 1.0))

  class Killed(Exception):
    pass

  def crash(name):
    if name == crash_at:
      raise Killed(name)
  monkeypatch.setattr(faults, 'crash_point', crash)
  try:
    tracker.update(20, 0.9, {'t': {'accuracy': 90.0}}, save(20, 2.0))
  except Killed:
    pass
  monkeypatch.undo()

  after = BestCheckpointTracker(str(tmp_path))  # a restarted run
  record = json.loads((tmp_path / 'best' / 'best.json').read_text())
  assert after.best == record and record['step'] == 20 and record['score'] == 0.9
  assert _checkpoints(tmp_path / 'best') == [20]
  np.testing.assert_array_equal(np.load(tmp_path / 'best' / 'checkpoint_20' / 'prompt.npy'),
                                np.full((2, 3), 2.0, np.float32))


def test_checkpoint_missing_its_prompt_npy_is_repaired_on_resume(tmp_path, tiny_gin,
                                                                 base_checkpoint, caplog):
  # A kill between a checkpoint's commit and its export leaves it without prompt.npy.
  model_dir = tmp_path / 'run'
  args = _args(tiny_gin, base_checkpoint, model_dir, steps=2)
  _train_in_process(args)
  exported = model_dir / f'checkpoint_{BASE_STEP + 2}' / 'prompt.npy'
  expected = np.load(exported)
  exported.unlink()
  gin.clear_config()
  with caplog.at_level('WARNING'):
    _train_in_process(args)  # the same command: the final checkpoint, nothing to train
  assert 'Nothing to train' in caplog.text and 'Rewrote prompt.npy' in caplog.text
  np.testing.assert_array_equal(np.load(exported), expected)


@pytest.mark.slow
def test_kill_between_commit_and_export_then_resume(tmp_path, tiny_gin, base_checkpoint):
  model_dir = tmp_path / 'run'
  args = _args(tiny_gin, base_checkpoint, model_dir, steps=2)  # one save, the final one
  killed = _run_cli(args, PROMPT_TUNING_TEST_CRASH_AT='checkpoint_committed')
  out, _ = killed.communicate(timeout=600)
  assert killed.returncode == CRASH_EXIT_CODE, out[-2000:]
  final = model_dir / f'checkpoint_{BASE_STEP + 2}'
  assert final.is_dir() and not (final / 'prompt.npy').exists()
  rerun = _run_cli(args)
  out, _ = rerun.communicate(timeout=600)
  assert rerun.returncode == 0, out[-2000:]
  assert 'Nothing to train' in out and f'Rewrote prompt.npy in {final}' in out
  assert np.load(final / 'prompt.npy').shape == (5, 4)


# -- 4. fallback past damaged checkpoints -----------------------------------------


@pytest.mark.slow
def test_resume_falls_back_past_damaged_checkpoints(tmp_path, tiny_gin, base_checkpoint):
  model_dir = tmp_path / 'run'
  extra = ['--gin.CHECKPOINT_PERIOD=4', '--gin.trainer.train.keep_checkpoints=None'] + DROPOUT
  args = _args(tiny_gin, base_checkpoint, model_dir, steps=16, extra=extra)
  _train_in_process(args)
  assert _checkpoints(model_dir) == [4, 8, 12, 16, 19]
  final = np.load(model_dir / 'checkpoint_19' / 'prompt.npy')
  # An empty folder, garbled metadata, a truncated state file.
  for path in (model_dir / 'checkpoint_19').iterdir():
    subprocess.run(['rm', '-rf', str(path)], check=True)
  (model_dir / 'checkpoint_16' / 'metadata' / 'metadata').write_text('{"base_step": 3, ')
  largest = max((p for p in (model_dir / 'checkpoint_12' / 'state').rglob('*') if p.is_file()),
                key=lambda p: p.stat().st_size)
  os.truncate(largest, 10)

  proc = _run_cli(args)
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out[-3000:]
  skipped = [line for line in out.splitlines() if 'Skipped checkpoint_' in line]
  assert [line.split('Skipped ')[1].split(':')[0] for line in skipped] == [
      'checkpoint_19', 'checkpoint_16', 'checkpoint_12'], out[-3000:]
  assert 'metadata does not read' in skipped[1] and 'state does not restore' in skipped[2]
  assert f'Resumed from {model_dir}/checkpoint_8' in out
  # Nothing deleted: the damaged ones are set aside, whole.
  aside = sorted(p.name.split('-')[0] for p in model_dir.glob('unreadable_checkpoint_*'))
  assert aside == ['unreadable_checkpoint_12', 'unreadable_checkpoint_16',
                   'unreadable_checkpoint_19']
  assert largest.name in {p.name for p in model_dir.glob('unreadable_checkpoint_12-*/state/**/*')}
  np.testing.assert_array_equal(np.load(model_dir / 'checkpoint_19' / 'prompt.npy'), final)


# -- 5. config.gin per attempt ------------------------------------------------------


def test_config_is_recorded_per_attempt_and_not_by_a_failing_rerun(tmp_path, tiny_gin,
                                                                   base_checkpoint):
  model_dir = tmp_path / 'run'
  _train_in_process(_args(tiny_gin, base_checkpoint, model_dir, steps=1))
  record = (model_dir / 'config.gin').read_text()
  gin.clear_config()
  with pytest.raises(Exception):  # a bad value, found once the run is set up
    _train_in_process(_args(tiny_gin, base_checkpoint, model_dir, steps=3,
                            extra=['--gin.LOG_PERIOD=0']))
  assert (model_dir / 'config.gin').read_text() == record
  assert len(list(model_dir.glob('config-*.gin'))) == 1
  time.sleep(1.1)  # the copies are named by the second
  gin.clear_config()
  _train_in_process(_args(tiny_gin, base_checkpoint, model_dir, steps=2))
  copies = sorted(model_dir.glob('config-*.gin'))
  assert len(copies) == 2 and copies[0].read_text() == record
  assert f'TRAIN_STEPS = {BASE_STEP + 2}' in (model_dir / 'config.gin').read_text()
