"""Per-device memory of the train step, compiled ahead of time for a device mesh.

    python tools/memory_report.py --sizes xxl --mesh 1x8 --remat none,full
    python tools/memory_report.py --sizes small,base,large,xl,xxl --mesh 4x4 --json
    # For TPU, on any machine: needs libtpu (pip install "jax[tpu]"), no TPU
    python tools/memory_report.py --sizes xxl --topology v5e:2x4 --mesh 1x8 --remat none,full
    # Peak host memory of loading a checkpoint, whole vs shard by shard, on 4
    # simulated hosts (processes) of a 1x8 mesh; --write_checkpoint makes one
    python tools/memory_report.py --load /tmp/small_t5x --write_checkpoint small --mesh 1x8 \
      --processes 4

For each T5.1.1 size and each mode, the trainer's own train step
(`make_train_step` with a `partitioning.Partitioner`) is lowered on abstract
arrays (`jax.ShapeDtypeStruct`s carrying their shardings) and compiled for a
mesh of devices; XLA's buffer assignment then gives the memory of one device.
No parameter is ever allocated, so XXL needs no real memory. The devices are
virtual CPU devices (the tool sets XLA_FLAGS itself), or, with `--topology`,
the chips of a TPU slice described by libtpu (`v5e:4x4` is 16 chips of 16 GiB;
`v4:2x2x2` 8 chips of 32 GiB; `v3:4x4` 32 cores of 16 GiB) and compiled by
the real TPU compiler.

  prompt  gin/runs/prompt_tune.gin's method, prompt length 100: the prompt and
          its Adafactor state are trained, the backbone is an argument that is
          not donated.
  model   gin/runs/model_tune.gin's method, every parameter trained (T5
          fine-tuning Adafactor, factored second moments), parameters and
          state donated.

Parameters are float32, as the trainer keeps them (T5X too); activations are
`--dtype` (bfloat16 by default, as T5X runs on accelerators).
`--param_dtype bfloat16` stores the *frozen* backbone of prompt tuning in
bfloat16 instead, as the trainer's `FROZEN_PARAM_DTYPE = 'bfloat16'` does
(bitwise the same step with bfloat16 activations); rows using it say so.

Columns (bytes per device; from `compiled.memory_analysis()`):
  arguments   parameters, optimizer state, step and the batch shard
  outputs     the new trainable variables, optimizer state and metrics
  aliased     outputs that reuse a donated argument's buffer
  temps       everything else live at the peak: activations, gradients, ...
  total       arguments + outputs - aliased + temps: the device's peak
The analytic columns (frozen, trainable, optimizer, batch) are the shard sizes
of each part from the shardings alone, a check on `arguments`.

`--load PATH` instead measures host memory while loading a pretrained
checkpoint onto the mesh (`tools/load_memory.py`): each of `--processes`
processes stands for a host and reports its resident-set peak above where it
started, whole (`load_pretrained(path)`, then placed: every host reads every
array) and sharded (`load_pretrained(path, shardings)`: each host reads only
its devices' regions), with the share of the model its devices hold.

Parameters, optimizer state and batch are exact on any platform; the
temporaries depend on the compiler. XLA:CPU keeps bfloat16 matmul results in
float32 and its buffer assignment shows no saving from remat (measured: the
recomputation is not kept apart from the forward pass), so its activations
come out larger than an accelerator's: use `--topology` for the plan of a
TPU run, and the CPU numbers as an upper bound.
"""
import argparse
import json
import os
import re
import sys
import time

