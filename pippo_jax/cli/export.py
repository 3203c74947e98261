"""pippo-export: a trained checkpoint as a serving folder that needs none of the training code.

  pippo-export --checkpoint DIR --out OUT [--views N] [--batch B] [--steps S] [--eta E]
               [--guidance ref=2,cam=1.5] [--vae PATH] [--no-ema] [--no-saved-model]
               [--fixed-batch] [--platforms cpu,cuda]

OUT holds:
  sampler.jax_export   the whole view sampler (StableHLO, `jax.export`): reference image and
                       target cameras in, uint8 views [b, V, H, W, 3] out; the DDIM steps, eta,
                       guidance scales and view count are baked in
  params.safetensors   its weights (model and, for the SDXL VAE, the codec), '/'-joined keys
  metadata.json        the input and output spec, the sampler settings, versions, the config
  saved_model/         one denoiser step as a TensorFlow SavedModel (unless --no-saved-model)

Load the sampler with `pippo_jax.inference.exported.load_exported(OUT)` (jax, numpy and
safetensors only), the step with `tf.saved_model.load(OUT + "/saved_model")`.

The batch dimension is symbolic ("b": any batch size) where the sampler allows it; otherwise the
export is for --batch examples and metadata.json says why. OUT must not exist (or be empty); it is
written under a temporary name and renamed at the end.
"""

import os
import sys

from absl import flags

from pippo_jax import paths
from pippo_jax.cli import common

PROGRAM = "pippo-export"
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def _define(fv: flags.FlagValues) -> None:
  flags.DEFINE_string(
    "checkpoint",
    None,
    "Checkpoint folder (a training workdir or a pippo-convert output).",
    flag_values=fv,
  )
  flags.DEFINE_string("out", None, "Output folder to create.", flag_values=fv)
  flags.DEFINE_integer(
    "views",
    None,
    "Target views per example (default: the model's model.num_views).",
    flag_values=fv,
  )
  flags.DEFINE_integer(
    "batch",
    1,
    "Batch size of the export when the batch cannot be symbolic (or with --fixed-batch).",
    flag_values=fv,
  )
  flags.DEFINE_integer(
    "steps",
    None,
    "DDIM steps (default: the checkpoint's diffusion.sampler.num_steps).",
    flag_values=fv,
  )
  flags.DEFINE_float(
    "eta", None, "DDIM eta (default: the checkpoint's diffusion.sampler.eta).", flag_values=fv
  )
  flags.DEFINE_string(
    "guidance",
    None,
    "Classifier-free guidance scales, e.g. ref=2,cam=1.5; 'none' for the plain "
    "conditional model (default: the checkpoint's diffusion.guidance scales that are not 1).",
    flag_values=fv,
  )
  flags.DEFINE_string(
    "vae",
    None,
    "SDXL VAE weights (folder or .safetensors) instead of the saved codec.weights_path.",
    flag_values=fv,
  )
  flags.DEFINE_bool("no-ema", False, "Export the raw parameters, not the EMA copy.", flag_values=fv)
  flags.DEFINE_bool(
    "no-saved-model", False, "Do not write OUT/saved_model (no TensorFlow needed).", flag_values=fv
  )
  flags.DEFINE_bool(
    "fixed-batch", False, "Export for --batch examples instead of a symbolic batch.", flag_values=fv
  )
  flags.DEFINE_string(
    "platforms",
    None,
    "Comma-separated platforms to lower for, e.g. cpu,cuda (default: this machine's).",
    flag_values=fv,
  )


def usage_errors(fv: flags.FlagValues, rest) -> str | None:
  if rest:
    return f"unexpected arguments {rest}"
  for name in ("checkpoint", "out"):
    if not fv[name].value:
      return f"--{name} is required"
  for name in ("views", "batch", "steps"):
    if fv[name].value is not None and fv[name].value < 1:
      return f"--{name}={fv[name].value} must be >= 1"
  if fv["eta"].value is not None and fv["eta"].value < 0:
    return f"--eta={fv['eta'].value} must be >= 0"
  platforms = [p.strip() for p in (fv["platforms"].value or "").split(",") if p.strip()]
  unknown = [p for p in platforms if p not in PLATFORMS]
  if unknown:
    return f"--platforms: unknown {', '.join(unknown)}; choose from {', '.join(PLATFORMS)}"
  try:
    common.parse_guidance(fv["guidance"].value)
  except ValueError as e:
    return str(e)
  return None


