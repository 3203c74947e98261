"""pippo-lift: many posed views in, a textured 3D person out.

  pippo-lift --views views/photo --out lift/photo
  pippo-lift --views my_views --out lift/mine --steps 1000 --resolution 80

--views is a `pippo-sample` output folder, or any folder of images with a cameras.json in our
convention (see `pippo_jax.reconstruction.views` for how images meet cameras). A radiance
field (`pippo_jax.reconstruction.field`: a dense voxel grid, or with --representation hash a
hash grid with a small MLP) is fitted to the views for --steps steps in a box of --resolution
samples along its longest side, and its surface is extracted by marching cubes.

Writes OUT/mesh.glb and mesh.ply (vertex colours), renders.png (input views | the fit | the
mesh), turntable.gif and turntable.png (the mesh turning) and lift.json (settings, counts,
timings, PSNR at the input cameras). OUT appears complete or not at all.
"""

import os
import sys

from absl import flags

from pippo_jax import paths
from pippo_jax.cli import common

PROGRAM = "pippo-lift"


def _define(fv: flags.FlagValues) -> None:
  d = lambda f, *a, **k: f(*a, flag_values=fv, **k)
  d(flags.DEFINE_string, "views", None, "pippo-sample output, or images + cameras.json")
  d(flags.DEFINE_string, "out", None, "output folder (must not exist, or be empty)")
  d(flags.DEFINE_integer, "steps", 250, "optimisation steps")
  d(flags.DEFINE_integer, "resolution", 64, "grid samples along the box's longest side")
  d(flags.DEFINE_integer, "rays", 4096, "rays per step")
  d(flags.DEFINE_enum, "representation", "voxel", ["voxel", "hash"], "the field fitted")
  d(flags.DEFINE_integer, "seed", 0, "random seed")
  d(flags.DEFINE_boolean, "overwrite", False, "replace a non-empty --out")


def lift_folder(views_dir: str, out: str, settings, overwrite: bool = False, program=PROGRAM):
  """Reads `views_dir`, lifts it, writes `out` (staged); returns (files, record)."""
  from pippo_jax.reconstruction import views  # pylint: disable=g-import-not-at-top

  if os.path.isdir(out) and os.listdir(out) and not overwrite:
    raise FileExistsError(f"--out {out} exists and is not empty; remove it or pass --overwrite")
  data = views.read_views(views_dir)  # bad inputs fail before JAX loads
  from pippo_jax.inference import outputs  # pylint: disable=g-import-not-at-top
  from pippo_jax.reconstruction import field, lift  # pylint: disable=g-import-not-at-top

  height, width = data.images.shape[1:3]
  print(
    f"{program}: lifting {len(data.images)} views of {width}x{height} px from {views_dir} "
    f"({settings.representation} field, {settings.steps} steps, {settings.resolution} samples "
    "along the box's longest side; compiling...)",
    file=sys.stderr,
    flush=True,
  )
  try:
    lifted = lift.lift(data, settings, progress=field.print_progress(program, settings.steps))
  except ValueError as e:  # an empty hull or nothing to mesh: the views do not agree
    raise views.LiftInputError(f"{views_dir}: {e}") from e
  with outputs.staged_folder(out, overwrite) as folder:
    written, record = lift.write_outputs(folder, data, lifted, settings)
  print(
    f"{program}: wrote {len(written)} files to {out} (mesh: {record['mesh']['vertices']} "
    f"vertices, {record['mesh']['faces']} faces; fit {record['seconds']['fit']:.1f} s; PSNR at "
    f"the input cameras {record['psnr_input_views']:.2f} dB)",
    flush=True,
  )
  return written, record


def make_settings(
  steps: int, resolution: int, rays: int = 4096, seed: int = 0, representation: str = "voxel"
):
  from pippo_jax.reconstruction import lift  # pylint: disable=g-import-not-at-top

  return lift.LiftSettings(
    steps=steps, resolution=resolution, rays=rays, seed=seed, representation=representation
  )


def run(args):
  settings = make_settings(args.steps, args.resolution, args.rays, args.seed, args.representation)
  written, _ = lift_folder(
    paths.resolve(args.views), paths.resolve(args.out), settings, args.overwrite
  )
  return written


def usage_problem(steps: int, resolution: int, rays: int) -> str | None:
  if steps < 1:
    return "--steps must be >= 1"
  if rays < 1:
    return "--rays must be >= 1"
  if not 16 <= resolution <= 256:
    return "--resolution must be in [16, 256]"
  return None


def _usage(args) -> str | None:
  if not args.views or not args.out:
    return "--views and --out are required"
  return usage_problem(args.steps, args.resolution, args.rays)


def main(argv=None) -> int:
  return common.run_program(PROGRAM, argv, _define, __doc__, _usage, run)


if __name__ == "__main__":
  sys.exit(main())
