"""pippo-train as a user runs it: the README's main command from a fresh directory with a relative
--workdir (trains, checkpoints, samples, resumes), one-line usage errors with exit status 2, and
a refused second run on a workdir in use."""

import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from pippo_jax.training import run_lock

ROOT = pathlib.Path(__file__).resolve().parents[2]
PIPPO_TRAIN = str(pathlib.Path(sys.executable).parent / "pippo-train")
README_COMMAND = ["--config", "configs/p3_posttrain.py:size=smoke", "--workdir", "workdir/smoke"]


def user_env() -> dict:
  """A user's shell: one CPU device (no fake-device flags from the test suite)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return dict(env, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


def pippo_train(args, cwd, timeout=600) -> subprocess.CompletedProcess:
  return subprocess.run(
    [PIPPO_TRAIN, *args], cwd=cwd, env=user_env(), capture_output=True, text=True, timeout=timeout
  )


def logged_errors(log: str) -> list[str]:
  """Tracebacks, exceptions in threads (orbax saves in one), absl ERROR lines, CLI errors."""
  return re.findall(r"^(?:Traceback.*|Exception in thread.*|E\d{4} .*|.*: error: .*)$", log, re.M)


@pytest.fixture
def user_dir(tmp_path):
  """A fresh working directory holding the repository's configs/, as a clone does."""
  (tmp_path / "configs").symlink_to(ROOT / "configs")
  return tmp_path


def test_readme_main_command_trains_checkpoints_samples_and_resumes(user_dir):
  first = pippo_train(
    [
      *README_COMMAND,
      "--config.train.num_steps=30",
      "--config.train.checkpoint_every=10",
      "--config.train.sample_every=15",
    ],
    user_dir,
  )
  log = first.stdout + first.stderr
  assert first.returncode == 0, log[-4000:]
  workdir = user_dir / "workdir" / "smoke"
  ckpts = workdir / "checkpoints"
  assert sorted(p.name for p in ckpts.iterdir()) == ["10", "20", "30"]  # finalized, no tmp dirs
  for step in (15, 30):
    grid = np.asarray(Image.open(workdir / "samples" / f"step_{step:07d}.png"))
    assert grid.shape == (2 * 64 + 4, 5 * 64 + 8, 3) and grid.std() > 10  # 2 rows: ref|gt|samples
  assert not logged_errors(log), log[-4000:]
  assert not (workdir / run_lock.LOCK_FILE).exists()

  again = pippo_train(
    [
      *README_COMMAND,
      "--config.train.num_steps=40",
      "--config.train.checkpoint_every=10",
      "--config.train.sample_every=15",
    ],
    user_dir,
  )
  log = again.stdout + again.stderr
  assert again.returncode == 0, log[-4000:]
  assert "restored step 30 from" in log and not logged_errors(log)
  assert sorted(int(p.name) for p in ckpts.iterdir()) == [20, 30, 40]  # keep_checkpoints=3
  steps = [json.loads(line)["step"] for line in open(workdir / "metrics.jsonl")]
  assert steps == [30, 40]  # logged at the end of each run (log_every=50)


@pytest.mark.parametrize(
  "override, message",
  [
    ("--config.model.widht=3", 'unknown config key config.model.widht (did you mean "width"?)'),
    ("--config.sharding.mesh.dat=2", "unknown config key config.sharding.mesh.dat"),
    ("--config.model.width=wide", "flag --config.model.width=wide: invalid literal for int()"),
    ("--config.model.num_heads=3", "model.num_heads=3 does not divide model.width=128"),
    ("--config.optimizer.decay=cos", "optimizer.decay='cos'; choose from"),
    ("--config.model.use_cam_mlp=false", "model.use_control_mlp=True needs model.use_cam_mlp=True"),
  ],
)
def test_config_errors_exit_2_with_one_line_naming_the_key(user_dir, override, message):
  result = pippo_train([*README_COMMAND, override], user_dir, timeout=120)
  assert result.returncode == 2, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith("pippo-train: error: ") and message in lines[-1], lines[-5:]
  assert "Traceback" not in result.stderr
  assert not (user_dir / "workdir" / "smoke" / "cache").exists()  # refused before any work


@pytest.mark.parametrize(
  "config, message",
  [
    ("configs/p3_posttrain.py:siz=smoke", "unknown config variant key 'siz'"),
    ("configs/p3_posttrain.py:size=smol", "unknown size 'smol'"),
    ("configs/p4.py", "No such file or directory"),
  ],
)
def test_variant_and_file_errors_exit_2(user_dir, config, message):
  result = pippo_train(["--config", config, "--workdir", "w"], user_dir, timeout=120)
  assert result.returncode == 2 and message in result.stderr.strip().splitlines()[-1], (
    result.stderr[-3000:]
  )


@pytest.mark.parametrize("program", ["pippo-train", "pippo-inspect", "pippo-convert"])
def test_every_config_cli_answers_help_and_usage_errors(program):
  exe = str(pathlib.Path(sys.executable).parent / program)
  help_run = subprocess.run(
    [exe, "--help"], env=user_env(), capture_output=True, text=True, timeout=120, cwd=ROOT
  )
  assert help_run.returncode == 0 and "--config" in help_run.stdout
  bad = subprocess.run(
    [exe, "--config", "configs/p3_posttrain.py:size=smoke", "--config.model.widht=3"],
    env=user_env(),
    capture_output=True,
    text=True,
    timeout=120,
    cwd=ROOT,
  )
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1] == (
    f'{program}: error: unknown config key config.model.widht (did you mean "width"?)'
  )


def test_a_workdir_in_use_is_refused_naming_the_holder(user_dir):
  workdir = user_dir / "workdir" / "smoke"
  workdir.mkdir(parents=True)
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
  try:
    started = time.time()
    (workdir / run_lock.LOCK_FILE).write_text(
      json.dumps(
        {"host": socket.gethostname(), "pid": holder.pid, "started": started, "heartbeat": started}
      )
    )
    result = pippo_train(README_COMMAND, user_dir, timeout=120)
  finally:
    holder.kill()
    holder.wait()
  assert result.returncode == 1, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(
    f"pippo-train: error: {workdir} is in use by another run (host "
    f"{socket.gethostname()!r}, pid {holder.pid}, started "
  ), last
  assert not (workdir / "cache").exists() and not (workdir / "checkpoints").exists()
