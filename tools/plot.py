r"""Draws a sweep's figure and its table: mean +- std over seeds of each (x, series).

    python tools/plot.py runs/prompt_init --output prompt_init.png --markdown prompt_init.md
    python tools/plot.py runs/prompt_init --recipe configs/paper/prompt_init.toml --output fig.png
    python tools/plot.py runs/demo_scale --per task     # also a table per task, every seed
    python tools/plot.py runs/demo_compare --x size     # a recipe's runs against another label
    python tools/plot.py runs/demo_scale --only '*-seed0'   # a part of a study, alone
    python tools/plot.py runs/demo_ipt --archive docs/results/demo_ipt.json   # keep the results
    python tools/plot.py docs/results/demo_ipt.json         # plot an archive alone
    python tools/plot.py docs/results/demo_ipt.json --absolute --per task   # raw accuracies

Reads <sweep dir>/manifest.json (written by tools/sweep.py; `--recipe` instead
takes the runs and the plotting spec from the recipe, the run directories
from <sweep dir>/<run>). A run's result is MODEL_DIR/best/best.json (the
early-stopping checkpoint's metrics), else the last line of each
MODEL_DIR/inference_eval/<task>-metrics.jsonl. The recipe's `metric` is

    score          best.json's score: the mean over the run's tasks of each
                   task's mean metric (SuperGLUE's way of scoring a task)
    TASK/METRIC    one metric of one task, e.g. demo_world_boolq/accuracy
    */METRIC       that metric, averaged over the run's tasks that have it

With `average_over = ["task"]` the runs that differ only in those labels are
averaged first (e.g. the SuperGLUE score over per-task runs of one seed);
such a group counts only when every one of its runs has a result. Then each
(x, series) is summarised over its seeds: mean, sample standard deviation
(n - 1) and n. Runs without a result are listed, never dropped silently.

A recipe's `relative_to` turns each value into a percentage of its baseline
run's (see `relative`; `--absolute` keeps the values, baselines included);
runs with `plot = false` are left out. Besides its
recipe labels, a run is labelled `trained_parameters` and
`backbone_parameters` from MODEL_DIR/parameters.json (the trainer writes it),
so `x = "trained_parameters"` draws a metric against what each method trains.

`--archive FILE` keeps a study's results beyond its run directories: every
run of the sweep that has a result is merged into FILE (JSON: the plotting
spec, and per run its labels, its results and the command and commit that
made them; a run's new result replaces its archived one), and the figure and
tables are drawn from the merged runs. A study can so grow over machines:
each adds the seeds it ran to the committed archive. An archive given in
place of the sweep directory is plotted alone.
"""
import argparse
import dataclasses
import fnmatch
import glob
import json
import math
import os
import statistics
import sys
import textwrap
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import recipe as recipe_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
import sweep as sweep_lib  # pylint: disable=g-import-not-at-top,wrong-import-position


@dataclasses.dataclass
class Result:
  """One run's value of the metric, or why there is none."""
  name: str
  labels: Dict[str, Any]
  value: Optional[float]
  source: str  # 'best.json', 'metrics.jsonl (last line)' or the reason it is missing


@dataclasses.dataclass
class Cell:
  """The summary of one (series, x): the per-seed values and their statistics."""
  values: List[float]

  @property
  def n(self) -> int:
    return len(self.values)

  @property
  def mean(self) -> float:
    return statistics.fmean(self.values) if self.values else math.nan

  @property
  def std(self) -> float:
    return statistics.stdev(self.values) if len(self.values) > 1 else math.nan

  def text(self, digits: int = 2, seeds: bool = False) -> str:
    """'mean ± std (n)'; with `seeds`, each seed's value follows in brackets."""
    if not self.values:
      return 'missing'
    if self.n == 1:
      return f'{self.mean:.{digits}f} (1)'
    each = f' [{", ".join(f"{v:.{digits}f}" for v in self.values)}]' if seeds else ''
    return f'{self.mean:.{digits}f} ± {self.std:.{digits}f} ({self.n}){each}'


