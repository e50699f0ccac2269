"""Writes the prompt of a delta checkpoint as .npy [length, embed].

    python tools/extract_prompt.py --checkpoint MODEL_DIR[/checkpoint_<step>] --output prompt.npy

MODEL_DIR alone means its latest checkpoint. The .npy loads back with
gin/prompts/from_file.gin (PROMPT_FILE) or as one entry of a prompt bank.
"""
import argparse

import numpy as np

from prompt_tuning.deltas import read_prompt
from prompt_tuning.model.checkpoints import resolve_checkpoint


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--checkpoint', required=True)
  parser.add_argument('--output', required=True)
  args = parser.parse_args()
  prompt = read_prompt(args.checkpoint)
  np.save(args.output, prompt)
  print(f'{resolve_checkpoint(args.checkpoint)}: prompt {prompt.shape} -> {args.output}')


if __name__ == '__main__':
  main()
