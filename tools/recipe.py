"""Experiment recipes: a TOML file that names a sweep of training runs.

`tools/sweep.py` runs a recipe, `tools/plot.py` draws its figure; both read
recipes through this module. The format is described in configs/README.md.
In short:

    name, figure, title, finding          what the sweep is and what the paper found
    metric, average_over, x, x_scale, x_ticks, series, ylabel, [[reported]]
                                          how plot.py reads and draws the results
    include = ["_shared.toml"]            cross axes and [defaults] shared by recipes
    gin_files, [bindings], [defaults]     shared by every run
    seeds = [0, 1, 2]                     every run once per RANDOM_SEED
    [[runs]]  name, gin_files, bindings, vars, labels, axes, plot
    [[cross.<axis>]]  name, gin_files, bindings, vars, labels
                                          every run is crossed with every entry
                                          (of the axes it names, if `axes`)
    relative_to = {method = "prompt", match = ["task", "seed"]}
                                          plot each value as % of its baseline run

Bindings are gin text, as after `--gin.NAME=` (a gin string keeps its inner
quotes: "'rte'"); TOML numbers, booleans and arrays become gin literals.
`{VAR}` in gin files, bindings and variable values is replaced by the run's
variable VAR: its `vars` (a run's over its cross entries'), then `--set
VAR=value`, then `[defaults]`; an unset one is an error naming it.

Only the standard library is used here (tomllib, Python 3.11+), so the
tools start instantly and need no accelerator stack.
"""
import dataclasses
import fnmatch
import itertools
import os
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

try:
  import tomllib
except ImportError:  # Python 3.10: the same parser, from PyPI
  try:
    import tomli as tomllib  # type: ignore[no-redef]
  except ImportError as e:
    raise ImportError('Recipes are TOML: use Python 3.11+ (tomllib) or '
                      '`pip install tomli`.') from e

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# `{NAME}` only: gin dict literals such as {'inputs': 512} never match.
_PLACEHOLDER = re.compile(r'\{([A-Za-z_][A-Za-z0-9_]*)\}')
# Run and recipe names become directory names.
_SAFE_NAME = re.compile(r'^[A-Za-z0-9_.+=-]+$')

_RECIPE_KEYS = {'name', 'figure', 'title', 'finding', 'metric', 'average_over', 'x',
                'x_scale', 'x_ticks', 'series', 'ylabel', 'include', 'gin_files',
                'bindings', 'defaults', 'seeds', 'runs', 'cross', 'reported', 'notes',
                'relative_to'}
_ENTRY_KEYS = {'name', 'gin_files', 'bindings', 'vars', 'labels', 'notes'}
_RUN_KEYS = _ENTRY_KEYS | {'axes', 'plot'}
_X_SCALES = ('category', 'linear', 'log')
SEED_MACRO = 'RANDOM_SEED'
# Labels a run records itself, in MODEL_DIR/parameters.json (tools/plot.py reads them).
RECORDED_LABELS = ('trained_parameters', 'backbone_parameters')


class RecipeError(ValueError):
  """A recipe is malformed, or a run needs a variable nobody set."""


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of a recipe, before its `{VAR}` placeholders are filled."""
  name: str
  labels: Dict[str, Any]
  gin_files: Tuple[str, ...]
  bindings: Dict[str, str]
  vars: Dict[str, str]
  # False for a run that only prepares others (e.g. a subspace they start
  # from): swept, not plotted, and it needs no x or series label.
  plot: bool = True


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A parsed recipe: plotting spec, defaults and the expanded runs."""
  path: str
  name: str
  figure: str
  title: str
  finding: str
  metric: str
  x: str
  series: Optional[str]
  average_over: Tuple[str, ...]
  x_scale: str
  x_ticks: Optional[str]
  ylabel: str
  defaults: Dict[str, str]
  runs: Tuple[Run, ...]
  reported: Tuple[Dict[str, Any], ...]
  relative_to: Optional[Dict[str, Any]] = None

  def plot_spec(self) -> Dict[str, Any]:
    """What plot.py needs, as stored in a sweep's manifest.json."""
    return {'recipe': self.name, 'recipe_path': self.path, 'figure': self.figure,
            'title': self.title, 'finding': self.finding, 'metric': self.metric,
            'x': self.x, 'series': self.series, 'average_over': list(self.average_over),
            'x_scale': self.x_scale, 'x_ticks': self.x_ticks, 'ylabel': self.ylabel,
            'reported': list(self.reported), 'relative_to': self.relative_to}

  def select(self, patterns: Sequence[str]) -> List[Run]:
    """The runs whose names match any of the glob `patterns` (all without any)."""
    if not patterns:
      return list(self.runs)
    return [r for r in self.runs if any(fnmatch.fnmatchcase(r.name, p) for p in patterns)]


