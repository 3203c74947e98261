"""10^9 records through the real slicing and global shuffle, 256 simulated hosts."""

import time

import psutil

from pippo_jax.data_pipelines import config, pipelines, sources

BILLION = 10**9
HOSTS = 256


def _cfg(batch_per_host=4):
  cfg = config.default_data_config("p1", 32)
  cfg.source = "synthetic_index"
  cfg.batch_size = HOSTS * batch_per_host
  cfg.filters = dict(
    min_detection_confidence=0.0,
    min_person_size=0.0,
    min_visibility=0.0,
    min_quality=0.0,
    require_face=False,
  )
  return cfg


def test_hosts_read_disjoint_slices_of_one_global_shuffle():
  cfg = _cfg()
  src = sources.IndexSynthesizedSource(BILLION)
  single = pipelines.make_iterator(cfg, process_index=0, process_count=1, source=src, batch=False)
  stream = [int(next(single)["record_index"]) for _ in range(HOSTS * 2)]
  assert len(set(stream)) == len(stream)
  # Spread over the whole index range: the shuffle is global, not local.
  assert max(stream) > 0.9 * BILLION and min(stream) < 0.1 * BILLION
  starts = []
  for host in range(HOSTS):
    it = pipelines.make_iterator(
      cfg, process_index=host, process_count=HOSTS, source=src, batch=False
    )
    got = [int(next(it)["record_index"]) for _ in range(2)]
    assert got == [stream[host], stream[host + HOSTS]]
    starts.append(got[0])
  assert len(set(starts)) == HOSTS


def test_first_batch_is_fast_and_memory_flat():
  proc = psutil.Process()
  cfg = _cfg()
  growth, first = {}, {}
  for n in (10**3, BILLION):
    src = sources.IndexSynthesizedSource(n)
    before = proc.memory_info().rss
    t0 = time.perf_counter()
    it = pipelines.make_iterator(cfg, process_index=HOSTS - 1, process_count=HOSTS, source=src)
    batch = next(it)
    first[n] = time.perf_counter() - t0
    for _ in range(20):
      batch = next(it)
    growth[n] = (proc.memory_info().rss - before) / 2**20
    assert batch["target_images"].shape == (4, 1, 32, 32, 3)
    assert batch["record_index"].max() < n
  print(f"first batch: {first}, RSS growth MiB: {growth}")
  # Nothing proportional to the source size is ever built (an int64 index of
  # 10^9 records would be 7.5 GiB).
  assert growth[BILLION] < growth[10**3] + 64
