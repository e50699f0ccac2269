"""SeqIO tasks for the self-supervised objectives: C4 and a user's own text files.

Importing this module registers (idempotently):

  c4_v220_prefix_lm        prefix LM ("LM adaptation") over C4
  c4_v220_span_corruption  T5's pre-training objective over C4

The names are the T5 library's. The source is TFDS `c4/en:3.0.1` (field
'text'); the T5 library reads `c4/en:2.2.0` under these names. Set
PROMPT_TUNING_C4_TFDS_NAME (e.g. `c4/en:2.2.0`) before the import to read
another prepared version. C4 is far too large to prepare locally: point
TFDS_DATA_DIR at a prepared copy.

Plain text, one document per line, gets the same two objectives:

  register_text_file_tasks('mytext', '/data/mytext/*.txt')
    -> mytext_prefix_lm, mytext_span_corruption

or, so that `--gin.MIXTURE_OR_TASK_MODULE="'prompt_tuning.data.tasks'"` can
register them from the command line, before the import:

  PROMPT_TUNING_TEXT_FILES='mytext=/data/train/*.txt|/data/valid/*.txt,other=/x/*.txt'

Entries are comma-separated `NAME=TRAIN_GLOB[|VALIDATION_GLOB]`; without a
validation glob the tasks have only a 'train' split.

Examples (before the feature converter): {'inputs': int32 [n], 'targets':
int32 [m]}, EOS-terminated, no other features. Feature lengths: span
corruption needs inputs 512 / targets >= 114 (`SPAN_CORRUPTION_LENGTHS`); prefix
LM cuts pieces of inputs - 1 tokens, so give targets the same length
(`PREFIX_LM_LENGTHS`). Neither task has metrics.
"""
import functools
import os
from typing import Dict, Mapping, Optional, Tuple

import seqio

from prompt_tuning.data import lm_preprocessors
from prompt_tuning.data import task_utils

C4_TFDS_NAME_ENV = 'PROMPT_TUNING_C4_TFDS_NAME'
DEFAULT_C4_TFDS_NAME = 'c4/en:3.0.1'
TEXT_FILES_ENV = 'PROMPT_TUNING_TEXT_FILES'

PREFIX_LM = 'prefix_lm'
SPAN_CORRUPTION = 'span_corruption'
OBJECTIVES = {
    PREFIX_LM: lm_preprocessors.prefix_lm,
    SPAN_CORRUPTION: lm_preprocessors.span_corruption,
}
SPAN_CORRUPTION_LENGTHS = {'inputs': 512, 'targets': 114}
PREFIX_LM_LENGTHS = {'inputs': 512, 'targets': 512}
C4_TASKS = {objective: f'c4_v220_{objective}' for objective in OBJECTIVES}


def objective_preprocessors(objective: str, from_text_lines: bool = False) -> list:
  """The T5 pipeline: text -> 'targets' tokens -> objective -> EOS."""
  steps = [lm_preprocessors.text_line_to_example] if from_text_lines else []
  return steps + [
      # The whole document becomes 'targets'; the objective derives 'inputs'.
      functools.partial(seqio.preprocessors.rekey,
                        key_map={'inputs': None, 'targets': 'text'}),
      seqio.preprocessors.tokenize,
      seqio.CacheDatasetPlaceholder(),
      OBJECTIVES[objective],
      seqio.preprocessors.append_eos_after_trim,
  ]


def _register(name: str, source: seqio.DataSource, objective: str,
              from_text_lines: bool) -> None:
  task_utils.add_task(name, source, objective_preprocessors(objective, from_text_lines))


def c4_tfds_name() -> str:
  return os.environ.get(C4_TFDS_NAME_ENV) or DEFAULT_C4_TFDS_NAME


def register_c4_tasks(tfds_name: Optional[str] = None) -> None:
  """Registers c4_v220_prefix_lm and c4_v220_span_corruption (kept if present)."""
  source = seqio.TfdsDataSource(tfds_name=tfds_name or c4_tfds_name())
  for objective, name in C4_TASKS.items():
    _register(name, source, objective, from_text_lines=False)


def register_text_file_tasks(name: str, file_pattern: str,
                             validation_file_pattern: Optional[str] = None
                             ) -> Tuple[str, str]:
  """Registers `<name>_prefix_lm` and `<name>_span_corruption` over text files.

  Each line of each file matching the glob(s) is one document; empty lines are
  skipped. Registering a name again replaces its tasks (e.g. a new glob).

  Args:
    name: task name prefix, e.g. 'mytext'.
    file_pattern: glob (or path) of the 'train' split.
    validation_file_pattern: optional glob of a 'validation' split.

  Returns:
    The two task names (prefix LM, span corruption).
  """
  if not name or not file_pattern:
    raise ValueError(f'register_text_file_tasks needs a name and a file pattern, got '
                     f'{name!r} and {file_pattern!r}.')
  split_to_filepattern = {'train': file_pattern}
  if validation_file_pattern:
    split_to_filepattern['validation'] = validation_file_pattern
  source = seqio.TextLineDataSource(split_to_filepattern)
  names = []
  for objective in OBJECTIVES:
    task_name = f'{name}_{objective}'
    _register(task_name, source, objective, from_text_lines=True)
    names.append(task_name)
  return names[0], names[1]


def parse_text_files_spec(spec: str) -> Dict[str, Tuple[str, Optional[str]]]:
  """'a=TRAIN[|VALID],b=TRAIN' -> {'a': (TRAIN, VALID), 'b': (TRAIN, None)}."""
  parsed = {}
  for entry in filter(None, (part.strip() for part in spec.split(','))):
    name, sep, patterns = entry.partition('=')
    train, _, validation = patterns.partition('|')
    if not sep or not name.strip() or not train.strip():
      raise ValueError(f'{TEXT_FILES_ENV}: expected NAME=TRAIN_GLOB[|VALIDATION_GLOB], '
                       f'got {entry!r} in {spec!r}.')
    parsed[name.strip()] = (train.strip(), validation.strip() or None)
  return parsed


def register_text_file_tasks_from_env(environ: Optional[Mapping[str, str]] = None) -> list:
  """Registers the text-file tasks named in $PROMPT_TUNING_TEXT_FILES; returns their names."""
  environ = os.environ if environ is None else environ
  names = []
  for name, (train, validation) in parse_text_files_spec(environ.get(TEXT_FILES_ENV, '')
                                                          ).items():
    names.extend(register_text_file_tasks(name, train, validation))
  return names


register_c4_tasks()
register_text_file_tasks_from_env()
