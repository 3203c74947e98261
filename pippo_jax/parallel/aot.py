"""Ahead-of-time compilation for devices this host does not have: will a config fit a pod?

`topology` describes a TPU slice (or several) through libtpu (`jax.experimental.topologies`,
the `[tpu]` extra) without any TPU; `compile_train` and `compile_sample` then compile the real
training step (`training.step.jit_train_step`: forward, backward, clipping, AdamW, EMA, the
non-finite guard) and the sampler's guided denoiser step (`inference.sample.guided_denoiser`:
the model on the (groups + 1) x batch of classifier-free guidance) for a mesh of those devices,
from `jax.ShapeDtypeStruct`s carrying their shardings: nothing is allocated. `analyse` reads
the compiled program: per-chip memory (arguments, outputs, temporaries) against the chip's HBM,
per-chip FLOPs and bytes (XLA's cost analysis), the collectives it contains, and a roofline
estimate of the step time and MFU from the chip's published peak and bandwidth.
"""

import collections
import dataclasses
import importlib.util
import math
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from pippo_jax.diffusion import schedule as schedule_lib
from pippo_jax.errors import ConfigError
from pippo_jax.inference import generator as generator_lib
from pippo_jax.inference import sample as sample_lib
from pippo_jax.models import attention, autoencoder, flops, inputs
from pippo_jax.models import codec as codec_lib
from pippo_jax.models import params as params_lib
from pippo_jax.models.config import ModelConfig
from pippo_jax.models.pippo import Pippo, dummy_inputs
from pippo_jax.parallel import sharding
from pippo_jax.training import state as state_lib
from pippo_jax.training import step as step_lib

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """A TPU generation's published per-chip figures (Cloud TPU system architecture pages)."""

  name: str
  hbm_bytes: float
  peak_flops: float  # dense bfloat16 FLOP/s
  hbm_bandwidth: float  # bytes/s
  chips_per_host: tuple[int, int, int]
  host_type: str  # one host's accelerator type, for libtpu's start-up (no TPU is looked for)


CHIPS = {
  "v4": Chip("TPU v4", 32 * GIB, 275e12, 1228e9, (2, 2, 1), "v4-8"),
  "v5e": Chip("TPU v5e", 16 * GIB, 197e12, 819e9, (2, 2, 1), "v5litepod-4"),
  "v5p": Chip("TPU v5p", 95 * GIB, 459e12, 2765e9, (2, 2, 1), "v5p-8"),
  "v6e": Chip("TPU v6e", 32 * GIB, 918e12, 1640e9, (2, 2, 1), "v6e-4"),
}
# Slice names (Cloud TPU's: v4 and v5p count TensorCores, two per chip; v5e and v6e count chips)
# -> topologies.
SLICES = {
  "v4-128": "v4:4x4x4",
  "v5p-64": "v5p:2x4x4",
  "v5p-128": "v5p:4x4x4",
  "v5p-256": "v5p:4x4x8",
  "v5p-512": "v5p:4x8x8",
  "v5p-1024": "v5p:8x8x8",
  "v5e-256": "v5e:16x16",
  "v6e-64": "v6e:8x8",
  "v6e-256": "v6e:16x16",
}
COLLECTIVES = (
  "all-reduce-scatter",
  "all-reduce",
  "all-gather",
  "reduce-scatter",
  "all-to-all",
  "collective-permute",
)


def topology(name: str, slices: int = 1) -> tuple[list, Chip]:
  """(devices, chip) of `slices` TPU slices named like `v5p:4x4x4` or `v5p-128` (`SLICES`).

  Raises:
    ConfigError: an unknown name or generation.
    ImportError: libtpu is not installed.
  """
  topo = SLICES.get(name, name)
  generation, _, shape = topo.partition(":")
  if generation not in CHIPS or not re.fullmatch(r"\d+(x\d+){1,2}", shape):
    raise ConfigError(
      f"--topology {name!r}: use GENERATION:AxB[xC] with GENERATION one of {sorted(CHIPS)} "
      f"(e.g. v5p:4x4x4) or a slice name, one of {sorted(SLICES)}"
    )
  if slices < 1:
    raise ConfigError(f"--slices {slices} must be >= 1")
  chip = CHIPS[generation]
  if importlib.util.find_spec("libtpu") is None:
    raise ImportError(f"describing {topo} needs libtpu: pip install 'pippo_jax[tpu]'")
  # Describing a topology starts libtpu: tell it this is one host of no pod (else it queries
  # cloud metadata and warns), and let several processes load it (it takes a lock file by
  # default; compiling needs no TPU).
  for key, value in dict(
    ALLOW_MULTIPLE_LIBTPU_LOAD="1",
    TPU_SKIP_MDS_QUERY="1",
    TPU_ACCELERATOR_TYPE=chip.host_type,
    TPU_WORKER_HOSTNAMES="localhost",
    TPU_WORKER_ID="0",
  ).items():
    os.environ.setdefault(key, value)
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  try:
    desc = topologies.get_topology_desc(
      platform="tpu",
      topology_name=topo,
      chip_config_name="default",
      chips_per_host_bounds=chip.chips_per_host,
      num_slices=slices,
    )
  except RuntimeError as e:
    raise ConfigError(f"--topology {name!r}: {str(e).splitlines()[0]}") from e
  return list(desc.devices), chip


