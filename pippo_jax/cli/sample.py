"""pippo-sample: one photo in, many views out.

  pippo-sample --checkpoint workdir/smoke --image photo.jpg --out views/photo
  pippo-sample --checkpoint workdir/smoke --capture 0 --out views/studio

The photo (JPEG/PNG/WebP; an RGBA cut-out, a plain background or --mask FILE marks the person) is
cropped around the person like the training views, its camera placed as `inference.scene`
documents, and the views of a turntable around the head (--views per --elevation) or of
--cameras FILE are sampled with guided DDIM. --capture N instead takes capture N of the
checkpoint's held-out (test) split: its most frontal camera is the reference, the targets are
--views of its other cameras in azimuth order, and the ground truth is written beside.

More views than --batch-views are denoised in passes that share --anchor-views views (see
`inference.sample.view_chunks`); attention biasing (--gamma) is on when a pass holds more views
than the model was trained with (model.attention_train_views).

Writes OUT/reference.png, view_NNN.png, contact_sheet.png, turntable.gif (turntable.mp4 with
imageio-ffmpeg installed), cameras.json (reference + targets, head frame) and sample.json (the
settings); with --capture also truth_NNN.png. OUT appears complete or not at all. --lift then
runs `pippo-lift --views OUT --out OUT/lift` (mesh.glb, mesh.ply, renders, turntable).
"""

import json
import os
import sys
import time

from absl import app, flags

from pippo_jax import paths
from pippo_jax.cli import common

PROGRAM = "pippo-sample"


def _define(fv: flags.FlagValues) -> None:
  d = lambda f, *a, **k: f(*a, flag_values=fv, **k)
  d(flags.DEFINE_string, "checkpoint", None, "training workdir or pippo-convert output")
  d(flags.DEFINE_string, "image", None, "the person's photo (JPEG, PNG or WebP)")
  d(flags.DEFINE_string, "mask", None, "person mask for --image (white = person), same size")
  d(flags.DEFINE_integer, "capture", None, "use capture N of the run's studio data (--split)")
  d(flags.DEFINE_string, "split", "test", "split of --capture: test (held out) or train")
  d(flags.DEFINE_string, "data", None, "captures folder for --capture (default: the run's)")
  d(flags.DEFINE_string, "out", None, "output folder (must not exist, or be empty)")
  d(flags.DEFINE_integer, "views", 12, "views per elevation (turntable) or of the capture")
  d(flags.DEFINE_list, "elevation", ["0"], "turntable elevations in degrees")
  d(flags.DEFINE_float, "ref-elevation", 0.0, "elevation of the photo's camera, degrees")
  d(flags.DEFINE_string, "cameras", None, "cameras JSON for the target views (see README)")
  d(flags.DEFINE_string, "guidance", None, "CFG scales, e.g. ref=2,cam=1.5 (default: config's)")
  d(flags.DEFINE_float, "rescale", None, "CFG-rescale factor in [0, 1] (default: config's)")
  d(flags.DEFINE_boolean, "triangular", None, "SV3D triangular guidance (default: config's)")
  d(flags.DEFINE_float, "gamma", None, "attention biasing strength (default: config's)")
  d(flags.DEFINE_integer, "steps", None, "DDIM steps (default: config's)")
  d(flags.DEFINE_float, "eta", None, "DDIM eta (default: config's)")
  d(flags.DEFINE_integer, "seed", 0, "random seed: same seed, same pixels")
  d(flags.DEFINE_integer, "batch-views", 0, "most target views per model pass (0: all at once)")
  d(flags.DEFINE_integer, "anchor-views", 4, "views every pass shares when views are chunked")
  d(flags.DEFINE_string, "vae", None, "SDXL VAE weights (overrides the run's codec.weights_path)")
  d(flags.DEFINE_boolean, "ema", True, "use the EMA parameters where the run kept them")
  d(flags.DEFINE_boolean, "overwrite", False, "replace a non-empty --out")
  d(flags.DEFINE_boolean, "lift", False, "then fit a textured mesh to the views (OUT/lift/)")
  d(flags.DEFINE_integer, "lift-steps", 250, "pippo-lift --steps for --lift")
  d(flags.DEFINE_integer, "lift-resolution", 64, "pippo-lift --resolution for --lift")


