"""What a run owns in MODEL_DIR besides its checkpoints: a lock, and its configuration.

- `RunLock`: MODEL_DIR/run.lock, created exclusively when a run starts and
  removed when it ends, so that two runs never write into one MODEL_DIR
  (their forced saves, config.gin and TensorBoard files would overwrite each
  other). It holds the holder's host, pid and start time. A lock left by a
  killed run on this host (its pid is gone) is taken over with a warning; one
  from another host cannot be checked and is refused with how to clear it.
  On a local disk the creation is atomic (O_EXCL). Object stores (gs://) have
  no such primitive here: the lock is then best effort (create if absent,
  checked just before), which catches runs started minutes apart, not in the
  same second.
- `write_config_record`: MODEL_DIR/config.gin, plus config-<UTC time>.gin
  for each run attempt, so that the configuration every checkpoint was
  trained with stays on record.
- `write_parameter_counts`: MODEL_DIR/parameters.json, how many parameters
  the run trains beside the backbone's, for figures against trained
  parameters (`tools/plot.py`).
"""
import datetime
import json
import os
import socket
import time
from typing import Any, Dict, Optional

import jax
import numpy as np
import tensorflow as tf
from absl import logging

from prompt_tuning import gin_utils

LOCK_NAME = 'run.lock'


class RunDirectoryLocked(gin_utils.ConfigurationError):
  """Another run holds MODEL_DIR (reported in one line by the command line)."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # someone else's live process
  return True


class RunLock:
  """An exclusive lock on a MODEL_DIR for the life of one run (see the module doc)."""

  def __init__(self, model_dir: str):
    self.path = os.path.join(model_dir, LOCK_NAME)
    self.remote = '://' in model_dir
    self._held = False

  def _holder(self) -> Optional[Dict[str, Any]]:
    try:
      with tf.io.gfile.GFile(self.path) as f:
        return json.loads(f.read())
    except (tf.errors.NotFoundError, FileNotFoundError):
      return None
    except ValueError:  # a half-written or foreign file: still a lock
      return {}

  def _describe(self, holder: Dict[str, Any]) -> str:
    return (f'host {holder.get("host", "?")}, pid {holder.get("pid", "?")}, '
            f'started {holder.get("started", "?")}')

  def acquire(self) -> None:
    """Takes the lock, or raises RunDirectoryLocked naming its holder."""
    me = {'host': socket.gethostname(), 'pid': os.getpid(),
          'started': datetime.datetime.now(datetime.timezone.utc).strftime(
              '%Y-%m-%d %H:%M:%S UTC')}
    data = json.dumps(me).encode()
    for _ in range(2):  # a second try after clearing a stale lock
      if self._create(data):
        self._held = True
        if self.remote:
          logging.info('Locked %s (best effort on an object store: create if absent, '
                       'not atomic; do not start two runs on one MODEL_DIR at once).',
                       self.path)
        return
      holder = self._holder()
      if holder is None:
        continue  # released between our attempt and the read
      if (holder.get('host') == me['host'] and isinstance(holder.get('pid'), int)
          and not _pid_alive(holder['pid'])):
        logging.warning('Taking over the stale lock %s of a run that ended without '
                        'releasing it (%s; that process is gone).', self.path,
                        self._describe(holder))
        tf.io.gfile.remove(self.path)
        continue
      stale = (' If that run is no longer running (e.g. its machine was lost), the lock '
               'is stale:')
      raise RunDirectoryLocked(
          f'MODEL_DIR {os.path.dirname(self.path)} is in use by another run '
          f'({self._describe(holder)}).{stale} delete {self.path} and rerun; otherwise '
          'give this run its own MODEL_DIR.')
    raise RunDirectoryLocked(f'Could not take the lock {self.path}; delete it and rerun.')

  def _create(self, data: bytes) -> bool:
    if self.remote:
      if tf.io.gfile.exists(self.path):
        return False
      with tf.io.gfile.GFile(self.path, 'wb') as f:
        f.write(data)
      return True
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    return True

  def release(self) -> None:
    if self._held:
      self._held = False
      try:
        tf.io.gfile.remove(self.path)
      except tf.errors.NotFoundError:
        pass

  def __enter__(self) -> 'RunLock':
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def write_config_record(model_dir: str) -> str:
  """Writes the effective gin configuration as config.gin and config-<UTC time>.gin.

  Called once the run has proven its configuration (its first step ran, or
  there was nothing to train), so a rerun that fails on a bad value leaves
  the record of how the existing checkpoints were trained untouched.
  Returns the timestamped file's path.
  """
  text = gin_utils.config_str()
  stamp = time.strftime('%Y%m%d-%H%M%S', time.gmtime())
  attempt = os.path.join(model_dir, f'config-{stamp}.gin')
  for path in (attempt, os.path.join(model_dir, 'config.gin')):
    with tf.io.gfile.GFile(path + '.tmp', 'w') as f:
      f.write(text)
    tf.io.gfile.rename(path + '.tmp', path, overwrite=True)
  return attempt


PARAMETERS_NAME = 'parameters.json'


def _count(tree: Any) -> int:
  return sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(tree))


def write_parameter_counts(model_dir: str, trainable: Any, frozen: Any) -> Dict[str, int]:
  """Writes MODEL_DIR/parameters.json: trained, frozen_delta and backbone counts.

  `trainable` and `frozen` are the train state's variable trees; the backbone
  is the `params` collection of both together (all of it is trained in model
  tuning), a frozen delta every other collection's frozen variables (a
  multi-task method's source prompts, say).
  """
  counts = {'trained': _count(trainable),
            'frozen_delta': _count({c: v for c, v in frozen.items() if c != 'params'}),
            'backbone': _count(trainable.get('params', {})) + _count(frozen.get('params', {}))}
  path = os.path.join(model_dir, PARAMETERS_NAME)
  with tf.io.gfile.GFile(path + '.tmp', 'w') as f:
    f.write(json.dumps(counts) + '\n')
  tf.io.gfile.rename(path + '.tmp', path, overwrite=True)
  return counts


EVALUATED_NAME = 'evaluated.json'


def write_evaluated_step(model_dir: str, step: int) -> None:
  """Records in MODEL_DIR/evaluated.json that `step`'s evaluation finished."""
  path = os.path.join(model_dir, EVALUATED_NAME)
  with tf.io.gfile.GFile(path + '.tmp', 'w') as f:
    f.write(json.dumps({'step': int(step)}) + '\n')
  tf.io.gfile.rename(path + '.tmp', path, overwrite=True)


def evaluated_step(model_dir: str) -> Optional[int]:
  """The last step whose evaluation finished, or None if none is recorded."""
  path = os.path.join(model_dir, EVALUATED_NAME)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return int(json.load(f)['step'])