SIZES = ('small', 'base', 'large', 'xl', 'xxl')
MODES = ('prompt', 'model')
GIB = 1024 ** 3


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--sizes', default=','.join(SIZES),
                      help='comma list of T5.1.1 sizes (and "tiny")')
  parser.add_argument('--modes', default=','.join(MODES), help='prompt,model')
  parser.add_argument('--mesh', default=None,
                      help="DATAxMODEL, e.g. 4x4 or 1x16 (the 'data' and 'model' axes)")
  parser.add_argument('--num_partitions', type=int, default=None,
                      help="size of 'model' (NUM_PARTITIONS); with --num_devices "
                           'instead of --mesh')
  parser.add_argument('--num_devices', type=int, default=None,
                      help='virtual devices with --num_partitions (default: num_partitions)')
  parser.add_argument('--topology', default=None,
                      help='compile for a TPU slice instead of CPU devices, e.g. v5e:2x4, '
                           'v4:2x2x1, v3:4x4 (needs libtpu; no TPU needed)')
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--input_length', type=int, default=512)
  parser.add_argument('--target_length', type=int, default=8)
  parser.add_argument('--prompt_length', type=int, default=100)
  parser.add_argument('--remat', default='none',
                      help="comma list of REMAT_POLICY values: none, minimal, dots, full")
  parser.add_argument('--num_microbatches', type=int, default=None)
  parser.add_argument('--parameter_partitioning_dims', type=int, default=1,
                      help="PARAMETER_PARTITIONING_DIMS: 2 also splits weights' embed over data")
  parser.add_argument('--activation_partitioning_dims', type=int, default=1,
                      help="ACTIVATION_PARTITIONING_DIMS: 2 splits activations' embed over model")
  parser.add_argument('--dtype', default='bfloat16', help='activation dtype')
  parser.add_argument('--param_dtype', default='float32',
                      help='storage dtype of the frozen backbone in prompt tuning '
                           '(the trainer uses float32)')
  parser.add_argument('--budget_gib', type=float, default=16.0,
                      help='per-device memory the "fits" column checks against')
  parser.add_argument('--json', action='store_true', help='one JSON object per line')
  parser.add_argument('--load', default=None,
                      help='a legacy T5X checkpoint: report peak host memory of loading it '
                           'whole and sharded instead of compiling a train step')
  parser.add_argument('--write_checkpoint', default=None,
                      help='with --load DIR: first write a random T5.1.1 of this size there '
                           '(legacy T5X format)')
  parser.add_argument('--load_modes', default='whole,sharded')
  parser.add_argument('--processes', type=int, default=1,
                      help='simulated hosts (processes) sharing the --mesh devices')
  parser.add_argument('--read_ahead_mib', type=int, default=256,
                      help='sharded loads: regions read ahead of placement (MiB)')
  args = parser.parse_args(argv)
  if args.topology and not args.mesh and args.num_devices is None:
    args.num_devices = 0  # all of the slice's devices, filled in once it is known
  if args.mesh:
    try:
      data, model = (int(n) for n in args.mesh.lower().split('x'))
    except ValueError:
      parser.error(f'--mesh must be DATAxMODEL, e.g. 4x4; got {args.mesh!r}')
  else:
    model = args.num_partitions or 1
    devices = model if args.num_devices is None else args.num_devices
    if devices and devices % model:
      parser.error(f'--num_devices {devices} is not divisible by --num_partitions {model}')
    data = devices // model
  args.mesh_shape = (data, model)
  args.sizes = [s for s in args.sizes.split(',') if s]
  args.modes = [m for m in args.modes.split(',') if m]
  args.remat = [r for r in args.remat.split(',') if r]
  for mode in args.modes:
    if mode not in MODES:
      parser.error(f'unknown mode {mode!r}; expected {MODES}')
  return args


def _use_virtual_cpu_devices(count: int) -> None:
  """Must run before jax is imported: `count` CPU devices, no accelerator."""
  if 'jax' in sys.modules:
    raise RuntimeError('memory_report must set XLA_FLAGS before jax is imported.')
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  os.environ['XLA_FLAGS'] = ' '.join(flags + [f'--xla_force_host_platform_device_count={count}'])
  os.environ['JAX_PLATFORMS'] = 'cpu'


