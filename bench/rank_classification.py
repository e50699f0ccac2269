"""Rank classification: the encoder once per example vs once per (example, label), as JSON.

    python bench/rank_classification.py                  # the demo model, batch 32 x 120
    python bench/rank_classification.py --labels 4,12 --repeats 5

`predict.rank_classify` encodes each example once and scores every label
with the decoder against that encoding. The baseline is what it did before:
every example repeated once per label through the whole model (the encoder
num_labels times). Both run on the shipped demo model (prompt_tuning/assets)
with a 20-token prompt, at the demo's evaluation shape, timed alternately in
one run (best of --repeats after a compiling call); their picks must agree.
The physical limit of the saving is (encoder + labels x decoder) /
labels x (encoder + decoder): the encoder's share of a forward pass, times
(1 - 1 / labels).
"""
import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import best_time, device_description  # pylint: disable=g-import-not-at-top

from prompt_tuning.deltas import PromptTuning
from prompt_tuning.infer import bank as bank_lib
from prompt_tuning.infer import predict
from prompt_tuning.model import Transformer
from prompt_tuning.model.losses import sequence_scores
from prompt_tuning.model.pretrained import load_pretrained

DEMO_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'prompt_tuning',
                          'assets', 'demo_world_t5')


def repeat_through_the_model(model, variables, tokens, label_tokens):
  """The former rank classification: [b * labels] rows through encoder and decoder."""
  labels, length = len(label_tokens), max(map(len, label_tokens))
  targets = np.zeros((labels, length), np.int32)
  for i, ids in enumerate(label_tokens):
    targets[i, :len(ids)] = ids
  batch = tokens.shape[0]
  targets = jnp.tile(jnp.asarray(targets), (batch, 1))
  decoder_inputs = jnp.concatenate([jnp.zeros_like(targets[:, :1]), targets[:, :-1]], 1)
  logits = model.apply(bank_lib.repeat_examples(model.deltas, variables, labels),
                       jnp.repeat(tokens, labels, axis=0), decoder_inputs, targets)
  return jnp.argmax(sequence_scores(logits, targets).reshape(batch, labels), axis=-1)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--inputs', type=int, default=120)
  parser.add_argument('--labels', default='4,12', help='label counts to measure')
  parser.add_argument('--label_length', type=int, default=3, help='tokens per label, EOS included')
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()

  config, params = load_pretrained(DEMO_MODEL)
  model = Transformer(config, deltas=(PromptTuning(length=20),))
  rng = np.random.RandomState(0)
  tokens = jnp.asarray(rng.randint(2, 32000, (args.batch, args.inputs)), jnp.int32)
  variables = model.init(jax.random.PRNGKey(0), tokens[:1], tokens[:1, :2], tokens[:1, :2])
  variables = {**variables, 'params': params}
  results = {}
  for labels in map(int, args.labels.split(',')):
    label_tokens = [list(rng.randint(2, 32000, args.label_length - 1)) + [1]
                    for _ in range(labels)]
    once = jax.jit(lambda v, x, l=label_tokens: predict.rank_classify(model, v, x, l))
    repeated = jax.jit(lambda v, x, l=label_tokens: repeat_through_the_model(model, v, x, l))
    same = bool(np.array_equal(once(variables, tokens), repeated(variables, tokens)))
    times = {'encode_once': float('inf'), 'encode_per_label': float('inf')}
    for _ in range(2):  # alternated, so a change in load touches both
      times['encode_once'] = min(times['encode_once'],
                                 best_time(lambda: once(variables, tokens), args.repeats))
      times['encode_per_label'] = min(times['encode_per_label'],
                                      best_time(lambda: repeated(variables, tokens), args.repeats))
    results[f'{labels}_labels'] = {
        'seconds': {k: round(v, 4) for k, v in times.items()},
        'speedup': round(times['encode_per_label'] / times['encode_once'], 2),
        'examples_per_second_encode_once': round(args.batch / times['encode_once'], 1),
        'same_picks': same}
  print(json.dumps({'benchmark': 'rank_classification', 'model': 'demo_world_t5 (4.9M)',
                    'prompt_length': 20, 'batch': args.batch, 'inputs': args.inputs,
                    'label_length': args.label_length, 'device': device_description(),
                    'results': results}, indent=2))


if __name__ == '__main__':
  main()
