"""Forward, forward+backward and training-step time of a stage config, with MFU.

  python benchmarks/model_step.py --config configs/p3_posttrain.py:size=tiny,res=128

Model FLOPs utilisation is measured against this machine's float32 matmul peak, taken in the same
run (best of several large jitted matmuls). Training-step FLOPs are 3 x the analytic forward FLOPs
(`pippo_jax.models.flops`), so rematerialisation shows up as lower MFU, not as more FLOPs.
"""
import argparse
import importlib.util
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from pippo_jax import config_lib
from pippo_jax.models import flops
from pippo_jax.models.config import ModelConfig
from pippo_jax.models.pippo import Pippo, dummy_inputs


def load_config(spec: str):
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("stage_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def best_time(fn, *args, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return min(times)


def timed_compile(fn, *args, donate=()):
  start = time.perf_counter()
  compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
  return compiled, time.perf_counter() - start


def best_step_time(step, state, repeats: int) -> float:
  """Best time of a state -> state step whose inputs are donated (threads the state through)."""
  state = step(*state)[:2]
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    state = jax.block_until_ready(step(*state)[:2])
    times.append(time.perf_counter() - start)
  return min(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/p3_posttrain.py:size=tiny,res=128")
  parser.add_argument("--dtype", default=None, help="override model.dtype (float32/bfloat16)")
  parser.add_argument("--remat", default=None, help="override model.remat_policy")
  parser.add_argument("--attention", default=None, help="override model.attention_impl")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  config = load_config(args.config)
  for key, value in (("dtype", args.dtype), ("remat_policy", args.remat),
                     ("attention_impl", args.attention)):
    if value:
      config.model[key] = value
  config_lib.validate(config)
  cfg = ModelConfig.from_config(config.model)
  b = config.batch_size
  model = Pippo(cfg)
  x_t, t, cond = dummy_inputs(cfg, b)
  x_t = jax.random.normal(jax.random.key(1), x_t.shape)
  t = jnp.full((b,), 500, jnp.int32)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), x_t, t, cond)["params"])
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(1e-4, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01))
  opt_state = tx.init(params)
  noise = jax.random.normal(jax.random.key(2), x_t.shape)

  def forward(p):
    return model.apply({"params": p}, x_t, t, cond)

  def loss(p):
    return jnp.mean((model.apply({"params": p}, x_t, t, cond) - noise) ** 2)

  def train_step(p, s):
    value, grads = jax.value_and_grad(loss)(p)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s, value

  peak = flops.matmul_peak()
  fwd_flops = flops.forward_flops(cfg, batch=b)["total"]
  rows = []
  for name, fn, fargs, mult in (("forward", forward, (params,), 1),
                                ("forward+backward", jax.value_and_grad(loss), (params,), 3),
                                ("train step (AdamW)", train_step, (params, opt_state), 3)):
    if fn is train_step:  # parameters and optimizer state updated in place, as in training
      compiled, compile_s = timed_compile(fn, *fargs, donate=(0, 1))
      seconds = best_step_time(compiled, fargs, args.repeats)
    else:
      compiled, compile_s = timed_compile(fn, *fargs)
      jax.block_until_ready(compiled(*fargs))
      seconds = best_time(compiled, *fargs, repeats=args.repeats)
    mem = compiled.memory_analysis()
    temp = getattr(mem, "temp_size_in_bytes", 0) / 2 ** 30 if mem else float("nan")
    achieved = mult * fwd_flops / seconds
    rows.append((name, seconds, compile_s, achieved / 1e9, 100 * achieved / peak, temp))

  print(f"config {args.config}  dtype {cfg.dtype}  remat {cfg.remat_policy}  attention "
        f"{cfg.attention_impl}  batch {b}  views {cfg.num_views}+1  devices {jax.devices()[0].platform}")
  print(f"params {sum(x.size for x in jax.tree.leaves(params)) / 1e6:.2f}M  forward "
        f"{fwd_flops / 1e9:.1f} GFLOP  float32 matmul peak {peak / 1e9:.1f} GFLOP/s")
  print(f"{'':<20}{'time s':>9}{'steps/s':>9}{'examples/s':>11}{'compile s':>11}{'GFLOP/s':>10}"
        f"{'MFU %':>8}{'temp GiB':>10}")
  for name, seconds, compile_s, gflops, mfu, temp in rows:
    print(f"{name:<20}{seconds:>9.3f}{1 / seconds:>9.2f}{b / seconds:>11.2f}{compile_s:>11.1f}"
          f"{gflops:>10.1f}{mfu:>8.1f}{temp:>10.2f}")


if __name__ == "__main__":
  main()
