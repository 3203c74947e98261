"""One run per workdir: WORKDIR/run.lock names the job that holds it.

The lock is a JSON file {host, pid, started, heartbeat} created atomically (O_EXCL) by process 0 of
a job and refreshed every `HEARTBEAT_S` seconds by a background thread. A second job on the same
workdir (same host or another one that mounts it) is refused with the holder's host, pid and start
time. A lock is stale, and is taken over with a warning, when its holder runs on this host and its
pid is gone (a killed run), or when its heartbeat is older than `STALE_S` (a holder on another host
that died). The lock is removed when the run ends.
"""

import json
import logging
import os
import socket
import threading
import time

from pippo_jax.errors import WorkdirBusyError

LOCK_FILE = "run.lock"
HEARTBEAT_S = 30.0
STALE_S = 300.0


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _describe(holder: dict) -> str:
  started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
  return f"host {holder.get('host')!r}, pid {holder.get('pid')}, started {started}"


def stale_reason(holder: dict) -> str | None:
  """Why the lock `holder` wrote is stale, or None while its run may be alive."""
  if holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", -1))):
    return f"its process ({_describe(holder)}) is gone"
  age = time.time() - float(holder.get("heartbeat", 0))
  if age > STALE_S:
    return f"its heartbeat is {age:.0f} s old (> {STALE_S:.0f} s; {_describe(holder)})"
  return None


class RunLock:
  """Holds WORKDIR/run.lock while the run lives: `acquire()` ... `release()`."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self.record = None
    self._stop = threading.Event()
    self._thread = None

  def _write(self, exclusive: bool) -> None:
    self.record["heartbeat"] = time.time()
    data = json.dumps(self.record).encode()
    if exclusive:
      fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
      with os.fdopen(fd, "wb") as f:
        f.write(data)
    else:  # refresh / take over: atomic replace
      tmp = f"{self.path}.{os.getpid()}.tmp"
      with open(tmp, "wb") as f:
        f.write(data)
      os.replace(tmp, self.path)

  def acquire(self) -> None:
    """Take the lock, or raise WorkdirBusyError naming the live holder."""
    self.record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
    try:
      self._write(exclusive=True)
    except FileExistsError:
      try:
        with open(self.path) as f:
          holder = json.load(f)
      except (OSError, ValueError):
        holder = {}  # unreadable (a holder killed mid-write): stale
      reason = stale_reason(holder) if holder else "it is unreadable"
      if reason is None:
        raise WorkdirBusyError(
          f"{os.path.dirname(self.path)} is in use by another run ({_describe(holder)}); "
          f"stop that run or choose another --workdir (remove {self.path} if you are sure "
          "it is dead)"
        ) from None
      print(f"note: taking over the stale lock {self.path}: {reason}", flush=True)
      self._write(exclusive=False)
    self._thread = threading.Thread(target=self._beat, daemon=True, name="run-lock-heartbeat")
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      try:
        self._write(exclusive=False)
      except OSError as e:
        logging.warning("could not refresh %s: %s", self.path, e)

  def release(self) -> None:
    if self.record is None:
      return
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    try:
      with open(self.path) as f:
        held = json.load(f)
      ours = (held.get("host"), held.get("pid")) == (self.record["host"], self.record["pid"])
    except (OSError, ValueError):
      ours = False
    if ours:
      os.remove(self.path)
    self.record = None
