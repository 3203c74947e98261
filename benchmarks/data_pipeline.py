"""Input-pipeline throughput next to the model's consumption rate.

  python benchmarks/data_pipeline.py                 # 128 and 512 px, 0 and 2 workers
  python benchmarks/data_pipeline.py --resolutions 128 --workers 0 --examples 20

Renders (once, cached under --data-dir) a synthetic studio per resolution,
then times every pipeline (P1 images; M2 and P3 with 4 target views +
reference) with batch 1, the unit one training step of the tiny model
consumes. "startup" is the time to the first example (worker processes
included); "ex/s" is measured after it. The consumption rate is 1 / step time
of the tiny P3@128 training step (batch 1, 4 views + reference): 2.5 s on this
2-core CPU (`benchmarks/model_step.py`, `--step-seconds` to change). The
pipeline keeps up when its rate exceeds the consumption rate ("headroom" > 1).

Also prints the studio's render time for many views at 128 px and the
billion-record check: first-batch time and memory growth of host 255 of 256
reading a 10^9-record source through the same slicing and global shuffle.
"""

import argparse
import io
import os
import time

import psutil
from absl import flags

from pippo_jax.data_pipelines import config, pipelines, sources, synthetic_studio


def _studio(data_dir, resolution):
  out = os.path.join(data_dir, f"studio_{resolution}")
  settings = synthetic_studio.StudioSettings(
    seed=0,
    subjects=8,
    cameras=24,
    resolution=resolution,
    images_per_subject=16,
    records_per_shard=64,
  )
  synthetic_studio.write_studio(out, settings, progress_stream=io.StringIO())
  return out


def _render_time(views):
  K, E, _ = synthetic_studio.dome_cameras(views, 128, 0)
  synthetic_studio.render_capture_views(0, 0, 0, K, E, 128)  # warm-up
  start = time.perf_counter()
  synthetic_studio.render_capture_views(0, 1, 0, K, E, 128)
  return time.perf_counter() - start


def _throughput(cfg, examples):
  start = time.perf_counter()
  it = pipelines.make_iterator(cfg, process_index=0, process_count=1)
  next(it)
  startup = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(examples):
    next(it)
  rate = examples / (time.perf_counter() - start)
  if hasattr(it, "close"):
    it.close()
  return startup, rate


def _billion():
  cfg = config.default_data_config("p1", 128)
  cfg.source, cfg.batch_size = "synthetic_index", 256 * 8
  proc = psutil.Process()
  before = proc.memory_info().rss
  start = time.perf_counter()
  it = pipelines.make_iterator(
    cfg, process_index=255, process_count=256, source=sources.IndexSynthesizedSource(10**9)
  )
  next(it)
  first = time.perf_counter() - start
  for _ in range(50):
    next(it)
  return first, (proc.memory_info().rss - before) / 2**20


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--data-dir", default="/tmp/pippo_data_bench")
  p.add_argument("--resolutions", default="128,512")
  p.add_argument("--workers", default="0,2")
  p.add_argument("--stages", default="p1,m2,p3")
  p.add_argument("--examples", type=int, default=30)
  p.add_argument("--render-views", type=int, default=256)
  p.add_argument(
    "--step-seconds",
    type=float,
    default=2.5,
    help="tiny P3@128 training step, batch 1 (4 views + ref)",
  )
  args = p.parse_args()
  flags.FLAGS.mark_as_parsed()

  seconds = _render_time(args.render_views)
  print(
    f"studio render: {args.render_views} views at 128 px in {seconds:.2f} s "
    f"({args.render_views / seconds:.0f} views/s)"
  )
  first, growth = _billion()
  print(
    f"10^9 records, host 255 of 256: first batch (8 examples) in {first:.3f} s, "
    f"RSS growth after 51 batches {growth:.1f} MiB"
  )
  consume = 1.0 / args.step_seconds
  print(f"model consumption: {consume:.2f} ex/s (one batch-1 step per {args.step_seconds} s)\n")
  print(f"{'pipeline':<10}{'res':>5}{'workers':>8}{'startup s':>11}{'ex/s':>8}{'headroom':>10}")
  for res in (int(r) for r in args.resolutions.split(",")):
    data = _studio(args.data_dir, res)
    for stage in args.stages.split(","):
      kind = "images" if stage == "p1" else "captures"
      for workers in (int(w) for w in args.workers.split(",")):
        cfg = config.default_data_config(stage, res, 4)
        cfg.path, cfg.batch_size, cfg.worker_count = os.path.join(data, kind), 1, workers
        startup, rate = _throughput(cfg, args.examples)
        print(
          f"{stage.upper():<10}{res:>5}{workers:>8}{startup:>11.2f}{rate:>8.1f}"
          f"{rate / consume:>9.0f}x",
          flush=True,
        )


if __name__ == "__main__":
  main()
