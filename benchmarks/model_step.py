"""Forward, forward+backward and training-step time of a stage config, with MFU.

  python benchmarks/model_step.py --config configs/p3_posttrain.py:size=tiny,res=128 [--dtype both]

Times the production code path: `training.step.loss_and_metrics` (batch -> model inputs, noising,
condition drops, loss) and `training.step.compile_train_step` (the optimizer of
`state.make_optimizer`, clipping, the non-finite guard, donated state) on a one-device mesh. The
denoiser is what is timed: the batch holds latents and the codec passes them through
(`LatentCodec`), so a VAE never runs. Model FLOPs utilisation is measured against this machine's
float32 matmul peak, taken in the same run; a step counts 3 x the analytic forward FLOPs
(`models.flops`), so rematerialisation shows up as lower MFU, not as more FLOPs. Times are the
best of --repeats runs, each waited for; the last row is the mean of --repeats training steps
dispatched back to back, as the training loop dispatches them.
"""

import argparse
import dataclasses
import importlib.util
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np

from pippo_jax import config_lib, hostmem
from pippo_jax.cli import common
from pippo_jax.diffusion import schedule as schedule_lib
from pippo_jax.models import flops, inputs
from pippo_jax.models import params as params_lib
from pippo_jax.models.config import ModelConfig
from pippo_jax.models.pippo import Pippo
from pippo_jax.parallel import sharding
from pippo_jax.training import state as state_lib
from pippo_jax.training import step as step_lib


@flax.struct.dataclass
class LatentCodec:
  """The batch's image keys already hold latents: encode is the identity (the VAE is not timed)."""

  downsample: int = flax.struct.field(pytree_node=False, default=1)

  def encode(self, latents, key=None):
    del key
    return latents.astype(jnp.float32)

  def decode(self, latents):
    return latents


