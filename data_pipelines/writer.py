"""Resumable ArrayRecord shard writer and the shard index.

A dataset directory holds shards and one `index.json`::

  DIR/index.json
  DIR/train-00000-of-00004.array_record
  ...

`index.json` records, per split, the shard files and their record counts, so
readers know the global index space without opening any shard. A shard is
written to a temporary file and renamed when complete; the index is rewritten
atomically after every shard. Re-running the same job therefore skips the
finished shards and redoes at most one: records are a pure function of their
index, so a resumed run writes the same bytes as an uninterrupted one.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable

from array_record.python import array_record_module

INDEX_FILE = "index.json"
FORMAT = "pippo-records"
# group_size:1 keeps every record individually addressable (random access).
WRITER_OPTIONS = "group_size:1"


def shard_name(split: str, shard: int, num_shards: int) -> str:
  return f"{split}-{shard:05d}-of-{num_shards:05d}.array_record"


def read_index(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, INDEX_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} not found: not a pippo dataset directory (write one with "
        "`pippo-data synth --out DIR` or a tfds builder)")
  with open(path) as f:
    index = json.load(f)
  if index.get("format") != FORMAT:
    raise ValueError(f"{path}: unknown format {index.get('format')!r}")
  return index


def _write_index(directory: str, index: dict[str, Any]) -> None:
  tmp = os.path.join(directory, f".{INDEX_FILE}.tmp")
  with open(tmp, "w") as f:
    json.dump(index, f, indent=1)
  os.replace(tmp, os.path.join(directory, INDEX_FILE))


class Progress:
  """Prints `label: done/total (rate, eta)` at most every `interval` seconds."""

  def __init__(self, label: str, total: int, interval: float = 2.0,
               stream=sys.stderr):
    self.label, self.total, self.interval, self.stream = (
        label, total, interval, stream)
    self.start = self.last = time.perf_counter()
    self.done = 0

  def update(self, done: int, force: bool = False) -> None:
    self.done = done
    now = time.perf_counter()
    if not force and now - self.last < self.interval:
      return
    self.last = now
    rate = done / max(now - self.start, 1e-9)
    eta = (self.total - done) / rate if rate > 0 else float("inf")
    print(f"{self.label}: {done}/{self.total} records "
          f"({100 * done / max(self.total, 1):.0f}%), {rate:.1f} rec/s, "
          f"eta {eta:.0f}s", file=self.stream, flush=True)


def write_split(directory: str, split: str, kind: str, num_records: int,
                make_record: Callable[[int], bytes], records_per_shard: int,
                meta: dict[str, Any] | None = None,
                progress: Progress | None = None) -> dict[str, Any]:
  """Writes records `make_record(0..num_records-1)` as one split.

  Args:
    directory: dataset directory (created if missing).
    split: split name; shards are named `{split}-SSSSS-of-NNNNN`.
    kind: "capture" or "image" (what `make_record` returns).
    num_records: how many records the split holds.
    make_record: index -> serialised record; must be deterministic.
    records_per_shard: shard size.
    meta: generation settings; a resumed run must pass the same ones.
    progress: optional progress reporter (updated per record).

  Returns:
    The split's entry in the index.
  """
  os.makedirs(directory, exist_ok=True)
  try:
    index = read_index(directory)
  except FileNotFoundError:
    index = {"format": FORMAT, "version": 1, "kind": kind, "splits": {}}
  if index["kind"] != kind:
    raise ValueError(f"{directory} holds {index['kind']} records, not {kind}")
  num_shards = max(1, -(-num_records // records_per_shard))
  settings = {"num_records": num_records, "num_shards": num_shards,
              "records_per_shard": records_per_shard, "meta": meta or {}}
  entry = index["splits"].get(split)
  if entry is not None and entry["settings"] != settings:
    raise ValueError(
        f"{directory} split {split!r} was written with other settings "
        f"({entry['settings']}); use a new directory or delete it")
  if entry is None:
    entry = {"settings": settings, "shards": [], "num_records": 0,
             "complete": False}
    index["splits"][split] = entry
  # Forget shards whose files vanished; they are rewritten below.
  entry["shards"] = [s for s in entry["shards"]
                     if os.path.exists(os.path.join(directory, s["file"]))]
  done_files = {s["file"] for s in entry["shards"]}
  written = entry["num_records"] = sum(s["count"] for s in entry["shards"])
  for shard in range(num_shards):
    name = shard_name(split, shard, num_shards)
    lo = shard * records_per_shard
    hi = min(num_records, lo + records_per_shard)
    if name in done_files:
      continue
    tmp = os.path.join(directory, f".{name}.tmp")
    writer = array_record_module.ArrayRecordWriter(tmp, WRITER_OPTIONS)
    try:
      for i in range(lo, hi):
        writer.write(make_record(i))
        if progress is not None:
          progress.update(written + i - lo + 1)
    finally:
      writer.close()
    os.replace(tmp, os.path.join(directory, name))
    entry["shards"].append({"file": name, "count": hi - lo, "start": lo,
                            "bytes": os.path.getsize(
                                os.path.join(directory, name))})
    entry["shards"].sort(key=lambda s: s["start"])
    written += hi - lo
    entry["num_records"] = written
    _write_index(directory, index)
  entry["complete"] = True
  _write_index(directory, index)
  if progress is not None:
    progress.update(written, force=True)
  return entry
