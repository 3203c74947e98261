"""Two processes over loopback (2 fake CPU devices each, one 4-device mesh) train like one process,
with every periodic action on (logging, checkpoints, sample grids, evaluation).

The runs go through `launch/local.py` and `pippo-train` exactly as a user starts them. The
one-process reference has 4 devices, the same config, data and global batch size.

Batch layout: each process reads every 2nd element of the shuffled stream and contributes its
rows to the global batch in process order, so with a per-process batch b > 1 the global batch holds
the same examples as the one-process run's in another order ([0, 2, 1, 3] for b = 2;
`test_process_slices_form_the_global_batch` pins this). The step keys each example's timestep,
noise and condition drops by (epoch, record index), not by row (`step.example_keys`), so the two
runs agree up to floating-point summation order. They are compared with 2 examples per process.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import training_helpers as helpers
from PIL import Image

from pippo_jax import checkpoints
from pippo_jax.configs import p3_posttrain
from pippo_jax.data_pipelines import pipelines

ROOT = pathlib.Path(__file__).resolve().parents[2]
NUM_STEPS, CHECKPOINT_EVERY = 8, 4
# Every periodic action is on: logging (every step), checkpoints, sample grids and evaluation.
TRAIN_ARGS = helpers.train_cli_args(
  batch_size=4, num_steps=NUM_STEPS, checkpoint_every=CHECKPOINT_EVERY, sample_every=4
) + [
  "--config.train.eval_every=4",
  "--config.train.eval_samples=1",
  "--config.train.eval_views=2",
  "--config.train.eval_lpips=alex",
]
TIMEOUT = 300

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
  return helpers.session_studio(tmp_path_factory)


def child_env(tmp_path_factory, devices: int) -> dict:
  """CPU, `devices` fake devices. No persistent compilation cache: JAX writes it from process 0
  only, so on a restart process 0 would load its programs while process 1 compiles, and on a
  loaded machine the skew can exceed gloo's 30 s limit for setting up the first collective."""
  del tmp_path_factory
  return dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    PYTHONUNBUFFERED="1",
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
  )


_STARTED = []


@pytest.fixture(autouse=True)
def stop_leftovers():
  """A failed test leaves no process behind (a launcher first stops its children)."""
  yield
  while _STARTED:
    proc = _STARTED.pop()
    if proc.poll() is None:
      proc.send_signal(signal.SIGTERM)
      try:
        proc.wait(timeout=60)
      except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def start(cmd, env, log_path) -> subprocess.Popen:
  with open(log_path, "ab") as log:
    _STARTED.append(
      subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
      )
    )
  return _STARTED[-1]


def finish(proc: subprocess.Popen, log_path) -> str:
  try:
    proc.wait(timeout=TIMEOUT)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
  text = pathlib.Path(log_path).read_text(errors="replace")
  assert proc.returncode == 0, f"exit status {proc.returncode}; log tail:\n{text[-4000:]}"
  return text


def launcher(workdir, data, tmp_path_factory) -> subprocess.Popen:
  cmd = [
    sys.executable,
    "launch/local.py",
    "--num_processes=2",
    "--devices_per_process=2",
    "--",
    *TRAIN_ARGS,
    f"--config.data.path={data}",
    f"--workdir={workdir}",
  ]
  return start(cmd, child_env(tmp_path_factory, 2), f"{workdir}.log")


def losses(workdir) -> dict[int, float]:
  """Last logged loss per step (a resumed run logs the redone steps again); complete lines."""
  out, path = {}, pathlib.Path(workdir) / "metrics.jsonl"
  for line in path.read_text().split("\n")[:-1] if path.exists() else ():
    row = json.loads(line)
    if "loss" in row:  # evaluation writes lines of its own
      out[row["step"]] = row["loss"]
  return out


def eval_rows(workdir) -> dict[int, dict]:
  rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").open()]
  return {r["step"]: r for r in rows if "eval/psnr" in r}


def checkpoint_steps(workdir) -> list[int]:
  ckpts = pathlib.Path(workdir) / "checkpoints"
  names = [p.name for p in ckpts.iterdir()] if ckpts.exists() else []
  return sorted(int(name) for name in names if name.isdigit())


