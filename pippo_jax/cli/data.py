"""pippo-data: build, inspect and preview datasets.

  pippo-data COMMAND [FLAGS] [DIR]      `pippo-data COMMAND --help` lists its flags

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
  pippo-data encode-latents --config configs/p3_posttrain.py:size=smoke --data DIR --out OUT
      [--batch 16] [--dtype float16] [--max-shards N]
      A copy of DIR (a dataset, or DIR/captures and DIR/images) in OUT with every
      view's crop encoded by the config's codec; train on it with
      --config.data.path=OUT[/captures] --config.data.latents=True.
      Resumable: re-running the same command finishes an interrupted job.

  pippo-data convert --format FORMAT --src DIR --out OUT [--split-by subject --val 0.05
      --test 0.05] [--workers N]
      Real data into records: FORMAT is pippo-samples (the release's .npy samples; needs
      --allow-pickle), ava256, goliath, capture-folder (your own rig) or image-folder
      (photos for P1). Writes OUT/captures or OUT/images and a convert_report.json (skipped
      items and why, head-point residuals). Resumable: re-running the same command keeps
      the shards already written.

Paths are resolved once, here (`~` expanded, made absolute); an output that
cannot be written fails before any work. Errors print one line and exit
non-zero (see `pippo_jax.cli.common`); `inspect` exits 1 when a shard is
missing or damaged.
"""

from __future__ import annotations

import collections
import os
import sys
import types

import numpy as np
from absl import flags

from pippo_jax import paths
from pippo_jax.cli import common

PROG = "pippo-data"


def _synth(args):
  from pippo_jax.data_pipelines import synthetic_studio  # pylint: disable=g-import-not-at-top

  paths.writable_dir(args.out, "--out")
  settings = synthetic_studio.StudioSettings(
    seed=args.seed,
    subjects=args.subjects,
    cameras=args.cameras,
    resolution=args.resolution,
    moments=args.moments,
    images_per_subject=args.images_per_subject,
    test_fraction=args.test_fraction,
    image_format=args.format,
    records_per_shard=args.records_per_shard,
  )
  kinds = tuple(k.strip() for k in args.kinds.split(","))
  entries = synthetic_studio.write_studio(args.out, settings, kinds)
  for name, entry in entries.items():
    size = sum(s["bytes"] for s in entry["shards"])
    print(
      f"{args.out}/{name}: {entry['num_records']} records in "
      f"{len(entry['shards'])} shards, {size / 2**20:.1f} MiB"
    )


def _inspect(args):
  from pippo_jax.data_pipelines import schemas, sources, transforms, writer  # pylint: disable=g-import-not-at-top

  index = writer.read_index(args.dir)
  print(f"{args.dir}: {index['kind']} records")
  damaged = 0
  for split, entry in index["splits"].items():
    size = sum(s["bytes"] for s in entry["shards"])
    problems = [p for p in (writer.check_shard(args.dir, s) for s in entry["shards"]) if p]
    damaged += len(problems)
    if problems:
      state = (
        f"DAMAGED: {len(problems)} of {len(entry['shards'])} shards "
        f"missing or of the wrong size; {writer.REWRITE_HINT}"
      )
    elif entry["complete"]:
      state = "complete"
    else:
      state = "INCOMPLETE (re-run the writer)"
    print(
      f"  {split}: {entry['num_records']} records, {len(entry['shards'])} "
      f"shards, {size / 2**20:.1f} MiB, {state}"
    )
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
  from pippo_jax.data_pipelines import config, schemas, sources, transforms, writer  # pylint: disable=g-import-not-at-top

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
          float(transforms.filter_reason(rec, filters) is None)
        )
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
  from PIL import Image  # pylint: disable=g-import-not-at-top

  from pippo_jax.data_pipelines import config, pipelines, writer  # pylint: disable=g-import-not-at-top

  flags.FLAGS.mark_as_parsed()
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
      face = np.asarray(Image.fromarray(b["ref_face"]).resize((args.resolution, args.resolution)))
      tiles.append(face)
    if "target_anchor" in b:
      tiles += [
        np.maximum(im, a)
        for im, a in zip(
          [b["ref_image"], *b["target_images"]], [b["ref_anchor"], *b["target_anchor"]]
        )
      ]
    rows.append(np.concatenate(tiles, 1))
  width = max(r.shape[1] for r in rows)
  rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
  Image.fromarray(np.concatenate(rows, 0)).save(args.out)
  print(
    f"wrote {args.out}: {args.examples} examples of {stage} "
    "(reference, targets"
    + (", anchors over images" if "target_anchor" in b else "")
    + (", face crop" if "ref_face" in b else "")
    + ")"
  )


