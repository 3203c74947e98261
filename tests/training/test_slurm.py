"""launch/slurm_gpu.sbatch on a real one-node Slurm cluster on localhost, CPU only.

The fixture starts munged, slurmctld and slurmd (Debian's `slurm-wlm` and `munge`; installed with
apt-get when missing and possible, as `.ci/run` does) with their keys, sockets, state and logs in a
temp dir. The test submits the script with 2 tasks of 1 CPU (2 fake CPU devices each), cancels
the job with `scancel` once it has trained past its first checkpoint (SIGTERM: both processes save
at one step and exit), submits the same command again, and checks that the run went on from the
saved step and ends with the parameters of a one-process run with 4 devices and the same global
batch (as tests/training/test_multiprocess.py does for launch/local.py).
"""

import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import training_helpers as helpers
from test_multiprocess import checkpoint_steps, losses, max_param_diff

ROOT = pathlib.Path(__file__).resolve().parents[2]
NUM_STEPS, CHECKPOINT_EVERY = 6, 2
TRAIN_ARGS = helpers.train_cli_args(
  batch_size=4, num_steps=NUM_STEPS, checkpoint_every=CHECKPOINT_EVERY
)
TIMEOUT = 300
CLIENTS = ("sbatch", "srun", "scancel", "sinfo", "squeue", "scontrol")
DAEMONS = ("slurmctld", "slurmd", "munged")
SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])

pytestmark = pytest.mark.slow


def missing() -> list[str]:
  return [name for name in CLIENTS + DAEMONS if shutil.which(name, path=SEARCH) is None]


def install_or_skip() -> None:
  """apt-get install slurm-wlm munge when a program is missing; skip, saying why, if that fails."""
  if not missing():
    return
  if shutil.which("apt-get") is None or os.geteuid() != 0:
    pytest.skip(f"Slurm test: {', '.join(missing())} not installed and no apt-get as root")
  env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
  for cmd in (
    ["apt-get", "update", "-qq"],
    ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"],
  ):
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode:
      pytest.skip(f"Slurm test: `{' '.join(cmd)}` failed: {done.stderr[-500:]}")
  if missing():
    pytest.skip(f"Slurm test: {', '.join(missing())} still missing after apt-get install")


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def memory_mb() -> int:
  with open("/proc/meminfo") as f:
    total_kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
  return total_kb // 1024 - 512  # below what slurmd measures, or the node is drained