@dataclasses.dataclass(frozen=True)
class ResolvedRun:
  """A run with every placeholder filled: what the trainer is given."""
  run: Run
  gin_files: Tuple[str, ...]
  bindings: Dict[str, str]


# -- loading ---------------------------------------------------------------------
def load(path: str) -> Recipe:
  """Parses and expands the recipe at `path`.

  Raises:
    RecipeError: naming the file and what is wrong with it.
  """
  doc = _read_toml(path)
  for include in _as_list(doc.pop('include', []), path, 'include'):
    doc = _merge_include(doc, _read_toml(os.path.join(os.path.dirname(path), include)), path)
  unknown = set(doc) - _RECIPE_KEYS
  if unknown:
    raise RecipeError(f'{path}: unknown keys {sorted(unknown)}; allowed: {sorted(_RECIPE_KEYS)}.')
  for key in ('name', 'metric', 'x'):
    if not isinstance(doc.get(key), str) or not doc[key]:
      raise RecipeError(f'{path}: `{key}` is required (a string).')
  if not _SAFE_NAME.match(doc['name']):
    raise RecipeError(f'{path}: name {doc["name"]!r} must be usable as a directory name.')
  x_scale = doc.get('x_scale', 'category')
  if x_scale not in _X_SCALES:
    raise RecipeError(f'{path}: x_scale {x_scale!r} is not one of {_X_SCALES}.')

  runs = _expand(doc, path)
  series = doc.get('series')
  for run in (r for r in runs if r.plot):
    for key in [doc['x']] + ([series] if series else []):
      if key not in run.labels and key not in RECORDED_LABELS:
        raise RecipeError(f'{path}: run {run.name!r} has no label {key!r} (its labels: '
                          f'{run.labels}); every run needs the x and series labels.')
    if x_scale != 'category' and not isinstance(run.labels.get(doc['x'], 0), (int, float)):
      raise RecipeError(f'{path}: x_scale {x_scale!r} needs numeric x labels; run '
                        f'{run.name!r} has {doc["x"]}={run.labels[doc["x"]]!r}.')
  reported = _as_list(doc.get('reported', []), path, 'reported')
  for entry in reported:
    if not isinstance(entry, dict) or 'x' not in entry or 'value' not in entry:
      raise RecipeError(f'{path}: [[reported]] entries need `x` and `value` (and `series` '
                        f'when the recipe has one), got {entry!r}.')
  return Recipe(
      path=path, name=doc['name'], figure=str(doc.get('figure', '')),
      title=doc.get('title', doc['name']), finding=doc.get('finding', '').strip(),
      metric=doc['metric'], x=doc['x'], series=series,
      average_over=tuple(_as_list(doc.get('average_over', []), path, 'average_over')),
      x_scale=x_scale, x_ticks=doc.get('x_ticks'), ylabel=doc.get('ylabel', doc['metric']),
      defaults={k: _var_text(v, path, k) for k, v in doc.get('defaults', {}).items()},
      runs=tuple(runs), reported=tuple(reported),
      relative_to=_relative_to(doc.get('relative_to'), path))


def _relative_to(spec: Any, path: str) -> Optional[Dict[str, Any]]:
  """`relative_to = {LABEL = VALUE, match = [labels]}`: the baseline runs' label."""
  if spec is None:
    return None
  baseline = {k: v for k, v in spec.items() if k != 'match'} if isinstance(spec, dict) else {}
  if len(baseline) != 1 or not isinstance(spec.get('match'), list):
    raise RecipeError(f'{path}: relative_to must be {{LABEL = "value", match = ["label", ...]}} '
                      f'(one baseline label, the labels a run shares with its baseline), '
                      f'got {spec!r}.')
  return dict(spec)


def find_recipes(root: str) -> List[str]:
  """Every recipe under `root` (files starting with `_` are includes, not recipes)."""
  found = []
  for directory, _, files in os.walk(root):
    found += [os.path.join(directory, f) for f in files
              if f.endswith('.toml') and not f.startswith('_')]
  return sorted(found)


def _read_toml(path: str) -> Dict[str, Any]:
  try:
    with open(path, 'rb') as f:
      return tomllib.load(f)
  except FileNotFoundError as e:
    raise RecipeError(f'No recipe at {path}.') from e
  except tomllib.TOMLDecodeError as e:
    raise RecipeError(f'{path}: not valid TOML: {e}') from e


