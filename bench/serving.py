"""Serving many prompts on one frozen model: one pass with a prompt bank vs a pass per prompt.

    python bench/serving.py                    # T5.1.1 small, prompt 100, 256 inputs, 8 targets
    python bench/serving.py --size base --repeats 3

Two workloads, each timed both ways in the same run, as JSON:

* mixed tasks: `--tasks` tasks x `--per-task` examples in one batch, each
  example indexing its task's prompt in a bank [tasks, P, d] (one pass),
  against the same examples served task by task (one pass per prompt);
* ensemble: `--ensemble` prompts over `--ensemble-examples` examples, every
  example replicated once per prompt in one pass, against one pass per
  prompt over all the examples.

The one pass is also timed in chunks of `--rows-per-pass` rows inside the
same call (`bank.run_selected`): on a CPU a batch whose activations outgrow
the caches costs more per example than a small one.

Each is measured for greedy decoding of `--targets` tokens (EOS disabled so
every pass decodes the same number of steps) and for teacher-forced scoring
of `--targets` target tokens. Weights and prompts are random: speed does not
depend on their values. Times are the best of `--repeats` after a warm-up
(the warm-up includes compilation).
"""
import argparse
import json
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import best_time, device_description  # pylint: disable=g-import-not-at-top

from prompt_tuning.deltas import PromptTuning, paths
from prompt_tuning.infer import bank as bank_lib
from prompt_tuning.infer import predict
from prompt_tuning.model import SIZES, Transformer