def slurm_conf(d: pathlib.Path, host: str) -> str:
  return f"""\
ClusterName=pippotest
SlurmctldHost={host}
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
AuthInfo=socket={d}/munge.sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
MpiDefault=none
KillWait=60
NodeName={host} CPUs={max(2, os.cpu_count() or 1)} RealMemory={memory_mb()} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def run(cmd, env, **kwargs) -> str:
  done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, **kwargs)
  assert done.returncode == 0, f"{' '.join(cmd)}: {done.returncode}\n{done.stdout}{done.stderr}"
  return done.stdout


@pytest.fixture(scope="module")
def cluster():
  """(environment for the Slurm client commands, temp dir) of a running one-node cluster."""
  install_or_skip()
  d = pathlib.Path(tempfile.mkdtemp(prefix="slurm-"))  # short: the socket path has a length limit
  d.chmod(0o755)
  (d / "state").mkdir()
  (d / "spool").mkdir()
  host = socket.gethostname().split(".")[0]
  (d / "slurm.conf").write_text(slurm_conf(d, host))
  key = d / "munge.key"
  key.write_bytes(os.urandom(1024))
  key.chmod(0o600)
  env = dict(os.environ, SLURM_CONF=str(d / "slurm.conf"), PATH=SEARCH)
  daemons = []

  def start(*cmd):
    with open(d / f"{pathlib.Path(cmd[0]).name}.out", "wb") as out:
      daemons.append(
        subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
      )

  try:
    munge = [f"--socket={d}/munge.sock", f"--key-file={key}", f"--pid-file={d}/munged.pid"]
    start("munged", "-F", "-f", *munge, f"--log-file={d}/munged.log", f"--seed-file={d}/seed")
    deadline = time.time() + 30
    while not (d / "munge.sock").exists():
      assert time.time() < deadline and daemons[0].poll() is None, (d / "munged.out").read_text()
      time.sleep(0.1)
    start("slurmctld", "-D", "-f", str(d / "slurm.conf"))
    start("slurmd", "-D", "-f", str(d / "slurm.conf"))
    deadline, state = time.time() + 60, ""
    while state != "idle":
      logs = "".join((d / f"{n}.out").read_text(errors="replace")[-2000:] for n in DAEMONS)
      assert time.time() < deadline, f"node state {state!r} after 60 s; daemon output:\n{logs}"
      assert all(p.poll() is None for p in daemons), f"a daemon exited:\n{logs}"
      state = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True
      ).stdout.strip()
      time.sleep(0.5)
    yield env, d
  finally:
    subprocess.run(["scancel", "--user=root"], env=env, capture_output=True)
    for proc in reversed(daemons):
      proc.terminate()
      try:
        proc.wait(timeout=30)
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    shutil.rmtree(d, ignore_errors=True)


def job_state(job: str, env) -> str:
  out = run(["scontrol", "show", "job", job], env)
  return next(w.split("=", 1)[1] for w in out.split() if w.startswith("JobState="))


def wait_for_end(job: str, env, output: pathlib.Path) -> str:
  deadline = time.time() + TIMEOUT
  while (state := job_state(job, env)) in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
    if time.time() > deadline:
      run(["scancel", "--signal=KILL", job], env)
      pytest.fail(f"job {job} still {state} after {TIMEOUT} s:\n{output.read_text()[-4000:]}")
    time.sleep(0.5)
  return state


def submit(cluster, workdir, data, output) -> str:
  env, d = cluster
  job_env = dict(
    env,
    REPO=str(ROOT),
    VENV=sys.prefix,  # the virtualenv running the tests (.venv, or .ci-venv in CI)
    PORT=str(free_port()),
    JAX_PLATFORMS="cpu",
    XLA_FLAGS="--xla_force_host_platform_device_count=2",
    PYTHONUNBUFFERED="1",
  )
  cmd = [
    "sbatch",
    "--parsable",
    "--nodes=1",
    "--ntasks=2",
    "--ntasks-per-node=2",
    "--cpus-per-task=1",
    "--time=10",
    f"--output={output}",
    str(ROOT / "launch" / "slurm_gpu.sbatch"),
    *TRAIN_ARGS,
    f"--config.data.path={data}",
    f"--workdir={workdir}",
  ]
  return run(cmd, job_env, cwd=d).strip().split(";")[0]


def test_sbatch_cancel_resubmit_matches_one_process(cluster, tmp_path, tmp_path_factory):
  env, _ = cluster
  data = helpers.session_studio(tmp_path_factory)
  workdir, ref_dir = tmp_path / "slurm", tmp_path / "one_process"
  reference = subprocess.Popen(
    [sys.executable, "-m", "pippo_jax.cli.train", *TRAIN_ARGS]
    + [f"--config.data.path={data}", f"--workdir={ref_dir}"],
    cwd=ROOT,
    env=dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      XLA_FLAGS="--xla_force_host_platform_device_count=4",
      PYTHONUNBUFFERED="1",
    ),
    stdout=open(tmp_path / "one_process.log", "wb"),
    stderr=subprocess.STDOUT,
    start_new_session=True,
  )
  try:
    first_out = tmp_path / "first.out"
    job = submit(cluster, workdir, data, first_out)
    deadline = time.time() + TIMEOUT
    while not checkpoint_steps(workdir) or max(losses(workdir), default=0) < CHECKPOINT_EVERY:
      state = job_state(job, env)
      assert state in ("PENDING", "RUNNING") and time.time() < deadline, (
        f"job {job} {state} before its first checkpoint:\n"
        + (first_out.read_text()[-4000:] if first_out.exists() else "(no output)")
      )
      time.sleep(0.1)
    run(["scancel", job], env)
    state = wait_for_end(job, env, first_out)
    log = first_out.read_text(errors="replace")
    assert state == "CANCELLED", f"{state}\n{log[-4000:]}"
    stopped = max(losses(workdir))
    assert stopped < NUM_STEPS, "the cancel came too late to interrupt the run"
    assert checkpoint_steps(workdir)[-1] == stopped, log[-4000:]  # saved where it stopped
    for task in range(2):  # srun --label: both tasks saved at that step
      assert f"{task}: " in log and "SIGTERM: saved a checkpoint at step" in log, log[-4000:]
    assert log.count(f"SIGTERM: saved a checkpoint at step {stopped};") == 2, log[-4000:]
    data_states = sorted(
      p.name for p in (workdir / "checkpoints" / str(stopped) / "data").iterdir()
    )
    assert [n for n in data_states if n.endswith(".json")] == [
      "process_0-of-2.json",
      "process_1-of-2.json",
    ]
    before = (workdir / "metrics.jsonl").read_text().splitlines()

    second_out = tmp_path / "second.out"
    job = submit(cluster, workdir, data, second_out)
    state = wait_for_end(job, env, second_out)
    assert state == "COMPLETED", f"{state}\n{second_out.read_text()[-4000:]}"
    reference.wait(timeout=TIMEOUT)
    assert reference.returncode == 0, (tmp_path / "one_process.log").read_text()[-4000:]
  finally:
    if reference.poll() is None:
      reference.kill()
      reference.wait()

  # Resumed: the lines of steps 1..stopped are the first job's (a run from step 0 would have
  # rewritten them), followed by one line per later step.
  after = (workdir / "metrics.jsonl").read_text().splitlines()
  assert after[: len(before)] == before and len(before) == stopped
  assert sorted(losses(workdir)) == list(range(1, NUM_STEPS + 1)) and len(after) == NUM_STEPS
  assert checkpoint_steps(workdir)[-1] == checkpoint_steps(ref_dir)[-1] == NUM_STEPS
  ref_losses, slurm_losses = losses(ref_dir), losses(workdir)
  for step in range(1, NUM_STEPS + 1):
    assert abs(slurm_losses[step] - ref_losses[step]) <= 1e-5 * abs(ref_losses[step]), step
  diff = max_param_diff(workdir, ref_dir)
  print(f"stopped at step {stopped}; max |params(slurm, 2 tasks) - params(1 process)| = {diff:.3g}")
  assert diff <= 1e-5  # summation order only
