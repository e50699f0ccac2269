"""Initial delta values from another run's checkpoint, by regex assignment (SPoT).

    restore = RestoreDelta('/runs/source/checkpoint_1000')          # same paths
    restore = RestoreDelta('/runs/mixture', assignment=(
        (r'prompt/prompt/prompt', r'prompt/prompt/prompt'),        # take the prompt
        (r'lora/.*', None)))                                       # keep LoRA's own init
    variables = restore(variables)

Like T5X's `assignment_map`: each rule is (target regex, source), tried in
order on every delta variable's path (`paths`: 'collection/a/b'); the first
whose regex matches the whole path decides. The source is a path template
(`re.Match.expand`, so `\\1` refers to the target's groups), or None to keep
the target's own initial value. A variable no rule matches keeps its initial
value too. The backbone (`params`) is never assigned: the base stays the
pretrained checkpoint. SPoT (Vu et al., 2022) is the prompt case: a target
prompt starting from a source task's trained prompt.
"""
import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np
from absl import logging

from prompt_tuning.deltas import paths
from prompt_tuning.model import checkpoints
from prompt_tuning.model.param_shapes import flatten_tree, unflatten_tree

Variables = Dict[str, Any]
Assignment = Sequence[Tuple[str, Optional[str]]]
SAME_PATHS: Assignment = ((r'(.*)', r'\1'),)


def assign(target: Variables, source: Variables, assignment: Assignment = SAME_PATHS,
           source_name: str = 'the source') -> Tuple[Variables, List[Tuple[str, str]]]:
  """`target` with leaves replaced from `source` by `assignment`.

  Returns:
    (the new variables, the (target path, source path) pairs assigned).

  Raises:
    ValueError: a rule names a source path `source` lacks, a source leaf's
      shape differs from its target's, or nothing was assigned.
  """
  rules = list(zip(paths.compile_patterns(p for p, _ in assignment),
                   (replacement for _, replacement in assignment)))
  flat_target, flat_source = flatten_tree(target), flatten_tree(source)
  assigned = []
  for path, value in flat_target.items():
    if path.startswith('params/'):
      continue
    match, replacement = next(((m, r) for m, r in ((rule.fullmatch(path), r)
                                                   for rule, r in rules) if m), (None, None))
    if match is None or replacement is None:
      continue
    source_path = match.expand(replacement)
    if source_path not in flat_source:
      raise ValueError(f'{source_name} has no variable {source_path} (for {path}); it has '
                       f'{sorted(flat_source)}. Fix the assignment rule {match.re.pattern!r}.')
    new = np.asarray(flat_source[source_path])
    if new.shape != tuple(value.shape):
      raise ValueError(f'{source_name}\'s {source_path} has shape {new.shape} but {path} '
                       f'has shape {tuple(value.shape)}: the source was trained with another '
                       'shape (e.g. prompt length or width).')
    sharding = getattr(value, 'sharding', None)
    new = new.astype(value.dtype)
    flat_target[path] = jax.device_put(new, sharding) if sharding is not None else new
    assigned.append((path, source_path))
  if not assigned:
    raise ValueError(f'The assignment {list(assignment)} took nothing from {source_name}: '
                     f'its rules match none of {sorted(p for p in flat_target if not p.startswith("params/"))}.')
  return unflatten_tree(flat_target), assigned


@dataclasses.dataclass(frozen=True)
class RestoreDelta:
  """A run's initial delta values from `checkpoint` (a checkpoint or a MODEL_DIR's latest).

  The trainer applies it once, when a run starts fresh (a resumed run keeps
  its own checkpoint). gin: `trainer.train.delta_init = @assignment.RestoreDelta()`
  (gin/runs/spot.gin).
  """
  checkpoint: str
  assignment: Assignment = SAME_PATHS

  def __call__(self, variables: Variables) -> Variables:
    directory = checkpoints.resolve_checkpoint(self.checkpoint)
    source = checkpoints.read_delta(directory)
    restored, assigned = assign(variables, source, [tuple(r) for r in self.assignment],
                                source_name=directory)
    for target, source_path in assigned:
      logging.info('Initialised %s from %s:%s', target, directory, source_path)
    return restored


__all__ = ['Assignment', 'RestoreDelta', 'SAME_PATHS', 'assign']
