"""pippo-train: run (or resume) a training stage.

  pippo-train --config configs/p3_posttrain.py:size=smoke --workdir workdir/smoke \\
      [--config.train.num_steps=500 ...]

With the smoke size and no `data.path`, a synthetic studio is built in WORKDIR/cache first. Run the
same command again to resume from the newest checkpoint. Ctrl-C (SIGINT) or SIGTERM saves a
checkpoint and stops (exit 130 / 0); a second Ctrl-C stops at once. Usage and config errors exit 2
with one line naming the key; a failed run exits 1.
Multi-host: start one process per host with --coordinator HOST:PORT --num_processes N
--process_id I (CPU hosts use gloo collectives), or with --distributed on managed clusters (TPU
pods, Slurm) where `jax.distributed.initialize()` finds the coordinator itself. `launch/` has
launchers for one machine, TPU pods and Slurm GPU clusters.
"""
import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from pippo_jax.cli import common

PROGRAM = "pippo-train"
_CONFIG = config_flags.DEFINE_config_file("config", None, "Stage config file[:variant], e.g. "
                                          "configs/p3_posttrain.py:size=smoke; override keys with "
                                          "--config.KEY=VALUE.", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, samples); "
                               "created if missing.")
_COORD = flags.DEFINE_string("coordinator", None, "HOST:PORT of process 0 (multi-process runs).")
_NPROC = flags.DEFINE_integer("num_processes", 1, "Number of processes.")
_PID = flags.DEFINE_integer("process_id", 0, "This process's index.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() with no arguments (TPU pods, Slurm "
    "and other clusters it auto-detects); --coordinator takes precedence.")


def run(argv):
  if argv[1:]:
    common.fail(PROGRAM, f"unexpected arguments {argv[1:]} (flags are --name=value)", common.USAGE)
  if _CONFIG.value is None or not _WORKDIR.value:
    common.fail(PROGRAM, "--config and --workdir are required (see --help)", common.USAGE)
  config = common.config_value(PROGRAM, _CONFIG)
  import jax  # pylint: disable=g-import-not-at-top
  if _COORD.value:
    if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(_COORD.value, num_processes=_NPROC.value, process_id=_PID.value)
  elif _DISTRIBUTED.value:
    jax.distributed.initialize()
  from pippo_jax.training import loop  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.INFO)  # progress lines come through absl logging
  logging.get_absl_handler().addFilter(
      lambda record: "orbax" not in record.pathname or record.levelno >= std_logging.WARNING)
  last = common.guarded(PROGRAM, loop.train, config, _WORKDIR.value)
  if jax.process_index() == 0 and last:
    print("final: " + "  ".join(f"{k} {v:.4g}" for k, v in sorted(last.items())))


def main(argv=None):
  argv = list(sys.argv if argv is None else argv)
  app.run(run, argv=argv, flags_parser=lambda a: common.parse(
      PROGRAM, a, doc=__doc__, module=sys.modules[__name__]))


if __name__ == "__main__":
  main()
