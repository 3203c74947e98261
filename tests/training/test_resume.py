"""A killed (kill -9), preempted (SIGTERM) or interrupted (Ctrl-C) pippo-train run, restarted, ends
as if uninterrupted.

Each checkpoint carries the train state (parameters, Adam moments, step, RNG) and the Grain
iterator state, so a restarted run replays exactly the batches and noise draws that followed the
checkpoint: the loss curve (last value per step in metrics.jsonl) and the final parameters match.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import training_helpers as helpers

from pippo_jax import checkpoints

ROOT = pathlib.Path(__file__).resolve().parents[2]
NUM_STEPS, CHECKPOINT_EVERY = 20, 4  # long enough to kill the run between checkpoints
TRAIN_ARGS = [
  sys.executable,
  "-m",
  "pippo_jax.cli.train",
  *helpers.train_cli_args(batch_size=2, num_steps=NUM_STEPS, checkpoint_every=CHECKPOINT_EVERY),
]
TIMEOUT = 300

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
  return helpers.session_studio(tmp_path_factory)


_STARTED = []


@pytest.fixture(autouse=True, scope="module")
def stop_leftovers():
  """Failed tests leave no process behind."""
  yield
  for proc in _STARTED:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()


class Run:
  """One pippo-train process (4 fake CPU devices) on WORKDIR, output appended to WORKDIR.log."""

  def __init__(self, workdir, data, tmp_path_factory):
    self.workdir, self.log = pathlib.Path(workdir), pathlib.Path(f"{workdir}.log")
    self.cmd = [*TRAIN_ARGS, f"--config.data.path={data}", f"--workdir={workdir}"]
    self.env = dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      PYTHONUNBUFFERED="1",
      XLA_FLAGS="--xla_force_host_platform_device_count=4",
      JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.getbasetemp() / "jax_cache"),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    self.proc = None

  def start(self) -> "Run":
    with open(self.log, "ab") as log:
      self.proc = subprocess.Popen(
        self.cmd,
        cwd=ROOT,
        env=self.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
      )
    _STARTED.append(self.proc)
    return self

  def wait(self, expect=0) -> str:
    try:
      self.proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
      os.killpg(self.proc.pid, signal.SIGKILL)
      self.proc.wait()
    text = self.log.read_text(errors="replace")
    assert self.proc.returncode == expect, (
      f"exit status {self.proc.returncode}, expected {expect}; log tail:\n{text[-4000:]}"
    )
    return text

  def wait_until(self, condition, what: str) -> None:
    deadline = time.time() + TIMEOUT
    while not condition():
      assert self.proc.poll() is None, f"the run ended before {what}"
      assert time.time() < deadline, f"timed out waiting for {what}"
      time.sleep(0.02)

  def rows(self) -> list[dict]:
    """metrics.jsonl rows (complete lines only: the file may be being written)."""
    path = self.workdir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().split("\n")[:-1]] if path.exists() else []

  def losses(self) -> dict[int, float]:
    """Last logged loss per step (a resumed run logs the redone steps again)."""
    return {row["step"]: row["loss"] for row in self.rows()}

  def checkpoints(self) -> list[int]:
    """Finalized checkpoint steps (orbax renames a step's tmp directory when it is complete)."""
    ckpts = self.workdir / "checkpoints"
    names = [p.name for p in ckpts.iterdir()] if ckpts.exists() else []
    return sorted(int(name) for name in names if name.isdigit())


@pytest.fixture(scope="module")
def reference(studio, tmp_path_factory):
  """An uninterrupted run, started at once and awaited by the tests (it runs beside theirs)."""
  run = Run(tmp_path_factory.mktemp("reference") / "run", studio, tmp_path_factory).start()
  done = []

  def finished() -> Run:
    if not done:
      run.wait()
      assert run.checkpoints()[-1] == NUM_STEPS
      assert sorted(run.losses()) == list(range(1, NUM_STEPS + 1))
      done.append(run)
    return run

  return finished


def assert_same_training(run: Run, ref: Run) -> float:
  """Same loss at every step and the same final parameters; returns max |param difference|."""
  ours, theirs = run.losses(), ref.losses()
  assert sorted(ours) == sorted(theirs) == list(range(1, NUM_STEPS + 1))
  np.testing.assert_allclose(
    [ours[s] for s in sorted(ours)], [theirs[s] for s in sorted(theirs)], rtol=1e-6, atol=0
  )
  assert run.checkpoints()[-1] == NUM_STEPS
  a, b = checkpoints.read_params(str(run.workdir))[0], checkpoints.read_params(str(ref.workdir))[0]
  assert jax.tree.structure(a) == jax.tree.structure(b)
  diff = max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert diff <= 1e-6
  return diff


def test_kill9_and_restart_matches_uninterrupted(studio, tmp_path, tmp_path_factory, reference):
  run = Run(tmp_path / "run", studio, tmp_path_factory).start()

  def past_a_checkpoint():
    saved = [s for s in run.checkpoints() if s >= CHECKPOINT_EVERY]
    return saved and max(run.losses(), default=0) > saved[-1]

  run.wait_until(past_a_checkpoint, f"a checkpoint at step >= {CHECKPOINT_EVERY} and a later step")
  os.killpg(run.proc.pid, signal.SIGKILL)
  run.wait(expect=-signal.SIGKILL)
  before, resume_from = run.losses(), run.checkpoints()[-1]
  killed_at = max(before)
  assert CHECKPOINT_EVERY <= resume_from < killed_at < NUM_STEPS

  log = run.start().wait()
  assert f"restored step {resume_from} from" in log
  assert "taking over the stale lock" in log  # the killed run's lock
  # The steps between the checkpoint and the kill were trained twice, identically; metrics.jsonl
  # keeps each step once (the lines past the restored step were dropped on resume).
  assert [r["step"] for r in run.rows()] == list(range(1, NUM_STEPS + 1))
  after = run.losses()
  np.testing.assert_allclose(
    [after[s] for s in range(resume_from + 1, killed_at + 1)],
    [before[s] for s in range(resume_from + 1, killed_at + 1)],
    rtol=1e-6,
    atol=0,
  )
  diff = assert_same_training(run, reference())
  print(f"kill -9 at step {killed_at}, resumed from {resume_from}: max |param diff| = {diff:.3g}")


def test_sigterm_saves_and_restart_completes(studio, tmp_path, tmp_path_factory, reference):
  run = Run(tmp_path / "run", studio, tmp_path_factory).start()
  run.wait_until(lambda: max(run.losses(), default=0) >= 2, "step 2")  # inside the loop
  run.proc.send_signal(signal.SIGTERM)
  log = run.wait(expect=0)
  stopped = max(run.losses())
  assert stopped < NUM_STEPS, "SIGTERM came too late to interrupt the run"
  assert f"SIGTERM: saved a checkpoint at step {stopped}; stopping" in log
  assert run.checkpoints()[-1] == stopped

  log = run.start().wait()
  assert f"restored step {stopped} from" in log
  assert [r["step"] for r in run.rows()] == list(range(1, NUM_STEPS + 1))  # nothing redone
  diff = assert_same_training(run, reference())
  print(f"SIGTERM at step {stopped}: max |param diff| = {diff:.3g}")


def test_ctrl_c_saves_and_restart_completes(studio, tmp_path, tmp_path_factory, reference):
  """SIGINT saves at the current step like SIGTERM, then exits 130 with one line saying so."""
  run = Run(tmp_path / "run", studio, tmp_path_factory).start()
  run.wait_until(lambda: max(run.losses(), default=0) >= 2, "step 2")
  run.proc.send_signal(signal.SIGINT)
  log = run.wait(expect=130)
  stopped = max(run.losses())
  assert stopped < NUM_STEPS, "SIGINT came too late to interrupt the run"
  assert f"SIGINT: saved a checkpoint at step {stopped}; stopping" in log
  assert f"pippo-train: interrupted: saved a checkpoint at step {stopped} in" in log
  assert "Traceback" not in log
  assert run.checkpoints()[-1] == stopped
  log = run.start().wait()
  assert f"restored step {stopped} from" in log
  diff = assert_same_training(run, reference())
  print(f"SIGINT at step {stopped}: max |param diff| = {diff:.3g}")
