"""Where one train step's time goes: XLA's own per-op trace of the compiled step, as JSON.

    python bench/step_profile.py                     # prompt tuning, small, dropout 0.1
    python bench/step_profile.py --only model --dropout 0
    python bench/step_profile.py --only lora --top 20

Builds the step exactly as `bench/train_step.py` does (same shape, data and
run files), runs it under `jax.profiler` and reads the per-op events of the
trace (XLA:CPU names each event after the HLO instruction it ran). Every op
is placed by the Flax module path in its HLO metadata:

  part    attention (incl. relative position bias), mlp, norm, embedding
          (token embedder and prompt), logits, loss, dropout (random bits),
          optimizer (outside the model), other
  phase   forward, backward (JAX's transpose of the forward), update
  kind    matmul (the op contains a dot) or elementwise (everything else:
          fusions of elementwise ops, reductions, transposes, copies)

For each group it reports its share of the step's wall time and, for
matmuls, the FLOPs from the dots' shapes and the rate they ran at. XLA:CPU
runs independent ops at once; while n ops run together each is charged 1/n
of that time, so the groups add up to the time the step kept the CPU busy.
The matmul peak (`bench/common.matmul_peak_flops`) and the step's model
FLOPs (`bench/forward.train_flops`) frame the result: the share of peak is
model FLOPs / (step seconds x peak).
"""
import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from train_step import DELTA_METHODS, SEED, add_step_arguments, build_ours  # pylint: disable=g-import-not-at-top,wrong-import-position

