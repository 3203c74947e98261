"""Random-access record sources for the Grain pipelines.

Every source maps a global index i in [0, len) to an *element*::

  {"record_index": i, "where": "<shard file>#<index in shard>", "bytes": b}

or, when the record cannot be read (a damaged chunk, a shard that does not
open), to `{"record_index": i, "where": ..., "error": "<what went wrong>"}`.
Read errors never raise here: the pipeline counts and logs them, and fails only
past the configured corrupt fraction (see `pipelines`).

Sources:
* `ArrayRecordSource`: a directory written by `writer.write_split` (or by
  `pippo-data synth`); shard counts come from `index.json`, shards open lazily
  after `writer.check_shard` (a missing or truncated shard makes its records
  unreadable, with a message naming the file and both sizes).
* `TfdsSource`: a split of a tfds dataset built by `tfds_builders`, read with
  `tfds.data_source` (no TensorFlow); records are the same bytes.
* `IndexSynthesizedSource`: 10^9 (or any number of) image records made up from
  their index, nothing stored: for testing scale behaviour.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import threading

import numpy as np
from array_record.python import array_record_module

from pippo_jax.data_pipelines import schemas, writer


class ArrayRecordSource:
  """The records of one split of a pippo dataset directory."""

  def __init__(self, directory: str, split: str = "train"):
    index = writer.read_index(directory)
    if split not in index["splits"]:
      raise writer.DatasetError(
        f"{directory} has no split {split!r}; splits: {sorted(index['splits'])}"
      )
    entry = index["splits"][split]
    self.directory, self.split, self.kind = directory, split, index["kind"]
    self.complete = entry["complete"]
    shards = sorted(entry["shards"], key=lambda s: s["start"])
    self._shards = {s["file"]: s for s in shards}
    self._files = [s["file"] for s in shards]
    self._starts = [s["start"] for s in shards]
    self._counts = [s["count"] for s in shards]
    expected = 0
    for s in shards:
      if s["start"] != expected:
        raise writer.DatasetError(
          f"{directory} split {split!r}: shards are not contiguous at "
          f"record {expected} (missing shard? an interrupted writer can be "
          "resumed by re-running it)"
        )
      expected += s["count"]
    self._len = expected
    self._readers = {}
    self._failed = {}
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return self._len

  def locate(self, index: int) -> tuple[str, int]:
    """(shard file, index within the shard) of a global index."""
    if not 0 <= index < self._len:
      raise IndexError(f"record {index} out of range [0, {self._len})")
    shard = bisect.bisect_right(self._starts, index) - 1
    return self._files[shard], index - self._starts[shard]

  def _reader(self, name: str):
    with self._lock:
      if name in self._failed:
        raise writer.DatasetError(self._failed[name])
      if name not in self._readers:
        problem = writer.check_shard(self.directory, self._shards[name])
        if problem is not None:
          self._failed[name] = f"{problem}; {writer.REWRITE_HINT}"
          raise writer.DatasetError(self._failed[name])
        path = os.path.join(self.directory, name)
        try:
          self._readers[name] = array_record_module.ArrayRecordReader(
            path, "readahead_buffer_size:0"
          )
        except Exception as e:  # pylint: disable=broad-except
          self._failed[name] = f"shard {path} does not open: {e}"
          raise writer.DatasetError(self._failed[name]) from e
      return self._readers[name]

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    name, local = self.locate(index)
    element = {"record_index": index, "where": f"{name}#{local}"}
    try:
      element["bytes"] = self._reader(name).read([local])[0]
    except Exception as e:  # pylint: disable=broad-except
      element["error"] = f"{type(e).__name__}: {e}"
    return element

  def __getstate__(self):
    state = self.__dict__.copy()
    state["_readers"], state["_lock"] = {}, None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def __repr__(self):
    return (
      f"ArrayRecordSource({self.directory!r}, split={self.split!r}, "
      f"kind={self.kind!r}, records={self._len})"
    )


class TfdsSource:
  """A split of a tfds dataset from `tfds_builders` (read without TensorFlow)."""

  def __init__(self, name: str, split: str = "train", data_dir: str | None = None):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    self.name, self.split, self.data_dir = name, split, data_dir
    builder = tfds.builder(name, data_dir=data_dir)
    self.kind = builder.info.metadata.get("record_kind") if (builder.info.metadata) else None
    if self.kind is None:
      self.kind = "capture" if "captures" in name else "image"
    self._source = tfds.data_source(name, split=split, data_dir=data_dir)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    element = {"record_index": index, "where": f"tfds:{self.name}/{self.split}#{index}"}
    try:
      element["bytes"] = self._source[index]["record"]
    except Exception as e:  # pylint: disable=broad-except
      element["error"] = f"{type(e).__name__}: {e}"
    return element

  def __repr__(self):
    return f"TfdsSource({self.name!r}, split={self.split!r}, records={len(self)})"


class IndexSynthesizedSource:
  """`length` image records computed from their index; nothing is stored.

  The image is a small flat-coloured picture with a darker "person" block; all
  metadata are pseudo-random functions of the index, so filters drop a fixed,
  known fraction.
  """

  kind = "image"

  def __init__(self, length: int = 10**9, size: int = 32, image_format: str = "png"):
    self.length, self.size, self.image_format = int(length), size, image_format

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if not 0 <= index < self.length:
      raise IndexError(f"record {index} out of range [0, {self.length})")
    h = hashlib.blake2b(index.to_bytes(8, "little"), digest_size=16).digest()
    u = np.frombuffer(h, np.uint8).astype(np.float64) / 255.0
    s = self.size
    image = np.empty((s, s, 3), np.uint8)
    image[:] = np.frombuffer(h[:3], np.uint8)
    image[s // 4 :, s // 3 : 2 * s // 3] = np.frombuffer(h[3:6], np.uint8) // 2
    record = schemas.encode_image_record(
      {
        "image_id": f"synth{index}",
        "subject_id": index,
        "split": "train",
        "image": schemas.encode_image(image, self.image_format),
        "height": s,
        "width": s,
        "person_box": [s / 3, s / 4, s / 3, 3 * s / 4],
        "detection_confidence": u[6],
        "visibility": u[7],
        "quality": u[8],
        "face_box": [s / 3, s / 4, s / 3, s / 6],
      }
    )
    return {"record_index": index, "where": f"synth#{index}", "bytes": record}

  def __repr__(self):
    return f"IndexSynthesizedSource(length={self.length})"


def open_source(data_config) -> object:
  """The source named by a data config (`source`, `path`/`tfds_name`, `split`)."""
  kind = data_config.source
  if kind == "array_record":
    if not data_config.path:
      raise ValueError(
        "data.path is empty: set it to a dataset directory "
        "(e.g. OUT/captures from `pippo-data synth --out OUT`)"
      )
    return ArrayRecordSource(data_config.path, data_config.split)
  if kind == "tfds":
    return TfdsSource(data_config.tfds_name, data_config.split, data_config.tfds_data_dir or None)
  if kind == "synthetic_index":
    return IndexSynthesizedSource(data_config.synthetic_length)
  raise ValueError(f"unknown data.source {kind!r}: use 'array_record', 'tfds' or 'synthetic_index'")
