"""`pippo-data convert`: real captures and photos -> our capture / image records.

A format (`FORMATS`) knows one on-disk layout. It lists the source's items (one capture: a
subject at one moment seen by every camera; or one photo) with a subject key each, checks on
the way what each item needs and reports what it had to skip and why; it then loads one item
into a record dict (`schemas`). This module does the rest the same way for every format:

* Splits by subject: a subject's split is a pure function of its key (a hash), so every capture
  of a held-out subject lands in val/test, and adding subjects later never moves one that was
  already assigned. `--split-by none` puts everything in train.
* Records are written with `writer.write_split` (OUT/captures or OUT/images, the layout of
  `pippo-data synth`): finished shards are kept when the same command runs again, so an
  interrupted conversion resumes; a changed source (other items) or other settings are refused
  rather than mixed in.
* `workers` > 1 loads items in that many processes (decoding and resizing dominate).
* `OUT/<kind>/convert_report.json` holds the summary: records per split, skipped items with
  their reasons, notes (e.g. per-capture reprojection residuals of estimated head points).
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import sys

from pippo_jax.data_pipelines import (
  folder_formats,
  release_samples,
  schemas,
  studio_captures,
  writer,
)
from pippo_jax.data_pipelines.convert_base import Item

REPORT_FILE = "convert_report.json"
SPLIT_BY = ("subject", "none")


def subject_number(key: str) -> int:
  """The record's integer subject_id for a subject key: the number itself for a decimal key,
  else 48 bits of its SHA-256 (stable across runs and machines)."""
  key = str(key)
  if key.isdigit():
    return int(key)
  return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16)


def subject_split(key: str, val: float, test: float) -> str:
  """The split of a subject: test for a fraction `test` of keys, val for `val`, else train.

  A hash of the key decides, so a subject keeps its split however many others are added.
  """
  u = int(hashlib.sha256(f"split:{key}".encode()).hexdigest()[:8], 16) / 2**32
  return "test" if u < test else "val" if u < test + val else "train"


def assign_splits(items: list[Item], split_by: str, val: float, test: float) -> dict:
  """{split: items in id order}; every item of one subject lands in the same split."""
  if split_by not in SPLIT_BY:
    raise ValueError(f"--split-by must be one of {SPLIT_BY}, got {split_by!r}")
  splits: dict[str, list[Item]] = {}
  for item in sorted(items, key=lambda i: i.id):
    name = "train" if split_by == "none" else subject_split(item.subject, val, test)
    splits.setdefault(name, []).append(item)
  return splits


class _RecordMaker:
  """index -> encoded record of one split (picklable: runs in worker processes)."""

  def __init__(self, fmt_name: str, options: dict, items: list[Item], split: str):
    self.fmt_name, self.options, self.items, self.split = fmt_name, options, items, split

  def __call__(self, i: int) -> bytes:
    item = self.items[i]
    fmt = FORMATS[self.fmt_name]
    rec = fmt.load(item, self.options)
    rec.update(split=self.split, subject_id=subject_number(item.subject))
    if fmt.kind == "capture":
      rec["capture_id"] = item.id
      return schemas.encode_capture(rec)
    rec["image_id"] = item.id
    return schemas.encode_image_record(rec)


def convert(
  fmt_name: str,
  src: str,
  out: str,
  options: dict | None = None,
  *,
  split_by: str = "subject",
  val: float = 0.05,
  test: float = 0.05,
  workers: int = 1,
  records_per_shard: int = 0,
  stream=None,
) -> dict:
  """Converts `src` (layout `fmt_name`) into OUT/captures or OUT/images; returns the report.

  Args:
    fmt_name: a key of FORMATS.
    src: the source directory.
    out: output folder (records go to OUT/captures or OUT/images).
    options: format options (see each format's module); part of the dataset's settings.
    split_by: "subject" (val/test fractions of the subjects) or "none" (all train).
    val, test: fractions of subjects held out.
    workers: processes that load items (1: this process).
    records_per_shard: shard size (0: the format's default).
    stream: where the summary goes (default stderr; progress lines always go to stderr).

  Raises:
    FileNotFoundError / InputError naming the file when the layout is wrong or incomplete.
  """
  stream = stream or sys.stderr
  options = dict(options or {})
  if fmt_name not in FORMATS:
    raise ValueError(f"unknown format {fmt_name!r}; formats: {', '.join(FORMATS)}")
  if not os.path.isdir(src):
    raise FileNotFoundError(f"--src {src}: no such directory")
  if val < 0 or test < 0 or val + test >= 1:
    raise ValueError(f"--val {val} and --test {test} must be >= 0 and sum to less than 1")
  fmt = FORMATS[fmt_name]
  listing = fmt.list(src, options)
  if not listing.items:
    reasons = "; ".join(f"{i}: {r}" for i, r in listing.skipped[:3])
    raise FileNotFoundError(
      f"{src}: nothing to convert as {fmt_name}" + (f" (skipped: {reasons})" if reasons else "")
    )
  splits = assign_splits(listing.items, split_by, val, test)
  kind_dir = os.path.join(out, "captures" if fmt.kind == "capture" else "images")
  per_shard = records_per_shard or fmt.records_per_shard
  pool = None
  if workers > 1:
    pool = multiprocessing.get_context("spawn").Pool(workers)
  report = {
    "format": fmt_name,
    "src": src,
    "options": options,
    "splits": {},
    "skipped": [{"item": i, "reason": r} for i, r in listing.skipped],
    "notes": listing.notes,
  }
  try:
    for split, items in sorted(splits.items()):
      digest = hashlib.sha256("\n".join(i.id for i in items).encode()).hexdigest()[:16]
      meta = {"format": fmt_name, "options": options, "split_by": split_by, "val": val}
      meta.update(test=test, items_sha256=digest)
      maker = _RecordMaker(fmt_name, options, items, split)
      before = writer.intact_shards(kind_dir, split)
      progress = None
      if before < -(-len(items) // per_shard):  # work left: show progress (stderr)
        progress = writer.Progress(f"convert {split}", len(items))
      entry = writer.write_split(
        kind_dir,
        split,
        fmt.kind,
        len(items),
        maker,
        per_shard,
        meta,
        progress,
        map_fn=None if pool is None else functools.partial(pool.imap, chunksize=1),
      )
      subjects = sorted({i.subject for i in items})
      report["splits"][split] = {
        "records": entry["num_records"],
        "subjects": len(subjects),
        "shards": len(entry["shards"]),
        "shards_kept": before,
      }
  finally:
    if pool is not None:
      pool.close()
      pool.join()
  with open(os.path.join(kind_dir, REPORT_FILE), "w") as f:
    json.dump(report, f, indent=1)
  _print_summary(report, kind_dir, stream)
  return report


def _print_summary(report: dict, kind_dir: str, stream) -> None:
  for split, s in report["splits"].items():
    print(
      f"{kind_dir}/{split}: {s['records']} records of {s['subjects']} subjects in "
      f"{s['shards']} shards ({s['shards_kept']} already written, kept)",
      file=stream,
    )
  print(f"skipped: {len(report['skipped'])}", file=stream)
  for entry in report["skipped"][:20]:
    print(f"  {entry['item']}: {entry['reason']}", file=stream)
  if len(report["skipped"]) > 20:
    print(f"  ... (all in {kind_dir}/{REPORT_FILE})", file=stream)
  for note in report["notes"][:20]:
    print(f"note: {note}", file=stream)
  stream.flush()


FORMATS = {
  "pippo-samples": release_samples.FORMAT,
  "ava256": studio_captures.AVA256,
  "goliath": studio_captures.GOLIATH,
  "capture-folder": folder_formats.CAPTURE_FOLDER,
  "image-folder": folder_formats.IMAGE_FOLDER,
}