def tpu_devices(topology: str) -> list:
  """The devices of a TPU slice, e.g. 'v5e:2x4', from libtpu alone (no TPU needed)."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  generation, _, shape = topology.partition(':')
  dims = [int(n) for n in shape.split('x')]
  bounds = tuple(min(n, 2) for n in dims[:2]) + (1,)
  try:
    description = topologies.get_topology_desc(
        platform='tpu', topology_name=topology,
        chip_config_name='megacore' if generation == 'v4' else 'default',
        chips_per_host_bounds=bounds, num_slices=1, wrap=(False,) * 3)
  except Exception as e:  # pylint: disable=broad-except
    raise SystemExit(f'Cannot describe TPU topology {topology!r} ({e}). It needs libtpu '
                     'matching jax: pip install "jax[tpu]".') from e
  return list(description.devices)


def _shard_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  return int(sum(np.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
                 for x in jax.tree_util.tree_leaves(tree)))


def report(size: str, mode: str, remat: str, args, devices) -> dict:
  """Compiles one train step abstractly; the per-device memory as a dict."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from prompt_tuning.model import SIZES as CONFIGS, num_parameters  # pylint: disable=g-import-not-at-top
  from prompt_tuning.train import partitioning  # pylint: disable=g-import-not-at-top
  from prompt_tuning.train.method import from_run_files  # pylint: disable=g-import-not-at-top
  from prompt_tuning.train.step import TrainState, make_train_step  # pylint: disable=g-import-not-at-top
  from prompt_tuning.train.trainer import cast_frozen  # pylint: disable=g-import-not-at-top

  config = CONFIGS[size].replace(dtype=args.dtype, dropout_rate=0.1, remat_policy=remat)
  # The run files' own deltas, trained paths and optimizer.
  run_file = {'prompt': 'gin/runs/prompt_tune.gin', 'model': 'gin/runs/model_tune.gin'}[mode]
  method = from_run_files([run_file], config, [f'PROMPT_LENGTH = {args.prompt_length}'] *
                          (mode == 'prompt'))
  model = method.model
  partitioner = partitioning.Partitioner(
      mesh_shape=args.mesh_shape, devices=devices,
      activation_partitioning_dims=args.activation_partitioning_dims,
      parameter_partitioning_dims=args.parameter_partitioning_dims)
  partitioner.add_rules(method.logical_axis_rules())
  tokens = jnp.ones((1, 8), jnp.int32)
  boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, tokens, tokens))
  shardings = partitioner.variable_shardings(boxed)
  variables = jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), nn.unbox(boxed),
      shardings)
  frozen, trainable = method.split(variables)
  if mode == 'prompt' and args.param_dtype != 'float32':
    frozen = cast_frozen(frozen, args.param_dtype)  # as FROZEN_PARAM_DTYPE does
  tx = method.optimizer.build(0)
  abstract_opt = jax.eval_shape(tx.init, trainable)
  opt_shardings = partitioner.optimizer_shardings(
      abstract_opt, trainable, jax.tree_util.tree_map(lambda x: x.sharding, trainable))
  opt_state = jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_opt,
      opt_shardings)
  state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32, sharding=partitioner.replicated),
                     frozen=frozen, trainable=trainable, opt_state=opt_state)
  batch = {key: jax.ShapeDtypeStruct((args.batch_size, length), jnp.int32,
                                     sharding=partitioner.batch_sharding)
           for key, length in (('encoder_input_tokens', args.input_length),
                               ('decoder_input_tokens', args.target_length),
                               ('decoder_target_tokens', args.target_length))}
  step_fn = make_train_step(model, tx, 0, partitioner=partitioner,
                            state_shardings=partitioning.shardings_of(state),
                            num_microbatches=args.num_microbatches)
  parts = {'frozen': _shard_bytes(frozen), 'trainable': _shard_bytes(trainable),
           'optimizer': _shard_bytes(opt_state), 'batch_shard': _shard_bytes(batch)}
  start = time.perf_counter()
  try:
    memory = step_fn.lower(state, batch).compile().memory_analysis()
    arguments = int(memory.argument_size_in_bytes)
    outputs = int(memory.output_size_in_bytes)
    aliased = int(memory.alias_size_in_bytes)
    temps = int(memory.temp_size_in_bytes)
    code, note = int(memory.generated_code_size_in_bytes), None
  except jax.errors.JaxRuntimeError as e:
    # The TPU compiler refuses a program that does not fit, naming what it needs.
    needed = re.search(r'HLO temporaries \(([\d.]+)G\)', str(e))
    if 'RESOURCE_EXHAUSTED' not in str(e) or not needed:
      raise
    arguments = sum(parts.values())
    outputs = aliased = parts['trainable'] + parts['optimizer']
    temps, code = int(float(needed.group(1)) * GIB), 0
    note = 'does not fit the device: temps from the compiler\'s error, arguments from shardings'
  seconds = time.perf_counter() - start
  total = arguments + outputs - aliased + temps
  return {
      'size': size, 'mode': mode, 'mesh': f'{args.mesh_shape[0]}x{args.mesh_shape[1]}',
      'platform': args.topology or 'cpu', 'device_kind': devices[0].device_kind,
      'remat': remat, 'num_microbatches': args.num_microbatches,
      'partitioning_dims': {'parameters': args.parameter_partitioning_dims,
                            'activations': args.activation_partitioning_dims},
      'batch': f'{args.batch_size}x{args.input_length}+{args.target_length}',
      'prompt_length': args.prompt_length if mode == 'prompt' else 0,
      'dtype': args.dtype,
      'frozen_param_dtype': args.param_dtype if mode == 'prompt' else None,
      'parameters': num_parameters(config),
      'arguments': arguments, 'outputs': outputs, 'aliased': aliased, 'temps': temps,
      'total': total, 'generated_code': code, **parts,
      'fits': total <= args.budget_gib * GIB and note is None, 'budget_gib': args.budget_gib,
      'compile_seconds': round(seconds, 1), 'note': note,
  }


