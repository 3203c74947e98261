"""Ahead-of-time compilation for devices this host does not have: will a config fit a pod?

`topology` describes a TPU slice (or several) through libtpu (`jax.experimental.topologies`,
the `[tpu]` extra) without any TPU; `compile_train` and `compile_sample` then compile the real
training step (`training.step.jit_train_step`: forward, backward, clipping, AdamW, EMA, the
non-finite guard) and the sampler's guided denoiser step (`inference.sample.guided_denoiser`:
the model on the (groups + 1) x batch of classifier-free guidance) for a mesh of those devices,
from `jax.ShapeDtypeStruct`s carrying their shardings: nothing is allocated. `analyse` reads
the compiled program: per-chip memory (arguments, outputs, temporaries) against the chip's HBM,
per-chip FLOPs (the matmuls, loops counted as often as they run) and bytes (XLA's cost
analysis), the collectives it contains, and a roofline estimate of the step time and MFU from
the chip's published peak and bandwidth.
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
import numpy as np

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


_COMPUTATION = re.compile(r"^(?:ENTRY )?%(\S+) \(.*\{$")
# name = shape op(operands), attributes; a tuple shape has spaces, so the op is the first word
# after a space that opens a parenthesis.
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (.*?) ([\w-]+)\((.*)$")
_SHAPE = re.compile(r"^[a-z]\w*\[([\d,]*)\]")


def _dims(shape: str) -> list[int] | None:
  m = _SHAPE.match(shape)
  return [int(d) for d in m.group(1).split(",") if d] if m else None


def _dims_attr(rest: str, name: str) -> list[int]:
  m = re.search(rf"\b{name}=\{{([\d,]*)\}}", rest)
  return [int(d) for d in m.group(1).split(",") if d] if m else []


def _conv_flops(rest: str, out: list[int], lhs: list[int] | None, rhs: list[int] | None) -> float:
  """2 x batch x output features x input features per group x the (output position, kernel
  tap) pairs that fall inside the input along every spatial dimension: the partitioner's
  windowed matmuls are convolutions over padded shard axes, whose padding taps do no work."""
  labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", rest)
  if not (labels and lhs and rhs):
    return 0.0
  lhs_l, rhs_l, out_l = labels.groups()
  spatial = sorted(c for c in rhs_l if c.isdigit())
  window = re.search(r"window=\{([^}]*)\}", rest)
  attrs = dict(kv.split("=") for kv in window.group(1).split()) if window else {}

  def per_dim(key: str, default: int) -> list[int]:
    return [int(v) for v in attrs[key].split("x")] if key in attrs else [default] * len(spatial)

  pads = [tuple(map(int, p.split("_"))) for p in attrs["pad"].split("x")] if "pad" in attrs else []
  strides, lhs_dil = per_dim("stride", 1), per_dim("lhs_dilate", 1)
  rhs_dil = per_dim("rhs_dilate", 1)
  pairs = 1
  for i, d in enumerate(spatial):
    size_in, taps, size_out = lhs[lhs_l.index(d)], rhs[rhs_l.index(d)], out[out_l.index(d)]
    low = pads[i][0] if pads else 0
    dilated = (size_in - 1) * lhs_dil[i] + 1
    pos = np.arange(size_out)[:, None] * strides[i] + np.arange(taps) * rhs_dil[i] - low
    pairs *= int(np.sum((pos >= 0) & (pos < dilated) & (pos % lhs_dil[i] == 0)))
  batch_features = math.prod(out) / math.prod(out[out_l.index(d)] for d in spatial)
  in_per_group = rhs[rhs_l.index("i")]
  return 2.0 * batch_features * in_per_group * pairs


# Splash attention's Pallas kernels (full mask, so every query-key tile is computed): matmuls per
# query-key pair and head dim, 2 FLOPs each. Forward: q k^T and p v; the dq kernel recomputes
# q k^T, then dp = do v^T and dq = ds k; the dkv kernel recomputes q k^T, then dp, dv = p^T do
# and dk = ds^T q.
_SPLASH_MATMULS = {"fwd": 2, "dq": 3, "dkv": 4}
_SPLASH_KERNEL = re.compile(r"splash_\w*?_(fwd|dq|dkv)_")
_FLOAT = re.compile(r"^(f8\w*|bf16|f16|f32|f64)\[")


def matmul_flops(hlo_text: str, splash: bool = True) -> float:
  """FLOPs of the dots and convolutions of a compiled HLO module, with every loop counted as
  many times as it runs.

  XLA's cost analysis counts a while loop's body once: a scanned stack of blocks, or the
  windowed collective matmul loops the SPMD partitioner makes of FSDP's all-gather + matmul,
  then count once instead of N times. Here each loop's trip count multiplies its body: XLA's
  `known_trip_count` where it notes one (as on CPU), otherwise read from the program (the
  induction variable's start in the loop's initial tuple, its bound in the condition
  `i < bound`, its step in the body, as `lax.scan` and the partitioner emit them). A
  conditional counts its costliest branch.
  Splash attention's Pallas kernels (custom calls) count their matmuls from their query and key
  shapes (`_SPLASH_MATMULS`) unless `splash` is False; other custom calls and elementwise work
  (small next to the matmuls) are not counted.
  """
  shapes: dict[str, list[int] | None] = {}
  defs: dict[str, tuple[str, str]] = {}  # name -> (op, rest); HLO names are module-unique
  body: dict[str, list[tuple[str, str, str]]] = {}
  floats: set[str] = set()
  entry, current = None, None
  for line in hlo_text.splitlines():
    head = _COMPUTATION.match(line)
    if head:
      current = head.group(1)
      body[current] = []
      if line.startswith("ENTRY"):
        entry = current
      continue
    inst = _INSTRUCTION.match(line)
    if inst and current is not None:
      name, shape, op, rest = inst.groups()
      shapes[name] = _dims(shape)
      if _FLOAT.match(shape):
        floats.add(name)
      defs[name] = (op, rest)
      body[current].append((name, op, rest))

  def operands(rest: str) -> list[str]:
    return re.findall(r"%([\w.\-]+)", rest.split(")", 1)[0])

  def constant(name: str) -> int | None:
    op, rest = defs.get(name, ("", ""))
    m = re.match(r"(-?\d+)\)", rest) if op == "constant" else None
    return int(m.group(1)) if m else None

  def tuple_index(name: str) -> int | None:
    op, rest = defs.get(name, ("", ""))
    m = re.search(r"index=(\d+)", rest) if op == "get-tuple-element" else None
    return int(m.group(1)) if m else None

  def trip_count(init: str, condition: str, loop: str) -> int:
    """(bound - start) / step of the induction variable `i < bound`; 1 if not recognised."""
    for _, op, rest in body.get(condition, []):
      if op != "compare" or "direction=LT" not in rest:
        continue
      var, bound = (operands(rest) + [""])[:2]
      index, bound = tuple_index(var), constant(bound)
      if index is None or bound is None:
        return 1
      start, step = 0, 1
      init_op, init_rest = defs.get(init, ("", ""))
      if init_op == "tuple" and index < len(operands(init_rest)):
        start = constant(operands(init_rest)[index]) or 0
      counters = {n for n, o, r in body.get(loop, []) if tuple_index(n) == index}
      for _, o, r in body.get(loop, []):
        args = operands(r)
        if o == "add" and len(args) == 2 and args[0] in counters and constant(args[1]):
          step = constant(args[1])
      return max(0, -(-(bound - start) // step))
    return 1

  totals: dict[str, float] = {}

  def total(comp: str) -> float:
    if comp in totals:
      return totals[comp]
    totals[comp] = 0.0  # guards against cycles
    flops_ = 0.0
    for name, op, rest in body.get(comp, []):
      out = shapes.get(name)
      if op == "dot" and out is not None:
        lhs = shapes.get(operands(rest)[0]) or []
        contract = math.prod(lhs[d] for d in _dims_attr(rest, "lhs_contracting_dims"))
        flops_ += 2.0 * math.prod(out) * contract
      elif op == "convolution" and out is not None:
        flops_ += _conv_flops(rest, out, *(shapes.get(o) for o in operands(rest)[:2]))
      elif op == "custom-call" and splash and (kernel := _SPLASH_KERNEL.match(name)):
        q, k = [shapes[o] for o in operands(rest) if o in floats][:2]  # [..., tokens, head dim]
        pairs = math.prod(q[:-1]) * k[-2]
        flops_ += 2.0 * _SPLASH_MATMULS[kernel.group(1)] * pairs * q[-1]
      if op == "while":
        cond = re.search(r"condition=%([\w.\-]+)", rest)
        loop = re.search(r"body=%([\w.\-]+)", rest)
        if cond and loop:
          known = re.search(r'"known_trip_count":\{"n":"(\d+)"', rest)  # where XLA notes it
          trips = (
            int(known.group(1))
            if known
            else trip_count(operands(rest)[0], cond.group(1), loop.group(1))
          )
          flops_ += trips * total(loop.group(1))
        continue
      branches = re.search(r"branch_computations=\{([^}]*)\}", rest)
      if branches:
        flops_ += max(total(b) for b in re.findall(r"%([\w.\-]+)", branches.group(1)))
      for callee in re.findall(r"\bcalls=%([\w.\-]+)", rest):
        flops_ += total(callee)
    totals[comp] = flops_
    return flops_

  return total(entry) if entry else 0.0


def analyse(compiled, chip: Chip | None, model_flops: float, chips: int) -> dict[str, Any]:
  """Per-chip memory, FLOPs, bytes and collectives of a compiled step, and a roofline estimate.

  `model_flops` is the analytic FLOP count of the whole step (`models.flops`, without
  rematerialisation); its per-chip share over the estimated time, against the chip's peak, is
  the estimated MFU. `flops` is XLA's cost analysis (a loop body counted once); `matmul_flops`
  counts the dots, convolutions and splash attention kernels with every loop's trip count
  (`matmul_flops`), `splash_flops` the kernels' share of it. The estimate
  (`roofline`) ignores collectives and assumes perfect overlap, so it is a lower bound on the
  step time.
  """
  mem = compiled.memory_analysis()
  text = compiled.as_text()
  counted = matmul_flops(text)
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
    matmul_flops=counted,
    splash_flops=counted - matmul_flops(text, splash=False),
    bytes_accessed=float(cost.get("bytes accessed", 0.0)),
    collectives=collectives(text),
    model_flops_per_chip=model_flops / chips,
  )
  per_chip = out["model_flops_per_chip"]
  out["flops_vs_model"] = out["flops"] / per_chip if model_flops else math.nan
  out["matmul_vs_model"] = out["matmul_flops"] / per_chip if model_flops else math.nan
  if chip is not None:
    out.update(hbm_bytes=chip.hbm_bytes, fits=total <= chip.hbm_bytes)
    roofline(out, chip, max(out["flops"], out["matmul_flops"]))
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