def _merge_include(doc: Dict[str, Any], included: Dict[str, Any], path: str) -> Dict[str, Any]:
  """The recipe over an included file: its own keys win, cross axes are added after."""
  merged = dict(included)
  for key, value in doc.items():
    if key in ('defaults', 'bindings') and key in merged:
      merged[key] = {**merged[key], **value}
    elif key == 'cross' and key in merged:
      clash = set(merged['cross']) & set(value)
      if clash:
        raise RecipeError(f'{path}: cross axes {sorted(clash)} are also in an included file.')
      merged['cross'] = {**merged['cross'], **value}
    else:
      merged[key] = value
  return merged


# -- expansion -------------------------------------------------------------------
def _expand(doc: Mapping[str, Any], path: str) -> List[Run]:
  """runs x cross axes (in file order) x seeds, names joined with '-'."""
  entries = _as_list(doc.get('runs', []), path, 'runs')
  runs = [_entry(e, path, 'runs', axis=None) for e in entries]
  if not runs:
    raise RecipeError(f'{path}: a recipe needs at least one [[runs]] entry.')
  axes = {}
  for axis, cross in doc.get('cross', {}).items():
    axes[axis] = [_entry(e, path, f'cross.{axis}', axis) for e in _as_list(cross, path, f'cross.{axis}')]
    if not axes[axis]:
      raise RecipeError(f'{path}: cross axis {axis!r} has no entries.')
  run_axes = [_run_axes(entry, list(axes), path) for entry in entries]
  seeds = _as_list(doc.get('seeds', []), path, 'seeds')
  seed_axis = []
  if seeds:
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
      raise RecipeError(f'{path}: seeds must be integers, got {seeds}.')
    seed_axis = [[Run(name=f'seed{s}', labels={'seed': s}, gin_files=(),
                      bindings={SEED_MACRO: str(s)}, vars={'SEED': str(s)}) for s in seeds]]

  shared = Run(name='', labels={}, gin_files=tuple(_as_list(doc.get('gin_files', []), path,
                                                            'gin_files')),
               bindings=_bindings(doc.get('bindings', {}), path, 'bindings'), vars={})
  expanded, seen = [], {}
  for run, names in zip(runs, run_axes):
    for combination in itertools.product(*[axes[n] for n in names], *seed_axis):
      # Most specific last: shared, then cross entries in axis order, then the run.
      parts = [shared, *combination, run]
      name = '-'.join([run.name] + [e.name for e in combination])
      if name in seen:
        raise RecipeError(f'{path}: two runs are both named {name!r}.')
      seen[name] = True
      expanded.append(Run(
          name=name,
          labels=_merged(p.labels for p in [*combination, run]),
          gin_files=tuple(f for p in parts for f in p.gin_files),
          bindings=_merged(p.bindings for p in parts),
          vars=_merged(p.vars for p in parts), plot=run.plot))
  return expanded


def _run_axes(entry: Mapping[str, Any], axes: List[str], path: str) -> List[str]:
  """The cross axes a [[runs]] entry takes, in file order: `axes`, or all."""
  if 'axes' not in entry:
    return axes
  named = _as_list(entry['axes'], path, f'runs {entry.get("name")!r} axes')
  unknown = sorted(set(named) - set(axes))
  if unknown:
    raise RecipeError(f'{path}: run {entry.get("name")!r} names cross axes {unknown} that the '
                      f'recipe does not have (it has {axes}).')
  return [a for a in axes if a in named]


def _entry(entry: Any, path: str, where: str, axis: Optional[str]) -> Run:
  """A [[runs]] or [[cross.<axis>]] entry; a cross entry is labelled `axis = name`."""
  if not isinstance(entry, dict):
    raise RecipeError(f'{path}: [[{where}]] entries must be tables, got {entry!r}.')
  allowed = _RUN_KEYS if axis is None else _ENTRY_KEYS
  unknown = set(entry) - allowed
  if unknown:
    raise RecipeError(f'{path}: [[{where}]] {entry.get("name")!r}: unknown keys '
                      f'{sorted(unknown)}; allowed: {sorted(allowed)}.')
  if not isinstance(entry.get('plot', True), bool):
    raise RecipeError(f'{path}: [[{where}]] {entry.get("name")!r}: plot must be true or false.')
  name = entry.get('name')
  if not isinstance(name, str) or not _SAFE_NAME.match(name):
    raise RecipeError(f'{path}: [[{where}]] needs a `name` usable in a directory name, '
                      f'got {name!r}.')
  labels = {axis: name} if axis else {}
  labels.update(entry.get('labels', {}))
  return Run(name=name, labels=labels,
             gin_files=tuple(_as_list(entry.get('gin_files', []), path, f'{where}.gin_files')),
             bindings=_bindings(entry.get('bindings', {}), path, f'{where} {name!r}'),
             vars={k: _var_text(v, path, k) for k, v in entry.get('vars', {}).items()},
             plot=entry.get('plot', True))