class Progress:
  """`step i/S` on one line (a carriage return on a terminal, every ~10% otherwise)."""

  def __init__(self, total: int):
    self.total, self.start, self.tty = total, None, sys.stderr.isatty()

  def __call__(self, index, _value) -> None:
    done = int(index) + 1
    if done == 1 and self.total > 1:  # the clock starts after compilation and the first step
      self.start = time.time()
      return
    if not self.tty and done % max(1, self.total // 10) and done != self.total:
      return
    rate = (time.time() - self.start) / (done - 1) if self.start else 0.0
    end = "\n" if done == self.total or not self.tty else ""
    start = "\r" if self.tty else ""
    print(
      f"{start}{PROGRAM}: denoising step {done}/{self.total} ({rate:.2f} s/step, "
      f"{rate * (self.total - done):.0f} s left)",
      end=end,
      file=sys.stderr,
      flush=True,
    )


def _photo_inputs(args, gen):
  from pippo_jax.inference import photo, scene  # pylint: disable=g-import-not-at-top

  data = gen.config.data
  res = gen.image_size
  ref = photo.prepare_reference(
    paths.resolve(args.image),
    res,
    background=tuple(data.background),
    margin=float(data.crop_margin),
    mask_path=paths.resolve(args.mask) if args.mask else None,
  )
  if ref.source == "none":
    print(
      f"{PROGRAM}: warning: {args.image} has no alpha and no plain background; the whole photo "
      "is used (pass --mask FILE or an RGBA cut-out to separate the person)",
      file=sys.stderr,
    )
  distance = float(data.scene_distance)
  cam = scene.photo_camera(
    ref.person_box, res, ref.mask, distance=distance, elevation_deg=args.ref_elevation
  )
  if args.cameras:
    sc = scene.read_cameras(paths.resolve(args.cameras), res, cam)
  else:
    sc = scene.photo_scene(
      *cam,
      res,
      num_views=args.views,
      distance=distance,
      elevations_deg=[float(e) for e in args.elevation],
    )
  return ref.image, sc, None


def _capture_inputs(args, gen):
  """Reference, Scene and ground truth from capture N of --split."""
  from pippo_jax.inference import studio  # pylint: disable=g-import-not-at-top

  data = gen.config.data.copy_and_resolve_references()
  data.path = paths.resolve(args.data) if args.data else data.path
  cap = studio.capture_views(data, studio.open_split(data, args.split), args.capture, args.views)
  return cap.reference, cap.scene, cap.truth


def run(args) -> list[str]:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from pippo_jax.inference import generator, outputs, sample, scene  # pylint: disable=g-import-not-at-top

  scales = common.parse_guidance(args.guidance)
  checkpoint = paths.resolve(args.checkpoint)
  out = paths.resolve(args.out)
  # Check the inputs and the output folder before the (slow) model loads.
  if os.path.isdir(out) and os.listdir(out) and not args.overwrite:
    raise FileExistsError(f"--out {out} exists and is not empty; remove it or pass --overwrite")
  for flag in ("image", "mask", "cameras"):
    path = getattr(args, flag)
    if path and not os.path.isfile(paths.resolve(path)):
      raise FileNotFoundError(f"--{flag} {path}: no such file")
  gen = generator.load_generator(checkpoint, ema=args.ema, vae=args.vae)
  if args.gamma is not None:
    gen = gen.with_model(attention_gamma=args.gamma)
  if args.capture is not None:
    ref_image, sc, truth = _capture_inputs(args, gen)
  else:
    ref_image, sc, truth = _photo_inputs(args, gen)
  batch = scene.scene_batch(ref_image, sc, gen.config.data, controls=gen.cfg.use_control_mlp)

  chunks = sample.view_chunks(sc.num_views, args.batch_views, args.anchor_views)
  per_pass = sc.num_views if chunks is None else chunks.shape[1]
  # Attention biasing when a pass holds more views than the model trained with (or the config
  # asks for it always).
  biasing = True if per_pass + 1 > gen.cfg.attention_train_views else None
  try:
    settings = gen.settings(
      num_steps=args.steps,
      eta=args.eta,
      scales=scales,
      rescale=args.rescale,
      triangular=args.triangular,
      attention_biasing=biasing,
    )
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  sampler = gen.sampler(
    chunks=chunks, progress=Progress(gen.model_calls(settings["num_steps"])), **settings
  )
  passes = 1 if chunks is None else len(chunks)
  print(
    f"{PROGRAM}: {sc.num_views} views at {gen.image_size} px from {checkpoint} "
    f"({passes} pass{'es' if passes > 1 else ''} of {per_pass} views per step"
    f"{', attention biasing on' if settings['attention_biasing'] else ''}; compiling...)",
    file=sys.stderr,
    flush=True,
  )
  start = time.time()
  views = sampler(gen.params, gen.codec, jax.device_put(batch), jax.random.key(args.seed))
  views = np.asarray(jax.device_get(views))[0]
  seconds = time.time() - start
  with outputs.staged_folder(out, args.overwrite) as folder:
    written = outputs.write_views(folder, ref_image, views, sc.names, truth)
    scene.write_cameras(os.path.join(folder, "cameras.json"), sc)
    record = dict(
      checkpoint=checkpoint,
      image=args.image and paths.resolve(args.image),
      capture=args.capture,
      split=args.split if args.capture is not None else None,
      views=sc.num_views,
      resolution=gen.image_size,
      **settings,
      batch_views=per_pass,
      passes=passes,
      seed=args.seed,
      seconds=round(seconds, 2),
    )
    with open(os.path.join(folder, "sample.json"), "w") as f:
      json.dump(record, f, indent=1)
    written += ["cameras.json", "sample.json"]
  print(
    f"{PROGRAM}: wrote {len(written)} files to {out} ({len(views)} views sampled in "
    f"{seconds:.1f} s, compilation included)",
    flush=True,
  )
  if args.lift:
    from pippo_jax.cli import lift  # pylint: disable=g-import-not-at-top

    settings = lift.make_settings(args.lift_steps, args.lift_resolution)
    lifted, _ = lift.lift_folder(out, os.path.join(out, "lift"), settings, program=PROGRAM)
    written += [f"lift/{name}" for name in lifted]
  return written


def _usage(args) -> str | None:
  if not args.checkpoint or not args.out:
    return "--checkpoint and --out are required"
  if (args.image is None) == (args.capture is None):
    return "give exactly one of --image PHOTO and --capture N"
  if args.views < 1 or args.batch_views < 0 or args.anchor_views < 0:
    return "--views must be >= 1, --batch-views and --anchor-views >= 0"
  if args.capture is not None and (args.cameras or args.mask):
    return "--cameras and --mask go with --image, not --capture"
  if args.lift:
    from pippo_jax.cli import lift  # pylint: disable=g-import-not-at-top

    problem = lift.usage_problem(args.lift_steps, args.lift_resolution, 1)
    if problem:
      return problem.replace("--steps", "--lift-steps").replace("--resolution", "--lift-resolution")
  common.parse_guidance(args.guidance)
  [float(e) for e in args.elevation]  # pylint: disable=expression-not-assigned
  return None


def main(argv=None) -> int:
  return common.run_program(PROGRAM, argv, _define, __doc__, _usage, run)


if __name__ == "__main__":
  sys.exit(main())