def abstract_codec(codec_cfg):
  """The codec of `config.codec` without its weights: the SDXL VAE's parameters as
  ShapeDtypeStructs (nothing read or allocated); a space-to-depth codec has none."""
  if codec_cfg.kind != "sdxl_vae":
    return codec_lib.make_codec(codec_cfg)
  vae = autoencoder.VAEConfig()
  dtype = jnp.dtype(codec_cfg.get("dtype", "float32"))
  params = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, dtype if a.dtype == jnp.float32 else a.dtype),
    autoencoder.abstract_params(vae),
  )
  return codec_lib.SDXLVAECodec(
    params,
    vae,
    scale_factor=codec_cfg.get("scale_factor", vae.scaling_factor),
    shift_factor=codec_cfg.get("shift_factor", vae.shift_factor),
    chunk=codec_cfg.get("chunk", 0) or None,
  )


def abstract_batch(config, cfg: ModelConfig, batch: int) -> dict[str, jax.ShapeDtypeStruct]:
  """ShapeDtypeStructs of a training batch of `batch` examples (the keys the step reads;
  shapes and dtypes as `data_pipelines/schemas.py` documents them)."""
  res, nv = cfg.image_size, cfg.num_views
  h = cfg.latent_size
  moments = 2 * config.codec.latent_channels
  shapes = {
    "target_images": ((batch, nv, res, res, 3), jnp.uint8),
    "ref_image": ((batch, res, res, 3), jnp.uint8),
    "target_latents": ((batch, nv, h, h, moments), jnp.float16),
    "ref_latent": ((batch, h, h, moments), jnp.float16),
    "target_cam_pose": ((batch, nv, 16), jnp.float32),
    "ref_cam_pose": ((batch, 16), jnp.float32),
    "target_plucker": ((batch, nv, res, res, 6), jnp.float32),
    "ref_plucker": ((batch, res, res, 6), jnp.float32),
    "target_anchor": ((batch, nv, res, res, 3), jnp.uint8),
    "ref_anchor": ((batch, res, res, 3), jnp.uint8),
    "target_masks": ((batch, nv, res, res), jnp.uint8),
    "record_index": ((batch,), jnp.int32),
    "epoch": ((batch,), jnp.int32),
  }
  keys = inputs.batch_keys(
    cfg, config.diffusion.loss_mask, latents=config.data.get("latents", False)
  )
  return {k: jax.ShapeDtypeStruct(*shapes[k]) for k in keys}


def _with_shardings(tree, shardings):
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings
  )


def _sharded_like(tree, sharding_):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding_), tree)


def _check_batch(batch: int, mesh) -> None:
  ways = mesh.shape["data"] * mesh.shape["fsdp"]
  if batch % ways:
    raise ConfigError(f"batch {batch} is not divisible by the mesh's data x fsdp = {ways}")


def compile_train(config, mesh, rules, platform: str = "tpu"):
  """The compiled training step of `config` (batch `config.batch_size`) on `mesh`."""
  cfg = ModelConfig.from_config(config.model)
  _check_batch(config.batch_size, mesh)
  model = Pippo(cfg)
  tx = state_lib.make_optimizer(config.optimizer, params_lib.abstract(cfg))
  use_ema = config.train.ema_decay > 0
  abstract, shardings = state_lib.state_shardings(model, tx, cfg, mesh, use_ema, rules)
  batch_sh = sharding.batch_sharding(mesh, rules)
  state = _with_shardings(abstract, shardings)
  batch = _sharded_like(abstract_batch(config, cfg, config.batch_size), batch_sh)
  codec = _sharded_like(abstract_codec(config.codec), sharding.replicated(mesh))
  schedule = schedule_lib.cosine_schedule(
    config.diffusion.num_timesteps, config.diffusion.cosine_s, config.diffusion.max_beta
  )
  with sharding.activate(mesh, rules), attention.target_backend(platform):
    step = step_lib.jit_train_step(
      shardings,
      mesh,
      rules,
      model=model,
      tx=tx,
      cfg=cfg,
      schedule=schedule,
      diffusion_cfg=config.diffusion,
      ema_decay=float(config.train.ema_decay),
    )
    return step.lower(state, batch, codec).compile()


def sample_settings(config, num_views: int) -> dict:
  """The sampler settings `pippo-sample` would use for `num_views` target views (the config's
  guidance; attention biasing beyond the trained view count)."""
  cfg = ModelConfig.from_config(config.model)
  gen = generator_lib.Generator(
    model=None, params=None, codec=None, cfg=cfg, config=config, schedule=None
  )
  settings = gen.settings(attention_biasing=num_views + 1 > cfg.attention_train_views)
  return {k: settings[k] for k in ("scales", "rescale", "triangular", "attention_biasing")}


