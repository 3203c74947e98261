"""Sequence parallelism on this CPU: a smoke-width P3 @1K forward with 12 target views.

  python benchmarks/seq_parallel.py [--views 12] [--seq 1,2,4,8] [--run 8]

The smoke model's width and depth with P3 @1K's token grid (the SDXL VAE's 128 x 128 latents,
4096 tokens per view: 13 x 4096 = 53,248 tokens with the reference) on 8 CPU devices
(`--xla_force_host_platform_device_count=8`, set here). For each `seq` axis size it compiles the
denoiser's forward with random parameters and prints XLA's temporary memory per device (its
working memory besides parameters, inputs and outputs), the argument bytes per device and the
compile time; then it runs the forward once on the `--run` mesh and prints its wall time and
this process's peak resident memory.
"""

import argparse
import dataclasses
import importlib
import os
import resource
import time

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from pippo_jax.models.config import ModelConfig  # noqa: E402
from pippo_jax.models.pippo import Pippo, dummy_inputs  # noqa: E402
from pippo_jax.parallel import sharding  # noqa: E402


def smoke_at_1k(views: int) -> ModelConfig:
  config = importlib.import_module("pippo_jax.configs.p3_posttrain").get_config("size=smoke")
  cfg = ModelConfig.from_config(config.model)
  return dataclasses.replace(
    cfg,
    image_size=1024,
    latent_size=128,
    latent_channels=4,
    num_views=views,
    attention_impl="blockwise",
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--views", type=int, default=12)
  parser.add_argument("--seq", default="1,2,4,8")
  parser.add_argument("--run", type=int, default=8, help="seq size to run (0: none)")
  args = parser.parse_args()
  cfg = smoke_at_1k(args.views)
  model = Pippo(cfg)
  x_t, t, cond = dummy_inputs(cfg, 1)
  key = jax.random.key(0)
  x_t = jax.random.normal(key, x_t.shape)
  cond = jax.tree.map(lambda a: jax.random.normal(key, a.shape, a.dtype) + 0.5, cond)
  params = jax.jit(lambda: nn.unbox(model.init(key, x_t, t, cond)["params"]))()
  forward = lambda p, *a: model.apply({"params": p}, *a)
  tokens = (args.views + 1) * cfg.tokens_per_view
  print(f"smoke width {cfg.width}, depth {cfg.depth}, {args.views} views @1K: {tokens} tokens")
  print("| seq | temp MiB / device | args MiB / device | compile s |\n|---|---|---|---|")
  compiled = {}
  for seq in [int(s) for s in args.seq.split(",")]:
    mesh = sharding.make_mesh(seq=seq, devices=jax.devices()[:seq])
    start = time.perf_counter()
    with sharding.activate(mesh):
      compiled[seq] = jax.jit(forward).lower(params, x_t, t, cond).compile()
    seconds = time.perf_counter() - start
    mem = compiled[seq].memory_analysis()
    print(
      f"| {seq} | {mem.temp_size_in_bytes / 2**20:.0f} | "
      f"{mem.argument_size_in_bytes / 2**20:.1f} | {seconds:.1f} |",
      flush=True,
    )
  if args.run:
    mesh = sharding.make_mesh(seq=args.run, devices=jax.devices()[: args.run])
    with sharding.activate(mesh):
      fn = jax.jit(forward)
      fn(params, x_t, t, cond).block_until_ready()
      start = time.perf_counter()
      out = fn(params, x_t, t, cond).block_until_ready()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    finite = bool(jnp.isfinite(out).all())
    print(
      f"forward on seq={args.run}: {seconds:.1f} s, output {out.shape} finite={finite}, "
      f"peak resident memory {peak:.1f} GiB"
    )


if __name__ == "__main__":
  main()
