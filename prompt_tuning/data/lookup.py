"""Finding tasks: the task module, the registered task or mixture, its vocabulary.

What every command does before it reads data: import MIXTURE_OR_TASK_MODULE
(which registers tasks), look MIXTURE_OR_TASK_NAME up, and check that its
vocabulary fits the model's embedding table. Errors name the macro to fix.
"""
import importlib
from typing import Optional

import seqio

from prompt_tuning.gin_utils import ConfigurationError


def import_task_module(module: Optional[str]) -> None:
  """Imports MIXTURE_OR_TASK_MODULE (which registers tasks), if given."""
  if module:
    try:
      importlib.import_module(module)
    except ImportError as e:
      raise ConfigurationError(
          f'MIXTURE_OR_TASK_MODULE={module!r} cannot be imported: {e}') from e


def get_task(name: str) -> seqio.DatasetProviderBase:
  """The registered task or mixture `name`, or an error listing what exists."""
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError as e:
    known = sorted(seqio.TaskRegistry.names()) + sorted(seqio.MixtureRegistry.names())
    shown = ', '.join(known[:20]) + (', ...' if len(known) > 20 else '')
    raise ConfigurationError(
        f'Unknown MIXTURE_OR_TASK_NAME {name!r}. Registered ({len(known)}): '
        f'{shown or "none"}. Set MIXTURE_OR_TASK_MODULE to the module that '
        'registers it.') from e


def check_vocabulary(task: seqio.DatasetProviderBase, vocab_size: int) -> None:
  """Fails if a task's vocabulary has more ids than the model has embeddings."""
  for name, feature in task.output_features.items():
    size = feature.vocabulary.vocab_size
    if size > vocab_size:
      raise ValueError(
          f'The vocabulary of feature {name!r} ({size} ids) does not match the '
          f'model, whose embedding has {vocab_size} rows.')


__all__ = ['check_vocabulary', 'get_task', 'import_task_module']