def compile_sample(config, mesh, rules, batch: int, platform: str = "tpu"):
  """The compiled guided denoiser step (one DDIM step's model call) of `config` for `batch`
  photos on `mesh`: latents and conditions in, the guided prediction out."""
  cfg = ModelConfig.from_config(config.model)
  _check_batch(batch, mesh)
  model = Pippo(cfg)
  batch_sh = sharding.batch_sharding(mesh, rules)
  params = _with_shardings(
    params_lib.abstract(cfg),
    sharding.param_shardings(params_lib.abstract(cfg, boxed=True), mesh, rules),
  )
  x_t, t, cond = jax.eval_shape(lambda: dummy_inputs(cfg, batch))
  x_t, t, cond = (_sharded_like(a, batch_sh) for a in (x_t, t, cond))
  settings = sample_settings(config, cfg.num_views)

  def step(params, x_t, t, cond):
    return sample_lib.guided_denoiser(model, params, cond, **settings)(x_t, t)

  with sharding.activate(mesh, rules), attention.target_backend(platform):
    return jax.jit(step).lower(params, x_t, t, cond).compile()


def collectives(hlo_text: str) -> dict[str, int]:
  """Number of each collective operation in a compiled HLO module (async pairs counted once)."""
  ops = "|".join(COLLECTIVES)
  found = collections.Counter(
    re.findall(rf"^\s*(?:ROOT )?%\S+ = .*? ({ops})(?:-start)?\(", hlo_text, re.MULTILINE)
  )
  return dict(sorted(found.items()))


def analyse(compiled, chip: Chip | None, model_flops: float, chips: int) -> dict[str, Any]:
  """Per-chip memory, FLOPs, bytes and collectives of a compiled step, and a roofline estimate.

  `model_flops` is the analytic FLOP count of the whole step (`models.flops`, without
  rematerialisation); its per-chip share over the estimated time, against the chip's peak, is
  the estimated MFU. The estimate (`roofline`) ignores collectives and assumes perfect overlap,
  so it is a lower bound on the step time.
  """
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  total = (
    mem.argument_size_in_bytes
    + mem.output_size_in_bytes
    + mem.temp_size_in_bytes
    - mem.alias_size_in_bytes
    + mem.generated_code_size_in_bytes
  )
  out = dict(
    argument_bytes=mem.argument_size_in_bytes,
    output_bytes=mem.output_size_in_bytes,
    alias_bytes=mem.alias_size_in_bytes,
    temp_bytes=mem.temp_size_in_bytes,
    total_bytes=total,
    flops=float(cost.get("flops", 0.0)),
    bytes_accessed=float(cost.get("bytes accessed", 0.0)),
    collectives=collectives(compiled.as_text()),
    model_flops_per_chip=model_flops / chips,
  )
  out["flops_vs_model"] = out["flops"] / out["model_flops_per_chip"] if model_flops else math.nan
  if chip is not None:
    out.update(hbm_bytes=chip.hbm_bytes, fits=total <= chip.hbm_bytes)
    roofline(out, chip, out["flops"])
  return out


def roofline(result: dict, chip: Chip, compiled_flops: float) -> None:
  """Sets `step_seconds` = max(FLOPs / peak, bytes / HBM bandwidth) and `mfu` in `result`. The
  FLOPs are the larger of the compiled and the analytic count: XLA's cost analysis does not
  count inside Pallas kernels (splash attention on TPU)."""
  compute = max(compiled_flops, result["model_flops_per_chip"]) / chip.peak_flops
  memory = result["bytes_accessed"] / chip.hbm_bandwidth
  seconds = max(compute, memory)
  result["step_seconds"] = seconds
  result["bound"] = "FLOPs" if compute >= memory else "HBM"
  result["mfu"] = result["model_flops_per_chip"] / (seconds * chip.peak_flops) if seconds else 0.0


def step_model_flops(config, what: str, batch: int) -> float:
  """Analytic FLOPs of one training step (3x the forward) or one guided denoiser call."""
  cfg = ModelConfig.from_config(config.model)
  if what == "train":
    return flops.train_step_flops(cfg, batch=batch)
  passes = len(sample_settings(config, cfg.num_views)["scales"]) + 1
  return flops.forward_flops(cfg, batch=batch * passes)["total"]


def with_overrides(config, mesh: dict | None = None, remat: str | None = None):
  """A copy of `config` with `sharding.mesh` sizes and `model.remat_policy` replaced."""
  config = ml_collections.ConfigDict(config.to_dict())
  if mesh:
    config.sharding.mesh.update({k: 1 for k in sharding.MESH_AXES})
    config.sharding.mesh.update(mesh)
  if remat:
    config.model.remat_policy = remat
  return config


def mesh_candidates(chips: int, slices: int = 1) -> list[dict[str, int]]:
  """Meshes `--search` tries: FSDP over everything, then FSDP with a data, seq or tensor factor
  of 2, 4 or 8 (within a slice for seq and tensor)."""
  out = [dict(fsdp=chips)]
  for axis in ("data", "seq", "tensor"):
    for k in (2, 4, 8):
      if chips % (k * slices) == 0 and chips // k >= 1:
        out.append({"fsdp": chips // k, axis: k})
  return out