def load_config(spec: str, dtype: str | None = None, **model_overrides):
  """A stage config from `configs/NAME.py[:variant]`, with `model.*` overrides, validated."""
  path, _, arg = common.packaged_config(spec).partition(":")
  module_spec = importlib.util.spec_from_file_location("stage_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  for key, value in dict(model_overrides, dtype=dtype).items():
    if value:
      config.model[key] = value
  return config_lib.validate(config)


def matmul_peak(n: int = 2048, repeats: int = 10, dtype: str = "float32") -> float:
  """This machine's best achieved FLOP/s on an n x n x n jitted matmul of `dtype` inputs (the MFU
  reference is float32's)."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  f = jax.jit(lambda x, y: x @ y)
  return 2 * n**3 / time_fn(lambda x: f(x, x), a, repeats)


def latent_batch(cfg: ModelConfig, batch: int, seed: int = 0) -> dict:
  """A host batch with the keys `models.inputs` reads, latents in place of images."""
  rng = np.random.default_rng(seed)
  v, s, c, px = cfg.num_views, cfg.latent_size, cfg.latent_channels, cfg.image_size
  shapes = {
    "target_images": (batch, v, s, s, c),
    "ref_image": (batch, s, s, c),
    "target_cam_pose": (batch, v, cfg.cam_pose_dim),
    "ref_cam_pose": (batch, cfg.cam_pose_dim),
    "target_anchor": (batch, v, s, s, c),
    "ref_anchor": (batch, s, s, c),
    "target_plucker": (batch, v, px, px, cfg.plucker_dim),
    "ref_plucker": (batch, px, px, cfg.plucker_dim),
  }
  out = {k: rng.standard_normal(shape).astype(np.float32) for k, shape in shapes.items()}
  out.update(record_index=np.arange(batch, dtype=np.int32), epoch=np.zeros(batch, np.int32))
  return {k: out[k] for k in inputs.batch_keys(cfg)}


@dataclasses.dataclass
class Bench:
  """The production functions of one config, compiled on one device, with their inputs."""

  config: object
  cfg: ModelConfig
  forward: object  # params -> model output
  loss_grad: object  # params -> ((loss, metrics), grads)
  step: object  # (state, batch) -> (state, metrics), state donated
  state: object
  batch: dict
  compile_s: dict
  mesh: object


def build(config) -> Bench:
  cfg = ModelConfig.from_config(config.model)
  b = config.batch_size
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  model = Pippo(cfg)
  tx = state_lib.make_optimizer(config.optimizer, params_lib.abstract(cfg))
  codec = LatentCodec()
  schedule = schedule_lib.cosine_schedule(
    config.diffusion.num_timesteps, config.diffusion.cosine_s, config.diffusion.max_beta
  )
  state, shardings = state_lib.init_train_state(model, tx, cfg, mesh, config.seed, use_ema=False)
  # Live zero-initialised layers (the output projection starts at zero).
  state = state.replace(params=jax.tree.map(lambda p: p + 0.01, state.params))
  batch = {k: jnp.asarray(v) for k, v in latent_batch(cfg, b).items()}
  key = jax.random.key(0)
  x0, cond = inputs.model_inputs(batch, codec, cfg)
  t = jnp.full((b,), 500, jnp.int32)
  loss = lambda p: step_lib.loss_and_metrics(
    p, model, codec, cfg, schedule, config.diffusion, batch, key
  )
  compile_s, fns = {}, {}
  for name, fn, args in (
    ("forward", lambda p: model.apply({"params": p}, x0, t, cond), (state.params,)),
    ("loss_grad", jax.value_and_grad(loss, has_aux=True), (state.params,)),
  ):
    start = time.perf_counter()
    fns[name] = jax.jit(fn).lower(*args).compile()
    compile_s[name] = time.perf_counter() - start
  step_fn = step_lib.compile_train_step(
    shardings,
    mesh,
    model=model,
    tx=tx,
    codec=codec,
    cfg=cfg,
    schedule=schedule,
    diffusion_cfg=config.diffusion,
  )
  start = time.perf_counter()
  with sharding.activate(mesh):
    compiled = step_fn.lower(state, batch).compile()  # (state, batch, codec)
  step = lambda s, b: compiled(s, b, codec)
  step.memory_analysis, step.as_text = compiled.memory_analysis, compiled.as_text
  compile_s["step"] = time.perf_counter() - start
  return Bench(config, cfg, fns["forward"], fns["loss_grad"], step, state, batch, compile_s, mesh)


def time_step(bench: Bench, repeats: int) -> tuple[float, float]:
  """Best time of the training step, threading the donated state through, and the mean time of
  `repeats` steps dispatched back to back (what a training loop can reach)."""
  state = bench.step(bench.state, bench.batch)[0]
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    state, metrics = bench.step(state, bench.batch)
    jax.block_until_ready((state, metrics))
    best = min(best, time.perf_counter() - start)
  wait = step_lib.wait_for_each_step(bench.mesh)  # as the training loop does
  start = time.perf_counter()
  for _ in range(repeats):
    state, metrics = bench.step(state, bench.batch)
    if wait:
      jax.block_until_ready(metrics)
  jax.block_until_ready((state, metrics))
  back_to_back = (time.perf_counter() - start) / repeats
  bench.state = state
  return best, back_to_back


def time_fn(fn, arg, repeats: int) -> float:
  jax.block_until_ready(fn(arg))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(arg))
    best = min(best, time.perf_counter() - start)
  return best


def table(bench: Bench, repeats: int, peak: float) -> str:
  cfg, b = bench.cfg, bench.config.batch_size
  fwd_flops = flops.forward_flops(cfg, batch=b)["total"]
  rows = [
    ("forward", time_fn(bench.forward, bench.state.params, repeats), 1, "forward"),
    ("forward+backward", time_fn(bench.loss_grad, bench.state.params, repeats), 3, "loss_grad"),
  ]
  best, back_to_back = time_step(bench, repeats)
  rows += [
    ("train step (AdamW, clip)", best, 3, "step"),
    (f"train step, mean of {repeats} back to back", back_to_back, 3, "step"),
  ]
  lines = [
    f"| {bench.config.stage} {cfg.dtype}, batch {b}, {cfg.num_views}+1 views | time s | "
    "steps/s | examples/s | compile s | GFLOP/s | MFU % | temp GiB |",
    "|---|---|---|---|---|---|---|---|",
  ]
  compiled = {"forward": bench.forward, "loss_grad": bench.loss_grad, "step": bench.step}
  for name, seconds, mult, key in rows:
    mem = compiled[key].memory_analysis()
    temp = getattr(mem, "temp_size_in_bytes", 0) / 2**30 if mem else float("nan")
    achieved = mult * fwd_flops / seconds
    lines.append(
      f"| {name} | {seconds:.3f} | {1 / seconds:.2f} | {b / seconds:.2f} | "
      f"{bench.compile_s[key]:.1f} | {achieved / 1e9:.1f} | {100 * achieved / peak:.1f} | "
      f"{temp:.2f} |"
    )
  return "\n".join(lines)


def main():
  hostmem.keep_freed_memory()  # as pippo-train does (before JAX starts its threads)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/p3_posttrain.py:size=tiny,res=128")
  parser.add_argument(
    "--dtype", default="float32", help="model.dtype: float32, bfloat16, or both (one table each)"
  )
  parser.add_argument("--remat", default=None, help="override model.remat_policy")
  parser.add_argument("--attention", default=None, help="override model.attention_impl")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  dtypes = ("float32", "bfloat16") if args.dtype == "both" else (args.dtype,)
  peak = matmul_peak()
  for dtype in dtypes:
    config = load_config(args.config, dtype, remat_policy=args.remat, attention_impl=args.attention)
    bench = build(config)
    cfg = bench.cfg
    print(
      f"config {args.config}  dtype {cfg.dtype}  remat {cfg.remat_policy}  attention "
      f"{cfg.attention_impl}  devices {jax.devices()[0].platform}  params "
      f"{params_lib.count(bench.state.params) / 1e6:.2f}M  forward "
      f"{flops.forward_flops(cfg, batch=config.batch_size)['total'] / 1e9:.1f} GFLOP  "
      f"float32 matmul peak {peak / 1e9:.1f} GFLOP/s"
    )
    print(table(bench, args.repeats, peak) + "\n")


if __name__ == "__main__":
  main()