def _tfds_build(args):
  from pippo_jax.data_pipelines import tfds_builders  # pylint: disable=g-import-not-at-top

  paths.writable_dir(args.data_dir, "--data-dir")
  if args.builder == "synthetic_studio":
    kind = args.config or "captures"
    settings = dict(
      seed=args.seed, subjects=args.subjects, cameras=args.cameras, resolution=args.resolution
    )
    default = tfds_builders.SyntheticStudioConfig(name=kind, kind=kind)
    if all(getattr(default, k) == v for k, v in settings.items()):
      config = kind  # one of the builder's own configs
    else:  # tfds wants a new name for other settings
      config = tfds_builders.SyntheticStudioConfig(
        name=(f"{kind}_{args.subjects}x{args.cameras}_{args.resolution}px_seed{args.seed}"),
        kind=kind,
        **settings,
      )
    builder = tfds_builders.PippoSyntheticStudio(
      config=config, data_dir=args.data_dir, file_format="array_record"
    )
    config = builder.builder_config
  else:
    config = tfds_builders.image_folder_config(args.folder, args.config)
    builder = tfds_builders.PippoImageFolder(
      config=config, data_dir=args.data_dir, file_format="array_record"
    )
  builder.download_and_prepare()
  print(
    f"built {builder.info.full_name} in {args.data_dir}: "
    + ", ".join(f"{k}={v.num_examples}" for k, v in builder.info.splits.items())
  )
  print(
    f"read with: data.source='tfds', data.tfds_name="
    f"'{builder.name}/{config.name}', data.tfds_data_dir='{args.data_dir}'"
  )


def _encode_latents(args):
  from pippo_jax.data_pipelines import latents, transforms, writer  # pylint: disable=g-import-not-at-top
  from pippo_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from pippo_jax.models import codec as codec_lib  # pylint: disable=g-import-not-at-top

  config = args.config
  data_dir = args.data or paths.resolve(config.data.path)
  if not data_dir:
    raise ConfigError("give --data DIR (the config's data.path is empty)")
  jobs = latents.datasets(data_dir, args.out)
  paths.writable_dir(args.out, "--out")
  crop = transforms.CropSettings.from_config(config.data)
  codec = codec_lib.make_codec(config.codec)  # first: its errors say what a VAE needs
  codec_id = codec_lib.identity(config.codec)
  print(
    f"encoding {data_dir} with codec {config.codec.kind} ({codec.moment_channels} stored "
    f"channels, {args.dtype}) at {crop.resolution} px, crop {crop.crop!r}, {args.batch} views "
    "per codec call"
  )
  max_shards = args.max_shards or None
  for label, src_dir, out_dir in jobs:
    results = latents.encode_dataset(
      src_dir,
      out_dir,
      crop,
      codec,
      codec_id,
      batch=args.batch,
      dtype=args.dtype,
      max_shards=max_shards,
      label=label,
    )
    for r in results:
      entry = r["entry"]
      size = sum(s["bytes"] for s in entry["shards"]) / 2**20
      state = "complete" if entry["complete"] else "INCOMPLETE (re-run to continue)"
      print(
        f"{out_dir}/{r['split']}: {entry['num_records']} of {entry['settings']['num_records']} "
        f"records in {len(entry['shards'])} shards, {size:.1f} MiB, {state}; this run: "
        f"{r['encoded']} encoded, {r['corrupt']} corrupt (copied without latents), "
        f"{r['rate']:.1f} records/s"
      )
      if max_shards is not None:
        max_shards = max(0, max_shards - r["new_shards"])
    if writer.read_index(src_dir)["kind"] == "image" and config.data.ref_jitter > 0:
      print(
        f"note: data.ref_jitter={config.data.ref_jitter}: P1 training on stored latents needs "
        "--config.data.ref_jitter=0 (a jittered reference crop is drawn anew per example)"
      )
    print(f"train on it with --config.data.path={out_dir} --config.data.latents=True")


