"""What a checkpoint records about its deltas, read back.

    deltas = recorded_deltas(read_metadata(path), read_delta(path))
    prompt = read_prompt('/runs/rte')        # [length, embed]

Checkpoints record their deltas' configuration (`Delta.to_config`) in their
metadata. Checkpoints written before deltas existed record only their
`trainable_collections`; their prompt is rebuilt from its shape.
"""
from typing import Any, Dict, Tuple

import numpy as np

from prompt_tuning.deltas.base import Delta, delta_from_config
from prompt_tuning.deltas.prompt import NotRecorded, PromptTuning
from prompt_tuning.model import checkpoints

Variables = Dict[str, Any]


def recorded_deltas(metadata: Dict[str, Any], delta: Variables) -> Tuple[Delta, ...]:
  """The deltas a checkpoint was trained with, from its metadata and its variables."""
  if 'deltas' in metadata:
    return tuple(delta_from_config(c) for c in metadata['deltas'])
  if 'prompt' in delta:
    length = PromptTuning().prompt_of(delta).shape[0]
    return (PromptTuning(length=length, init=NotRecorded('written by an older version')),)
  return ()


def read_prompt(path: str) -> np.ndarray:
  """The prompt [length, embed] of a `.npy` file, a checkpoint, or a MODEL_DIR's latest."""
  if path.endswith('.npy'):
    return checkpoints.load_npy(path)
  directory = checkpoints.resolve_checkpoint(path)
  delta = checkpoints.read_delta(directory)
  deltas = recorded_deltas(checkpoints.read_metadata(directory), delta)
  prompts = [d for d in deltas if isinstance(d, PromptTuning)]
  if not prompts:
    raise ValueError(f'{directory} holds no prompt (its deltas: '
                     f'{[d.kind for d in deltas] or "none"}).')
  served = prompts[0].materialize(delta)
  return prompts[0].prompt_of(served)


__all__ = ['read_prompt', 'recorded_deltas']