# -- reading results -------------------------------------------------------------
def mean_metric(results: Mapping[str, Mapping[str, float]]) -> float:
  """The mean over tasks of each task's mean metric.

  The same rule as prompt_tuning.data.metrics.mean_metric (repeated here
  so plotting does not import JAX and TensorFlow).
  """
  per_task = [statistics.fmean(m.values()) for m in results.values() if m]
  if not per_task:
    raise ValueError('no metrics')
  return statistics.fmean(per_task)


def read_results(model_dir: str) -> Tuple[Optional[Dict[str, Any]], str]:
  """({'score', 'metrics'}, source) of a run, or (None, why not)."""
  best = sweep_lib.join(model_dir, 'best', 'best.json')
  if sweep_lib.exists(best):
    try:
      record = json.loads(sweep_lib.read_text(best))
      return {'score': float(record['score']), 'metrics': record['metrics']}, 'best.json'
    except (ValueError, KeyError, TypeError) as e:
      return None, f'unreadable best.json ({e})'
  if sweep_lib._is_url(model_dir):  # pylint: disable=protected-access
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    files = tf.io.gfile.glob(sweep_lib.join(model_dir, 'inference_eval', '*-metrics.jsonl'))
  else:
    files = glob.glob(os.path.join(model_dir, 'inference_eval', '*-metrics.jsonl'))
  metrics = {}
  for path in sorted(files):
    lines = [l for l in sweep_lib.read_text(path).splitlines() if l.strip()]
    if not lines:
      continue
    last = json.loads(lines[-1])
    task = os.path.basename(path)[:-len('-metrics.jsonl')]
    metrics[task] = {k: float(v) for k, v in last.items()
                     if k != 'step' and isinstance(v, (int, float)) and not isinstance(v, bool)}
  if metrics:
    try:
      return {'score': mean_metric(metrics), 'metrics': metrics}, 'metrics.jsonl (last line)'
    except ValueError:
      pass
  if not sweep_lib.exists(model_dir):
    return None, 'no run directory'
  return None, 'no best/best.json and no inference_eval metrics yet'


def metric_value(results: Mapping[str, Any], metric: str) -> float:
  """The recipe's `metric` from a run's results (see the module docstring).

  Raises:
    KeyError: naming the metric and what the results have.
  """
  if metric == 'score':
    return float(results['score'])
  task, sep, name = metric.partition('/')
  if not sep:
    raise KeyError(f"metric {metric!r}: use 'score', 'TASK/METRIC' or '*/METRIC'")
  metrics = results['metrics']
  if task == '*':
    values = [float(m[name]) for m in metrics.values() if name in m]
    if not values:
      raise KeyError(f'no task has {name!r} (tasks: {_available(metrics)})')
    return statistics.fmean(values)
  if task not in metrics or name not in metrics[task]:
    raise KeyError(f'no {metric!r} (has: {_available(metrics)})')
  return float(metrics[task][name])


def _available(metrics: Mapping[str, Mapping[str, float]]) -> str:
  return ', '.join(f'{t}/{m}' for t, ms in metrics.items() for m in ms)


def collect(runs: Mapping[str, Mapping[str, Any]], metric: str) -> List[Result]:
  """Every run's metric value.

  `runs` maps name -> {'labels', 'model_dir'}, or, for an archived run,
  {'labels', 'results', 'source'} (see `archive`).
  """
  out = []
  for name, run in runs.items():
    if 'results' in run:
      results, source = run['results'], run['source']
      value = None
      try:
        value = None if results is None else metric_value(results, metric)
      except KeyError as e:
        source = f'{source}: {e.args[0]}'
      out.append(Result(name, dict(run['labels']), value, source))
      continue
    results, source = read_results(run['model_dir'])
    value = None
    if results is not None:
      try:
        value = metric_value(results, metric)
      except KeyError as e:
        source = f'{source}: {e.args[0]}'
    out.append(Result(name, {**_parameter_labels(run['model_dir']), **run['labels']},
                      value, source))
  return out


