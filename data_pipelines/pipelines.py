"""Grain input pipelines for P1 (images) and M2/P3 (multi-view captures).

    source (ArrayRecord / tfds / synthesized; random access)
      -> shuffle(seed)                   global, a new order per epoch
      -> repeat(num_epochs)              one endless stream of epochs
      -> map_with_index(transform)       rng from (seed, stream position)
      -> [process_index::process_count]  this host's share of the stream
      -> to_iter_dataset -> mp_prefetch(worker_count)
      -> skip corrupt / filtered (main process: count, log, threshold)
      -> batch(batch_size / process_count)

Guarantees:
* Every process reads every `process_count`-th element of the same shuffled
  stream, so within each epoch every record goes to exactly one process, for
  any process count, and all processes produce the same number of batches (an
  epoch boundary may fall inside a batch).
* An example depends only on (seed, its stream position): batches are the same
  with 0 or N workers and differ across epochs.
* The shuffle is Grain's index shuffle (a keyed bijection of [0, n)); it never
  materialises the index, so a source of 10^9 records costs no memory and the
  first batch arrives as fast as for a small one. It supports n <= 2^32.
  Below `SMALL_SOURCE` records it is a NumPy permutation per epoch instead:
  Grain's bijection costs ~7 ms per index for a handful of records (35 us at
  10^3, 5 us at 10^6), which was half the input pipeline's CPU time in the
  smoke run (3 captures).
* The iterator's state (`get_state`/`set_state`, or `save_state`/
  `restore_state` below as JSON bytes) restores exactly the batches that would
  have followed; it includes the skip counters.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import grain
import numpy as np

from pippo_jax.data_pipelines import sources, transforms
from pippo_jax.errors import ConfigError, CorruptDataError

_KINDS = {"image": "image", "multiview": "capture"}
_LOG_FIRST = 20


class _Example:
  """map_with_index body: epoch and rng from the stream position."""

  def __init__(self, transform, seed: int, epoch_length: int):
    self.transform, self.seed, self.epoch_length = transform, seed, epoch_length

  def __call__(self, position: int, element: dict) -> dict:
    rng = np.random.default_rng([self.seed, position])
    out = self.transform(element, rng)
    out["record_index"] = np.int64(element["record_index"])
    out["epoch"] = np.int64(position // self.epoch_length)
    return out


SMALL_SOURCE = 2**16


class _PermutedEpochs(grain.MapDataset):
  """A global shuffle of a small source: epoch e is `default_rng([seed, e]).permutation(n)`
  (kept for the epoch being read), like Grain's shuffle a new order per epoch."""

  def __init__(self, parent: grain.MapDataset, seed: int):
    super().__init__(parent)
    self._seed, self._order = seed, (None, None)

  def __len__(self) -> int:
    return len(self._parent)

  def __str__(self) -> str:
    return f"_PermutedEpochs(seed={self._seed})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, i = divmod(index, len(self._parent))
    cached, order = self._order  # one read: reader threads may replace it meanwhile
    if cached != epoch:
      order = np.random.default_rng([self._seed, epoch]).permutation(len(self._parent))
      self._order = (epoch, order)
    return self._parent[int(order[i]) + epoch * len(self._parent)]


def _shuffle(ds: grain.MapDataset, seed: int) -> grain.MapDataset:
  return _PermutedEpochs(ds, seed) if len(ds) < SMALL_SOURCE else ds.shuffle(seed=seed)


class _SkipIterator(grain.DatasetIterator):
  """Drops skip markers; counts them; fails past the corrupt threshold.

  The corrupt fraction is checked after every record from the
  `min(corrupt_min_records, epoch_records)`-th record read on (see
  `data_pipelines.config`).
  """

  def __init__(self, parent, threshold: float, min_records: int, epoch_records: int):
    super().__init__(parent)
    self.threshold = threshold
    self.min_records = min(min_records, epoch_records)
    # Nothing emitted after a whole host epoch (at least 1000, at most 10^4
    # records): the filters or the data are wrong; stop instead of spinning.
    self.give_up = min(max(epoch_records, 1000), 10000)
    self.counts = {"seen": 0, "corrupt": 0, "filtered": 0, "emitted": 0}
    self.last_corrupt = ""

  def __next__(self):
    c = self.counts
    while True:
      ex = next(self._parent)
      c["seen"] += 1
      reason = ex.get("_skip")
      if reason is not None:
        c[reason] += 1
      if reason == "corrupt":
        self.last_corrupt = f"{ex['_where']}: {ex['_message']}"
        if c["corrupt"] <= _LOG_FIRST or math.log10(c["corrupt"]).is_integer():
          logging.warning(
            "skipping corrupt record %s (%d corrupt of %d seen): %s",
            ex["_where"],
            c["corrupt"],
            c["seen"],
            ex["_message"],
          )
      fraction = c["corrupt"] / c["seen"]
      if c["seen"] >= self.min_records and fraction > self.threshold:
        raise CorruptDataError(
          f"{c['corrupt']} of {c['seen']} records read were corrupt "
          f"({fraction:.1%} > data.corrupt_threshold={self.threshold:.1%}); "
          f"last: {self.last_corrupt}. Check the dataset with "
          "`pippo-data stats DIR --all` or raise data.corrupt_threshold."
        )
      if reason is None:
        c["emitted"] += 1
        return ex
      if c["emitted"] == 0 and c["seen"] >= self.give_up:
        raise CorruptDataError(
          f"none of the first {c['seen']} records passed (corrupt: "
          f"{c['corrupt']}, filtered: {c['filtered']}; last: {ex['_message']}); "
          "check data.filters and the dataset"
        )

  def get_state(self) -> dict[str, Any]:
    return {
      "parent": self._parent.get_state(),
      "counts": dict(self.counts),
      "last_corrupt": self.last_corrupt,
    }

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self.counts = dict(state["counts"])
    self.last_corrupt = state.get("last_corrupt", "")


