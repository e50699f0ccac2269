"""Banks: many deltas, one frozen model, one forward pass.

A bank holds N trained deltas of one configuration. Each delta declares
which of its leaves can differ per example (`Delta.bank_leaves()`, e.g. the
prompt [P, d]); the bank stacks those leaves of the N deltas, [N, P, d],
and keeps one copy of everything else (which must be equal across them).
Serving a batch that mixes tasks, or ensembling N deltas of one task, is
then the same operation: index the stacked leaves per example, [b, P, d],
and put them where the single delta's leaves would be. The backbone runs
once for the whole batch.

    shared, stacked = stack([vars_a, vars_b, vars_c], model.deltas)
    variables = merge(shared, select(stacked, task_index))   # [b, ...] leaves
    logits = model.apply(variables, tokens, ...)
"""
import collections
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.deltas import paths
from prompt_tuning.model.finite import check_finite
from prompt_tuning.model.param_shapes import flatten_tree, unflatten_tree

Array = jax.Array
Variables = Dict[str, Any]


def bank_leaves(deltas: Sequence[Any]) -> Dict[str, int]:
  """{path regex: rank of the served leaf} of every delta."""
  leaves: Dict[str, int] = {}
  for delta in deltas:
    leaves.update(delta.bank_leaves())
  return leaves


def stack(members: Sequence[Variables], deltas: Sequence[Any]) -> Tuple[Variables, Variables]:
  """(shared, stacked) of N deltas' variables (without the backbone's `params`).

  `stacked` holds the bankable leaves [N, ...]; `shared` the rest, taken from
  the first member after checking every member has the same.

  Raises:
    ValueError: the members differ in structure or in a shape, a bankable
      leaf is missing, or a leaf that cannot be banked differs between them.
    finite.NonFiniteError: a member holds NaN or infinite values.
  """
  if not members:
    raise ValueError('A bank needs at least one member.')
  patterns = paths.compile_patterns(bank_leaves(deltas))
  flats = [flatten_tree(m) for m in members]
  keys = set(flats[0])
  for i, flat in enumerate(flats[1:], 1):
    if set(flat) != keys:
      raise ValueError(f'Member {i} of the bank has the variables {sorted(flat)}, member 0 '
                       f'{sorted(keys)}: they are not the same method.')
  stacked, shared = {}, {}
  for path in sorted(keys):
    values = [np.asarray(f[path]) for f in flats]
    shapes = sorted({v.shape for v in values})
    if paths.matches(path, patterns):
      if len(shapes) != 1:
        raise ValueError(f'{path} has different shapes in the bank\'s members: {shapes}; '
                         'members of one bank must have one shape.')
      stacked[path] = np.stack([v.astype(np.float32) for v in values])
    else:
      if any(v.shape != values[0].shape or not np.array_equal(v, values[0]) for v in values):
        raise ValueError(f'{path} differs between the bank\'s members and is not a '
                         'per-example leaf of its delta: they cannot share one pass.')
      shared[path] = values[0]
  if not stacked:
    raise ValueError(f'None of the variables {sorted(keys)} can be banked (the deltas '
                     f'declare {sorted(bank_leaves(deltas))}).')
  for i, flat in enumerate(flats):  # one NaN member would poison the votes and means
    check_finite(flat, f'Member {i} of the bank')
  return unflatten_tree(shared), unflatten_tree(stacked)


def size(stacked: Variables) -> int:
  """N, the number of members of a stacked bank."""
  return int(jax.tree_util.tree_leaves(stacked)[0].shape[0])


def member(stacked: Variables, index: int) -> Variables:
  """Member `index`'s own leaves of a stacked bank, as served alone."""
  return jax.tree_util.tree_map(lambda x: x[index], stacked)


def select(stacked: Variables, index: Array) -> Variables:
  """Per-example leaves [b, ...] from a stacked bank [N, ...] and indices [b]."""
  index = jnp.asarray(index)
  return jax.tree_util.tree_map(lambda x: jnp.take(jnp.asarray(x), index, axis=0), stacked)


def replicate_for_ensemble(encoder_input_tokens: Array, num_members: int
                           ) -> Tuple[Array, Array]:
  """Each example repeated once per member: (tokens [b * N, L], member_index [b * N]).

  Row i * N + j is example i with member j.
  """
  batch = encoder_input_tokens.shape[0]
  tokens = jnp.repeat(encoder_input_tokens, num_members, axis=0)
  return tokens, jnp.tile(jnp.arange(num_members), batch)


