r"""Writes a prompt's initial value, made from a pretrained checkpoint's embeddings, as .npy.

    python tools/init_prompt.py --checkpoint gs://.../t5_1_1_lm100k_base/checkpoint_1100000 \
        --gin_file=gin/prompts/class_labels.gin --gin.CLASS_LABELS="['yes', 'no']" \
        --gin.PROMPT_LENGTH=100 --output /tmp/init.npy [--seed 0]

For runs whose initializer cannot see the pretrained embedding table: under
real T5X (gin/t5x/) the prompt is initialized before the checkpoint is
restored. Start such a run from the file with gin/prompts/from_file.gin
(PROMPT_FILE). The gin file is one of gin/prompts/ (its PROMPT_INIT and
PROMPT_LENGTH); the value is what our trainer's init gives with the same
seed (RANDOM_SEED).
"""
import argparse
import sys
from typing import Any

import gin
import jax
import numpy as np

from prompt_tuning import gin_utils
from prompt_tuning.deltas import PromptTuning
from prompt_tuning.model import Transformer, load_pretrained
from prompt_tuning.train import trainer

_LENGTHS = {'inputs': 8, 'targets': 4}  # the prompt does not depend on them


def initial_prompt(checkpoint: str, init: Any, length: int, seed: int) -> np.ndarray:
  """The [length, d] prompt our trainer starts from with `init` on `checkpoint`, seed `seed`."""
  delta = PromptTuning(length=length, init=init)
  config, params = load_pretrained(checkpoint)
  # Through the model, as the trainer does, so the rng (and the value) are the same.
  variables = trainer.initialize_variables(Transformer(config, deltas=(delta,)), params,
                                           jax.random.PRNGKey(seed), _LENGTHS)
  return np.asarray(delta.prompt_of(variables))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--checkpoint', required=True, help='the pretrained model')
  parser.add_argument('--output', required=True)
  parser.add_argument('--seed', type=int, default=0)
  args, rest = parser.parse_known_args(gin_utils.rewrite_gin_args(
      sys.argv[1:] if argv is None else argv))
  files = [a.split('=', 1)[1] for a in rest if a.startswith('--gin_file=')]
  bindings = [a.split('=', 1)[1] for a in rest if a.startswith('--gin_bindings=')]
  if not files or len(files) + len(bindings) != len(rest):
    parser.error(f'Give a gin/prompts/ file with --gin_file and macros with --gin.NAME=VALUE; '
                 f'got {rest}.')
  try:
    gin_utils.parse_gin(files, bindings)
    init = gin.query_parameter('%PROMPT_INIT').scoped_configurable_fn()
    prompt = initial_prompt(args.checkpoint, init, gin.query_parameter('%PROMPT_LENGTH'),
                            args.seed)
  except (ValueError, FileNotFoundError, gin_utils.ConfigurationError) as e:
    sys.exit(f'init_prompt: {e}')
  np.save(args.output, prompt.astype(np.float32))
  print(f'{args.checkpoint}: {type(init).__name__} prompt {prompt.shape} -> {args.output}')


if __name__ == '__main__':
  main()