def _parameter_labels(model_dir: str) -> Dict[str, int]:
  path = sweep_lib.join(model_dir, 'parameters.json')
  if not sweep_lib.exists(path):
    return {}
  counts = json.loads(sweep_lib.read_text(path))
  return {'trained_parameters': counts['trained'], 'backbone_parameters': counts['backbone']}


def relative(results: Sequence[Result], spec: Mapping[str, Any]) -> List[Result]:
  """Each run's value as a percentage of its baseline's; the baseline runs drop out.

  `spec` is the recipe's relative_to, e.g. {'method': 'prompt', 'match':
  ['task', 'seed']}: a run's baseline has method = 'prompt' and the same task
  and seed.
  """
  (label, value), = [(k, v) for k, v in spec.items() if k != 'match']
  key = lambda r: tuple(_hashable(r.labels.get(m)) for m in spec['match'])
  baselines = {key(r): r for r in results if r.labels.get(label) == value}
  out = []
  for r in results:
    if r.labels.get(label) == value:
      continue
    base = baselines.get(key(r))
    if r.value is None or base is None or not base.value:
      why = r.source if r.value is None else (
          f'no baseline run ({label}={value}, same {"/".join(spec["match"])})' if base is None
          else f'baseline {base.name}: {base.source if base.value is None else "zero"}')
      out.append(Result(r.name, r.labels, None, why))
    else:
      out.append(Result(r.name, r.labels, 100 * r.value / base.value,
                        f'{r.source} / {base.name}'))
  return out


# -- archives --------------------------------------------------------------------
def read_archive(path: str) -> Dict[str, Any]:
  """An archive written by `archive`: {'spec': ..., 'runs': {name: record}}."""
  try:
    archived = json.loads(sweep_lib.read_text(path))
  except json.JSONDecodeError as e:
    raise recipe_lib.RecipeError(f'{path} is not an archive of tools/plot.py ({e}).') from e
  if not isinstance(archived, dict) or set(archived) != {'spec', 'runs'}:
    raise recipe_lib.RecipeError(f'{path} is not an archive of tools/plot.py '
                                 "(expected the keys 'spec' and 'runs').")
  return archived


def archive(path: str, spec: Mapping[str, Any],
            runs: Mapping[str, Mapping[str, Any]]) -> Dict[str, Dict[str, Any]]:
  """Merges the runs that have a result into the archive at `path`; returns its runs.

  A run's record holds its labels (with its trained parameter counts), its
  results ({'score', 'metrics'}), where they were read, and the command and
  commit of its sweep_done.json. A run without a result is recorded as
  missing (results None) unless the archive has its result: a sweep started
  again elsewhere never erases what was archived.
  """
  archived = read_archive(path)['runs'] if sweep_lib.exists(path) else {}
  # In the sweep's order (the recipe's, which orders the figure's x and series),
  # then the runs only the archive has.
  merged = {n: archived[n] for n in runs if n in archived}
  merged.update({n: r for n, r in archived.items() if n not in runs})
  for name, run in runs.items():
    if 'results' in run:
      continue
    results, source = read_results(run['model_dir'])
    if results is None:
      # Kept as missing, so that its groups stay incomplete in the archive alone.
      if merged.get(name, {}).get('results') is None:
        merged[name] = {'labels': dict(run['labels']), 'results': None, 'source': source,
                        'plot': run.get('plot', True)}
      continue
    done = sweep_lib._done_record(run['model_dir']) or {}  # pylint: disable=protected-access
    merged[name] = {
        'labels': {**_parameter_labels(run['model_dir']), **run['labels']},
        'results': results,
        'source': f'{source}, archived from {run["model_dir"]}', 'plot': run.get('plot', True),
        'command': done.get('command'), 'commit': done.get('commit'),
        'finished': done.get('finished'), 'wall_s': done.get('wall_s')}
  spec = {k: v for k, v in spec.items() if k != 'runs'}
  merged = {**{n: merged[n] for n in runs if n in merged}, **merged}
  text = json.dumps({'spec': spec, 'runs': merged}, indent=1) + '\n'
  sweep_lib.write_text(path, text)
  return merged


