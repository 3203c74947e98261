"""pippo-eval: the paper's metrics on held-out studio captures, in one command.

  pippo-eval --checkpoint workdir/smoke --out eval/smoke

Generates --views target views for each of the first --num-samples captures of --split (all by
default) the way `pippo-sample --capture` does, and scores them against the ground truth:
reprojection error (generated and ground-truth floor; `evaluation.reprojection`), PSNR, SSIM and
LPIPS over the whole view and over the person (`evaluation.metrics`). Writes OUT/metrics.json
(per capture and mean), OUT/table.md (the paper's Table 3/5 layout), OUT/best_worst.png and
TensorBoard scalars (`eval/...`); OUT appears complete or not at all.
"""

import os
import sys
import time

from absl import app, flags

from pippo_jax import paths
from pippo_jax.cli import common

PROGRAM = "pippo-eval"


def _define(fv: flags.FlagValues) -> None:
  d = lambda f, *a, **k: f(*a, flag_values=fv, **k)
  d(flags.DEFINE_string, "checkpoint", None, "training workdir or pippo-convert output")
  d(flags.DEFINE_string, "data", None, "captures folder (default: the run's data.path)")
  d(flags.DEFINE_string, "split", "test", "split to evaluate on")
  d(flags.DEFINE_string, "out", None, "output folder (must not exist, or be empty)")
  d(flags.DEFINE_integer, "views", 8, "target views per capture")
  d(flags.DEFINE_integer, "num-samples", 0, "captures to evaluate (0: the whole split)")
  d(flags.DEFINE_integer, "steps", None, "DDIM steps (default: config's)")
  d(flags.DEFINE_string, "guidance", None, "CFG scales, e.g. ref=2 (default: config's)")
  d(flags.DEFINE_integer, "seed", 0, "random seed (capture i uses fold_in(seed, i))")
  d(flags.DEFINE_enum, "lpips", "vgg", ["vgg", "alex"], "LPIPS backbone")
  d(flags.DEFINE_integer, "match-size", 256, "views are enlarged to this size for matching")
  d(flags.DEFINE_string, "vae", None, "SDXL VAE weights (overrides the run's codec.weights_path)")
  d(flags.DEFINE_boolean, "ema", True, "use the EMA parameters where the run kept them")
  d(flags.DEFINE_boolean, "overwrite", False, "replace a non-empty --out")


def run(args) -> dict:
  from pippo_jax.evaluation import evaluate  # pylint: disable=g-import-not-at-top
  from pippo_jax.inference import generator, outputs  # pylint: disable=g-import-not-at-top

  out = paths.resolve(args.out)
  if os.path.isdir(out) and os.listdir(out) and not args.overwrite:
    raise FileExistsError(f"--out {out} exists and is not empty; remove it or pass --overwrite")
  gen = generator.load_generator(paths.resolve(args.checkpoint), ema=args.ema, vae=args.vae)
  try:
    settings = gen.settings(num_steps=args.steps, scales=common.parse_guidance(args.guidance))
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  data = gen.config.data.copy_and_resolve_references()
  data.path = paths.resolve(args.data) if args.data else data.path
  captures = evaluate.load_captures(data, args.split, args.num_samples, args.views)
  print(
    f"{PROGRAM}: {evaluate.counted(len(captures), 'capture')} of the {args.split} split x "
    f"{args.views} views, "
    f"{settings['num_steps']} DDIM steps",
    file=sys.stderr,
    flush=True,
  )
  start = time.time()

  def progress(done, total):
    print(
      f"{PROGRAM}: generated capture {done}/{total} ({time.time() - start:.0f} s)",
      file=sys.stderr,
      flush=True,
    )

  samples = evaluate.generate(
    gen, gen.sampler(**settings), gen.params, captures, seed=args.seed, progress=progress
  )
  print(f"{PROGRAM}: scoring (LPIPS {args.lpips}, SIFT matching)...", file=sys.stderr, flush=True)
  result = evaluate.score(samples, lpips_net=args.lpips, match_size=args.match_size)
  result.update(
    checkpoint=paths.resolve(args.checkpoint), split=args.split, seed=args.seed, **settings
  )
  with outputs.staged_folder(out, args.overwrite) as folder:
    evaluate.write_report(folder, samples, result, match_size=args.match_size)
    _tensorboard(folder, result)
  print(evaluate.markdown_table(result), flush=True)
  print(f"{PROGRAM}: wrote metrics.json, table.md, best_worst.png to {out}", flush=True)
  return result


def _tensorboard(folder: str, result: dict) -> None:
  from clu import metric_writers  # pylint: disable=g-import-not-at-top

  from pippo_jax.evaluation import evaluate  # pylint: disable=g-import-not-at-top

  writer = metric_writers.create_default_writer(folder)
  writer.write_scalars(int(result.get("step") or 0), evaluate.scalars(result))
  writer.flush()
  writer.close()


def _usage(args) -> str | None:
  if not args.checkpoint or not args.out:
    return "--checkpoint and --out are required"
  if args.views < 2 or args.num_samples < 0 or args.match_size < 1:
    return "--views must be >= 2 (RE needs view pairs), --num-samples >= 0, --match-size >= 1"
  common.parse_guidance(args.guidance)
  return None


def main(argv=None) -> int:
  return common.run_program(PROGRAM, argv, _define, __doc__, _usage, run)


if __name__ == "__main__":
  sys.exit(main())