def run_export(fv: flags.FlagValues) -> dict:
  """Loads the checkpoint and writes the export; returns its metadata."""
  from pippo_jax.inference import export, generator  # pylint: disable=g-import-not-at-top

  checkpoint, out = paths.resolve(fv["checkpoint"].value), paths.resolve(fv["out"].value)
  if os.path.lexists(out) and not (os.path.isdir(out) and not os.listdir(out)):
    raise FileExistsError(f"--out {out} exists; remove it or choose another path")
  paths.writable_dir(os.path.dirname(out), "the parent of --out")
  vae = paths.resolve(fv["vae"].value) if fv["vae"].value else None
  ema = not fv["no-ema"].value
  gen = generator.load_generator(checkpoint, ema=ema, vae=vae)
  platforms = [p.strip() for p in (fv["platforms"].value or "").split(",") if p.strip()]
  return export.export_generator(
    gen,
    out,
    num_views=fv["views"].value or gen.cfg.num_views,
    batch=fv["batch"].value,
    num_steps=fv["steps"].value,
    eta=fv["eta"].value,
    scales=common.parse_guidance(fv["guidance"].value),
    symbolic_batch=not fv["fixed-batch"].value,
    saved_model=not fv["no-saved-model"].value,
    platforms=platforms or None,
    source=dict(checkpoint=checkpoint, ema=ema, vae=vae),
  )


def summary(out: str, meta: dict) -> str:
  s, batch = meta["sampler"], meta["batch"]
  shapes = ", ".join(
    f"{i['name']} [{', '.join(map(str, i['shape']))}] {i['dtype']}" for i in meta["inputs"]
  )
  lines = [
    f"wrote {out}",
    f"  sampler.jax_export  {s['num_views']} views at {s['image_size']} px, {s['num_steps']} "
    f"DDIM steps, eta {s['eta']}, guidance {s['guidance'] or 'none'}, platforms "
    f"{','.join(meta['platforms'])}",
    "  batch               "
    + (
      "symbolic (b: any size)"
      if batch["symbolic"]
      else f"fixed at {batch['size']}: {batch['reason']}"
    ),
    f"  inputs              {shapes}",
    f"  params.safetensors  {meta['weights']['tensors']} tensors "
    f"({meta['weights']['model_parameters']:,} model, {meta['weights']['codec_parameters']:,} "
    "codec parameters)",
  ]
  if meta.get("saved_model"):
    sm = meta["saved_model"]
    lines.append(
      f"  saved_model/        one denoiser step, signatures {', '.join(sm['signatures'])}, batch "
      + ("symbolic" if sm["batch"]["symbolic"] else f"fixed at {sm['batch']['size']}")
    )
  lines.append(f"load with: pippo_jax.inference.exported.load_exported({out!r})")
  return "\n".join(lines)


def main(argv=None) -> int:
  """Runs the CLI on `argv` (the arguments after the program name; default sys.argv[1:])."""
  argv = common.program_argv(PROGRAM, argv)
  fv = flags.FlagValues()
  _define(fv)
  rest = common.parse(PROGRAM, argv, fv, doc=__doc__)
  usage = usage_errors(fv, rest)
  if usage:
    common.fail(PROGRAM, f"{usage} (see --help)", common.USAGE)
  try:
    meta = common.guarded(PROGRAM, run_export, fv)
  except ValueError as e:  # settings that do not fit this checkpoint (views, steps, guidance)
    common.fail(PROGRAM, str(e).splitlines()[0], common.FAILED)
  print(summary(paths.resolve(fv["out"].value), meta))
  return 0


if __name__ == "__main__":
  sys.exit(main())
