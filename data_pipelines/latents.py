"""Stored latents: what `pippo-data encode-latents` writes and what `data.latents` checks.

The frozen codec maps the same crop of a view to the same latents every epoch, so a large run
encodes each view once instead of every step:

    pippo-data encode-latents --config CONFIG --data DIR --out OUT

copies every record of every split of DIR (a dataset directory, or a folder holding `captures/`
and/or `images/`) to OUT in the same layout, shards and order, adding the codec's moments of
every view's crop (`models.codec`: the unscaled latents of an exact codec, a VAE posterior's mean
and log-variance) with the crop boxes and cropped masks (blobs in `schemas`). The crops are the
transforms' own (`multiview.crop_view`, `transforms.crop_image`) at the config's `data`
resolution and crop settings. A record that does not decode is counted, logged and copied without
latents (a `data.latents` pipeline skips it as corrupt); an unreadable one becomes an empty
record. The job is resumable shard by shard (`writer.write_split`).

Each split's settings meta in OUT/index.json records how its latents were made::

  {"latents": {"codec": codec.identity(...), "crop": CropSettings.to_json(), "dtype": ...,
               "moment_channels": K},
   "source": {"settings": <the source split's settings>}}

`problem` compares it with a training config: `config_lib.validate` refuses `data.latents=True`
on a dataset without latents, or with latents of another codec, resolution or crop.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

import numpy as np

from pippo_jax.data_pipelines import schemas, sources, transforms, writer

META_KEY = "latents"
DTYPES = ("float16", "float32")
KINDS = ("captures", "images")  # sub-folders of a studio folder
_LOG_FIRST = 20


def split_meta(directory: str, split: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
  """(the split's index entry, its latents meta or None)."""
  index = writer.read_index(directory)
  if split not in index["splits"]:
    raise writer.DatasetError(
      f"{directory} has no split {split!r}; splits: {sorted(index['splits'])}"
    )
  entry = index["splits"][split]
  return entry, entry["settings"]["meta"].get(META_KEY)


def problem(data_cfg, codec_id: dict[str, Any] | None = None, source=None) -> str | None:
  """Why `data.latents=True` cannot train on `data_cfg.path` with this data config (and, given
  its `codec.identity`, this codec); None when it can, or when there is no dataset to look at
  yet (an empty or missing path is reported where the dataset is opened). `source`: an
  `ArrayRecordSource` to check instead of `data.path` and `data.split`."""
  if data_cfg.source != "array_record":
    return (
      f"data.latents=True reads a dataset written by `pippo-data encode-latents` "
      f"(data.source='array_record'), not data.source={data_cfg.source!r}"
    )
  if data_cfg.kind == "image" and data_cfg.ref_jitter > 0:
    return (
      f"data.latents=True with data.ref_jitter={data_cfg.ref_jitter}: the jittered reference crop "
      "is drawn anew for every example, so it has to be encoded on the fly; set "
      "data.ref_jitter=0 (the reference is then the stored target crop) or data.latents=False"
    )
  path, split = data_cfg.path, data_cfg.split
  if source is not None:
    path, split = source.directory, source.split
  if not path or not os.path.exists(os.path.join(path, writer.INDEX_FILE)):
    return None
  try:
    entry, meta = split_meta(path, split)
  except writer.DatasetError:
    return None  # a damaged index or a missing split: the source says so when it opens
  if meta is None:
    return (
      f"data.latents=True but {path} (split {split!r}) holds no stored latents: write "
      f"them with `pippo-data encode-latents --config CONFIG --data {path} --out OUT` and set "
      "data.path to OUT"
    )
  if not entry["complete"]:
    return (
      f"{path} split {split!r}: the latents are incomplete ({entry['num_records']} of "
      f"{entry['settings']['num_records']} records); re-run the same `pippo-data encode-latents` "
      "command to finish them"
    )
  want = transforms.CropSettings.from_config(data_cfg).to_json()
  stored = meta["crop"]
  diff = [
    f"data.{k}: stored {stored.get(k)!r}, config {v!r}"
    for k, v in want.items()
    if stored.get(k) != v
  ]
  if codec_id is not None:
    from pippo_jax.models import codec as codec_lib  # pylint: disable=g-import-not-at-top

    diff += [
      f"codec.{k}: stored {meta['codec'].get(k)!r}, config {codec_id.get(k)!r}"
      for k in codec_lib.IDENTITY_KEYS
      if meta["codec"].get(k) != codec_id.get(k)
    ]
  if diff:
    return (
      f"the latents in {path} were made with other settings than this config's ("
      + "; ".join(diff)
      + "): encode them again with `pippo-data encode-latents` and this config, or set "
      "data.latents=False"
    )
  return None


def datasets(data_dir: str, out_dir: str) -> list[tuple[str, str, str]]:
  """(label, source directory, output directory) of each dataset under `data_dir`: itself if it
  holds an index, else its `captures/` and `images/` that do."""
  if os.path.exists(os.path.join(data_dir, writer.INDEX_FILE)):
    return [(os.path.basename(data_dir.rstrip("/")) or data_dir, data_dir, out_dir)]
  found = [
    (kind, os.path.join(data_dir, kind), os.path.join(out_dir, kind))
    for kind in KINDS
    if os.path.exists(os.path.join(data_dir, kind, writer.INDEX_FILE))
  ]
  if not found:
    raise FileNotFoundError(
      f"{data_dir} holds no pippo dataset: no {writer.INDEX_FILE} in it or in its "
      f"{' or '.join(KINDS)} folders (write one with `pippo-data synth --out DIR`)"
    )
  return found


class _Encoder:
  """`make_record` of `writer.write_split`: index -> the record with its latents added.

  Records are read and cropped in order until `batch` views are pending, which then go through
  the codec together (`batch` views per call; the last call of a group is padded to a power of
  two, so at most log2(batch) + 1 shapes are compiled).
  """

  def __init__(self, src, crop, codec, batch: int, dtype: str, stream):
    import jax  # pylint: disable=g-import-not-at-top

    self.src, self.crop, self.codec, self.batch, self.stream = src, crop, codec, batch, stream
    self.kind = "image" if src.kind == "image" else "capture"
    self.encode = jax.jit(lambda c, x: c.encode_moments(x).astype(dtype))
    self.ready: dict[int, bytes] = {}
    self.corrupt = 0
    self.encoded = 0

  def __call__(self, index: int) -> bytes:
    if index not in self.ready:
      self._fill(index)
    return self.ready.pop(index)

  def _views(self, element: dict):
    """(crops, boxes, encoded cropped masks or None) of a record; RecordError if it is bad."""
    where = element["where"]
    rec = transforms.decode(element, self.kind)
    if "latents" in rec:
      raise schemas.RecordError(f"{where}: already holds latents")
    if self.kind == "image":
      image, box = transforms.crop_image(transforms.decode_photo(rec, where), rec, self.crop)
      return [image], [box], None
    from pippo_jax.data_pipelines import multiview  # pylint: disable=g-import-not-at-top

    crops = [
      multiview.crop_view(*multiview.decode_view(rec, cam, where), self.crop)
      for cam in range(len(rec["images"]))
    ]
    images, masks, boxes = zip(*crops)
    return list(images), list(boxes), [schemas.encode_image(m) for m in masks]

  def _fill(self, start: int) -> None:
    self.ready.clear()
    pending, images = [], []
    index = start
    while index < len(self.src) and (index == start or len(images) < self.batch):
      element = self.src[index]
      try:
        crops, boxes, masks = self._views(element)
        pending.append((index, element, len(crops), boxes, masks))
        images += crops
      except schemas.RecordError as e:
        self._skip(element, str(e))
        self.ready[index] = element.get("bytes", b"")
      index += 1
    if not images:
      return
    moments = self._encode(np.stack(images))
    at = 0
    for i, element, n, boxes, masks in pending:
      self.ready[i] = schemas.add_latents(
        element["bytes"], moments[at : at + n], np.stack(boxes), masks, element["where"]
      )
      at += n
    self.encoded += len(pending)

  def _encode(self, images: np.ndarray) -> np.ndarray:
    out = []
    for lo in range(0, len(images), self.batch):
      chunk = images[lo : lo + self.batch]
      size = min(self.batch, 2 ** math.ceil(math.log2(len(chunk))))
      padded = np.concatenate([chunk, np.zeros((size - len(chunk),) + chunk.shape[1:], np.uint8)])
      out.append(np.asarray(self.encode(self.codec, padded))[: len(chunk)])
    return np.concatenate(out)

  def _skip(self, element: dict, message: str) -> None:
    self.corrupt += 1
    if self.corrupt <= _LOG_FIRST or math.log10(self.corrupt).is_integer():
      print(
        f"skipping corrupt record {element['where']} ({self.corrupt} corrupt so far; copied "
        f"without latents): {message}",
        file=self.stream,
        flush=True,
      )


def encode_dataset(
  src_dir: str,
  out_dir: str,
  crop: transforms.CropSettings,
  codec,
  codec_id: dict[str, Any],
  *,
  batch: int = 16,
  dtype: str = "float16",
  max_shards: int | None = None,
  label: str = "",
  stream=None,
) -> list[dict[str, Any]]:
  """Writes `src_dir`'s splits with latents to `out_dir` (see the module docstring).

  Args:
    src_dir: a dataset directory (`index.json` and shards).
    out_dir: where the copy with latents goes; a re-run resumes it (it must have been started
      with the same settings).
    crop: the transforms' crop settings (`CropSettings.from_config(config.data)`).
    codec: a `models.codec` codec; `encode_moments` is what is stored.
    codec_id: `models.codec.identity` of its config (recorded in the index).
    batch: views per codec call.
    dtype: stored dtype, one of DTYPES.
    max_shards: stop after writing this many shards (over all splits); None: all.
    label: names the dataset in progress lines.
    stream: where progress and corrupt records are reported (default stderr).

  Returns:
    Per split: {split, entry (its index entry), new_shards (written by this call), corrupt and
    encoded (records, this call), seconds, rate (records/s)}.
  """
  stream = stream or sys.stderr
  if dtype not in DTYPES:
    raise ValueError(f"dtype={dtype!r}: use one of {DTYPES}")
  if batch < 1:
    raise ValueError(f"batch={batch} must be >= 1")
  if os.path.realpath(src_dir) == os.path.realpath(out_dir):
    raise ValueError(f"--out {out_dir} is the source dataset: write the latents elsewhere")
  index = writer.read_index(src_dir)
  results = []
  for split, src_entry in index["splits"].items():
    if src_entry["settings"]["meta"].get(META_KEY) is not None:
      raise writer.DatasetError(
        f"{src_dir} split {split!r} already holds latents: encode the original dataset"
      )
    src = sources.ArrayRecordSource(src_dir, split)
    if not src.complete:
      raise writer.DatasetError(
        f"{src_dir} split {split!r} is incomplete: finish writing it first ({writer.REWRITE_HINT})"
      )
    settings = src_entry["settings"]
    per_shard = settings.get("records_per_shard") or max(s["count"] for s in src_entry["shards"])
    meta = {
      META_KEY: {
        "codec": codec_id,
        "crop": crop.to_json(),
        "dtype": dtype,
        "moment_channels": int(codec.moment_channels),
      },
      "source": {"settings": settings},
    }
    encoder = _Encoder(src, crop, codec, batch, dtype, stream)
    name = f"{label}/{split}" if label else split
    progress = writer.Progress(name, len(src), stream=stream)
    start, before = time.perf_counter(), writer.intact_shards(out_dir, split)
    entry = writer.write_split(
      out_dir,
      split,
      index["kind"],
      len(src),
      encoder,
      per_shard,
      meta,
      progress,
      max_shards=max_shards,
    )
    seconds = time.perf_counter() - start
    done = encoder.encoded + encoder.corrupt
    new_shards = len(entry["shards"]) - before
    results.append(
      dict(
        split=split,
        entry=entry,
        new_shards=new_shards,
        corrupt=encoder.corrupt,
        encoded=encoder.encoded,
        seconds=seconds,
        rate=done / max(seconds, 1e-9),
      )
    )
    if max_shards is not None:
      max_shards = max(0, max_shards - new_shards)
  return results
