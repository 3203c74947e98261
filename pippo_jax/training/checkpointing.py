"""Orbax checkpoints of a training run: train state, data-iterator state and resolved config.

`WORKDIR/checkpoints/<step>/` holds three items: `state` (the sharded TrainState), `data` (the Grain
iterator's state, one file per process) and `config` (the resolved config as JSON). Saves are async
and keep the last `train.keep_checkpoints`; a restore reads every array straight into the shardings
of the current run, so a run may resume on a different mesh. A damaged newest step (an item
missing or unreadable) is set aside in `WORKDIR/checkpoints_damaged/` and the run resumes from the
newest intact one. Turning `train.ema_decay` on for an existing run starts the EMA from the
restored parameters.
"""
import json
import logging
import time

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from pippo_jax.config_lib import ConfigError

ITEMS = ("state", "data", "config")


class CheckpointError(RuntimeError):
  """No checkpoint of a workdir can be restored into this run."""


def make_manager(workdir: str, keep: int, save_every: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every,
                                         enable_async_checkpointing=True, create=True)
  handlers = {"state": ocp.StandardCheckpointHandler(), "config": ocp.JsonCheckpointHandler(),
              "data": grain.checkpoint.CheckpointHandler()}
  return ocp.CheckpointManager(epath.Path(workdir) / "checkpoints", options=options,
                               item_names=ITEMS, item_handlers=handlers)


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator, config,
         force: bool = False) -> bool:
  """Save at `step` if due (or `force`); returns whether a save started."""
  return manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(data_iterator),
      config=ocp.args.JsonSave(json.loads(config.to_json()))), force=force)


def abstract_with_shardings(abstract_state, shardings):
  """ShapeDtypeStructs carrying the target shardings (what orbax restores into)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_state, shardings)


def check_model_config(saved: dict, config) -> None:
  """Refuse a checkpoint whose model differs from the run's (naming the keys)."""
  ours = json.loads(config.to_json())["model"]
  theirs = saved.get("model", {})
  runtime = {"attention_impl", "attention_block_q", "attention_block_kv", "dtype", "remat_policy",
             "scan_blocks"}
  diff = sorted(k for k in set(ours) | set(theirs)
                if k not in runtime and ours.get(k) != theirs.get(k))
  if diff:
    details = ", ".join(f"model.{k} (checkpoint {theirs.get(k)!r}, run {ours.get(k)!r})"
                        for k in diff)
    raise ConfigError(f"checkpoint was written by an incompatible config: {details}")


def _restore_step(manager, step: int, abstract_state, shardings, data_iterator, config):
  """The TrainState of one step, in this run's layout (EMA on or off)."""
  saved = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
  check_model_config(saved, config)
  saved_ema = float(saved.get("train", {}).get("ema_decay", 0.0)) > 0
  run_ema = abstract_state.ema_params is not None
  if saved_ema and not run_ema:
    raise ConfigError(
        f"train.ema_decay=0, but the checkpoint at step {step} in {manager.directory} keeps EMA "
        f"parameters (train.ema_decay={saved['train']['ema_decay']}): pass "
        f"--config.train.ema_decay={saved['train']['ema_decay']} to resume it, or "
        "--config.train.init_from=<that workdir> in a new workdir to start over without EMA")
  if run_ema and not saved_ema:  # restore without EMA, then start it from the parameters
    abstract_state = abstract_state.replace(ema_params=None)
    shardings = shardings.replace(ema_params=None)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_with_shardings(abstract_state, shardings)),
      data=grain.checkpoint.CheckpointRestore(data_iterator)))
  state = restored["state"]
  if run_ema and not saved_ema:
    logging.warning("train.ema_decay=%s: the checkpoint at step %d has no EMA parameters; the EMA "
                    "starts from its parameters", config.train.ema_decay, step)
    state = state.replace(ema_params=jax.tree.map(jnp.copy, state.params))
  return state


def restore_latest(manager: ocp.CheckpointManager, abstract_state, shardings, data_iterator,
                   config):
  """Restore the newest intact step into the current shardings; returns (state, step) or
  (None, 0).

  A step that cannot be read (an item missing or damaged) is skipped with a warning saying why,
  and the next older step is tried; once one restores, the unreadable newer ones are moved to
  WORKDIR/checkpoints_damaged/ (nothing is deleted) so that new saves can follow. When no step
  restores, the cause is a mismatch with this run rather than damage: nothing is moved and the
  error is raised. A checkpoint from an incompatible config is refused (ConfigError).
  """
  damaged, reasons = [], []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      state = _restore_step(manager, step, abstract_state, shardings, data_iterator, config)
    except ConfigError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
      damaged.append(step)
      reasons.append(reason)
      logging.warning("checkpoint step %d in %s cannot be restored (%s); trying the next older "
                      "step", step, manager.directory, reason)
      continue
    if damaged:
      _set_aside(manager, damaged)
      logging.warning("resuming from step %d, the newest intact checkpoint", step)
    logging.info("restored step %d from %s", step, manager.directory)
    return state, step
  if damaged:  # nothing restores: a mismatch with this run, not damage; move nothing
    raise CheckpointError(f"no checkpoint in {manager.directory} can be restored (steps "
                       f"{', '.join(map(str, damaged))}; the newest: {reasons[0]}); the log "
                       "above has each reason")
  return None, 0


def _set_aside(manager: ocp.CheckpointManager, steps) -> None:
  """Move unreadable steps out of the manager's sight (to checkpoints_damaged/, process 0)."""
  root = epath.Path(manager.directory)
  aside = root.parent / f"{root.name}_damaged"
  if jax.process_index() == 0:
    aside.mkdir(parents=True, exist_ok=True)
    for step in steps:
      target = aside / str(step)
      if target.exists():
        target = aside / f"{step}.{int(time.time())}"
      (root / str(step)).rename(target)
      logging.warning("moved the damaged checkpoint step %d to %s", step, target)
  multihost_utils.sync_global_devices("damaged checkpoints set aside")
  manager.reload()
