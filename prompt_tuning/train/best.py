"""The best checkpoint of a run (the paper's early stopping), kept so that no kill loses it.

MODEL_DIR/best/ holds checkpoint_<step> of the evaluation with the best mean
metric, and best.json records its step, score and per-task metrics. A new
best is written in three steps, each safe to be killed after:

1. save best/checkpoint_<new> (atomic, Orbax), its score in its metadata;
2. switch best.json to it (atomic rename);
3. delete the old best checkpoint.

So best.json always names a checkpoint that exists. A run killed after 1
leaves two checkpoints and a record naming the old one: on restart the
tracker reads the scores in their metadata, keeps the better one (switching
the record if that is the new one) and deletes the other.
"""
import json
import os
from typing import Any, Callable, Dict, Mapping, Optional

import jax
import tensorflow as tf
from absl import logging

from prompt_tuning.model.checkpoints import DeltaCheckpointer
from prompt_tuning.train import faults

Record = Dict[str, Any]  # {'step', 'score', 'metrics'}


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


class BestCheckpointTracker:
  """Keeps the checkpoint with the best mean metric in MODEL_DIR/best/ (see the module doc)."""

  def __init__(self, model_dir: str):
    self.directory = os.path.join(model_dir, 'best')
    # keep=None: the old best is deleted by us, after the record has moved on.
    self.checkpointer = DeltaCheckpointer(self.directory, keep=None)
    self._record = os.path.join(self.directory, 'best.json')
    self.best: Optional[Record] = self._recover()

  @property
  def step(self) -> Optional[int]:
    return self.best['step'] if self.best else None

  def _recover(self) -> Optional[Record]:
    """The record, reconciled with the checkpoints present after any interruption."""
    record = (json.loads(tf.io.gfile.GFile(self._record).read())
              if tf.io.gfile.exists(self._record) else None)
    steps = self.checkpointer.all_steps()
    candidates: Dict[int, Record] = {}
    for step in steps:
      if record and record['step'] == step:
        candidates[step] = record
        continue
      try:
        scored = self.checkpointer.metadata(step).get('best')
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('Ignoring the unreadable best/checkpoint_%d (%s).', step,
                        type(e).__name__)
        continue
      if scored:
        candidates[step] = scored
    if record and record['step'] not in steps:
      logging.warning('best.json names checkpoint_%d, which is not in %s; ignoring it.',
                      record['step'], self.directory)
    if not candidates:
      return None
    # The better score; on a tie the earlier step (a later one must be better to replace it).
    chosen = candidates[max(candidates, key=lambda s: (candidates[s]['score'], -s))]
    if record != chosen:
      logging.warning('The best checkpoint is best/checkpoint_%d (mean metric %.4f): '
                      'a run stopped while switching to it; best.json now says so.',
                      chosen['step'], chosen['score'])
      self._write_record(chosen)
    self._delete_all_but(chosen['step'], candidates)
    _sync('best_recovered')
    return chosen

  def improves(self, score: float) -> bool:
    return self.best is None or score > self.best['score']

  def update(self, step: int, score: float, results: Mapping[str, Any],
             save: Callable[[DeltaCheckpointer, Dict[str, Any]], None]) -> None:
    """Makes checkpoint `step` the best; `save(checkpointer, extra_metadata)` writes it."""
    new = {'step': step, 'score': score, 'metrics': results}
    old = self.checkpointer.all_steps()
    save(self.checkpointer, {'best': new})
    faults.crash_point('best_saved')
    self._write_record(new)
    self.best = new
    faults.crash_point('best_recorded')
    self._delete_all_but(step, old)
    logging.info('New best checkpoint: step %d, mean metric %.4f', step, score)

  def _write_record(self, record: Record) -> None:
    if jax.process_index() > 0:  # every host keeps the record; host 0 writes it
      return
    tmp = self._record + '.tmp'
    with tf.io.gfile.GFile(tmp, 'w') as f:
      f.write(json.dumps(record, indent=2))
    tf.io.gfile.rename(tmp, self._record, overwrite=True)

  def _delete_all_but(self, keep: int, steps) -> None:
    for step in steps:
      if step != keep:
        self.checkpointer.delete(step)