# -- aggregation -----------------------------------------------------------------
@dataclasses.dataclass
class Table:
  """Cells by (series, x), their display order, and what is missing."""
  xs: List[Any]
  series: List[Any]
  cells: Dict[Tuple[Any, Any], Cell]
  tick_names: Dict[Any, str]
  missing: List[str]
  warnings: List[str]


def aggregate(results: Sequence[Result], spec: Mapping[str, Any]) -> Table:
  """Averages over `average_over`, then mean / std / n over seeds per (series, x)."""
  x_key, series_key = spec['x'], spec.get('series')
  average_over = set(spec.get('average_over') or ())
  # 1. One sample per run after removing the averaged-over labels. Recorded
  # labels (trained_parameters) are not part of the grouping: a run not run
  # yet has none, and must still count as its group's missing member.
  recorded = set(recipe_lib.RECORDED_LABELS)
  samples: Dict[Tuple, List[Result]] = {}
  missing = [f'{r.name}: {r.source}' for r in results if r.value is None]
  for r in results:
    key = tuple(sorted((k, _hashable(v)) for k, v in r.labels.items()
                       if k not in average_over and k not in recorded))
    samples.setdefault(key, []).append(r)
  cells: Dict[Tuple[Any, Any], Cell] = {}
  members: Dict[Tuple[Any, Any], List[Dict[str, Any]]] = {}
  xs: List[Any] = []
  series: List[Any] = []
  tick_names: Dict[Any, str] = {}
  for key, group in samples.items():
    labels = dict(key)
    for name in {x_key, series_key} & recorded:  # taken from the group's runs that ran
      found = {_hashable(r.labels[name]) for r in group if name in r.labels}
      if len(found) > 1:
        missing.append(f'{_describe(labels)}: runs with different {name} {sorted(found)}; '
                       'left out')
      if len(found) == 1:
        labels[name] = found.pop()
    if x_key not in labels or (series_key and series_key not in labels):
      if any(r.value is not None for r in group):
        missing.append(f'{_describe(labels)}: no {x_key} (MODEL_DIR/parameters.json)')
      continue
    x, s = labels[x_key], labels.get(series_key) if series_key else None
    if x not in xs:
      xs.append(x)
    if s not in series:
      series.append(s)
    if spec.get('x_ticks'):
      tick_names.setdefault(x, str(group[0].labels.get(spec['x_ticks'], x)))
    cell = cells.setdefault((s, x), Cell([]))
    members.setdefault((s, x), []).append(labels)
    values = [r.value for r in group]
    if all(v is not None for v in values):
      cell.values.append(statistics.fmean(values))
    elif average_over:
      done = sum(v is not None for v in values)
      missing.append(f'{_describe(labels)}: only {done} of {len(values)} runs over '
                     f'{"/".join(sorted(average_over))} have results; left out of the mean')
  if spec.get('x_scale', 'category') != 'category':
    xs.sort()
  # 2. Within a cell, only the seed should vary; anything else is mixed up.
  warnings = []
  for (s, x), labels_list in members.items():
    # Recorded labels (parameter counts) are absent from runs not run yet.
    ignored = {'seed', *recipe_lib.RECORDED_LABELS} - {x_key, series_key}
    for key in sorted({k for labels in labels_list for k in labels} - ignored):
      values = {_hashable(labels.get(key)) for labels in labels_list}
      if len(values) > 1:
        warnings.append(f'series={s!r} x={x!r} mixes {key}={sorted(map(str, values))}; '
                        'add it to series/average_over or split the recipe')
  return Table(xs, series, cells, tick_names, missing, warnings)