def _gib(n: int) -> str:
  return f'{n / GIB:.2f}'


def _table_line(row: dict) -> str:
  return (f"{row['size']:>5} {row['mode']:>6} {row['mesh']:>5} {row['remat']:>7} "
          f"{str(row['num_microbatches'] or 1):>3} {_gib(row['arguments']):>9} "
          f"{_gib(row['temps']):>9} {_gib(row['outputs']):>8} {_gib(row['aliased']):>8} "
          f"{_gib(row['total']):>8} {'yes' if row['fits'] else 'no':>5} "
          f"{row['compile_seconds']:>7}" + (f"  ({row['note']})" if row['note'] else ''))


def load_report(args) -> None:
  """Peak host memory of loading --load on --processes simulated hosts, per mode."""
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import load_memory  # pylint: disable=g-import-not-at-top
  path = args.load
  if args.write_checkpoint:
    path = load_memory.write_t5x_checkpoint(args.write_checkpoint, args.load)
  if not args.json:
    print(f'Host memory (GiB) per process of loading {path} onto a {args.mesh_shape[0]}x'
          f'{args.mesh_shape[1]} mesh of {args.processes} processes (simulated hosts).')
    print(f"{'mode':>8} {'proc':>4} {'model':>7} {'peak':>7} {'shards':>7} {'beyond':>7} "
          f"{'read':>7}")
  for mode in args.load_modes.split(','):
    for row in load_memory.measure(path, mode, args.mesh_shape, args.processes,
                                   args.read_ahead_mib):
      if args.json:
        print(json.dumps(row), flush=True)
      else:
        print(f"{row['mode']:>8} {row['process']:>4} {_gib(row['checkpoint_bytes']):>7} "
              f"{_gib(row['load_peak']):>7} {_gib(row['device_shards']):>7} "
              f"{_gib(row['beyond_shards']):>7} {_gib(row['bytes_read']):>7}", flush=True)


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.load:
    load_report(args)
    return
  if args.topology:
    os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # compile for the TPU, run nothing
    devices = tpu_devices(args.topology)
    if not args.mesh_shape[0] * args.mesh_shape[1]:
      args.mesh_shape = (len(devices) // args.mesh_shape[1], args.mesh_shape[1])
    if args.mesh_shape[0] * args.mesh_shape[1] != len(devices):
      raise SystemExit(f'--mesh {args.mesh_shape[0]}x{args.mesh_shape[1]} does not cover '
                       f'the {len(devices)} devices of {args.topology}.')
    where = f'{args.topology} ({devices[0].device_kind})'
  else:
    _use_virtual_cpu_devices(args.mesh_shape[0] * args.mesh_shape[1])
    import jax  # pylint: disable=g-import-not-at-top
    devices = jax.devices()
    where = 'virtual CPU devices'
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.ERROR)  # the partitioner's "replicated" notes
  if not args.json:
    print(f'Per-device GiB on a {args.mesh_shape[0]}x{args.mesh_shape[1]} (data x model) '
          f'mesh of {where}; batch {args.batch_size} x {args.input_length} '
          f'inputs + {args.target_length} targets, activations {args.dtype}, float32 '
          'parameters' + (f' (frozen backbone {args.param_dtype})'
                          if args.param_dtype != 'float32' else '') + '.')
    print(f"{'size':>5} {'mode':>6} {'mesh':>5} {'remat':>7} {'mb':>3} {'arguments':>9} "
          f"{'temps':>9} {'outputs':>8} {'aliased':>8} {'total':>8} {'fits':>5} "
          f"{'compile':>7}")
  for size in args.sizes:
    for mode in args.modes:
      for remat in args.remat:
        row = report(size, mode, remat, args, devices)
        print(json.dumps(row) if args.json else _table_line(row), flush=True)


if __name__ == '__main__':
  main()
