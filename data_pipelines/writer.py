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

Readers check what they rely on and name the file at fault: `read_index` a
missing or damaged `index.json`, `check_shard` a listed shard whose file is
missing or has another size than the index lists (e.g. a copy cut short).
Re-running the writer rewrites such shards.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from array_record.python import array_record_module

INDEX_FILE = "index.json"
FORMAT = "pippo-records"
# group_size:1 keeps every record individually addressable (random access).
WRITER_OPTIONS = "group_size:1"
REWRITE_HINT = (
  "re-run the command that wrote the dataset (e.g. the same "
  "`pippo-data synth`); it rewrites what is missing or damaged"
)


class DatasetError(OSError):
  """A dataset directory that cannot be used as it is: a damaged index, a
  missing or truncated shard, other settings than the ones asked for. An
  OSError like the missing file it often is; the message names the file and
  what to do."""


def shard_name(split: str, shard: int, num_shards: int) -> str:
  return f"{split}-{shard:05d}-of-{num_shards:05d}.array_record"


def read_index(directory: str) -> dict[str, Any]:
  """The index of a dataset directory (FileNotFoundError if it has none,
  DatasetError if it is damaged; both name the file)."""
  path = os.path.join(directory, INDEX_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"{path} not found: not a pippo dataset directory (write one with "
      "`pippo-data synth --out DIR` or a tfds builder)"
    )
  try:
    with open(path) as f:
      index = json.load(f)
  except (OSError, ValueError) as e:  # ValueError: JSON and UTF-8 errors
    raise DatasetError(
      f"{path} is damaged ({type(e).__name__}: {e}); delete it and {REWRITE_HINT}"
    ) from e
  if (
    not isinstance(index, dict)
    or index.get("format") != FORMAT
    or not {"kind", "splits"} <= index.keys()
  ):
    raise DatasetError(
      f"{path} is not a {FORMAT} index (written by "
      "`data_pipelines.writer`): is this the dataset "
      "directory?"
    )
  return index


def intact_shards(directory: str, split: str) -> int:
  """How many shards of `split` in `directory` are intact (0 if nothing is written yet): what a
  resumed job keeps."""
  try:
    entry = read_index(directory)["splits"].get(split)
  except FileNotFoundError:
    return 0
  if entry is None:
    return 0
  return sum(check_shard(directory, s) is None for s in entry["shards"])


def check_shard(directory: str, shard: dict[str, Any]) -> str | None:
  """What is wrong with the file of an index entry's shard; None if nothing.

  A shard is good when its file exists and has the size the index lists; this
  costs one `stat` and catches missing files and copies cut short before the
  ArrayRecord reader sees them.
  """
  path = os.path.join(directory, shard["file"])
  if not os.path.isfile(path):
    return f"{path}: missing (listed in {INDEX_FILE})"
  size, listed = os.path.getsize(path), shard["bytes"]
  if size < listed:
    return f"{path}: truncated, {size} bytes on disk but {INDEX_FILE} lists {listed}"
  if size > listed:
    return f"{path}: {size} bytes on disk but {INDEX_FILE} lists {listed}"
  return None


def _write_index(directory: str, index: dict[str, Any]) -> None:
  tmp = os.path.join(directory, f".{INDEX_FILE}.tmp")
  with open(tmp, "w") as f:
    json.dump(index, f, indent=1)
  os.replace(tmp, os.path.join(directory, INDEX_FILE))


