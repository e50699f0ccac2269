"""Registering a text-to-text task in the three forms the paper uses.

For a T5 task name `N` (e.g. `super_glue_rte_v102`):

| form | name | inputs | targets |
|---|---|---|---|
| T5 | `N` | `rte hypothesis: ... premise: ...` | `entailment` |
| taskless (the paper's) | `taskless_N` | `hypothesis: ... premise: ...` | `entailment` |
| sentinel (the paper's "span corruption + sentinel") | `taskless_N_sentinel` | as taskless | `<extra_id_0>` id, then `entailment` |

All use the T5 vocabulary with EOS on both features, tokenize, cache
placeholder and `append_eos_after_trim`, as the T5 library's tasks. The
sentinel form's postprocessor strips `<extra_id_0>` from the decoded output
before the task's own postprocessor runs.

Registration replaces a task or mixture of the same name, so importing (or
reloading) a task module twice is harmless.
"""
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import seqio

from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors
from prompt_tuning.data import vocab as vocab_lib

T5, TASKLESS, SENTINEL = 't5', 'taskless', 'sentinel'
ALL_FORMS = (T5, TASKLESS, SENTINEL)


def output_features() -> Dict[str, seqio.Feature]:
  """inputs and targets on the T5 vocabulary, EOS appended (as T5's tasks)."""
  vocabulary = vocab_lib.get_vocabulary()
  return {
      'inputs': seqio.Feature(vocabulary, add_eos=True, required=False),
      'targets': seqio.Feature(vocabulary, add_eos=True),
  }


def form_name(name: str, form: str) -> str:
  """The registered name of task/mixture `name` (T5's name) in `form`."""
  if form == T5:
    return name
  if form == TASKLESS:
    return f'taskless_{name}'
  if form == SENTINEL:
    return f'taskless_{name}_sentinel'
  raise ValueError(f'Unknown form {form!r}; one of {ALL_FORMS}.')


def add_task(name: str, source: seqio.DataSource, preprocessors_: Sequence[Callable],
             postprocess_fn: Optional[Callable] = None,
             metric_fns: Sequence[Callable] = ()) -> seqio.Task:
  """Registers a task, replacing one of the same name."""
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name, source=source, preprocessors=list(preprocessors_),
      output_features=output_features(), postprocess_fn=postprocess_fn,
      metric_fns=list(metric_fns))


def add_forms(name: str, source: seqio.DataSource,
              text_preprocessors: Sequence[Callable],
              postprocess_fn: Optional[Callable] = None,
              metric_fns: Sequence[Callable] = (),
              forms: Sequence[str] = ALL_FORMS) -> Dict[str, str]:
  """Registers task `name` (built by `text_preprocessors`) in each form.

  Returns:
    form -> registered task name.
  """
  names = {}
  for form in forms:
    text = list(text_preprocessors)
    token = []
    post = postprocess_fn
    if form in (TASKLESS, SENTINEL):
      text.append(preprocessors.remove_first_word)
    if form == SENTINEL:
      token.append(preprocessors.add_sentinel_to_targets)
      post = postprocessors.with_sentinel_removed(postprocess_fn)
    steps = (text + [seqio.preprocessors.tokenize] + token +
             [seqio.CacheDatasetPlaceholder(),
              seqio.preprocessors.append_eos_after_trim])
    names[form] = form_name(name, form)
    add_task(names[form], source, steps, post, metric_fns)
  return names


def add_mixture(name: str,
                tasks: Sequence[Tuple[str, Union[float, Callable]]]) -> seqio.Mixture:
  """Registers a mixture of (task name, rate), replacing one of the same name."""
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, list(tasks))


def add_mixture_forms(name: str, rates: Dict[str, float],
                      forms: Sequence[str] = ALL_FORMS) -> Dict[str, str]:
  """Registers mixture `name` of T5 task names -> rates, once per form."""
  names = {}
  for form in forms:
    names[form] = form_name(name, form)
    add_mixture(names[form], [(form_name(t, form), r) for t, r in rates.items()])
  return names
