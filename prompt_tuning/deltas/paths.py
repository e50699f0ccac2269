"""Variables by path: one regex vocabulary to train, save, restore and bank.

A variable's path is its collection and tree keys joined by '/', e.g.

    prompt/prompt/prompt                                the soft prompt
    params/encoder/layers_0/attention/query/kernel      a backbone kernel
    params/encoder/layers_0/pre_mlp_layer_norm/scale    an RMS norm's scale

A pattern is a regular expression that must match a whole path
(`re.fullmatch`): `params/.*` is every backbone parameter, `params/.*/scale`
the norms (norm tuning), `prompt/.*` the prompt collection.
"""
import re
from typing import Any, Dict, Iterable, Mapping, Sequence, Tuple

from prompt_tuning.model.param_shapes import flatten_tree, unflatten_tree

Variables = Dict[str, Any]


def compile_patterns(patterns: Iterable[str]) -> Tuple[re.Pattern, ...]:
  """Compiled patterns; a malformed one is an error naming it."""
  compiled = []
  for pattern in patterns:
    try:
      compiled.append(re.compile(pattern))
    except re.error as e:
      raise ValueError(f'The path pattern {pattern!r} is not a regular expression: {e}') from e
  return tuple(compiled)


def matches(path: str, patterns: Sequence[re.Pattern]) -> bool:
  return any(p.fullmatch(path) for p in patterns)


def partition(variables: Mapping[str, Any], patterns: Sequence[str]
              ) -> Tuple[Variables, Variables]:
  """(rest, selected): the leaves whose path matches a pattern, and the others.

  Both are nested dicts shaped like `variables` with disjoint leaves;
  `merge(rest, selected)` gives `variables` back. A pattern that selects
  nothing is an error (a misspelled path would otherwise train nothing).
  """
  compiled = compile_patterns(patterns)
  flat = flatten_tree(variables)
  unused = [p.pattern for p in compiled if not any(p.fullmatch(path) for path in flat)]
  if unused:
    collections = sorted({path.split('/')[0] for path in flat})
    raise ValueError(f'The trainable patterns {unused} match no variable; the model\'s '
                     f'collections are {collections} (paths look like '
                     f'{sorted(flat)[0]!r}).')
  selected = {p: v for p, v in flat.items() if matches(p, compiled)}
  rest = {p: v for p, v in flat.items() if p not in selected}
  return unflatten_tree(rest), unflatten_tree(selected)


def select(variables: Mapping[str, Any], patterns: Sequence[str]) -> Variables:
  """The leaves whose path matches a pattern (nothing is an empty dict)."""
  compiled = compile_patterns(patterns)
  return unflatten_tree({p: v for p, v in flatten_tree(variables).items()
                         if matches(p, compiled)})


def merge(*trees: Mapping[str, Any]) -> Variables:
  """Deep merge of nested dicts; later trees win where a leaf is in several."""
  flat: Dict[str, Any] = {}
  for tree in trees:
    flat.update(flatten_tree(tree))
  return unflatten_tree(flat)


__all__ = ['compile_patterns', 'matches', 'merge', 'partition', 'select']
