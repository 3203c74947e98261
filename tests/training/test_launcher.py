"""launch/local.py stops what it started: SIGTERM is forwarded, and processes that do not exit
within the grace period (stuck in a collective, ignoring the signal) are killed."""

import os
import pathlib
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
# A stand-in for `python -m pippo_jax.cli.train ...` that ignores SIGTERM, as a process blocked in
# a collective would appear to.
STUCK_CHILD = """#!/bin/sh
trap '' TERM
echo $$ >> "{pids}"
echo started
while true; do sleep 0.05; done
"""


def start_launcher(tmp_path, grace_s: float) -> tuple[subprocess.Popen, pathlib.Path]:
  pids, fake = tmp_path / "pids", tmp_path / "fake_python"
  fake.write_text(STUCK_CHILD.format(pids=pids))
  fake.chmod(0o755)
  code = (
    "import sys; sys.path.insert(0, 'launch'); import local; "
    f"sys.exit(local.launch(['--workdir=x'], 2, 1, python={str(fake)!r}, grace_s={grace_s}))"
  )
  proc = subprocess.Popen(
    [sys.executable, "-c", code],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    start_new_session=True,
  )
  deadline = time.time() + 30
  while not (pids.exists() and len(pids.read_text().split()) == 2):
    assert time.time() < deadline and proc.poll() is None, "the children did not start"
    time.sleep(0.05)
  return proc, pids


def alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  return True


def stop(proc, signals, timeout) -> tuple[int, float, str]:
  start = time.monotonic()
  for s in signals:
    proc.send_signal(s)
    time.sleep(0.3)
  try:
    out, _ = proc.communicate(timeout=timeout)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  return proc.returncode, time.monotonic() - start, out.decode()


def test_children_ignoring_sigterm_are_killed_after_the_grace_period(tmp_path):
  proc, pids = start_launcher(tmp_path, grace_s=1.5)
  code, took, out = stop(proc, [signal.SIGTERM], timeout=30)
  assert code == 128 + signal.SIGKILL, out
  assert 1.5 <= took < 15, took
  assert "still running 1.5 s after SIGTERM: killing them" in out
  assert not any(alive(int(pid)) for pid in pids.read_text().split())


def test_a_second_signal_kills_at_once(tmp_path):
  proc, pids = start_launcher(tmp_path, grace_s=300)
  code, took, out = stop(proc, [signal.SIGINT, signal.SIGINT], timeout=30)
  assert code == 128 + signal.SIGKILL, out
  assert took < 15, took
  assert "second SIGINT: killing the processes" in out
  assert not any(alive(int(pid)) for pid in pids.read_text().split())
