r"""pippo-compile: will this config fit a TPU pod? Compile it for one, on this host, and see.

  pippo-compile --config configs/p3_posttrain.py:res=1024,views=12 --config.model.dtype=bfloat16 \
      --topology v5p-256 [--slices 2] [--mesh fsdp=64,seq=2] [--remat nothing_saveable] \
      [--what train|sample|both] [--batch N] [--search] [--json OUT]

libtpu (`pip install 'pippo_jax[tpu]'`) describes the topology (`v5p:4x4x4`, or a slice name such
as `v5p-128`: v4/v5p names count TensorCores, two per chip; v5e/v6e names count chips); the
real training step and the sampler's guided denoiser step are compiled for it from abstract
values (nothing is allocated) and their compiled programs read: per-chip memory against the
chip's HBM, per-chip FLOPs and bytes, the collectives, and a roofline estimate of step time and
MFU. The compiled FLOPs are the dots and convolutions of the compiled program with every loop
counted as often as it runs (XLA's cost analysis counts a loop body once: the scanned blocks,
the partitioner's collective matmul loops), compared with `pippo-inspect`'s analytic count.
`--check-flops` cross-checks that count against the same step with 1 and 2 unrolled blocks,
extrapolated to the model's depth (two more compiles).

The training batch defaults to the config's batch per data-parallel group (batch_size x data x
fsdp); the sampler's to one photo per data-parallel group. `--search` tries meshes (FSDP over
every chip, and FSDP with a data, seq or tensor factor of 2, 4 or 8) and remat policies, and
prints the one that fits with the highest estimated MFU (the meshes' batches differ, so the
step times are not comparable); the FLOP count includes each remat policy's recomputation.
"""

import json
import sys
import time

from absl import flags

from pippo_jax.cli import common

PROGRAM = "pippo-compile"
SEARCH_REMAT = ("nothing_saveable", "dots_with_no_batch_dims_saveable")


def parse_mesh(text: str | None) -> dict[str, int]:
  """'fsdp=64,seq=2' -> {"fsdp": 64, "seq": 2}."""
  from pippo_jax.parallel import sharding  # pylint: disable=g-import-not-at-top

  if not text:
    return {}
  out = {}
  for part in text.split(","):
    name, eq, value = part.partition("=")
    name = name.strip()
    if not eq or name not in sharding.MESH_AXES or not value.strip().lstrip("-").isdigit():
      raise ValueError(f"--mesh {text!r}: use AXIS=SIZE pairs, AXIS one of {sharding.MESH_AXES}")
    out[name] = int(value)
  return out


def _gib(n: float) -> str:
  return f"{n / 2**30:.2f}"


