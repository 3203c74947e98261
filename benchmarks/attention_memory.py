"""Compiled peak temporary memory of attention implementations, plus timing.

Lowers the forward and the forward+backward of each implementation for
abstract inputs (`jax.ShapeDtypeStruct`, nothing is allocated) and reads
`memory_analysis()` of the compiled executable, so long sequences can be
inspected on a small machine. The forward is also timed at the smallest
token count.

  python benchmarks/attention_memory.py --tokens 4096 16384 65536
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from pippo_jax.models import attention


def _fns(impl, scale, block):
  def fwd(q, k, v):
    return attention.dot_product_attention(
      q, k, v, scale=scale, implementation=impl, block_q=block, block_kv=block
    )

  def fwd_bwd(q, k, v, d_out):
    _, vjp = jax.vjp(fwd, q, k, v)
    return vjp(d_out)

  return fwd, fwd_bwd


def _temp_bytes(fn, *args):
  """(temp bytes, compile seconds) of `jax.jit(fn)` compiled for `args`."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  seconds = time.perf_counter() - t0
  return compiled.memory_analysis().temp_size_in_bytes, seconds


def _fmt_bytes(n):
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if n < 1024 or unit == "TiB":
      return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
    n /= 1024


def _time_forward(fwd, shape, dtype, repeats):
  """Median wall seconds of the jitted forward on random inputs."""
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal(shape), dtype) for _ in range(3))
  f = jax.jit(fwd)
  f(q, k, v).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(q, k, v).block_until_ready()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384, 65536])
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--heads", type=int, default=24)
  parser.add_argument("--head-dim", type=int, default=64)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--block", type=int, default=512)
  parser.add_argument("--impls", nargs="+", default=["xla", "blockwise"])
  parser.add_argument("--no-backward", action="store_true", help="skip compiling forward+backward")
  parser.add_argument(
    "--repeats", type=int, default=3, help="timed forward runs at the smallest token count"
  )
  args = parser.parse_args()

  dtype = jnp.dtype(args.dtype)
  scale = args.head_dim**-0.5
  print(
    f"backend={jax.default_backend()} batch={args.batch} "
    f"heads={args.heads} head_dim={args.head_dim} dtype={dtype.name} "
    f"block={args.block}"
  )
  header = (
    f"{'tokens':>7} | {'impl':<9} | {'fwd temp':>10} | "
    f"{'fwd+bwd temp':>12} | {'compile s':>9} | {'fwd wall s':>10}"
  )
  print(header)
  print("-" * len(header))
  smallest = min(args.tokens)
  for n in args.tokens:
    shape = (args.batch, n, args.heads, args.head_dim)
    spec = jax.ShapeDtypeStruct(shape, dtype)
    for impl in args.impls:
      fwd, fwd_bwd = _fns(impl, scale, args.block)
      fwd_temp, seconds = _temp_bytes(fwd, spec, spec, spec)
      bwd_temp = "-"
      if not args.no_backward:
        temp, bwd_seconds = _temp_bytes(fwd_bwd, spec, spec, spec, spec)
        bwd_temp, seconds = _fmt_bytes(temp), seconds + bwd_seconds
      wall = "-"
      if n == smallest and args.repeats > 0:
        wall = f"{_time_forward(fwd, shape, dtype, args.repeats):.3f}"
      print(
        f"{n:>7} | {impl:<9} | {_fmt_bytes(fwd_temp):>10} | "
        f"{bwd_temp:>12} | {seconds:>9.1f} | {wall:>10}",
        flush=True,
      )


if __name__ == "__main__":
  main()
