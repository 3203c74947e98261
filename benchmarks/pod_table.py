r"""The README's pod table: every stage config compiled for every pod with `pippo-compile`.

  python benchmarks/pod_table.py [--only SUBSTRING] [--print]

Each row is one config on one pod (training step and sampler step), compiled by `pippo-compile`
in its own process and kept as JSON under `benchmarks/pod_table/` with the command, the date and
this host's CPU. A row already there is not compiled again (delete its file to redo it), so the
matrix, hours of compiling on a small host, can be filled in over several runs. `--print` only
renders the Markdown table from the files that exist.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pod_table")
# v5p: 95 GiB HBM, 459 TFLOP/s bf16; v6e: 32 GiB, 918 TFLOP/s (pippo_jax.parallel.aot.CHIPS).
PODS = {  # name: (--topology, --slices, chips)
  "v5p-64": ("v5p-64", 1, 32),
  "v5p-256": ("v5p-256", 1, 128),
  "v6e-256": ("v6e-256", 1, 256),
  "2 x v5p-256": ("v5p-256", 2, 256),
}
CONFIGS = {  # name: (config spec, the pod it was first compiled for, seq axis)
  "M2@128, 48 views": ("configs/m2_midtrain.py:views=48", "v5p-64", 1),
  "P1@512": ("configs/p1_pretrain.py:res=512", "v5p-64", 1),
  "P3@512, 12 views": ("configs/p3_posttrain.py:res=512,views=12", "v5p-256", 1),
  "P3@1K, 12 views": ("configs/p3_posttrain.py:res=1024,views=12", "2 x v5p-256", 4),
  "P3@1K, 4 views": ("configs/p3_posttrain.py:res=1024,views=4", "v6e-256", 1),
}


def mesh(chips: int, slices: int, seq: int) -> str:
  """FSDP over a slice's chips (data parallel across slices), with a `seq` axis if asked."""
  parts = [f"data={slices}"] if slices > 1 else []
  parts.append(f"fsdp={chips // slices // seq}")
  if seq > 1:
    parts.append(f"seq={seq}")
  return ",".join(parts)


def slug(config: str, pod: str) -> str:
  keep = "".join(c if c.isalnum() else "_" for c in f"{config}__{pod}")
  return "_".join(filter(None, keep.split("_")))


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def command(config: str, pod: str, json_path: str) -> list[str]:
  spec, _, seq = CONFIGS[config]
  topology, slices, chips = PODS[pod]
  cmd = [
    "pippo-compile",
    f"--config={spec}",
    "--config.model.dtype=bfloat16",
    f"--topology={topology}",
    f"--mesh={mesh(chips, slices, seq)}",
    "--what=both",
    f"--json={json_path}",
  ]
  if slices > 1:
    cmd.append(f"--slices={slices}")
  return cmd


def compile_row(config: str, pod: str) -> bool:
  path = os.path.join(OUT, slug(config, pod) + ".json")
  tmp = path + ".partial"
  cmd = command(config, pod, tmp)
  print(f"== {config} on {pod}: {' '.join(cmd)}", flush=True)
  start = time.perf_counter()
  proc = subprocess.run(cmd, check=False)
  if not os.path.exists(tmp):
    print(f"== {config} on {pod}: pippo-compile exited {proc.returncode}, no results", flush=True)
    return False
  with open(tmp) as f:
    results = json.load(f)
  os.remove(tmp)
  record = dict(
    config=config,
    pod=pod,
    command=cmd,
    returncode=proc.returncode,
    date=datetime.date.today().isoformat(),
    host=f"{cpu_name()}, {os.cpu_count()} cores",
    seconds=round(time.perf_counter() - start),
    results=results,
  )
  with open(path, "w") as f:
    json.dump(record, f, indent=1)
  return True


def table() -> str:
  lines = [
    "| config | pod | step | mesh | batch | GiB / chip (args + temp) | of HBM | "
    "TFLOP / chip: compiled, model | GB / chip | est. s (bound) | est. MFU | collectives | "
    "compile s |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for config in CONFIGS:
    for pod, (_, _, chips) in PODS.items():
      path = os.path.join(OUT, slug(config, pod) + ".json")
      if not os.path.exists(path):
        continue
      with open(path) as f:
        record = json.load(f)
      for r in record["results"]:
        coll = ", ".join(f"{k} {v}" for k, v in r["collectives"].items()) or "none"
        gib = lambda n: f"{n / 2**30:.2f}"  # noqa: E731
        lines.append(
          f"| {config} | {pod} ({chips} chips) | {r['what']} | {r['mesh_text']} | {r['batch']} | "
          f"{gib(r['total_bytes'])} ({gib(r['argument_bytes'])} + {gib(r['temp_bytes'])}) | "
          f"{r['total_bytes'] / r['hbm_bytes']:.1%}{'' if r['fits'] else ' (does not fit)'} | "
          f"{r['matmul_flops'] / 1e12:.2f}, {r['model_flops_per_chip'] / 1e12:.2f} | "
          f"{r['bytes_accessed'] / 1e9:.1f} | "
          f"{r['step_seconds']:.3f} ({r['bound']}) | {r['mfu']:.0%} | {coll} | "
          f"{r['compile_seconds']:.0f} |"
        )
  return "\n".join(lines)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", default="", help="Only rows whose 'CONFIG on POD' contains this.")
  parser.add_argument("--print", action="store_true", help="Only print the table.")
  args = parser.parse_args()
  os.makedirs(OUT, exist_ok=True)
  failed = []
  if not args.print:
    # Cheapest configs first; each config's first pod (in the README before this table) last.
    rows = sorted(
      ((c, p) for c in CONFIGS for p in PODS),
      key=lambda cp: (cp[1] == CONFIGS[cp[0]][1], list(CONFIGS).index(cp[0])),
    )
    for config, pod in rows:
      name = f"{config} on {pod}"
      done = os.path.exists(os.path.join(OUT, slug(config, pod) + ".json"))
      if done or args.only not in name:
        continue
      if not compile_row(config, pod):
        failed.append(name)
  print(table())
  for name in failed:
    print(f"failed: {name}", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