class Progress:
  """Prints `label: done/total (rate, eta)` at most every `interval` seconds.

  The rate counts the records done since `begin` (a resumed job's earlier records do not count).
  """

  def __init__(self, label: str, total: int, interval: float = 2.0, stream=sys.stderr):
    self.label, self.total, self.interval, self.stream = (label, total, interval, stream)
    self.start = self.last = time.perf_counter()
    self.done = self.base = 0

  def begin(self, done: int) -> None:
    """Start timing now, with `done` records already done."""
    self.start = self.last = time.perf_counter()
    self.done = self.base = done

  @property
  def rate(self) -> float:
    """Records per second since `begin`."""
    return (self.done - self.base) / max(time.perf_counter() - self.start, 1e-9)

  def update(self, done: int, force: bool = False) -> None:
    self.done = done
    now = time.perf_counter()
    if not force and now - self.last < self.interval:
      return
    self.last = now
    rate = (done - self.base) / max(now - self.start, 1e-9)
    eta = (self.total - done) / rate if rate > 0 else float("inf")
    print(
      f"{self.label}: {done}/{self.total} records "
      f"({100 * done / max(self.total, 1):.0f}%), {rate:.1f} rec/s, "
      f"eta {eta:.0f}s",
      file=self.stream,
      flush=True,
    )


def write_split(
  directory: str,
  split: str,
  kind: str,
  num_records: int,
  make_record: Callable[[int], bytes],
  records_per_shard: int,
  meta: dict[str, Any] | None = None,
  progress: Progress | None = None,
  max_shards: int | None = None,
  map_fn: Callable | None = None,
) -> dict[str, Any]:
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
    max_shards: write at most this many missing shards, then stop with the split incomplete (a
      re-run continues); None: all.
    map_fn: how a shard's records are made, `map_fn(make_record, range(lo, hi))` in order
      (default `map`; e.g. a process pool's `imap` to make them in parallel).

  Returns:
    The split's entry in the index.
  """
  os.makedirs(directory, exist_ok=True)
  try:
    index = read_index(directory)
  except FileNotFoundError:
    index = {"format": FORMAT, "version": 1, "kind": kind, "splits": {}}
  if index["kind"] != kind:
    raise DatasetError(f"{directory} holds {index['kind']} records, not {kind}")
  num_shards = max(1, -(-num_records // records_per_shard))
  settings = {
    "num_records": num_records,
    "num_shards": num_shards,
    "records_per_shard": records_per_shard,
    "meta": meta or {},
  }
  entry = index["splits"].get(split)
  if entry is not None and entry["settings"] != settings:
    raise DatasetError(
      f"{directory} split {split!r} was written with other settings "
      f"({entry['settings']}); use a new directory or delete it"
    )
  if entry is None:
    entry = {"settings": settings, "shards": [], "num_records": 0, "complete": False}
    index["splits"][split] = entry
  # Forget shards whose files vanished or were damaged; they are rewritten.
  entry["shards"] = [s for s in entry["shards"] if check_shard(directory, s) is None]
  done_files = {s["file"] for s in entry["shards"]}
  written = entry["num_records"] = sum(s["count"] for s in entry["shards"])
  if progress is not None:
    progress.begin(written)
  new_shards = 0
  for shard in range(num_shards):
    name = shard_name(split, shard, num_shards)
    lo = shard * records_per_shard
    hi = min(num_records, lo + records_per_shard)
    if name in done_files:
      continue
    if max_shards is not None and new_shards >= max_shards:
      entry["complete"] = False
      _write_index(directory, index)
      return entry
    new_shards += 1
    tmp = os.path.join(directory, f".{name}.tmp")
    writer = array_record_module.ArrayRecordWriter(tmp, WRITER_OPTIONS)
    try:
      for k, record in enumerate((map_fn or map)(make_record, range(lo, hi))):
        writer.write(record)
        if progress is not None:
          progress.update(written + k + 1)
    finally:
      writer.close()
    os.replace(tmp, os.path.join(directory, name))
    entry["shards"].append(
      {
        "file": name,
        "count": hi - lo,
        "start": lo,
        "bytes": os.path.getsize(os.path.join(directory, name)),
      }
    )
    entry["shards"].sort(key=lambda s: s["start"])
    written += hi - lo
    entry["num_records"] = written
    _write_index(directory, index)
  entry["complete"] = True
  _write_index(directory, index)
  if progress is not None:
    progress.update(written, force=True)
  return entry
