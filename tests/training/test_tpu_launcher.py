"""launch/tpu_pod.sh against a fake `gcloud` on PATH that records its arguments, one per line.

The recorded `--command` string is then run with bash, as the remote shell would, in a fake home
whose checkout has a `.venv/bin/activate` that puts a fake `pippo-train` on PATH: the arguments
that reach pippo-train must be the user's, spaces and quotes included.
"""

import os
import pathlib
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "launch" / "tpu_pod.sh"
RECORD = '#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a" >> "{out}"; done\n'
USER_ARGS = [
  "--config",
  "configs/p3_posttrain.py:res=512",
  "--workdir=/mnt/runs/a b",
  '--config.data.path=/mnt/it\'s "here"',
  "--config.train.note=$HOME;`x` & y",
]


@pytest.fixture
def fake(tmp_path):
  """(environment with the fake gcloud first on PATH, file the fake gcloud writes)."""
  bin_dir, args = tmp_path / "bin", tmp_path / "gcloud_args"
  bin_dir.mkdir()
  gcloud = bin_dir / "gcloud"
  gcloud.write_text(RECORD.format(out=args))
  gcloud.chmod(0o755)
  env = {k: v for k, v in os.environ.items() if k not in ("PROJECT", "LOG", "REPO")}
  env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", TPU_NAME="my-v5p-64", ZONE="us-east5-a")
  return env, args


def launch(env, *args) -> subprocess.CompletedProcess:
  return subprocess.run(
    ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=30
  )


def recorded(args_file) -> list[str]:
  return args_file.read_text().splitlines()


def remote_run(command: str, home: pathlib.Path) -> list[str]:
  """Runs `command` with bash in `home` as a TPU host would; returns pippo-train's arguments."""
  venv_bin = home / "pippo_jax" / ".venv" / "bin"
  venv_bin.mkdir(parents=True)
  (venv_bin / "activate").write_text(f'PATH="{venv_bin}:$PATH"\n')
  got = home / "pippo_train_args"
  train = venv_bin / "pippo-train"
  train.write_text(RECORD.format(out=got))
  train.chmod(0o755)
  env = dict(os.environ, HOME=str(home))
  subprocess.run(["bash", "-c", command], env=env, cwd=home, check=True, timeout=30)
  deadline = time.time() + 30  # the LOG form returns before the detached run ends
  while not got.exists():
    assert time.time() < deadline, "pippo-train was not started"
    time.sleep(0.05)
  time.sleep(0.2)
  return recorded(got)


def test_gcloud_arguments(fake, tmp_path):
  env, args = fake
  done = launch(env, "--config", "configs/p3_posttrain.py:res=512", "--workdir=/mnt/runs/p3")
  assert done.returncode == 0, done.stderr
  assert recorded(args) == [
    "compute",
    "tpus",
    "tpu-vm",
    "ssh",
    "my-v5p-64",
    "--zone=us-east5-a",
    "--worker=all",
    "--command=cd ~/pippo_jax && . .venv/bin/activate && pippo-train --distributed "
    "--config configs/p3_posttrain.py:res=512 --workdir=/mnt/runs/p3",
  ]


def test_project_and_repo(fake):
  env, args = fake
  done = launch(dict(env, PROJECT="my-project", REPO="/opt/pippo"), "--workdir=/w")
  assert done.returncode == 0, done.stderr
  got = recorded(args)
  assert got[4:] == [
    "my-v5p-64",
    "--zone=us-east5-a",
    "--project=my-project",
    "--worker=all",
    "--command=cd /opt/pippo && . .venv/bin/activate && pippo-train --distributed --workdir=/w",
  ]


def test_quoting_round_trips(fake, tmp_path):
  env, args = fake
  done = launch(env, *USER_ARGS)
  assert done.returncode == 0, done.stderr
  command = recorded(args)[-1].removeprefix("--command=")
  assert command.startswith("cd ~/pippo_jax && . .venv/bin/activate && pippo-train --distributed ")
  assert remote_run(command, tmp_path / "home") == ["--distributed", *USER_ARGS]


def test_log_detaches_with_nohup(fake, tmp_path):
  env, args = fake
  log = tmp_path / "host log.txt"
  done = launch(dict(env, LOG=str(log)), *USER_ARGS)
  assert done.returncode == 0, done.stderr
  command = recorded(args)[-1].removeprefix("--command=")
  assert command.startswith("nohup bash -c ")
  assert command.endswith(f" > {str(log).replace(' ', chr(92) + ' ')} 2>&1 < /dev/null &")
  assert remote_run(command, tmp_path / "home") == ["--distributed", *USER_ARGS]
  assert log.exists()


@pytest.mark.parametrize("unset", ["TPU_NAME", "ZONE"])
def test_missing_variable(fake, unset):
  env, args = fake
  del env[unset]
  done = launch(env, "--workdir=/w")
  assert done.returncode == 1
  assert f"{unset}: set {unset}" in done.stderr
  assert not args.exists()


def test_no_arguments(fake):
  env, args = fake
  done = launch(env)
  assert done.returncode == 2
  assert "usage: TPU_NAME=... ZONE=..." in done.stderr
  assert not args.exists()
