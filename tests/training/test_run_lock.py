"""WORKDIR/run.lock: a live holder is named and refused; a stale lock is taken over."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from pippo_jax.training import run_lock


def write_lock(workdir, **fields):
  record = {
    "host": socket.gethostname(),
    "pid": os.getpid(),
    "started": time.time(),
    "heartbeat": time.time(),
    **fields,
  }
  (workdir / run_lock.LOCK_FILE).write_text(json.dumps(record))
  return record


def dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_a_live_holder_is_refused_with_its_host_pid_and_start(tmp_path):
  first = run_lock.RunLock(str(tmp_path))
  first.acquire()
  try:
    with pytest.raises(run_lock.WorkdirBusyError) as e:
      run_lock.RunLock(str(tmp_path)).acquire()
    message = str(e.value)
    assert f"host {socket.gethostname()!r}, pid {os.getpid()}, started 20" in message
    assert str(tmp_path) in message
  finally:
    first.release()
  assert not (tmp_path / run_lock.LOCK_FILE).exists()
  second = run_lock.RunLock(str(tmp_path))  # free again
  second.acquire()
  second.release()


def test_a_holder_on_another_host_with_a_fresh_heartbeat_is_refused(tmp_path):
  write_lock(tmp_path, host="other-host", pid=1)
  with pytest.raises(run_lock.WorkdirBusyError, match="host 'other-host', pid 1"):
    run_lock.RunLock(str(tmp_path)).acquire()


@pytest.mark.parametrize(
  "fields, reason",
  [
    (dict(pid=None), "is gone"),  # killed run on this host
    (dict(host="other-host", heartbeat=time.time() - 2 * run_lock.STALE_S), "heartbeat is"),
  ],
)
def test_a_stale_lock_is_taken_over_with_a_note(tmp_path, capsys, fields, reason):
  if fields.get("pid", 0) is None:
    fields = dict(fields, pid=dead_pid())
  written = write_lock(tmp_path, **fields)
  assert reason in run_lock.stale_reason(written)
  lock = run_lock.RunLock(str(tmp_path))
  lock.acquire()
  try:
    assert f"taking over the stale lock {tmp_path / run_lock.LOCK_FILE}" in capsys.readouterr().out
    held = json.loads((tmp_path / run_lock.LOCK_FILE).read_text())
    assert (held["host"], held["pid"]) == (socket.gethostname(), os.getpid())
  finally:
    lock.release()


def test_the_heartbeat_refreshes_the_lock(tmp_path, monkeypatch):
  monkeypatch.setattr(run_lock, "HEARTBEAT_S", 0.05)
  lock = run_lock.RunLock(str(tmp_path))
  lock.acquire()
  try:
    first = json.loads((tmp_path / run_lock.LOCK_FILE).read_text())["heartbeat"]
    time.sleep(0.3)
    assert json.loads((tmp_path / run_lock.LOCK_FILE).read_text())["heartbeat"] > first
  finally:
    lock.release()
