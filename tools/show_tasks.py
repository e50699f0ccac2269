"""Lists the registered tasks and mixtures, or shows a task's examples.

    python tools/show_tasks.py                       # every task and mixture
    python tools/show_tasks.py super_glue_rte        # names containing a string
    python tools/show_tasks.py --task taskless_super_glue_rte_v102 --split validation -n 3

For a task, prints N examples as the data source gives them and as the task
makes them (inputs / targets text, their token counts with EOS, and the
fields the metrics use); for a mixture, its tasks and rates. Nothing is
downloaded: the data must be in the TFDS data directory (`--tfds_data_dir`,
default ~/tensorflow_datasets) or, for SuperGLUE, in the official release
named by PROMPT_TUNING_SUPERGLUE_DIR.
"""
import argparse
import importlib
import sys
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import seqio

DEFAULT_MODULE = 'prompt_tuning.data.tasks'


def _show(value: Any) -> str:
  """A feature value for printing: text decoded, arrays as lists."""
  if isinstance(value, (bytes, np.bytes_)):
    return repr(value.decode('utf-8', errors='replace'))
  if isinstance(value, np.ndarray):
    if value.dtype == object:
      return repr([_show(v) for v in value.tolist()]).replace('"', '')
    return str(value.tolist())
  if isinstance(value, Mapping):
    return '{' + ', '.join(f'{k}: {_show(v)}' for k, v in value.items()) + '}'
  return str(value.item() if isinstance(value, np.generic) else value)


def list_names(substring: str = '') -> None:
  tasks = sorted(n for n in seqio.TaskRegistry.names() if substring in n)
  mixtures = sorted(n for n in seqio.MixtureRegistry.names() if substring in n)
  print(f'Tasks ({len(tasks)}):')
  for name in tasks:
    print(f'  {name}')
  print(f'Mixtures ({len(mixtures)}):')
  for name in mixtures:
    print(f'  {name}')


def show_mixture(mixture: seqio.Mixture) -> None:
  total = mixture.total_rate
  print(f'Mixture {mixture.name}: {len(mixture.tasks)} tasks')
  for task in mixture.tasks:
    rate = mixture.get_rate(task)
    share = rate / total if total else 0.0
    print(f'  {task.name:60s} rate {rate:>12g}  ({100 * share:.2f}%)')


def check_prepared(task: seqio.Task) -> None:
  """Fails for a TFDS source that is not prepared (SeqIO would download it)."""
  if isinstance(task.source, seqio.TfdsDataSource):
    builder = task.source.tfds_dataset.builder
    if not builder.is_prepared():
      raise FileNotFoundError(
          f'TFDS {task.source.tfds_dataset.name} is not prepared in '
          f'{builder.data_dir_root}.')


def show_task(task: seqio.Task, split: str, count: int) -> None:
  """Prints `count` raw and preprocessed examples of one split."""
  check_prepared(task)
  raw = task.source.get_dataset(split=split, shuffle=False).take(count)
  made = task.get_dataset(sequence_length=None, split=split, shuffle=False,
                          try_in_mem_cache=False).take(count)
  print(f'Task {task.name}, split {split}')
  print(f'  source: {task.source!r}'[:300])
  print(f'  metrics: {[getattr(f, "__name__", repr(f)) for f in task.metric_fns]}')
  for i, example in enumerate(raw.as_numpy_iterator()):
    print(f'\n[raw {i}]')
    for key, value in example.items():
      print(f'  {key}: {_show(value)}')
  for i, example in enumerate(made.as_numpy_iterator()):
    print(f'\n[preprocessed {i}]')
    for key in ('inputs', 'targets'):
      if key in example:
        print(f'  {key}: {_show(example[key + "_pretokenized"])}  '
              f'({len(example[key])} tokens)')
    for key, value in example.items():
      if key not in ('inputs', 'targets', 'inputs_pretokenized',
                     'targets_pretokenized'):
        print(f'  {key}: {_show(value)}')
    print(f'  targets ids: {example["targets"].tolist()}')


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('filter', nargs='?', default='',
                      help='list only names containing this string')
  parser.add_argument('--task', help='task or mixture to show')
  parser.add_argument('--split', default='validation')
  parser.add_argument('-n', '--num_examples', type=int, default=3)
  parser.add_argument('--module', action='append', default=None,
                      help=f'module(s) registering tasks (default {DEFAULT_MODULE})')
  parser.add_argument('--tfds_data_dir', help='where the TFDS datasets are prepared')
  args = parser.parse_args(argv)

  for module in args.module or [DEFAULT_MODULE]:
    importlib.import_module(module)
  if args.tfds_data_dir:
    seqio.set_tfds_data_dir_override(args.tfds_data_dir)
  if not args.task:
    list_names(args.filter)
    return 0
  try:
    provider = seqio.get_mixture_or_task(args.task)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if isinstance(provider, seqio.Mixture):
    show_mixture(provider)
    return 0
  if args.split not in provider.splits:
    print(f'error: task {args.task} has no split {args.split!r}; its splits are '
          f'{list(provider.splits)}.', file=sys.stderr)
    return 2
  try:
    show_task(provider, args.split, args.num_examples)
  except Exception as e:  # pylint: disable=broad-except
    # Missing data shows up as many different errors; name the ways to fix it.
    print(f'\nerror: cannot read {args.task} ({args.split}): '
          f'{type(e).__name__}: {str(e)[:500]}\n'
          'The data must be present locally: prepare the TFDS dataset into '
          '--tfds_data_dir (e.g. `tfds build super_glue/rte` on a machine with '
          'network access, then copy the directory), or for SuperGLUE set '
          'PROMPT_TUNING_SUPERGLUE_DIR to the unzipped official release.',
          file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