def _hashable(value: Any) -> Any:
  return tuple(value) if isinstance(value, list) else value


def _describe(labels: Mapping[str, Any]) -> str:
  return ', '.join(f'{k}={v}' for k, v in labels.items())


# -- output ----------------------------------------------------------------------
def _x_name(table: Table, x: Any) -> str:
  return table.tick_names.get(x, str(x))


def markdown(table: Table, spec: Mapping[str, Any], digits: int = 2) -> str:
  """Title, finding, the table (series x x: mean ± std (n)) and what is missing."""
  lines = [f'### {_title(spec)}', '']
  if spec.get('finding'):
    lines += ['> ' + ' '.join(spec['finding'].split()), '']
  lines += _table_lines(table, spec, digits)
  for s, by_x in _reported(spec).items():
    lines.append(f'| paper: {s if s is not None else ""} | '
                 + ' | '.join(f'{by_x[x]:.{digits}f}' if x in by_x else '' for x in table.xs)
                 + ' |')
  lines += ['', f'Cells: {spec.get("ylabel") or spec["metric"]} (`{spec["metric"]}`), mean ± '
            'sample standard deviation over seeds (number of seeds)'
            + (f', each seed the mean over {"/".join(spec["average_over"])}'
               if spec.get('average_over') else '') + '.']
  if table.missing:
    lines += ['', f'Missing ({len(table.missing)}):', ''] + [f'- {m}' for m in table.missing]
  if table.warnings:
    lines += ['', 'Warnings:', ''] + [f'- {w}' for w in table.warnings]
  return '\n'.join(lines) + '\n'


def _table_lines(table: Table, spec: Mapping[str, Any], digits: int,
                 seeds: bool = False) -> List[str]:
  x_name = spec.get('x_ticks') or spec['x']
  corner = f'{spec["series"]} \\ {x_name}' if spec.get('series') else x_name
  lines = [f'| {corner} | ' + ' | '.join(_x_name(table, x) for x in table.xs) + ' |',
           '|---' * (len(table.xs) + 1) + '|']
  for s in table.series:
    row = [table.cells.get((s, x), Cell([])).text(digits, seeds) for x in table.xs]
    lines.append(f'| {s if s is not None else spec.get("ylabel", spec["metric"])} | '
                 + ' | '.join(row) + ' |')
  return lines


def per_label_markdown(results: Sequence[Result], spec: Mapping[str, Any], label: str,
                       digits: int = 2) -> str:
  """A table for each value of `label` (one of `average_over`, e.g. each task).

  The cells are summarised over seeds as in the main table, with each seed's
  value after them in brackets (in the order the runs are listed).
  """
  if label not in (spec.get('average_over') or ()):
    raise recipe_lib.RecipeError(
        f'--per {label}: not one of the recipe\'s average_over labels '
        f'{list(spec.get("average_over") or ())}.')
  values: List[Any] = []
  for r in results:
    if label in r.labels and _hashable(r.labels[label]) not in values:
      values.append(_hashable(r.labels[label]))
  sub_spec = {**spec, 'average_over': [a for a in spec['average_over'] if a != label]}
  lines = []
  for value in values:
    table = aggregate([r for r in results if _hashable(r.labels.get(label)) == value], sub_spec)
    lines += ['', f'#### {label} = {value}', ''] + _table_lines(table, sub_spec, digits,
                                                                 seeds=True)
  return '\n'.join(lines) + '\n'


def _title(spec: Mapping[str, Any]) -> str:
  figure = f'Figure {spec["figure"]}: ' if spec.get('figure') else ''
  return f'{figure}{spec.get("title") or spec.get("recipe", "")}'