def run_selected(fn: Callable[..., Any], variables: Variables, stacked: Variables, index: Array,
                 tokens: Array, *per_example: Array, rows_per_pass: Optional[int] = None) -> Any:
  """`fn(variables + stacked[index], tokens, *per_example)`: row i served by member index[i].

  A mixed-task batch (`index` = each example's task) or an ensemble
  (`replicate_for_ensemble`'s index). `rows_per_pass`: run the batch that
  many rows at a time inside the one compiled call (`lax.map`), for a CPU,
  whose caches hold only a few examples' activations: there T5.1.1 small
  scores a batch of 32 at 1.6x the cost per example of batches of 4
  (bench/serving.py), so a mixed batch served whole loses to one pass per
  task. The rows are the same either way. None: the whole batch at once
  (what an accelerator wants).
  """
  def run(index, tokens, *per_example):
    return fn(paths.merge(variables, select(stacked, index)), tokens, *per_example)

  batch = tokens.shape[0]
  if not rows_per_pass or rows_per_pass >= batch:
    return run(index, tokens, *per_example)
  if rows_per_pass < 1:
    raise ValueError(f'rows_per_pass must be a positive number of rows, not {rows_per_pass}.')
  passes = -(-batch // rows_per_pass)
  # Padded with copies of row 0 to whole passes; the copies' outputs are dropped.
  padding = passes * rows_per_pass - batch

  def split(x):
    x = jnp.asarray(x)
    x = jnp.concatenate([x, jnp.repeat(x[:1], padding, axis=0)]) if padding else x
    return x.reshape((passes, rows_per_pass) + x.shape[1:])

  out = jax.lax.map(lambda args: run(*args), tuple(split(x) for x in (index, tokens) + per_example))
  return jax.tree_util.tree_map(lambda y: y.reshape((-1,) + y.shape[2:])[:batch], out)


def run_ensemble(fn: Callable[..., Any], variables: Variables, stacked: Optional[Variables],
                 tokens: Array, *per_example: Array, rows_per_pass: Optional[int] = None) -> Any:
  """`fn(variables, tokens, *per_example)` with every example once per bank member.

  `tokens` [b, L] are the model's input tokens (`contract`'s first feature).
  Rows of the result are [b * N, ...] (`replicate_for_ensemble`'s order);
  other per-example arrays (e.g. targets to score) are repeated to match.
  With `stacked` None this is `fn` on the inputs as they are.
  `rows_per_pass`: as `run_selected`.
  """
  if stacked is None:
    return fn(variables, tokens, *per_example)
  copies = size(stacked)
  tokens, index = replicate_for_ensemble(tokens, copies)
  return run_selected(fn, variables, stacked, index, tokens,
                      *[jnp.repeat(x, copies, axis=0) for x in per_example],
                      rows_per_pass=rows_per_pass)


def repeat_examples(deltas: Sequence[Any], variables: Variables, times: int) -> Variables:
  """Per-example leaves [b, ...] repeated `times` each, as `jnp.repeat` repeats inputs.

  A leaf is per-example when its delta banks it and it has one more axis
  than when served alone; shared leaves are returned as they are.
  """
  leaves = bank_leaves(deltas)
  if times == 1 or not leaves:
    return variables
  ranks = [(p, rank) for p, rank in zip(paths.compile_patterns(leaves), leaves.values())]
  flat = flatten_tree(variables)
  for path, value in flat.items():
    if any(p.fullmatch(path) and jnp.ndim(value) == rank + 1 for p, rank in ranks):
      flat[path] = jnp.repeat(value, times, axis=0)
  return unflatten_tree(flat)


def vote_rows(rows: np.ndarray, num_members: int) -> np.ndarray:
  """`majority_vote` over rows of tokens [b * N, ...] -> [b, ...]."""
  rows = np.asarray(rows)
  voted = majority_vote([tuple(np.reshape(r, -1).tolist()) for r in rows], num_members)
  return np.asarray(voted, rows.dtype).reshape((len(voted),) + rows.shape[1:])


def majority_vote(predictions: Sequence[Any], num_members: int) -> list:
  """The most frequent of each example's N predictions.

  `predictions` has b * N hashable entries ordered as `replicate_for_ensemble`
  orders rows. Ties go to the tied prediction made by the lowest-numbered
  member, so the result is deterministic and, with N = 1, the member's own.
  """
  if len(predictions) % num_members:
    raise ValueError(f'{len(predictions)} predictions do not split into groups of '
                     f'{num_members}.')
  voted = []
  for start in range(0, len(predictions), num_members):
    group = list(predictions[start:start + num_members])
    counts = collections.Counter(group)
    top = max(counts.values())
    voted.append(next(p for p in group if counts[p] == top))
  return voted


__all__ = ['bank_leaves', 'majority_vote', 'member', 'repeat_examples',
           'replicate_for_ensemble', 'run_ensemble', 'select', 'size', 'stack', 'vote_rows']
