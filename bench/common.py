"""Timing helpers shared by the benchmarks: best-of-N wall time and the matmul peak."""
import time
from typing import Callable

import jax
import jax.numpy as jnp


def best_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
  """Fastest of `repeats` calls in seconds, after `warmup` calls (compilation)."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return best


def matmul_peak_flops(n: int = 2048, dtype=jnp.float32, repeats: int = 5) -> float:
  """Measured FLOP/s of one large square matmul: the practical peak here."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
  matmul = jax.jit(jnp.matmul)
  return 2 * n**3 / best_time(lambda: matmul(a, b), repeats)


def device_description() -> str:
  device = jax.devices()[0]
  return f'{device.platform}:{getattr(device, "device_kind", "")} x{jax.device_count()}'
