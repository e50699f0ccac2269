"""Imports run one way (DESIGN.md): model, data at the bottom; deltas on model;
train and infer on those, never on each other (transfer, SPoT's ranking, beside
them); interop, the CLIs and tools on top.

Read from the sources with `ast`, so every import counts, also those inside
functions.
"""
import ast
import pathlib
from typing import Dict, Set

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'prompt_tuning'

# What each layer may import from the package (besides itself). The top-level
# modules gin_utils (configuration errors, gin parsing), console (what the
# commands print: quiet logging, progress bars) and the package root are
# shared by all.
ALLOWED = {
    'model': set(),
    'data': set(),
    'deltas': {'model'},
    'train': {'model', 'data', 'deltas'},
    'infer': {'model', 'data', 'deltas'},
    'transfer': {'model', 'deltas'},
}
SHARED = {'gin_utils', 'console', '__init__'}


def _layer(path: pathlib.Path) -> str:
  relative = path.relative_to(PACKAGE)
  if relative.name == '__main__.py':
    return 'cli'  # `python -m prompt_tuning.train` is a command, on top
  return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _imported_layers(path: pathlib.Path) -> Set[str]:
  layers = set()
  for node in ast.walk(ast.parse(path.read_text())):
    names = []
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      names = [node.module] + [f'{node.module}.{alias.name}' for alias in node.names]
    for name in names:
      parts = name.split('.')
      if parts[0] == 'prompt_tuning' and len(parts) > 1:
        layers.add(parts[1])
  return layers


def import_graph() -> Dict[str, Set[str]]:
  graph: Dict[str, Set[str]] = {}
  for path in PACKAGE.rglob('*.py'):
    layer = _layer(path)
    graph.setdefault(layer, set()).update(_imported_layers(path) - {layer})
  return graph


def test_layers_import_only_downwards():
  graph = import_graph()
  for layer, allowed in ALLOWED.items():
    wrong = graph.get(layer, set()) - allowed - SHARED
    assert not wrong, f'prompt_tuning/{layer} imports {sorted(wrong)}'


def test_train_and_infer_do_not_import_each_other():
  graph = import_graph()
  assert 'infer' not in graph['train'] and 'train' not in graph['infer']


def test_the_check_sees_imports():
  # The reader itself must find real imports, or the tests above pass vacuously.
  graph = import_graph()
  assert 'model' in graph['deltas'] and {'model', 'deltas'} <= graph['train']
  assert 'infer' in graph['eval']  # the eval CLI, on top
