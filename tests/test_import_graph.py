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
# Named exceptions: (module path in the package, a module it may import
# across the layers). data/demo_probe.py writes P-tuning templates into task
# text with deltas.templates.as_text, a pure string function, rather than
# keep a copy of it in data; to go when as_text moves down to the data layer.
EXCEPTIONS = {('data/demo_probe.py', 'prompt_tuning.deltas.templates')}


def _layer(path: pathlib.Path) -> str:
  relative = path.relative_to(PACKAGE)
  if relative.name == '__main__.py':
    return 'cli'  # `python -m prompt_tuning.train` is a command, on top
  return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _imported_layers(path: pathlib.Path) -> Set[str]:
  layers = set()
  excepted = {name for module, name in EXCEPTIONS
              if path.relative_to(PACKAGE).as_posix() == module}
  for node in ast.walk(ast.parse(path.read_text())):
    names = []
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names if alias.name not in excepted]
    elif isinstance(node, ast.ImportFrom) and node.module:
      imported = [f'{node.module}.{alias.name}' for alias in node.names]
      if not set(imported) <= excepted:  # `from a.b import c` is module a.b.c
        names = [node.module] + imported
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


def test_exceptions_name_real_imports_and_only_those():
  # An exception that names nothing (a moved module, a renamed import) must
  # not linger; and it must not hide the file's other imports.
  for module, name in EXCEPTIONS:
    path = PACKAGE / module
    tree = ast.parse(path.read_text())
    found = {f'{n.module}.{a.name}' for n in ast.walk(tree)
             if isinstance(n, ast.ImportFrom) and n.module for a in n.names}
    found |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert name in found, (module, name)
  # The excepted import is the only one across layers demo_probe makes.
  assert _imported_layers(PACKAGE / 'data' / 'demo_probe.py') == {'data'}