def _bindings(table: Any, path: str, where: str) -> Dict[str, str]:
  if not isinstance(table, dict):
    raise RecipeError(f'{path}: {where}: bindings must be a table of NAME = value.')
  return {name: gin_literal(value) for name, value in table.items()}


def gin_literal(value: Any) -> str:
  """A TOML value as gin text: strings are gin text already, the rest literals."""
  if isinstance(value, str):
    return value
  return _literal(value)


def _literal(value: Any) -> str:
  if isinstance(value, bool):
    return 'True' if value else 'False'
  if isinstance(value, (int, float, str)):
    return repr(value)
  if isinstance(value, list):
    return '[' + ', '.join(_literal(v) for v in value) + ']'
  if isinstance(value, dict):
    return '{' + ', '.join(f'{k!r}: {_literal(v)}' for k, v in value.items()) + '}'
  raise RecipeError(f'Cannot write {value!r} ({type(value).__name__}) as a gin literal.')


def _var_text(value: Any, path: str, name: str) -> str:
  if isinstance(value, bool) or not isinstance(value, (str, int, float)):
    raise RecipeError(f'{path}: variable {name} must be a string or a number, got {value!r}.')
  return str(value)


def _merged(dicts: Iterable[Mapping[str, Any]]) -> Dict[str, Any]:
  out: Dict[str, Any] = {}
  for d in dicts:
    out.update(d)
  return out


def _as_list(value: Any, path: str, key: str) -> list:
  if not isinstance(value, list):
    raise RecipeError(f'{path}: `{key}` must be an array, got {value!r}.')
  return value


# -- placeholders ----------------------------------------------------------------
def variables(recipe: Recipe, overrides: Mapping[str, str]) -> Dict[str, str]:
  """The recipe-wide variables: [defaults] under `--set` overrides."""
  return {**recipe.defaults, **overrides}


def resolve(run: Run, recipe_vars: Mapping[str, str], recipe_path: str = '') -> ResolvedRun:
  """Fills every `{VAR}` of `run`; the run's own vars win over recipe-wide ones.

  Raises:
    RecipeError: naming every unset variable and how to set it.
  """
  values = {**recipe_vars, **run.vars}
  missing: List[str] = []
  fill = lambda text: _substitute(text, values, missing)
  gin_files = tuple(fill(f) for f in run.gin_files)
  bindings = {name: fill(value) for name, value in run.bindings.items()}
  if missing:
    names = sorted(set(missing))
    where = f'{recipe_path}: ' if recipe_path else ''
    raise RecipeError(
        f'{where}run {run.name!r} needs {", ".join("{" + n + "}" for n in names)}: pass '
        + ' '.join(f'--set {n}=...' for n in names) + ' (or give it in the recipe\'s [defaults]).')
  return ResolvedRun(run=run, gin_files=gin_files, bindings=bindings)


def placeholders(text: str) -> List[str]:
  """The variable names `{VAR}` in `text`."""
  return _PLACEHOLDER.findall(text)


def _substitute(text: str, values: Mapping[str, str], missing: List[str], depth: int = 0) -> str:
  # A value may itself hold placeholders (e.g. a checkpoint path with {SIZE}).
  if depth > 10:
    raise RecipeError(f'Variables refer to each other in a cycle: {text!r}.')

  def one(match: 're.Match[str]') -> str:
    name = match.group(1)
    if name not in values:
      missing.append(name)
      return match.group(0)
    return _substitute(values[name], values, missing, depth + 1)

  return _PLACEHOLDER.sub(one, text)


def used_variables(recipe: Recipe) -> set:
  """Every variable name any run of `recipe` refers to (directly or through a value)."""
  names: set = set()
  texts = [t for r in recipe.runs for t in (*r.gin_files, *r.bindings.values(), *r.vars.values())]
  texts += list(recipe.defaults.values())
  for text in texts:
    names.update(placeholders(text))
  return names


# -- commands --------------------------------------------------------------------
def trainer_args(resolved: ResolvedRun, model_dir: str) -> List[str]:
  """The `python -m prompt_tuning.train` flags of a run (T5X's `--gin.NAME=VALUE`).

  MODEL_DIR is written as a Python string literal, which is also gin's.
  """
  return ([f'--gin_file={f}' for f in resolved.gin_files] +
          [f'--gin.{name}={value}' for name, value in resolved.bindings.items()] +
          [f'--gin.MODEL_DIR={model_dir!r}'])


def parse_assignments(items: Sequence[str]) -> Dict[str, str]:
  """`--set VAR=value` options -> {VAR: value}."""
  out = {}
  for item in items:
    name, sep, value = item.partition('=')
    if not sep or not re.match(r'^[A-Za-z_][A-Za-z0-9_]*$', name):
      raise RecipeError(f'--set {item!r}: expected VAR=value.')
    out[name] = value
  return out