def _convert(args):
  from pippo_jax.data_pipelines import convert  # pylint: disable=g-import-not-at-top

  paths.writable_dir(args.out, "--out")
  if args.format == "pippo-samples":
    options = {"allow_pickle": args.allow_pickle, "sample_intrinsics": args.sample_intrinsics}
  elif args.format in ("ava256", "goliath"):
    options = {
      "frames_per_capture": args.frames_per_capture,
      "resolution": args.resolution,
      "frame_size": args.frame_size,
      "image_format": args.image_format,
      "head_keypoints": args.head_keypoints,
    }
  else:
    options = {}
  convert.convert(
    args.format,
    args.src,
    args.out,
    options,
    split_by=args.split_by,
    val=args.val,
    test=args.test,
    workers=args.workers,
    records_per_shard=args.records_per_shard,
    stream=sys.stdout,
  )


def _synth_flags(fv: flags.FlagValues, argv: list[str]) -> None:
  del argv  # no flags read from the command line
  flags.DEFINE_string(
    "out", None, "Output directory (DIR/captures, DIR/images).", required=True, flag_values=fv
  )
  flags.DEFINE_integer("subjects", 8, "Number of subjects.", flag_values=fv)
  flags.DEFINE_integer("cameras", 32, "Cameras per capture.", flag_values=fv)
  flags.DEFINE_integer("resolution", 128, "Image side in pixels.", flag_values=fv)
  flags.DEFINE_integer("moments", 1, "Captures per subject.", flag_values=fv)
  flags.DEFINE_integer("images-per-subject", 16, "P1 image records per subject.", flag_values=fv)
  flags.DEFINE_float(
    "test-fraction", 0.125, "Fraction of subjects in the test split.", flag_values=fv
  )
  flags.DEFINE_integer("seed", 0, "Random seed.", flag_values=fv)
  flags.DEFINE_enum("format", "png", ("png", "jpeg"), "Image encoding.", flag_values=fv)
  flags.DEFINE_integer("records-per-shard", 256, "Records per ArrayRecord shard.", flag_values=fv)
  flags.DEFINE_string(
    "kinds", "captures,images", "Datasets to write, comma-separated.", flag_values=fv
  )


def _inspect_flags(fv: flags.FlagValues, argv: list[str]) -> None:
  del argv  # no flags read from the command line
  flags.DEFINE_string(
    "split", "", "Split whose first record is shown (default: the first).", flag_values=fv
  )


def _stats_flags(fv: flags.FlagValues, argv: list[str]) -> None:
  del argv  # no flags read from the command line
  flags.DEFINE_string("split", "train", "Split to read.", flag_values=fv)
  flags.DEFINE_integer("sample", 200, "Records to read, evenly spaced.", flag_values=fv)
  flags.DEFINE_bool("all", False, "Read every record.", flag_values=fv)


def _preview_flags(fv: flags.FlagValues, argv: list[str]) -> None:
  del argv  # no flags read from the command line
  flags.DEFINE_string("out", None, "Output image (.png).", required=True, flag_values=fv)
  flags.DEFINE_enum(
    "stage",
    None,
    ("p1", "m2", "p3"),
    "Pipeline stage (default: p1 for image records, p3 for captures).",
    flag_values=fv,
  )
  flags.DEFINE_string("split", "train", "Split to read.", flag_values=fv)
  flags.DEFINE_integer("resolution", 128, "Image side in pixels.", flag_values=fv)
  flags.DEFINE_integer("num-views", 4, "Views per example (multi-view stages).", flag_values=fv)
  flags.DEFINE_integer("examples", 3, "Examples (rows) to draw.", flag_values=fv)