class _SkipDataset(grain.IterDataset):
  def __init__(self, parent, **kwargs):
    super().__init__(parent)
    self._kwargs = kwargs

  def __iter__(self):
    return _SkipIterator(self._parent.__iter__(), **self._kwargs)


def make_transform(cfg):
  if cfg.kind == "image":
    return transforms.ImageTransform(cfg)
  if cfg.kind == "multiview":
    from pippo_jax.data_pipelines import multiview  # pylint: disable=g-import-not-at-top

    return multiview.MultiviewTransform(cfg)
  raise ValueError(f"unknown data.kind {cfg.kind!r}: use 'image' or 'multiview'")


def _process_layout(process_index, process_count):
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count})")
  return process_index, process_count


def build_dataset(
  cfg,
  *,
  process_index: int | None = None,
  process_count: int | None = None,
  source=None,
  batch: bool = True,
) -> grain.IterDataset:
  """The pipeline of one process for the `data` config section `cfg`.

  Args:
    cfg: the data section (`data_pipelines.config.default_data_config`).
    process_index, process_count: this process's place; default: JAX's.
    source: a random-access source overriding `cfg.source`.
    batch: False yields single examples (for inspection).
  """
  process_index, process_count = _process_layout(process_index, process_count)
  source = source if source is not None else sources.open_source(cfg)
  want = _KINDS.get(cfg.kind)
  if getattr(source, "kind", want) != want:
    raise ValueError(
      f"data.kind={cfg.kind!r} needs {want} records but {source!r} holds {source.kind} records"
    )
  n = len(source)
  if n == 0:
    raise ValueError(f"{source!r} is empty")
  if cfg.shuffle and n > 2**32:
    raise ValueError(
      f"{source!r} has {n} records; the global shuffle supports "
      "at most 2^32 per source: split it into several sources"
    )
  if cfg.batch_size % process_count:
    raise ValueError(
      f"data.batch_size={cfg.batch_size} is not divisible by the process count {process_count}"
    )
  if cfg.get("latents", False):
    from pippo_jax.data_pipelines import latents  # pylint: disable=g-import-not-at-top

    if not isinstance(source, sources.ArrayRecordSource):
      raise ValueError(
        f"data.latents=True reads a dataset written by `pippo-data encode-latents`, not {source!r}"
      )
    problem = latents.problem(cfg, source=source)
    if problem is not None:
      raise ConfigError(problem)
  ds = grain.MapDataset.source(source)
  if cfg.shuffle:
    ds = _shuffle(ds, int(cfg.seed))
  ds = ds.repeat(cfg.num_epochs)
  ds = ds.map_with_index(_Example(make_transform(cfg), int(cfg.seed), n))
  ds = ds[process_index::process_count]
  it = ds.to_iter_dataset(
    grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=cfg.read_buffer)
  )
  if cfg.worker_count > 0:
    it = it.mp_prefetch(
      grain.MultiprocessingOptions(
        num_workers=cfg.worker_count, per_worker_buffer_size=cfg.worker_buffer_size
      )
    )
  # This process's share of one epoch: every process_count-th record.
  epoch_records = len(range(process_index, n, process_count))
  it = _SkipDataset(
    it,
    threshold=float(cfg.corrupt_threshold),
    min_records=int(cfg.corrupt_min_records),
    epoch_records=epoch_records,
  )
  if batch:
    it = it.batch(cfg.batch_size // process_count, drop_remainder=bool(cfg.drop_remainder))
  return it


def make_iterator(cfg, **kwargs) -> grain.DatasetIterator:
  """`iter(build_dataset(cfg, **kwargs))`: yields NumPy batch dicts."""
  return iter(build_dataset(cfg, **kwargs))


def skip_counts(iterator) -> dict[str, int]:
  """{seen, corrupt, filtered, emitted} of a pipeline iterator."""
  todo = [iterator]
  while todo:
    node = todo.pop()
    if isinstance(node, _SkipIterator):
      return dict(node.counts)
    todo.extend(getattr(node, "_parents", ()))
  raise ValueError("not a data_pipelines iterator")


def save_state(iterator) -> bytes:
  return json.dumps(iterator.get_state()).encode()


def restore_state(iterator, state: bytes) -> None:
  iterator.set_state(json.loads(state))
