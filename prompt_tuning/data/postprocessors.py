"""Postprocessors: decoded model outputs (and targets) into what metrics compare.

SeqIO calls `postprocess_fn(text, example=example, is_target=...)` once for
each target (with `targets_pretokenized` as the text) and once for each
prediction. As in the T5 library, a class label that is not one of the
label names becomes -1, which no metric counts as right.

`remove_sentinel` / `with_sentinel_removed` undo the paper's "span corruption
+ sentinel" setting, where every target starts with `<extra_id_0>`: the
decoded prediction reads '<extra_id_0> True', the pretokenized target 'True'.
`translate_labels` maps one task's label words onto another's (the QQP <->
MRPC zero-shot transfer).
"""
import functools
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

SENTINEL = '<extra_id_0>'
# Words dropped before comparing a WSC prediction with the candidate referent.
WSC_DETERMINERS = frozenset({
    'a', 'an', 'few', 'her', 'his', 'each', 'every', 'many', 'much', 'my',
    'our', 'some', 'that', 'the', 'their', 'these', 'this', 'those', 'which',
    'whose', 'your'})

Example = Optional[Mapping[str, Any]]
PostprocessFn = Callable[..., Any]


def _text(value) -> str:
  """Bytes (what examples hold) or str (decoded predictions) as str."""
  if isinstance(value, (bytes, np.bytes_)):
    return value.decode('utf-8')
  return str(value)


def string_label_to_class_id(text, label_classes: Sequence[str], default: int = -1,
                             **unused_kwargs) -> int:
  """Index of `text` in `label_classes`, or `default` (-1) if it is not one."""
  text = _text(text)
  return list(label_classes).index(text) if text in label_classes else default


def class_id_postprocessor(label_classes: Sequence[str]) -> PostprocessFn:
  """The classification postprocessor for a task with these label names."""
  return functools.partial(string_label_to_class_id,
                           label_classes=tuple(label_classes))


def string_to_float(text, default: float = -1.0, **unused_kwargs) -> float:
  """STS-B: the predicted number, or `default` when it is not one."""
  try:
    return float(_text(text))
  except ValueError:
    return default


def multirc(text, example: Example = None, is_target: bool = False) -> dict:
  """The answer's class; targets also carry their question as the group."""
  out = {'value': string_label_to_class_id(text, ('False', 'True'))}
  if is_target:
    # Predictions come without the example's question; targets bring it.
    out['group'] = int(example['idx/question'])
  return out


def record(text, example: Example = None, is_target: bool = False) -> dict:
  """A predicted answer; a target is all gold answers and its query's group."""
  if is_target:
    return {
        'value': [_text(a) for a in example['answers']],
        'group': (int(example['idx/passage']), int(example['idx/query'])),
    }
  return {'value': _text(text)}


def _wsc_clean(text: str) -> str:
  return ' '.join(w for w in text.strip().lower().split(' ')
                  if w not in WSC_DETERMINERS)


def wsc_simple(text, example: Example = None, is_target: bool = False) -> int:
  """1 if the prediction names the candidate referent, 0 if not, -1 if empty.

  Both sides are lower-cased with determiners dropped; the prediction names
  the candidate when either word set contains the other, unless exactly one
  of them has an apostrophe ("Bob" is not "Bob's hat"). The target is the
  example's label, so the metric is the accuracy of this 0/1 against it.
  """
  if is_target:
    return int(example['label'])
  prediction = _wsc_clean(_text(text))
  if not prediction:
    # An empty prediction must not match label 0 by accident.
    return -1
  referent = _wsc_clean(_text(example['targets_pretokenized']))
  if ("'" in prediction) != ("'" in referent):
    return 0
  predicted, candidate = set(prediction.split(' ')), set(referent.split(' '))
  return int(predicted <= candidate or candidate <= predicted)


def remove_sentinel(text, **unused_kwargs) -> str:
  """'<extra_id_0> True' -> 'True'; text without the sentinel is kept."""
  text = _text(text)
  if text.startswith(SENTINEL):
    text = text[len(SENTINEL):].strip()
  return text


def _sentinel_removed(postprocess_fn: Optional[PostprocessFn], text,
                      **kwargs) -> Any:
  text = remove_sentinel(text)
  return postprocess_fn(text, **kwargs) if postprocess_fn else text


def with_sentinel_removed(
    postprocess_fn: Optional[PostprocessFn]) -> PostprocessFn:
  """`postprocess_fn` applied after `remove_sentinel` (or just the latter)."""
  return functools.partial(_sentinel_removed, postprocess_fn)


def _translated(mapping: Mapping[str, str], postprocess_fn: PostprocessFn, text,
                **kwargs) -> Any:
  text = _text(text)
  if not kwargs.get('is_target'):
    # Targets are already in the evaluated task's words.
    for source, target in mapping.items():
      text = text.replace(source, target)
  return postprocess_fn(text, **kwargs)


def translate_labels(mapping: Mapping[str, str],
                     postprocess_fn: PostprocessFn) -> PostprocessFn:
  """Replaces words in predictions (e.g. 'duplicate' -> 'equivalent') first.

  `str.replace` in order, so 'not_duplicate' becomes 'not_equivalent' too.
  """
  return functools.partial(_translated, dict(mapping), postprocess_fn)
