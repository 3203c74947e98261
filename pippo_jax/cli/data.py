"""pippo-data: build, inspect and preview datasets.

  pippo-data synth --out DIR --subjects 64 --cameras 48 --resolution 128
      Synthetic studio: DIR/captures (multi-view) and DIR/images (P1).
      Resumable: re-running the same command finishes an interrupted job.
  pippo-data inspect DIR/captures        splits, shards, counts, one record
  pippo-data stats DIR/images [--all]    decode records: corrupt ones, sizes,
                                         metadata quantiles, filter pass rates
  pippo-data preview DIR/captures --stage p3 --out grid.png
                                         a picture of what the pipeline yields
  pippo-data tfds-build --builder synthetic_studio --config captures --data-dir D
  pippo-data tfds-build --builder image_folder --folder PHOTOS --data-dir D
                                         the same records through tfds

Paths are resolved once, here (`~` expanded, made absolute); an output that
cannot be written fails before any work. Errors print one line and exit
non-zero (see `pippo_jax.cli.common`); `inspect` exits 1 when a shard is
missing or damaged.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys

import numpy as np

from pippo_jax import paths

PROG = "pippo-data"


def _synth(args):
  from data_pipelines import synthetic_studio  # pylint: disable=g-import-not-at-top
  paths.writable_dir(args.out, "--out")
  settings = synthetic_studio.StudioSettings(
      seed=args.seed, subjects=args.subjects, cameras=args.cameras,
      resolution=args.resolution, moments=args.moments,
      images_per_subject=args.images_per_subject,
      test_fraction=args.test_fraction, image_format=args.format,
      records_per_shard=args.records_per_shard)
  kinds = tuple(k.strip() for k in args.kinds.split(","))
  entries = synthetic_studio.write_studio(args.out, settings, kinds)
  for name, entry in entries.items():
    size = sum(s["bytes"] for s in entry["shards"])
    print(f"{args.out}/{name}: {entry['num_records']} records in "
          f"{len(entry['shards'])} shards, {size / 2**20:.1f} MiB")


def _inspect(args):
  from data_pipelines import schemas, sources, transforms, writer  # pylint: disable=g-import-not-at-top
  index = writer.read_index(args.dir)
  print(f"{args.dir}: {index['kind']} records")
  damaged = 0
  for split, entry in index["splits"].items():
    size = sum(s["bytes"] for s in entry["shards"])
    problems = [p for p in (writer.check_shard(args.dir, s)
                            for s in entry["shards"]) if p]
    damaged += len(problems)
    if problems:
      state = (f"DAMAGED: {len(problems)} of {len(entry['shards'])} shards "
               f"missing or of the wrong size; {writer.REWRITE_HINT}")
    elif entry["complete"]:
      state = "complete"
    else:
      state = "INCOMPLETE (re-run the writer)"
    print(f"  {split}: {entry['num_records']} records, {len(entry['shards'])} "
          f"shards, {size / 2**20:.1f} MiB, {state}")
    for problem in problems:
      print(f"    {problem}")
    print(f"    settings: {entry['settings']['meta']}")
  split = args.split or next(iter(index["splits"]))
  el = sources.ArrayRecordSource(args.dir, split)[0]
  try:
    rec = transforms.decode(el, index["kind"])
  except schemas.RecordError as e:
    print(f"  first record of {split}: UNREADABLE: {e}")
    return 1
  print(f"  first record of {split} ({el['where']}, {len(el['bytes'])} bytes):")
  for key, value in rec.items():
    if isinstance(value, np.ndarray):
      text = f"{value.dtype} {list(value.shape)}"
    elif isinstance(value, list) and value and isinstance(value[0], bytes):
      text = f"{len(value)} encoded images, {sum(map(len, value))} bytes"
    elif isinstance(value, list):
      text = f"{value[:4]}{' ...' if len(value) > 4 else ''} ({len(value)})"
    elif isinstance(value, bytes):
      text = f"encoded image, {len(value)} bytes"
    else:
      text = repr(value)
    print(f"    {key}: {text}")
  return 1 if damaged else 0


def _quantiles(values):
  q = np.quantile(np.asarray(values, float), [0, 0.1, 0.5, 0.9, 1])
  return " ".join(f"{v:.3f}" for v in q)


def _stats(args):
  from data_pipelines import config, schemas, sources, transforms, writer  # pylint: disable=g-import-not-at-top
  kind = writer.read_index(args.dir)["kind"]
  src = sources.ArrayRecordSource(args.dir, args.split)
  n = len(src) if args.all else min(len(src), args.sample)
  picks = np.linspace(0, len(src) - 1, n).round().astype(int) if n else []
  corrupt, values = [], collections.defaultdict(list)
  filters = config.default_data_config("p1").filters
  progress = None
  if n > 200:
    progress = writer.Progress(f"stats {args.dir}", n)
  for k, i in enumerate(picks):
    el = src[int(i)]
    try:
      rec = transforms.decode(el, kind)
      if kind == "image":
        image = schemas.decode_image(rec["image"], el["where"])
        values["height"].append(image.shape[0])
        values["width"].append(image.shape[1])
        for name in schemas.IMAGE_SCORES:
          values[name].append(rec[name])
        values["person_size"].append(rec["person_box"][3] / rec["height"])
        values["has_face"].append(float(rec["face_box"][2] > 0))
        values["passes_default_filters"].append(
            float(transforms.filter_reason(rec, filters) is None))
      else:
        for c, (im, mk) in enumerate(zip(rec["images"], rec["masks"])):
          image = schemas.decode_image(im, f"{el['where']} camera {c}")
          mask = schemas.decode_image(mk, f"{el['where']} mask {c}", "L")
          values["coverage"].append((mask > 127).mean())
        values["cameras"].append(len(rec["images"]))
        values["height"].append(image.shape[0])
        values["width"].append(image.shape[1])
    except schemas.RecordError as e:
      corrupt.append(str(e))
    if progress:
      progress.update(k + 1)
  print(f"{args.dir} [{args.split}]: {kind} records, read {n} of {len(src)}")
  print(f"  corrupt: {len(corrupt)}")
  for message in corrupt[:10]:
    print(f"    {message}")
  print("  quantiles (min p10 p50 p90 max):")
  for name, vals in values.items():
    print(f"    {name:24s} {_quantiles(vals)}")
  if kind == "image":
    print(f"  default P1 filters: {dict(filters)}")


def _preview(args):
  import absl.flags  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from data_pipelines import config, pipelines, writer  # pylint: disable=g-import-not-at-top
  absl.flags.FLAGS.mark_as_parsed()
  paths.writable_dir(os.path.dirname(args.out), "the directory of --out")
  kind = writer.read_index(args.dir)["kind"]
  stage = args.stage or ("p1" if kind == "image" else "p3")
  cfg = config.default_data_config(stage, args.resolution, args.num_views)
  cfg.path, cfg.split, cfg.batch_size = args.dir, args.split, 1
  it = pipelines.make_iterator(cfg, process_index=0, process_count=1)
  rows = []
  for _ in range(args.examples):
    b = {k: v[0] for k, v in next(it).items()}
    tiles = [b["ref_image"], *b["target_images"]]
    if "ref_face" in b:
      face = np.asarray(Image.fromarray(b["ref_face"]).resize(
          (args.resolution, args.resolution)))
      tiles.append(face)
    if "target_anchor" in b:
      tiles += [np.maximum(im, a) for im, a in
                zip([b["ref_image"], *b["target_images"]],
                    [b["ref_anchor"], *b["target_anchor"]])]
    rows.append(np.concatenate(tiles, 1))
  width = max(r.shape[1] for r in rows)
  rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
  Image.fromarray(np.concatenate(rows, 0)).save(args.out)
  print(f"wrote {args.out}: {args.examples} examples of {stage} "
        "(reference, targets" + (", anchors over images" if "target_anchor" in b
                                 else "") + (", face crop" if "ref_face" in b
                                             else "") + ")")


def _tfds_build(args):
  from data_pipelines import tfds_builders  # pylint: disable=g-import-not-at-top
  paths.writable_dir(args.data_dir, "--data-dir")
  if args.builder == "synthetic_studio":
    kind = args.config or "captures"
    settings = dict(seed=args.seed, subjects=args.subjects, cameras=args.cameras,
                    resolution=args.resolution)
    default = tfds_builders.SyntheticStudioConfig(name=kind, kind=kind)
    if all(getattr(default, k) == v for k, v in settings.items()):
      config = kind  # one of the builder's own configs
    else:  # tfds wants a new name for other settings
      config = tfds_builders.SyntheticStudioConfig(
          name=(f"{kind}_{args.subjects}x{args.cameras}_{args.resolution}px_"
                f"seed{args.seed}"), kind=kind, **settings)
    builder = tfds_builders.PippoSyntheticStudio(
        config=config, data_dir=args.data_dir, file_format="array_record")
    config = builder.builder_config
  else:
    config = tfds_builders.image_folder_config(args.folder, args.config)
    builder = tfds_builders.PippoImageFolder(
        config=config, data_dir=args.data_dir, file_format="array_record")
  builder.download_and_prepare()
  print(f"built {builder.info.full_name} in {args.data_dir}: "
        + ", ".join(f"{k}={v.num_examples}" for k, v in builder.info.splits.items()))
  print(f"read with: data.source='tfds', data.tfds_name="
        f"'{builder.name}/{config.name}', data.tfds_data_dir='{args.data_dir}'")


def _parser():
  p = argparse.ArgumentParser(prog="pippo-data", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True)
  s = sub.add_parser("synth", help="render the synthetic studio")
  s.add_argument("--out", required=True, type=paths.resolve)
  s.add_argument("--subjects", type=int, default=8)
  s.add_argument("--cameras", type=int, default=32)
  s.add_argument("--resolution", type=int, default=128)
  s.add_argument("--moments", type=int, default=1, help="captures per subject")
  s.add_argument("--images-per-subject", type=int, default=16)
  s.add_argument("--test-fraction", type=float, default=0.125)
  s.add_argument("--seed", type=int, default=0)
  s.add_argument("--format", default="png", choices=("png", "jpeg"))
  s.add_argument("--records-per-shard", type=int, default=256)
  s.add_argument("--kinds", default="captures,images")
  s.set_defaults(fn=_synth)
  s = sub.add_parser("inspect", help="summarise and check a dataset directory")
  s.add_argument("dir", type=paths.resolve)
  s.add_argument("--split", default="")
  s.set_defaults(fn=_inspect)
  s = sub.add_parser("stats", help="decode records and report statistics")
  s.add_argument("dir", type=paths.resolve)
  s.add_argument("--split", default="train")
  s.add_argument("--sample", type=int, default=200)
  s.add_argument("--all", action="store_true", help="read every record")
  s.set_defaults(fn=_stats)
  s = sub.add_parser("preview", help="write a picture of pipeline output")
  s.add_argument("dir", type=paths.resolve)
  s.add_argument("--out", required=True, type=paths.resolve)
  s.add_argument("--stage", choices=("p1", "m2", "p3"))
  s.add_argument("--split", default="train")
  s.add_argument("--resolution", type=int, default=128)
  s.add_argument("--num-views", type=int, default=4)
  s.add_argument("--examples", type=int, default=3)
  s.set_defaults(fn=_preview)
  s = sub.add_parser("tfds-build", help="build a tfds dataset (ArrayRecord)")
  s.add_argument("--builder", choices=("synthetic_studio", "image_folder"),
                 required=True)
  s.add_argument("--data-dir", required=True, type=paths.resolve)
  s.add_argument("--config", default="",
                 help="synthetic_studio: captures|images; image_folder: the "
                 "config name (default: the folder's name)")
  s.add_argument("--folder", default="", type=paths.resolve,
                 help="image_folder: photo folder")
  s.add_argument("--subjects", type=int, default=8)
  s.add_argument("--cameras", type=int, default=32)
  s.add_argument("--resolution", type=int, default=128)
  s.add_argument("--seed", type=int, default=0)
  s.set_defaults(fn=_tfds_build)
  return p


def main(argv=None):
  parser = _parser()
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  if args.command == "tfds-build" and args.builder == "image_folder" and (
      not args.folder):
    parser.error("--builder image_folder needs --folder DIR")
  try:
    return args.fn(args) or 0
  except Exception as e:  # pylint: disable=broad-except
    # The user's errors (a missing or damaged dataset, a path that cannot be
    # written, too many corrupt records) as one line, as in every pippo CLI.
    # Imported only now: it loads jax, which these commands do not need.
    from pippo_jax.cli import common  # pylint: disable=g-import-not-at-top
    if not isinstance(e, common.USER_ERRORS):
      raise
    common.fail(PROG, str(e) or type(e).__name__, common.FAILED)


if __name__ == "__main__":
  sys.exit(main())