def _tfds_build_flags(fv: flags.FlagValues, argv: list[str]) -> None:
  del argv  # no flags read from the command line
  flags.DEFINE_enum(
    "builder",
    None,
    ("synthetic_studio", "image_folder"),
    "tfds builder.",
    required=True,
    flag_values=fv,
  )
  flags.DEFINE_string("data-dir", None, "tfds data directory.", required=True, flag_values=fv)
  flags.DEFINE_string(
    "config",
    "",
    "synthetic_studio: captures|images; image_folder: the "
    "config name (default: the folder's name).",
    flag_values=fv,
  )
  flags.DEFINE_string("folder", "", "image_folder: photo folder.", flag_values=fv)
  flags.DEFINE_integer("subjects", 8, "synthetic_studio: number of subjects.", flag_values=fv)
  flags.DEFINE_integer("cameras", 32, "synthetic_studio: cameras per capture.", flag_values=fv)
  flags.DEFINE_integer("resolution", 128, "synthetic_studio: image side in pixels.", flag_values=fv)
  flags.DEFINE_integer("seed", 0, "synthetic_studio: random seed.", flag_values=fv)


def _encode_latents_flags(fv: flags.FlagValues, argv: list[str]) -> None:
  common.define_config(
    fv,
    argv,
    "Training config file[:variant] whose codec, data.resolution and crop settings make the "
    "latents, e.g. configs/p3_posttrain.py:size=smoke; override keys with --config.KEY=VALUE "
    "(e.g. --config.codec.weights_path=VAE).",
  )
  flags.DEFINE_string(
    "data",
    "",
    "Dataset directory, or a folder holding captures/ and/or images/ (default: the config's "
    "data.path).",
    flag_values=fv,
  )
  flags.DEFINE_string(
    "out", None, "Output folder, in the layout of --data.", required=True, flag_values=fv
  )
  flags.DEFINE_integer("batch", 16, "Views per codec call.", flag_values=fv)
  flags.DEFINE_enum(
    "dtype", "float16", ("float16", "float32"), "dtype of the stored latents.", flag_values=fv
  )
  flags.DEFINE_integer(
    "max-shards",
    0,
    "Stop after writing this many shards (0: all); re-run the command to continue.",
    flag_values=fv,
  )


def _convert_flags(fv: flags.FlagValues, argv: list[str]) -> None:
  del argv  # no flags read from the command line
  flags.DEFINE_enum(
    "format",
    None,
    ("pippo-samples", "ava256", "goliath", "capture-folder", "image-folder"),
    'Layout of --src (see the README\'s "Real data").',
    required=True,
    flag_values=fv,
  )
  flags.DEFINE_string("src", None, "Source directory.", required=True, flag_values=fv)
  flags.DEFINE_string(
    "out", None, "Output folder (OUT/captures or OUT/images).", required=True, flag_values=fv
  )
  flags.DEFINE_enum(
    "split-by",
    "subject",
    ("subject", "none"),
    "subject: hold out --val/--test fractions of the subjects (by a hash of the subject id, "
    "stable when subjects are added); none: everything in train.",
    flag_values=fv,
  )
  flags.DEFINE_float("val", 0.05, "Fraction of subjects in the val split.", flag_values=fv)
  flags.DEFINE_float("test", 0.05, "Fraction of subjects in the test split.", flag_values=fv)
  flags.DEFINE_integer("workers", 1, "Processes that decode and convert items.", flag_values=fv)
  flags.DEFINE_integer(
    "records-per-shard", 0, "Records per shard (0: 8 captures or 256 photos).", flag_values=fv
  )
  flags.DEFINE_bool(
    "allow-pickle",
    False,
    "pippo-samples: unpickle the .npy files (runs any code they hold; only for files you trust).",
    flag_values=fv,
  )
  flags.DEFINE_enum(
    "sample-intrinsics",
    "frame",
    ("frame", "image"),
    "pippo-samples: cam_intrin is for the 4096x2668 calibration frame (the views being its "
    "centred square) or for the stored views.",
    flag_values=fv,
  )
  flags.DEFINE_integer(
    "frames-per-capture",
    1,
    "ava256/goliath: frames per capture folder, evenly spaced (0: all).",
    flag_values=fv,
  )
  flags.DEFINE_integer(
    "resolution", 1024, "ava256/goliath: side of the square views stored.", flag_values=fv
  )
  flags.DEFINE_string(
    "frame-size",
    "4096x2668",
    "ava256/goliath: ROWSxCOLUMNS of the calibrated frames.",
    flag_values=fv,
  )
  flags.DEFINE_enum(
    "image-format", "png", ("png", "jpeg"), "ava256/goliath: encoding of the views.", flag_values=fv
  )
  flags.DEFINE_string(
    "head-keypoints",
    "",
    "goliath body captures: 3D keypoints (indices or names, comma-separated) whose mean is the "
    "head point (default: 0-4, nose, eyes and ears in COCO order).",
    flag_values=fv,
  )


