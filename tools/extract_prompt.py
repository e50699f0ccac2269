"""Writes the prompt of a delta checkpoint as .npy [length, embed].

    python tools/extract_prompt.py --checkpoint MODEL_DIR[/checkpoint_<step>] --output prompt.npy

MODEL_DIR alone means its latest checkpoint. A checkpoint of a real T5X run
(gin/t5x/, Orbax or legacy) works too: its prompt is target/prompt/prompt/prompt.
The .npy loads back with gin/prompts/from_file.gin (PROMPT_FILE) or as one
entry of a prompt bank.
"""
import argparse

import numpy as np

from prompt_tuning.deltas import read_prompt
from prompt_tuning.model import pretrained
from prompt_tuning.model.checkpoints import resolve_checkpoint


def _t5x_prompt(path: str):
  """(checkpoint, prompt) of a T5X checkpoint, or None when `path` is not one."""
  try:
    kind, resolved = pretrained.detect_format(path)
  except pretrained.CheckpointError:
    return None
  if kind not in ('t5x', 't5x_orbax'):
    return None
  _, trained = pretrained.read_t5x_target(kind, resolved)
  if 'prompt' not in trained:
    raise SystemExit(f'{resolved} is a T5X checkpoint without a prompt '
                     f'(it holds {sorted(trained) or "the backbone only"}).')
  return resolved, trained['prompt']['prompt']['prompt']


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--checkpoint', required=True)
  parser.add_argument('--output', required=True)
  args = parser.parse_args()
  found = _t5x_prompt(args.checkpoint)
  if found:
    source, prompt = found
  else:
    source, prompt = resolve_checkpoint(args.checkpoint), read_prompt(args.checkpoint)
  np.save(args.output, prompt)
  print(f'{source}: prompt {prompt.shape} -> {args.output}')


if __name__ == '__main__':
  main()
