r"""Run N pippo-train processes on this machine as one multi-process JAX job.

  python launch/local.py --num_processes 2 --devices_per_process 2 -- \
      --config configs/p3_posttrain.py:size=smoke --workdir /tmp/pippo_mp

Each process gets `--coordinator 127.0.0.1:PORT --num_processes N --process_id I` (a free port),
`JAX_PLATFORMS=cpu` and `XLA_FLAGS=--xla_force_host_platform_device_count=K`, so the N processes
form one mesh of N*K CPU devices talking over loopback (gloo collectives). This is how multi-host
code paths (per-process data slices, global arrays, multi-process checkpoints) are exercised on one
machine. Output lines are forwarded with a `[pI]` prefix. The launcher exits 0 when every process
does; when one fails, the others are killed (a survivor would wait forever in a collective) and the
launcher exits with the failing status. SIGTERM and SIGINT (Ctrl-C) to the launcher are sent on as
SIGTERM to every process: pippo-train saves a checkpoint at a step all processes agree on and stops.
Processes still running `--grace_s` seconds later (e.g. stuck in a collective whose peer died) are
killed with SIGKILL, as they are at once on a second signal.
"""

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def child_env(devices_per_process: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
  env["XLA_FLAGS"] = f"{flags.strip()} --xla_force_host_platform_device_count={devices_per_process}"
  env["PYTHONUNBUFFERED"] = "1"
  return env


def forward(stream, prefix: str, lock: threading.Lock) -> None:
  for line in iter(stream.readline, b""):
    with lock:
      sys.stdout.buffer.write(prefix.encode() + line)
      sys.stdout.buffer.flush()
  stream.close()


def kill(proc: subprocess.Popen) -> None:
  """SIGKILL a running child's process group (its Grain workers included)."""
  if proc.poll() is not None:
    return  # reaped: its id may belong to another process by now
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass


def launch(
  train_args,
  num_processes: int,
  devices_per_process: int,
  port: int = 0,
  python: str = sys.executable,
  grace_s: float = 120.0,
) -> int:
  """Start the processes, wait for them; returns 0 or the first failing exit status."""
  coordinator = f"127.0.0.1:{port or free_port()}"
  env, lock = child_env(devices_per_process), threading.Lock()
  procs, threads, relayed = [], [], []

  def relay(signum, _):  # SIGTERM / Ctrl-C: every process saves a checkpoint and stops
    if relayed:  # a second signal: stop now
      print(
        f"[launch] second {signal.Signals(signum).name}: killing the processes",
        file=sys.stderr,
        flush=True,
      )
      for proc in procs:
        kill(proc)
      return
    relayed.append(time.monotonic())
    for proc in procs:
      if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)

  previous = {s: signal.signal(s, relay) for s in (signal.SIGTERM, signal.SIGINT)}
  status = 0
  try:
    for i in range(num_processes):
      cmd = [
        python,
        "-m",
        "pippo_jax.cli.train",
        *train_args,
        f"--coordinator={coordinator}",
        f"--num_processes={num_processes}",
        f"--process_id={i}",
      ]
      proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
      )  # own group: Ctrl-C reaches us only
      procs.append(proc)
      threads.append(
        threading.Thread(target=forward, args=(proc.stdout, f"[p{i}] ", lock), daemon=True)
      )
      threads[-1].start()
    while any(p.poll() is None for p in procs):
      failed = [p for p in procs if p.returncode not in (None, 0)]
      if failed:  # the others would wait forever in a collective
        status = failed[0].returncode
        print(
          f"[launch] process {procs.index(failed[0])} exited with status {status}; "
          "killing the others",
          file=sys.stderr,
          flush=True,
        )
        break
      if relayed and time.monotonic() - relayed[0] > grace_s:
        status = 128 + signal.SIGKILL
        print(
          f"[launch] processes still running {grace_s:g} s after SIGTERM: killing them",
          file=sys.stderr,
          flush=True,
        )
        break
      time.sleep(0.1)
  finally:
    for proc in procs:
      kill(proc)
      proc.wait()
    for s, handler in previous.items():
      signal.signal(s, handler)
    for thread in threads:
      thread.join(timeout=5)
  status = status or next((p.returncode for p in procs if p.returncode), 0)
  return status if status >= 0 else 128 - status  # killed by signal S -> 128 + S


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n")[0],
    usage=(
      "%(prog)s [--num_processes N] [--devices_per_process K] [--port P] [--grace_s S] -- "
      "PIPPO_TRAIN_ARGS..."
    ),
  )
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=1)
  parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
  parser.add_argument(
    "--grace_s",
    type=float,
    default=120.0,
    help="seconds the processes get to save and exit after SIGTERM / Ctrl-C before they are killed",
  )
  parser.add_argument(
    "train_args", nargs=argparse.REMAINDER, help="arguments for pippo-train, after `--`"
  )
  args = parser.parse_args(argv)
  train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
  if args.num_processes < 1 or args.devices_per_process < 1:
    parser.error("--num_processes and --devices_per_process must be >= 1")
  if not train_args:
    parser.error("give the pippo-train arguments after `--` (at least --config and --workdir)")
  return launch(
    train_args, args.num_processes, args.devices_per_process, args.port, grace_s=args.grace_s
  )


if __name__ == "__main__":
  sys.exit(main())
