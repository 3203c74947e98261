"""Grain pipelines: determinism, epochs, multi-process coverage, state, filters,
corrupt records."""

import logging
import shutil

import grain
import numpy as np
import pytest
from data_helpers import data_config

from pippo_jax.data_pipelines import pipelines, schemas, sources, transforms, writer

NO_FILTERS = dict(
  min_detection_confidence=0.0,
  min_person_size=0.0,
  min_visibility=0.0,
  min_quality=0.0,
  require_face=False,
)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _p1(studio, path=None, **kw):
  cfg = data_config("p1", path or studio / "images", **kw)
  cfg.filters = NO_FILTERS
  return cfg


def test_p1_batch_keys_shapes_dtypes(studio):
  cfg = data_config("p1", studio / "images", resolution=32)
  batch = next(pipelines.make_iterator(cfg, process_index=0, process_count=1))
  f = cfg.face_resolution
  expected = {
    "target_images": ((2, 1, 32, 32, 3), np.uint8),
    "ref_image": ((2, 32, 32, 3), np.uint8),
    "ref_face": ((2, f, f, 3), np.uint8),
    "ref_face_valid": ((2,), np.bool_),
    "record_index": ((2,), np.int64),
    "epoch": ((2,), np.int64),
  }
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected


def test_same_seed_same_batches_and_epochs_differ(studio):
  cfg = _p1(studio)
  n = len(sources.ArrayRecordSource(cfg.path))
  a = _take(pipelines.make_iterator(cfg, process_index=0, process_count=1), n)
  b = _take(pipelines.make_iterator(cfg, process_index=0, process_count=1), n)
  assert all(_same(x, y) for x, y in zip(a, b))
  examples = [{k: v[i] for k, v in batch.items()} for batch in a for i in range(2)]
  by_epoch = {0: [], 1: []}
  for ex in examples:
    by_epoch[int(ex["epoch"])].append(ex)
  order = {e: [int(x["record_index"]) for x in xs] for e, xs in by_epoch.items()}
  assert sorted(order[0]) == list(range(n)) and sorted(order[1]) == list(range(n))
  assert order[0] != order[1]  # a new permutation per epoch
  # The reference crop is re-augmented each epoch; the target is not.
  first = {int(x["record_index"]): x for x in by_epoch[0]}
  changed = [
    not np.array_equal(x["ref_image"], first[int(x["record_index"])]["ref_image"])
    for x in by_epoch[1]
  ]
  assert np.mean(changed) > 0.8
  for x in by_epoch[1]:
    np.testing.assert_array_equal(
      x["target_images"], first[int(x["record_index"])]["target_images"]
    )
  cfg.seed = 1
  c = _take(pipelines.make_iterator(cfg, process_index=0, process_count=1), 4)
  assert not all(_same(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_cover_each_example_once_per_epoch(studio, processes):
  cfg = _p1(studio, batch_size=2 * processes)
  n = len(sources.ArrayRecordSource(cfg.path))
  seen = {0: [], 1: []}
  per_host = []
  for p in range(processes):
    it = pipelines.make_iterator(cfg, process_index=p, process_count=processes)
    count = 0
    while True:
      batch = next(it)
      count += 1
      for r, e in zip(batch["record_index"], batch["epoch"]):
        if e < 2:
          seen[int(e)].append(int(r))
      if batch["epoch"].min() >= 2:
        break
    per_host.append(count)
  for epoch in (0, 1):
    assert sorted(seen[epoch]) == list(range(n)), epoch
  # Hosts advance in lock step: the same number of batches per epoch (+-1).
  assert max(per_host) - min(per_host) <= 1


def test_restored_iterator_yields_the_following_batches(studio):
  cfg = _p1(studio)
  it = pipelines.make_iterator(cfg, process_index=1, process_count=2)
  _take(it, 3)
  state = pipelines.save_state(it)
  expected = _take(it, 5)
  restored = pipelines.make_iterator(cfg, process_index=1, process_count=2)
  pipelines.restore_state(restored, state)
  assert all(_same(x, y) for x, y in zip(expected, _take(restored, 5)))


@pytest.mark.slow
def test_two_workers_give_the_same_batches_and_restore(studio):
  cfg = _p1(studio)
  reference = _take(pipelines.make_iterator(cfg, process_index=0, process_count=1), 8)
  cfg.worker_count = 2
  it = pipelines.make_iterator(cfg, process_index=0, process_count=1)
  got = _take(it, 4)
  state = pipelines.save_state(it)
  it.close()
  assert all(_same(x, y) for x, y in zip(reference[:4], got))
  restored = pipelines.make_iterator(cfg, process_index=0, process_count=1)
  pipelines.restore_state(restored, state)
  assert all(_same(x, y) for x, y in zip(reference[4:], _take(restored, 4)))
  restored.close()


def test_filters_drop_what_they_should(studio):
  cfg = data_config("p1", studio / "images")
  cfg.filters.min_detection_confidence = 0.6
  cfg.filters.min_quality = 0.4
  cfg.filters.require_face = True
  src = sources.ArrayRecordSource(cfg.path)
  records = [schemas.decode_image_record(src[i]["bytes"]) for i in range(len(src))]
  keep = {
    i
    for i, r in enumerate(records)
    if r["detection_confidence"] >= 0.6
    and r["quality"] >= 0.4
    and r["face_box"][2] > 0
    and r["visibility"] >= 0.5
    and r["person_box"][3] / r["height"] >= 0.2
  }
  assert 0 < len(keep) < len(src)
  it = pipelines.make_iterator(cfg, process_index=0, process_count=1, batch=False)
  emitted = []
  while pipelines.skip_counts(it)["seen"] < len(src):
    ex = next(it)
    if ex["epoch"] == 0:
      emitted.append(int(ex["record_index"]))
  assert sorted(emitted) == sorted(keep)
  counts = pipelines.skip_counts(it)
  assert counts["filtered"] == len(src) - len(keep) and counts["corrupt"] == 0
  for i in keep:
    assert transforms.filter_reason(records[i], cfg.filters) is None


def _corrupt_copy(studio, tmp_path):
  d = tmp_path / "images"
  shutil.copytree(studio / "images", d)
  index = writer.read_index(str(d))
  shards = index["splits"]["train"]["shards"]
  # Flip bytes inside the third record of one shard (a damaged chunk) ...
  path = d / shards[0]["file"]
  data = bytearray(path.read_bytes())
  at = data.index(b"PPR1", data.index(b"PPR1", data.index(b"PPR1") + 1) + 1) + 100
  data[at : at + 64] = bytes(b ^ 0xFF for b in data[at : at + 64])
  path.write_bytes(bytes(data))
  # ... and cut another one short (it no longer opens).
  path = d / shards[-1]["file"]
  path.write_bytes(path.read_bytes()[:100])
  return d, shards


def test_corrupted_shards_are_survived_counted_and_logged(studio, tmp_path, caplog):
  d, shards = _corrupt_copy(studio, tmp_path)
  src = sources.ArrayRecordSource(str(d))
  bad = [i for i in range(len(src)) if "error" in src[i]]
  last = shards[-1]
  assert set(range(last["start"], last["start"] + last["count"])) <= set(bad)
  assert any(i < shards[0]["count"] for i in bad)
  cfg = _p1(studio, path=str(d), corrupt_threshold=0.9)
  it = pipelines.make_iterator(cfg, process_index=0, process_count=1, batch=False)
  got = []
  with caplog.at_level(logging.WARNING):
    while pipelines.skip_counts(it)["seen"] < len(src):
      got.append(int(next(it)["record_index"]))
  counts = pipelines.skip_counts(it)
  assert counts["corrupt"] == len(bad)
  assert sorted(got) == sorted(set(range(len(src))) - set(bad))
  assert shards[-1]["file"] in caplog.text and "skipping corrupt record" in caplog.text
  assert (
    f"{shards[-1]['file']}: truncated, 100 bytes on disk but index.json lists {shards[-1]['bytes']}"
  ) in caplog.text


def test_too_many_corrupt_records_fail_clearly(studio, tmp_path):
  d, _ = _corrupt_copy(studio, tmp_path)
  cfg = _p1(studio, path=str(d), corrupt_threshold=0.05, corrupt_min_records=10)
  it = pipelines.make_iterator(cfg, process_index=0, process_count=1)
  with pytest.raises(pipelines.CorruptDataError, match="corrupt_threshold"):
    _take(it, 100)


def test_corrupt_image_inside_a_valid_record(tmp_path, studio, caplog):
  src = sources.ArrayRecordSource(str(studio / "images"))

  def record(i):
    raw = src[i]["bytes"]
    if i in (3, 5):
      rec = schemas.decode_image_record(raw)
      rec["image"] = (
        rec["image"][:50]
        if i == 3  # truncated PNG
        else schemas.encode_image(np.zeros((1, 1, 3), np.uint8))
      )
      raw = schemas.encode_image_record(rec)
    return raw

  writer.write_split(str(tmp_path), "train", "image", 8, record, 4)
  cfg = _p1(studio, path=str(tmp_path), corrupt_threshold=0.5)
  it = pipelines.make_iterator(cfg, process_index=0, process_count=1, batch=False)
  with caplog.at_level(logging.WARNING):
    got = {int(next(it)["record_index"]) for _ in range(6)}
  assert got == {0, 1, 2, 4, 6, 7}
  assert pipelines.skip_counts(it)["corrupt"] == 2
  assert (
    "image of train-00001-of-00002.array_record#1: 1x1 pixels, too "
    "small (both sides must be at least schemas.MIN_IMAGE_SIDE=16 px)"
  ) in caplog.text


class _SomeCorrupt:
  """32 px image records; those in `bad` are unreadable."""

  kind = "image"

  def __init__(self, n, bad):
    self.records, self.bad = sources.IndexSynthesizedSource(n), set(bad)

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    if i in self.bad:
      return {"record_index": i, "where": f"x#{i}", "error": "damaged"}
    return self.records[i]


@pytest.mark.parametrize(
  "n, bad, process, processes, fails_at",
  [
    # Large: 5 corrupt records first, no failure before 50 were read.
    (1000, range(5), 0, 1, 50),
    # Smaller than corrupt_min_records: checked once a whole epoch was read.
    (3, [0], 0, 1, 3),
    (5, [1], 1, 2, 2),  # process 1 of 2 reads records 1 and 3 per epoch
  ],
)
def test_corrupt_fraction_counts_after_min_records_or_one_epoch(
  n, bad, process, processes, fails_at
):
  cfg = data_config(
    "p1",
    "",
    shuffle=False,
    filters=NO_FILTERS,
    corrupt_threshold=0.01,
    corrupt_min_records=50 if n > 50 else 200,
  )
  it = pipelines.make_iterator(
    cfg, process_index=process, process_count=processes, batch=False, source=_SomeCorrupt(n, bad)
  )
  emitted = 0
  with pytest.raises(pipelines.CorruptDataError) as e:
    for _ in range(2 * n):
      next(it)
      emitted += 1
  corrupt = len(bad)
  assert pipelines.skip_counts(it)["seen"] == fails_at
  assert emitted == fails_at - corrupt - 1  # the last one read was good
  assert str(e.value).startswith(
    f"{corrupt} of {fails_at} records read were corrupt "
    f"({corrupt / fails_at:.1%} > data.corrupt_threshold=1.0%); last: "
    f"x#{max(bad)}: x#{max(bad)}: unreadable record (damaged)"
  )


def test_config_errors_are_clear(studio):
  cfg = data_config("p3", studio / "images")
  with pytest.raises(ValueError, match="needs capture records"):
    pipelines.make_iterator(cfg, process_index=0, process_count=1)
  cfg = data_config("p1", studio / "images", batch_size=3)
  with pytest.raises(ValueError, match="not divisible by the process count 2"):
    pipelines.make_iterator(cfg, process_index=0, process_count=2)
  cfg = data_config("p1", "")
  with pytest.raises(ValueError, match="data.path is empty"):
    pipelines.make_iterator(cfg, process_index=0, process_count=1)


@pytest.mark.parametrize("n", [5, pipelines.SMALL_SOURCE])
def test_small_and_large_sources_shuffle_every_epoch(n):
  """Below SMALL_SOURCE records the shuffle is a permutation per epoch, above it Grain's index
  shuffle: both give every record once per epoch, a new order each epoch, the same for a seed."""
  ds = pipelines._shuffle(grain.MapDataset.source(list(range(n))), 3)
  assert isinstance(ds, pipelines._PermutedEpochs) == (n < pipelines.SMALL_SOURCE)
  epochs = [[ds[e * n + i] for i in range(n)] for e in range(2)]
  assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(n))
  assert epochs[0] != epochs[1] and epochs[0] != list(range(n))
  again = pipelines._shuffle(grain.MapDataset.source(list(range(n))), 3)
  assert [again[n + i] for i in range(n)] == epochs[1]