def header() -> str:
  return (
    "| step | mesh | remat | batch | args GiB | temp GiB | total GiB | of HBM | TFLOP/chip | "
    "vs model | GB/chip | est. s (bound) | est. MFU | collectives | compile s |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  )


def row(r: dict) -> str:
  coll = ", ".join(f"{k} {v}" for k, v in r["collectives"].items()) or "none"
  flops, ratio = r["matmul_flops"], r["matmul_vs_model"]
  return (
    f"| {r['what']} | {r['mesh_text']} | {r['remat']} | {r['batch']} | "
    f"{_gib(r['argument_bytes'])} | {_gib(r['temp_bytes'])} | {_gib(r['total_bytes'])} | "
    f"{r['total_bytes'] / r['hbm_bytes']:.0%}{'' if r['fits'] else ' (does not fit)'} | "
    f"{flops / 1e12:.2f} | {ratio:.2f} | {r['bytes_accessed'] / 1e9:.1f} | "
    f"{r['step_seconds']:.3f} ({r['bound']}) | {r['mfu']:.0%} | {coll} | "
    f"{r['compile_seconds']:.0f} |"
  )


def compile_one(config, devices, chip, what: str, mesh_sizes, remat, batch, check_flops) -> dict:
  """Compile and analyse one step; returns the analysis with its settings."""
  from pippo_jax.parallel import aot, sharding  # pylint: disable=g-import-not-at-top

  config = aot.with_overrides(config, mesh=mesh_sizes, remat=remat)
  mesh = sharding.mesh_from_config(config.sharding.mesh, devices, config.sharding.get("dcn", None))
  ways = mesh.shape["data"] * mesh.shape["fsdp"]
  if what == "train":
    config.batch_size = batch or config.batch_size * ways
    batch = config.batch_size
  else:
    batch = batch or ways
  rules = sharding.rules_from_config(config.sharding.rules)
  fn = aot.compile_train if what == "train" else aot.compile_sample
  args = (config, mesh, rules) if what == "train" else (config, mesh, rules, batch)
  start = time.perf_counter()
  compiled = fn(*args)
  seconds = time.perf_counter() - start
  model_flops = aot.step_model_flops(config, what, batch)
  r = aot.analyse(compiled, chip, model_flops, len(devices))
  if check_flops:  # cross-check the loop-aware count: 1 and 2 unrolled blocks, extrapolated
    per_depth = []
    for depth in (1, 2):
      small = aot.with_overrides(config)
      small.model.update(depth=depth, scan_blocks=False)
      args = (small, mesh, rules) if what == "train" else (small, mesh, rules, batch)
      per_depth.append(aot.analyse(fn(*args), chip, 0.0, len(devices))["matmul_flops"])
    block = per_depth[1] - per_depth[0]
    r["unrolled_matmul_flops"] = per_depth[0] + block * (config.model.depth - 1)
  sizes = {k: mesh.shape[k] for k in sharding.MESH_AXES}
  r.update(
    what=what,
    mesh=sizes,
    mesh_text=" ".join(f"{k}={v}" for k, v in sizes.items() if v > 1) or "1 chip",
    remat=config.model.remat_policy,
    batch=batch,
    compile_seconds=seconds,
  )
  return r


def run(config, fv) -> int:
  from pippo_jax.parallel import aot  # pylint: disable=g-import-not-at-top

  devices, chip = aot.topology(fv["topology"].value, fv["slices"].value)
  mesh_sizes = parse_mesh(fv["mesh"].value)
  whats = ("train", "sample") if fv["what"].value == "both" else (fv["what"].value,)
  slices = fv["slices"].value
  name = fv["topology"].value + (f" x {slices} slices" if slices > 1 else "")
  print(
    f"{PROGRAM}: {len(devices)} x {chip.name} ({name}; {chip.hbm_bytes / 2**30:.0f} GiB HBM, "
    f"{chip.peak_flops / 1e12:.0f} TFLOP/s bf16, {chip.hbm_bandwidth / 1e9:.0f} GB/s per chip), "
    f"model.dtype={config.model.dtype}, attention {config.model.attention_impl}",
    flush=True,
  )
  results = []
  if fv["search"].value:
    candidates = [
      (m, remat)
      for m in aot.mesh_candidates(len(devices), slices)
      for remat in ([fv["remat"].value] if fv["remat"].value else SEARCH_REMAT)
    ]
  else:
    candidates = [(mesh_sizes, fv["remat"].value)]
  print(header(), flush=True)
  for what in whats:
    for m, remat in candidates:
      try:
        r = compile_one(
          config, devices, chip, what, m, remat, fv["batch"].value, fv["check-flops"].value
        )
      except ValueError as e:  # a mesh the shapes do not divide: skip it in a search
        if not fv["search"].value:
          raise
        print(f"| {what} | {m} | {remat} | skipped: {str(e).splitlines()[0]} |", flush=True)
        continue
      results.append(r)
      print(row(r), flush=True)
      if "unrolled_matmul_flops" in r:
        print(
          f"FLOPs check: 1 and 2 unrolled blocks extrapolate to "
          f"{r['unrolled_matmul_flops'] / 1e9:.2f} GFLOP per chip, the compiled step counts "
          f"{r['matmul_flops'] / 1e9:.2f}",
          flush=True,
        )
      if fv["json"].value:  # after every compile: a long search keeps what it has done
        with open(fv["json"].value, "w") as f:
          json.dump(results, f, indent=1, default=float)
  for what in whats:
    fitting = [r for r in results if r["what"] == what and r["fits"]]
    if not fitting:
      print(f"{what}: nothing tried fits in {chip.hbm_bytes / 2**30:.0f} GiB per chip")
      continue
    if fv["search"].value:
      # Meshes differ in batch (one example per data-parallel group): compare throughput, i.e.
      # the estimated MFU, not the step time.
      best = max(fitting, key=lambda r: r["mfu"])
      print(
        f"{what}: best that fits: --mesh {','.join(f'{k}={v}' for k, v in best['mesh'].items())} "
        f"--remat {best['remat']} ({_gib(best['total_bytes'])} GiB per chip, batch "
        f"{best['batch']}, est. {best['step_seconds']:.3f} s, MFU {best['mfu']:.0%})"
      )
  return 0 if all(r["fits"] for r in results) or fv["search"].value else 1


def main(argv=None) -> int:
  argv = common.program_argv(PROGRAM, argv)
  fv = flags.FlagValues()
  common.define_config(fv, argv)
  flags.DEFINE_string(
    "topology", None, "TPU topology (v5p:4x4x4) or slice (v5p-128).", flag_values=fv
  )
  flags.DEFINE_integer("slices", 1, "Slices connected over DCN (multi-slice).", flag_values=fv)
  flags.DEFINE_string(
    "mesh", None, "Mesh sizes, e.g. fsdp=64,seq=2 (default: config.sharding.mesh).", flag_values=fv
  )
  flags.DEFINE_string("remat", None, "model.remat_policy to compile with.", flag_values=fv)
  flags.DEFINE_enum(
    "what", "both", ["train", "sample", "both"], "Steps to compile.", flag_values=fv
  )
  flags.DEFINE_integer(
    "batch", 0, "Global batch (default: per data-parallel group, see above).", flag_values=fv
  )
  flags.DEFINE_bool("search", False, "Try meshes and remat policies.", flag_values=fv)
  flags.DEFINE_bool(
    "check-flops",
    False,
    "Also compile 1 and 2 unrolled blocks and extrapolate their FLOPs (a cross-check).",
    flag_values=fv,
  )
  flags.DEFINE_string("json", None, "Also write the results to this JSON file.", flag_values=fv)
  rest = common.parse(PROGRAM, argv, fv, doc=__doc__)
  if rest:
    common.fail(PROGRAM, f"unexpected arguments {rest}", common.USAGE)
  config = common.config_value(PROGRAM, fv["config"])
  if config is None or not fv["topology"].value:
    common.fail(
      PROGRAM,
      "--config and --topology are required (e.g. --config configs/p3_posttrain.py "
      "--topology v5p-128)",
      common.USAGE,
    )
  try:
    parse_mesh(fv["mesh"].value)
  except ValueError as e:
    common.fail(PROGRAM, str(e), common.USAGE)
  common.absl_logging(quiet=True)
  return common.guarded(PROGRAM, run, config, fv)


if __name__ == "__main__":
  sys.exit(main())