_COMPUTATION = re.compile(r'^(?:ENTRY )?%(\S+) .*\{$')
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%(\S+) = (\w+)\[([\d,]*)\][^ ]* (\w+)\((.*)')
_CALLS = re.compile(r'calls=%([\w.\-]+)')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_DIMS = re.compile(r'lhs_contracting_dims=\{([\d,]*)\}')
_OPERANDS = re.compile(r'%([\w.\-]+)')


def parse_hlo(text: str) -> dict:
  """{computation: {instruction: (shape, opcode, op_name, called computation, rest)}}."""
  computations, current = {}, None
  for line in text.splitlines():
    start = _COMPUTATION.match(line)
    if start:
      current = computations.setdefault(start.group(1), {})
      continue
    match = _INSTRUCTION.match(line)
    if match and current is not None:
      name, _, dims, opcode, rest = match.groups()
      shape = tuple(int(d) for d in dims.split(',') if d)
      op_name = _OP_NAME.search(rest)
      calls = _CALLS.search(rest)
      current[name] = (shape, opcode, op_name.group(1) if op_name else '',
                       calls.group(1) if calls else None, rest)
  return computations


def dot_flops(computations: dict, computation: str, seen=None) -> float:
  """FLOPs (2 per multiply-add) of every dot in `computation` and what it calls."""
  seen = seen or set()
  if computation in seen or computation not in computations:
    return 0.0
  seen.add(computation)
  body, total = computations[computation], 0.0
  for shape, opcode, _, calls, rest in body.values():
    if opcode == 'dot':
      total += one_dot_flops(body, shape, rest)
    if calls:
      total += dot_flops(computations, calls, seen)
  return total


def one_dot_flops(body: dict, shape: tuple, rest: str) -> float:
  """2 x output elements x contracted size of one dot, its lhs looked up in `body`."""
  lhs = body.get(_OPERANDS.findall(rest)[0])
  contracted = 1
  for d in (int(d) for d in _DIMS.search(rest).group(1).split(',') if d):
    contracted *= lhs[0][d] if lhs else 1
  out = 1
  for d in shape:
    out *= d
  return 2.0 * out * contracted


def wall_shares(events: list) -> dict:
  """{id(event): its share of wall time in us}: while n ops run at once each gets 1/n.

  XLA:CPU runs independent ops concurrently, so their durations overlap;
  shared out this way the shares add up to the time any op was running, and
  a group's share is the wall time it accounts for.
  """
  edges = sorted({t for e in events for t in (e['ts'], e['ts'] + e.get('dur', 0))})
  shares = {id(e): 0.0 for e in events}
  by_start = sorted(events, key=lambda e: e['ts'])
  active, next_event = [], 0
  for left, right in zip(edges, edges[1:]):
    while next_event < len(by_start) and by_start[next_event]['ts'] <= left:
      active.append(by_start[next_event])
      next_event += 1
    active = [e for e in active if e['ts'] + e.get('dur', 0) > left]
    for e in active:
      shares[id(e)] += (right - left) / len(active)
  return shares


def _dims(rest: str, name: str) -> tuple:
  match = re.search(name + r'=\{([\d,]*)\}', rest)
  return tuple(int(d) for d in match.group(1).split(',') if d) if match else ()


def dot_signatures(computations: dict) -> collections.Counter:
  """How many dots of each (lhs shape, rhs shape, dimension numbers) the step runs."""
  found = collections.Counter()
  for body in computations.values():
    for _, opcode, _, _, rest in body.values():
      if opcode != 'dot':
        continue
      lhs, rhs = (body[name][0] for name in _OPERANDS.findall(rest)[:2])
      found[(lhs, rhs, _dims(rest, 'lhs_contracting_dims'), _dims(rest, 'rhs_contracting_dims'),
             _dims(rest, 'lhs_batch_dims'), _dims(rest, 'rhs_batch_dims'))] += 1
  return found


def matmul_floor(signatures: collections.Counter, repeats: int = 5) -> dict:
  """Seconds the step's dots take when each runs alone, at its own shape.

  Every distinct dot is timed as a lone jitted `lax.dot_general` (best of
  `repeats`), so the sum is what the matmuls cost without anything else in
  the step: the time a perfect schedule of the same dots could not beat.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from common import best_time  # pylint: disable=g-import-not-at-top
  seconds = flops = 0.0
  rows = []
  for (lhs, rhs, lc, rc, lb, rb), count in signatures.items():
    a = jax.random.normal(jax.random.PRNGKey(0), lhs)
    b = jax.random.normal(jax.random.PRNGKey(1), rhs)
    dot = jax.jit(lambda a, b, d=((lc, rc), (lb, rb)): jax.lax.dot_general(a, b, d))
    out = jax.eval_shape(dot, a, b).shape
    contracted = 1
    for d in lc:
      contracted *= lhs[d]
    one = 2.0 * contracted * float(jax.numpy.prod(jax.numpy.array(out)))
    took = best_time(lambda: dot(a, b), repeats)
    seconds += count * took
    flops += count * one
    rows.append({'lhs': list(lhs), 'rhs': list(rhs), 'count': count,
                 'gflops_per_second_alone': round(one / took / 1e9, 1)})
  rows.sort(key=lambda r: r['gflops_per_second_alone'])
  return {'seconds': seconds, 'flops': flops, 'slowest_shapes': rows[:6]}


def part_of(op_name: str) -> str:
  """The model part an op belongs to, from its Flax module path."""
  path = op_name.lower()
  if 'transformer' not in path and 'update' in path:
    return 'optimizer'
  for part, keys in (('dropout', ('dropout', 'random_bits', 'threefry')),
                     ('attention', ('attention', 'relpos')),
                     ('mlp', ('/mlp/',)),
                     ('norm', ('layer_norm', 'norm/')),
                     ('embedding', ('token_embedder', 'embed', 'prompt')),
                     ('logits', ('logits',)),
                     ('loss', ('cross_entropy', 'loss', 'log_softmax', 'logsumexp'))):
    if any(k in path for k in keys):
      return part
  return 'other'


def phase_of(op_name: str) -> str:
  if 'transpose(jvp' in op_name:
    return 'backward'
  if 'jvp(' in op_name:
    return 'forward'
  return 'update'


def profile(kind: str, args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from common import matmul_peak_flops  # pylint: disable=g-import-not-at-top
  from forward import train_flops  # pylint: disable=g-import-not-at-top

  built = build_ours(kind, args)
  step_fn, state, batch = built['step_fn'], built['state'], built['batch']
  computations = parse_hlo(step_fn.lower(state, batch).compile().as_text())
  floor = matmul_floor(dot_signatures(computations))
  ops = {}
  for body in computations.values():
    for name, (shape, opcode, op_name, calls, rest) in body.items():
      flops = dot_flops(computations, calls) if calls else 0.0
      if opcode == 'dot':
        flops = one_dot_flops(body, shape, rest)
      ops[name] = (op_name, flops, shape, opcode)

  for _ in range(2):  # compile and warm up
    state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)

  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    for _ in range(args.traced_steps):
      state, metrics = step_fn(state, batch)
      jax.block_until_ready(metrics)
    jax.profiler.stop_trace()
    trace_file = glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'), recursive=True)[0]
    with gzip.open(trace_file) as f:
      events = json.load(f)
  events = events['traceEvents'] if isinstance(events, dict) else events

  groups = collections.defaultdict(lambda: [0.0, 0.0, 0])  # seconds, flops, ops
  per_op = collections.defaultdict(float)
  unknown = 0.0
  timed = [e for e in events if e.get('ph') == 'X' and e['name'] in ops]
  shares = wall_shares(timed)
  for event in timed:
    seconds = shares[id(event)] / 1e6 / args.traced_steps
    op_name, flops, _, _ = ops[event['name']]
    if not op_name:
      unknown += seconds
    kind_ = 'matmul' if flops else 'elementwise'
    group = groups[(part_of(op_name), phase_of(op_name), kind_)]
    group[0] += seconds
    group[1] += flops / args.traced_steps * (1 if seconds else 0)
    group[2] += 1
    per_op[event['name']] += seconds

  peak = matmul_peak_flops(repeats=10)
  step_seconds = min(times)
  model_gflops = train_flops(built['config'], args.batch, built['encoder_length'],
                             args.targets, weight_gradients=kind == 'model') / 1e9
  op_seconds = sum(g[0] for g in groups.values())

  def totals(select):
    seconds = sum(g[0] for key, g in groups.items() if select(key))
    flops = sum(g[1] for key, g in groups.items() if select(key))
    return seconds, flops

  def row(seconds, flops):
    out = {'ms_per_step': round(seconds * 1e3, 1),
           'share_of_busy_time': round(seconds / op_seconds, 3) if op_seconds else None}
    if flops:
      out['gflops'] = round(flops / 1e9, 2)
      out['gflops_per_second'] = round(flops / seconds / 1e9, 1) if seconds else None
      out['share_of_matmul_peak_while_running'] = round(flops / seconds / peak, 3) if seconds else None
    return out

  matmul_seconds, matmul_flops = totals(lambda k: k[2] == 'matmul')
  report = {
      'benchmark': 'step_profile',
      'system': f'ours_{kind}',
      'size': args.size, 'batch': args.batch, 'input_length': args.inputs,
      'encoder_length_seen': built['encoder_length'], 'target_length': args.targets,
      'dropout_rate': args.dropout, 'dtype': 'float32', 'seed': SEED,
      'device': f'{jax.devices()[0].platform} x{jax.device_count()}',
      'cpu_cores_visible': os.cpu_count(),
      'step_seconds': round(step_seconds, 4),
      'step_seconds_all': [round(t, 3) for t in times],
      'busy_seconds_per_step': round(op_seconds, 4),
      'busy_note': ('wall time while some op of the step ran; concurrent ops share it '
                    'equally, and every figure below is such a share (ms of wall time)'),
      'matmul_peak_gflops': round(peak / 1e9, 1),
      'model_gflops_per_step': round(model_gflops, 2),
      'share_of_matmul_peak': round(model_gflops * 1e9 / step_seconds / peak, 3),
      'traced_dot_gflops_per_step': round(matmul_flops / 1e9, 2),
      'matmul_floor': {
          'seconds_per_step': round(floor['seconds'], 4),
          'share_of_matmul_peak_at_floor': round(model_gflops * 1e9 / floor['seconds'] / peak, 3),
          'note': ('every dot of the step timed alone at its own shape and summed: no '
                   'schedule of these dots beats it, so the share of peak at this step '
                   'time bounds what fusing or reordering the rest can reach'),
          'slowest_shapes': floor['slowest_shapes'],
      },
      'matmul': row(matmul_seconds, matmul_flops),
      'elementwise': row(*totals(lambda k: k[2] == 'elementwise')),
      'by_phase': {p: row(*totals(lambda k, p=p: k[1] == p))
                   for p in ('forward', 'backward', 'update')},
      'by_part': {p: row(*totals(lambda k, p=p: k[0] == p))
                  for p in sorted({k[0] for k in groups})},
      'groups': sorted(({'part': k[0], 'phase': k[1], 'kind': k[2], 'ops': g[2] // max(1, args.traced_steps),
                         **row(g[0], g[1])} for k, g in groups.items()),
                       key=lambda r: -r['ms_per_step']),
      'top_ops': [{'op': name, 'ms_per_step': round(s * 1e3, 2),
                   'module': ops[name][0].split('/', 2)[-1][:120], 'shape': list(ops[name][2]),
                   'gflops': round(ops[name][1] / 1e9, 3)}
                  for name, s in sorted(per_op.items(), key=lambda kv: -kv[1])[:args.top]],
      'ms_without_module_path': round(unknown * 1e3, 1),
  }
  return report


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--only', default='prompt', choices=('prompt', 'model') + DELTA_METHODS)
  parser.add_argument('--traced-steps', type=int, default=2)
  parser.add_argument('--top', type=int, default=12)
  add_step_arguments(parser)
  args = parser.parse_args()
  print(json.dumps(profile(args.only, args), indent=1))


if __name__ == '__main__':
  main()