def max_param_diff(workdir_a, workdir_b) -> float:
  a, b = checkpoints.read_params(str(workdir_a))[0], checkpoints.read_params(str(workdir_b))[0]
  assert jax.tree.structure(a) == jax.tree.structure(b)
  return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_process_slices_form_the_global_batch(studio):
  """Per-process batches in process order = the one-process batch (permuted when b > 1)."""
  config = p3_posttrain.get_config("size=smoke,views=2")
  config.data.path = str(studio)
  for global_batch, order in ((2, [0, 1]), (4, [0, 2, 1, 3])):
    config.batch_size = global_batch
    one = next(pipelines.make_iterator(config.data, process_index=0, process_count=1))
    parts = [
      next(pipelines.make_iterator(config.data, process_index=i, process_count=2)) for i in range(2)
    ]
    for key, value in one.items():
      joined = np.concatenate([p[key] for p in parts])
      np.testing.assert_array_equal(joined, value[order], err_msg=key)
    joined = np.concatenate([p["target_images"] for p in parts])
    # The examples differ (views drawn per stream position), so the order is visible.
    assert np.array_equal(joined, one["target_images"]) == (order == sorted(order))


def test_two_processes_train_like_one(studio, tmp_path, tmp_path_factory):
  """2 processes x 2 devices == 1 process x 4 devices, through a SIGTERM (forwarded by the
  launcher: both processes save at one agreed step and exit 0) and a restart."""
  ref_dir, mp_dir = tmp_path / "one_process", tmp_path / "two_processes"
  reference = start(
    [
      sys.executable,
      "-m",
      "pippo_jax.cli.train",
      *TRAIN_ARGS,
      f"--config.data.path={studio}",
      f"--workdir={ref_dir}",
    ],
    child_env(tmp_path_factory, 4),
    f"{ref_dir}.log",
  )
  first = launcher(mp_dir, studio, tmp_path_factory)
  deadline = time.time() + TIMEOUT
  while max(losses(mp_dir), default=0) < 2:  # inside the loop, past orbax's first save (step 1)
    assert first.poll() is None and time.time() < deadline, "the two-process run logged no step"
    time.sleep(0.05)
  first.send_signal(signal.SIGTERM)  # the launcher forwards it to both processes
  log = finish(first, f"{mp_dir}.log")
  assert "[p0] " in log and "[p1] " in log
  stopped = max(losses(mp_dir))
  assert stopped < NUM_STEPS, "SIGTERM came too late to interrupt the run"
  assert checkpoint_steps(mp_dir)[-1] == stopped  # saved at the step it stopped
  for i in range(2):  # both processes stopped at that step
    assert re.search(rf"\[p{i}\] .*SIGTERM: saved a checkpoint at step {stopped};", log)
  data_states = sorted(
    p.name
    for p in (mp_dir / "checkpoints" / str(stopped) / "data").iterdir()
    if p.suffix == ".json"
  )
  assert data_states == ["process_0-of-2.json", "process_1-of-2.json"]

  finish(launcher(mp_dir, studio, tmp_path_factory), f"{mp_dir}.log")
  finish(reference, f"{ref_dir}.log")
  assert checkpoint_steps(mp_dir)[-1] == checkpoint_steps(ref_dir)[-1] == NUM_STEPS
  # A line per step and per evaluation (steps 4 and 8). Only process 0 writes metrics; the
  # restart goes on after the step saved at SIGTERM.
  for workdir in (ref_dir, mp_dir):
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == NUM_STEPS + 2
  # Evaluation: every process sampled, process 0 scored and wrote the reports; the two runs'
  # parameters agree to 1e-5, so their metrics do too.
  ref_eval, mp_eval = eval_rows(ref_dir), eval_rows(mp_dir)
  assert sorted(ref_eval) == sorted(mp_eval) == [4, NUM_STEPS]
  for step in (4, NUM_STEPS):
    assert abs(ref_eval[step]["eval/psnr"] - mp_eval[step]["eval/psnr"]) < 0.05
    for workdir in (ref_dir, mp_dir):
      report = workdir / "eval" / f"step_{step:07d}"
      assert {"metrics.json", "table.md", "best_worst.png"} <= set(os.listdir(report))

  for workdir in (ref_dir, mp_dir):  # grids of 2 sample rows from every process
    for step in (4, NUM_STEPS):
      grid = np.asarray(Image.open(workdir / "samples" / f"step_{step:07d}.png"))
      rows = 2 * (2 if workdir == mp_dir else 1)
      assert grid.shape == (rows * 64 + (rows - 1) * 4, 5 * 64 + 8, 3)

  ref_losses, mp_losses = losses(ref_dir), losses(mp_dir)
  assert sorted(mp_losses) == sorted(ref_losses) == list(range(1, NUM_STEPS + 1))
  np.testing.assert_allclose(
    [mp_losses[s] for s in sorted(mp_losses)],
    [ref_losses[s] for s in sorted(ref_losses)],
    rtol=1e-5,
    atol=0,
  )
  diff = max_param_diff(mp_dir, ref_dir)
  print(f"max |params(2 processes) - params(1 process)| = {diff:.3g}")
  assert diff <= 1e-5  # summation order only (rows arrive permuted)
