"""Orbax checkpoints of a training run: train state, data-iterator state and resolved config.

`WORKDIR/checkpoints/<step>/` holds three items: `state` (the sharded TrainState), `data` (the Grain
iterator's state, one file per process) and `config` (the resolved config as JSON). Saves are async
and keep the last `train.keep_checkpoints`; a restore reads every array straight into the shardings
of the current run, so a run may resume on a different mesh.
"""
import json
import logging

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

ITEMS = ("state", "data", "config")


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
    raise ValueError(f"checkpoint was written by an incompatible config: {details}")


def restore_latest(manager: ocp.CheckpointManager, abstract_state, shardings, data_iterator,
                   config):
  """Restore the newest step into the current shardings; returns (state, step) or (None, 0)."""
  step = manager.latest_step()
  if step is None:
    return None, 0
  saved_config = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  check_model_config(saved_config["config"], config)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_with_shardings(abstract_state, shardings)),
      data=grain.checkpoint.CheckpointRestore(data_iterator)))
  logging.info("restored step %d from %s", step, manager.directory)
  return restored["state"], step