def _timed(one_pass, chunked, separate, examples: int, repeats: int, compiled: bool = False):
  """Seconds and throughput of the one pass (whole, and in chunks) and the separate passes.

  The three are timed in turn (best of `repeats` each), so a change in the
  machine's load touches all alike; one untimed call of each compiles first
  unless `compiled` (the whole pass and the separate ones are then compiled).
  """
  run_separate = lambda: [f() for f in separate]
  best = {'one_pass': float('inf'), 'one_pass_in_chunks': float('inf'),
          'separate_passes': float('inf')}
  for i in range(repeats):
    for name, fn in (('one_pass', one_pass), ('one_pass_in_chunks', chunked),
                     ('separate_passes', run_separate)):
      warmup = 0 if i or (compiled and name != 'one_pass_in_chunks') else 1
      best[name] = min(best[name], best_time(fn, repeats=1, warmup=warmup))
  result = {name: {'seconds': round(t, 4), 'examples_per_second': round(examples / t, 2)}
            for name, t in best.items()}
  result['separate_passes']['passes'] = len(separate)
  result['speedup_of_one_pass'] = round(best['separate_passes'] / best['one_pass'], 3)
  result['speedup_of_one_pass_in_chunks'] = round(
      best['separate_passes'] / best['one_pass_in_chunks'], 3)
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--size', default='small', choices=sorted(SIZES))
  parser.add_argument('--tasks', type=int, default=8)
  parser.add_argument('--per-task', type=int, default=4)
  parser.add_argument('--ensemble', type=int, default=4)
  parser.add_argument('--ensemble-examples', type=int, default=8)
  parser.add_argument('--prompt-length', type=int, default=100)
  parser.add_argument('--inputs', type=int, default=256)
  parser.add_argument('--targets', type=int, default=8)
  parser.add_argument('--dtype', default='float32')
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--skip-scoring', action='store_true')
  parser.add_argument('--rows-per-pass', type=int, default=4,
                      help='rows per chunk of the one pass in chunks (bank.run_selected)')
  args = parser.parse_args()

  config = SIZES[args.size].replace(dropout_rate=0.0, dtype=args.dtype)
  prompt = PromptTuning(length=args.prompt_length)
  model = Transformer(config, deltas=(prompt,))
  rng = np.random.RandomState(0)
  batch = args.tasks * args.per_task
  tokens = jnp.asarray(rng.randint(2, 32000, (batch, args.inputs)), jnp.int32)
  targets = jnp.asarray(rng.randint(2, 32000, (batch, args.targets)), jnp.int32)
  params = nn.unbox(jax.jit(Transformer(config).init)(
      jax.random.PRNGKey(0), tokens[:1], targets[:1], targets[:1])['params'])
  variables = {'params': params}
  # A bank of one prompt per task; its stacked leaf is [tasks, P, d].
  _, bank = bank_lib.stack([prompt.with_prompt({}, rng.normal(
      0, 0.5, (args.prompt_length, config.emb_dim))) for _ in range(args.tasks)], (prompt,))
  # Tasks interleaved in the batch, as requests arrive.
  task_of = np.arange(batch) % args.tasks
  rows_of = [np.flatnonzero(task_of == t) for t in range(args.tasks)]

  decoding = predict.DecodingConfig(eos_id=-1)  # no early stop: equal work per pass
  # The delta's leaves are [P, d] (one for the batch) or [b, P, d] (per
  # example); one jitted function serves both and compiles once per shape.
  decode = jax.jit(lambda v, p, x: predict.decode(model, paths.merge(v, p), x, args.targets,
                                                  decoding))
  score = jax.jit(lambda v, p, x, y: predict.score(model, paths.merge(v, p), x, y))
  select = jax.jit(bank_lib.select)
  member = lambda t: bank_lib.member(bank, t)
  chunked = {
      name: jax.jit(lambda v, i, x, *rest, fn=fn: bank_lib.run_selected(
          fn, v, bank, i, x, *rest, rows_per_pass=args.rows_per_pass))
      for name, fn in (('decode', lambda v, x: predict.decode(model, v, x, args.targets, decoding)),
                       ('score', lambda v, x, y: predict.score(model, v, x, y)))}

  # The mixed batch's outputs must be the per-task outputs, whole or in chunks.
  mixed = np.asarray(decode(variables, select(bank, task_of), tokens))
  in_chunks = np.asarray(chunked['decode'](variables, jnp.asarray(task_of), tokens))
  alone = np.zeros_like(mixed)
  for t, rows in enumerate(rows_of):
    alone[rows] = np.asarray(decode(variables, member(t), tokens[rows]))

  result = {
      'benchmark': 'serving', 'device': device_description(), 'size': args.size,
      'dtype': args.dtype, 'prompt_length': args.prompt_length,
      'input_length': args.inputs, 'target_length': args.targets,
      'rows_per_pass': args.rows_per_pass,
      'note': ('one_pass_in_chunks is the same single call serving the batch '
               '--rows-per-pass rows at a time (bank.run_selected); on CPU a batch '
               'whose activations outgrow the caches costs more per example'),
      'mixed_tasks': {'tasks': args.tasks, 'examples': batch,
                      'decoded_rows_equal_to_task_by_task': float(np.mean(
                          np.all(mixed == alone, axis=1))),
                      'chunked_rows_equal_to_task_by_task': float(np.mean(
                          np.all(in_chunks == alone, axis=1)))},
      'ensemble': {'prompts': args.ensemble, 'examples': args.ensemble_examples},
  }
  sub = tokens[:args.ensemble_examples]
  ens_tokens, ens_index = bank_lib.replicate_for_ensemble(sub, args.ensemble)
  workloads = [('greedy_decode', decode, chunked['decode'], ())]
  if not args.skip_scoring:
    workloads.append(('teacher_forced_score', score, chunked['score'], (targets,)))
  for name, fn, fn_chunked, extra in workloads:
    mixed_pass = lambda: fn(variables, select(bank, task_of), tokens, *extra)
    mixed_chunked = lambda: fn_chunked(variables, jnp.asarray(task_of), tokens, *extra)
    per_task = [lambda rows=rows, t=t: fn(variables, member(t), tokens[rows],
                                          *[e[rows] for e in extra])
                for t, rows in enumerate(rows_of)]
    # Greedy decoding of both shapes was compiled by the check above.
    result['mixed_tasks'][name] = _timed(mixed_pass, mixed_chunked, per_task, batch,
                                         args.repeats, compiled=fn is decode)

    ens_extra = [jnp.repeat(e[:args.ensemble_examples], args.ensemble, 0) for e in extra]
    ens_pass = lambda: fn(variables, select(bank, ens_index), ens_tokens, *ens_extra)
    ens_chunked = lambda: fn_chunked(variables, ens_index, ens_tokens, *ens_extra)
    per_prompt = [lambda j=j: fn(variables, member(j), sub,
                                 *[e[:args.ensemble_examples] for e in extra])
                  for j in range(args.ensemble)]
    result['ensemble'][name] = _timed(ens_pass, ens_chunked, per_prompt,
                                      args.ensemble_examples, args.repeats)
  print(json.dumps(result, indent=2))


if __name__ == '__main__':
  main()