# command: (run, define its flags, takes a DIR argument, what it does)
COMMANDS = {
  "synth": (_synth, _synth_flags, False, "render the synthetic studio (resumable)"),
  "inspect": (_inspect, _inspect_flags, True, "summarise and check a dataset directory"),
  "stats": (_stats, _stats_flags, True, "decode records and report statistics"),
  "preview": (_preview, _preview_flags, True, "write a picture of pipeline output"),
  "tfds-build": (_tfds_build, _tfds_build_flags, False, "build a tfds dataset (ArrayRecord)"),
  "convert": (
    _convert,
    _convert_flags,
    False,
    "convert the release's samples, Ava-256, Goliath, a capture folder or photos (resumable)",
  ),
  "encode-latents": (
    _encode_latents,
    _encode_latents_flags,
    False,
    "copy a dataset with the codec's latents of every crop (resumable)",
  ),
}
PATH_FLAGS = ("out", "data_dir", "folder", "data", "src")
CONFIG_COMMANDS = ("encode-latents",)  # their --config is a training config file


def main(argv=None) -> int:
  """Runs the CLI on `argv` (the arguments after the program name; default sys.argv[1:])."""
  argv = common.program_argv(PROG, argv)[1:]
  if argv and argv[0] in common.HELP_FLAGS:
    print(__doc__.rstrip())
    return 0
  if not argv or argv[0] not in COMMANDS:
    problem = f"unknown command {argv[0]!r}" if argv else "no command given"
    common.fail(PROG, f"{problem}; commands: {', '.join(COMMANDS)} (see --help)", common.USAGE)
  command = argv[0]
  run, define, takes_dir, summary = COMMANDS[command]
  fv = flags.FlagValues()
  command_argv = [f"{PROG} {command}", *argv[1:]]
  define(fv, command_argv)
  usage = f"{PROG} {command} [FLAGS]" + (" DIR" if takes_dir else "")
  rest = common.parse(PROG, command_argv, fv, doc=f"{usage}\n  {summary}")
  if len(rest) != takes_dir:
    common.fail(
      PROG,
      f"{command} takes {'one DIR argument' if takes_dir else 'no arguments'} "
      f"besides flags, got {len(rest)} (usage: {usage})",
      common.USAGE,
    )
  config = None
  if command in CONFIG_COMMANDS:  # loaded (and validated) here: a bad config file is a usage error
    config = common.config_value(PROG, fv["config"])
    if config is None:
      common.fail(PROG, f"{command} needs --config (see --help)", common.USAGE)
  args = types.SimpleNamespace(
    **{
      name.replace("-", "_"): value
      for name, value in fv.flag_values_dict().items()
      if name != "config" or config is None
    }
  )
  if config is not None:
    args.config = config
  for name in PATH_FLAGS:
    if hasattr(args, name):
      setattr(args, name, paths.resolve(getattr(args, name)))
  args.dir = paths.resolve(rest[0]) if takes_dir else None
  if command == "convert" and (args.val < 0 or args.test < 0 or args.val + args.test >= 1):
    common.fail(PROG, "--val and --test must be >= 0 and sum to less than 1", common.USAGE)
  if command == "convert" and args.workers < 1:
    common.fail(PROG, "--workers must be at least 1", common.USAGE)
  if command == "tfds-build" and args.builder == "image_folder" and not args.folder:
    common.fail(PROG, "--builder image_folder needs --folder DIR", common.USAGE)
  return common.guarded(PROG, run, args) or 0


if __name__ == "__main__":
  sys.exit(main())