def _reported(spec: Mapping[str, Any]) -> Dict[Any, Dict[Any, float]]:
  """The paper's numbers, {series: {x: value}}."""
  out: Dict[Any, Dict[Any, float]] = {}
  for entry in spec.get('reported') or []:
    out.setdefault(entry.get('series'), {})[entry['x']] = float(entry['value'])
  return out


def draw(table: Table, spec: Mapping[str, Any], output: str) -> None:
  """The figure: lines over a numeric x, grouped bars over a categorical one."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')  # files only, no display
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  categorical = spec.get('x_scale', 'category') == 'category'
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  reported = _reported(spec)
  width = 0.8 / max(len(table.series), 1)
  for i, s in enumerate(table.series):
    color = colors[i % len(colors)]
    points = [(j, x, table.cells[(s, x)]) for j, x in enumerate(table.xs)
              if (s, x) in table.cells and table.cells[(s, x)].n]
    label = str(s) if s is not None else None
    if not points and s not in reported:
      continue  # nothing to draw: no legend entry either
    if categorical:
      pos = [j - 0.4 + width * (i + 0.5) for j, _, _ in points]
      ax.bar(pos, [c.mean for _, _, c in points], width * 0.9, color=color, label=label,
             yerr=[0.0 if math.isnan(c.std) else c.std for _, _, c in points], capsize=3)
    else:
      pos = [x for _, x, _ in points]
      ax.errorbar(pos, [c.mean for _, _, c in points], capsize=3, marker='o', color=color,
                  yerr=[0.0 if math.isnan(c.std) else c.std for _, _, c in points], label=label)
    if s in reported:
      rx = [(j - 0.4 + width * (i + 0.5)) if categorical else x
            for j, x in enumerate(table.xs) if x in reported[s]]
      # On a bar of its own colour an outline would vanish: black there.
      ax.scatter(rx, [reported[s][x] for x in table.xs if x in reported[s]], marker='D',
                 facecolors='none', edgecolors='black' if categorical else color, zorder=3,
                 label=f'paper: {s}' if s is not None else 'paper')
  if categorical:
    ax.set_xticks(range(len(table.xs)))
    ax.set_xticklabels([_x_name(table, x) for x in table.xs])
  else:
    if spec.get('x_scale') == 'log':
      ax.set_xscale('log')
    if spec.get('x_ticks') or spec.get('x_scale') != 'log':
      ax.set_xticks(table.xs)
      ax.set_xticklabels([_x_name(table, x) for x in table.xs])
      ax.minorticks_off()
    # else matplotlib's own powers of ten: a tick per value (parameter counts
    # such as 320, 448, 490) would overlap.
  ax.set_xlabel(spec.get('x_ticks') or spec['x'])
  ax.set_ylabel(spec.get('ylabel') or spec['metric'])
  ax.set_title(textwrap.fill(_title(spec), 70) + '\n(mean ± std over seeds)', fontsize=10)
  if spec.get('series') or reported:
    ax.legend(title=spec.get('series'), fontsize=8)
  ax.grid(axis='y', alpha=0.3)
  fig.tight_layout()
  fig.savefig(output, dpi=150)
  plt.close(fig)


# -- command line ----------------------------------------------------------------
def load_sweep(sweep_dir: str, recipe_path: Optional[str]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """(plotting spec, runs {name: {'labels', 'model_dir'}}) of a sweep directory.

  Given an archive (a .json file) instead, its spec and archived runs.
  """
  if sweep_dir.endswith('.json'):
    archived = read_archive(sweep_dir)
    spec = recipe_lib.load(recipe_path).plot_spec() if recipe_path else archived['spec']
    return spec, archived['runs']
  if recipe_path:
    recipe = recipe_lib.load(recipe_path)
    runs = {r.name: {'labels': r.labels, 'model_dir': sweep_lib.join(sweep_dir, r.name),
                     'plot': r.plot} for r in recipe.runs}
    return recipe.plot_spec(), runs
  path = sweep_lib.join(sweep_dir, sweep_lib.MANIFEST)
  if not sweep_lib.exists(path):
    raise recipe_lib.RecipeError(f'No {path}: give the sweep directory tools/sweep.py wrote '
                                 '(OUT_DIR/<recipe>), or --recipe.')
  manifest = json.loads(sweep_lib.read_text(path))
  return manifest, manifest['runs']


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('sweep_dir', help='OUT_DIR/<recipe> of tools/sweep.py, or an archive '
                                        '(.json) written by --archive')
  parser.add_argument('--recipe', help='take runs and plotting spec from this recipe instead')
  parser.add_argument('--output', help='the figure (PNG)')
  parser.add_argument('--markdown', help='also write the table here')
  parser.add_argument('--digits', type=int, default=2)
  parser.add_argument('--x', metavar='LABEL',
                      help="tabulate and draw against LABEL instead of the recipe's x "
                           '(e.g. size, where the recipe plots trained_parameters)')
  parser.add_argument('--only', action='append', default=[], metavar='GLOB',
                      help='only the runs whose names match (as tools/sweep.py --only): a part '
                           'of a study, its groups formed from those runs alone')
  parser.add_argument('--per', metavar='LABEL',
                      help='also a table for each value of LABEL (an average_over label, '
                           'e.g. task), with every seed\'s value')
  parser.add_argument('--absolute', action='store_true',
                      help="the metric itself, not as a percentage of the recipe's relative_to "
                           'baselines (which are tabulated too)')
  parser.add_argument('--archive', metavar='FILE',
                      help='merge the runs with results into this JSON archive (kept in the '
                           'repository: results outlive the run directories) and plot from it')
  args = parser.parse_args(argv)
  try:
    spec, runs = load_sweep(args.sweep_dir, args.recipe)
    if args.archive:
      archived = archive(args.archive, spec, runs)
      # The sweep's runs, then what only the archive has (seeds run elsewhere).
      runs = {**{n: archived.get(n, r) for n, r in runs.items()},
              **{n: r for n, r in archived.items() if n not in runs}}
  except recipe_lib.RecipeError as e:
    print(f'Error: {e}', file=sys.stderr)
    return 2
  if args.x:
    if args.x in (spec.get('average_over') or ()):
      print(f'Error: --x {args.x}: the recipe averages over it; choose another label.',
            file=sys.stderr)
      return 2
    spec = {**spec, 'x': args.x, 'x_scale': 'category', 'x_ticks': None, 'reported': None}
  runs = {n: r for n, r in runs.items() if r.get('plot', True) and
          (not args.only or any(fnmatch.fnmatchcase(n, g) for g in args.only))}
  results = collect(runs, spec['metric'])
  if spec.get('relative_to'):
    if args.absolute:  # the recipe's paper figures and y label are percentages then
      spec = {**spec, 'reported': None, 'ylabel': None}
    else:
      results = relative(results, spec['relative_to'])
  table = aggregate(results, spec)
  text = markdown(table, spec, args.digits)
  if args.per:
    try:
      text += per_label_markdown(results, spec, args.per, args.digits)
    except recipe_lib.RecipeError as e:
      print(f'Error: {e}', file=sys.stderr)
      return 2
  print(text, end='', flush=True)
  if args.markdown:
    with open(args.markdown, 'w', encoding='utf-8') as f:
      f.write(text)
  if table.missing:
    print(f'{len(table.missing)} missing (listed above).', file=sys.stderr)
  if not any(c.n for c in table.cells.values()):
    print('No run has a result yet: nothing to draw.', file=sys.stderr)
    return 1
  if args.output:
    draw(table, spec, args.output)
    print(f'Wrote {args.output}', file=sys.stderr)
  return 0


if __name__ == '__main__':
  sys.exit(main())
