"""Test helper: processes with virtual CPU devices, started together as simulated hosts."""
import os
import pathlib
import socket
import subprocess
import sys
from typing import Sequence, Tuple

TESTS = pathlib.Path(__file__).resolve().parent
REPO = TESTS.parent


def env(devices: int) -> dict:
  """This environment with `devices` virtual CPU devices and the tests importable."""
  return dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(TESTS),
              XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')


def free_port() -> int:
  """A port for jax.distributed's coordinator."""
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def run_together(commands: Sequence[Tuple[Sequence[str], int]], logs: Sequence[pathlib.Path],
                 timeout: float) -> None:
  """Runs `python ARGS` for each (args, devices) at once and asserts each exits 0.

  Output goes to the files `logs`, not pipes: a full pipe would stall a
  process that another one waits for in a collective.
  """
  procs = []
  for (args, devices), log in zip(commands, logs):
    with open(log, 'w') as f:
      procs.append(subprocess.Popen([sys.executable, *args], cwd=REPO, env=env(devices),
                                    stdout=f, stderr=subprocess.STDOUT))
  try:
    for p in procs:
      p.wait(timeout=timeout)
  finally:
    for p in procs:
      p.kill()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, pathlib.Path(log).read_text()[-4000:]
