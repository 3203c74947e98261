r"""pippo-train: run (or resume) a training stage.

  pippo-train --config configs/p3_posttrain.py:size=smoke --workdir workdir/smoke \
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

import sys

from absl import flags

from pippo_jax import hostmem
from pippo_jax.cli import common

PROGRAM = "pippo-train"


def _define(fv: flags.FlagValues, argv) -> None:
  common.define_config(
    fv,
    argv,
    "Stage config file[:variant], e.g. configs/p3_posttrain.py:size=smoke; "
    "override keys with --config.KEY=VALUE.",
  )
  flags.DEFINE_string(
    "workdir",
    None,
    "Run directory (checkpoints, logs, samples); created if missing.",
    flag_values=fv,
  )
  flags.DEFINE_string(
    "coordinator", None, "HOST:PORT of process 0 (multi-process runs).", flag_values=fv
  )
  flags.DEFINE_integer("num_processes", 1, "Number of processes.", flag_values=fv)
  flags.DEFINE_integer("process_id", 0, "This process's index.", flag_values=fv)
  flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize() with no arguments "
    "(TPU pods, Slurm and other clusters it auto-detects); --coordinator takes "
    "precedence.",
    flag_values=fv,
  )


def main(argv=None) -> int:
  hostmem.keep_freed_memory()  # before JAX starts its threads
  argv = common.program_argv(PROGRAM, argv)
  fv = flags.FlagValues()
  _define(fv, argv)
  rest = common.parse(PROGRAM, argv, fv, doc=__doc__)
  if rest:
    common.fail(PROGRAM, f"unexpected arguments {rest} (flags are --name=value)", common.USAGE)
  if fv["config"].value is None or not fv["workdir"].value:
    common.fail(PROGRAM, "--config and --workdir are required (see --help)", common.USAGE)
  config = common.config_value(PROGRAM, fv["config"])
  import jax  # pylint: disable=g-import-not-at-top

  if fv["coordinator"].value:
    if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      fv["coordinator"].value,
      num_processes=fv["num_processes"].value,
      process_id=fv["process_id"].value,
    )
  elif fv["distributed"].value:
    jax.distributed.initialize()
  from pippo_jax.training import loop  # pylint: disable=g-import-not-at-top

  common.absl_logging()  # progress lines come through absl logging
  last = common.guarded(PROGRAM, loop.train, config, fv["workdir"].value)
  if jax.process_index() == 0 and last:
    print("final: " + "  ".join(f"{k} {v:.4g}" for k, v in sorted(last.items())))
  return 0


if __name__ == "__main__":
  sys.exit(main())
