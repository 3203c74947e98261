"""The one checkpoint layout, and its readers and writers.

  ROOT/checkpoints/<step>/
    params   the model parameters (`ocp.args.StandardSave`): float32, the Flax layout of
             `Pippo(cfg)` with the DiT / ControlMLP blocks stacked on a leading block axis
    config   the resolved stage config (`ocp.args.JsonSave` of `config.to_dict()`)
    ema      training runs with `train.ema_decay` > 0: the EMA copy of the parameters
    train    training runs: the rest of the TrainState (AdamW state, step, PRNG key, ...)
    data     training runs: the Grain iterator state, one file per process

A training workdir is a ROOT; so is the output of `pippo-convert` (step 0, `params` and `config`
only). Every consumer (resume, stage transition, conversion, sampling, export, evaluation) reads
through this module: `read_params(ROOT)` for the parameters of the newest step, `restore_latest`
for a whole training state. One compatibility rule, `check_model_config`: the model keys must
agree except `RUNTIME_KEYS`, which change neither the parameters nor the computed function.

Saves are async and keep the last `train.keep_checkpoints`; a restore reads every array straight
into the shardings of the current run, so a run may resume on a different mesh. A damaged newest
step (an item missing or unreadable) is set aside in `ROOT/checkpoints_damaged/` and the run resumes
from the newest intact one. Turning `train.ema_decay` on for an existing run starts the EMA from
the restored parameters.
"""

import json
import logging
import os
import time
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from pippo_jax.errors import CheckpointError, ConfigError

SUBDIR = "checkpoints"
ITEMS = ("params", "config", "ema", "train", "data")
# Model keys that change neither the parameters nor the function the model computes.
RUNTIME_KEYS = frozenset(
  {
    "attention_impl",
    "attention_block_q",
    "attention_block_kv",
    "dtype",
    "remat_policy",
    "scan_blocks",
  }
)


def config_dict(config: Any) -> dict:
  """A ConfigDict or mapping as plain JSON data (tuples become lists)."""
  d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return json.loads(json.dumps(d))


def check_model_config(saved: Any, config: Any) -> None:
  """Raise ConfigError naming every model key whose value differs between two configs."""
  a, b = config_dict(saved).get("model", {}), config_dict(config).get("model", {})
  diff = sorted(
    k
    for k in set(a) | set(b)
    if k not in RUNTIME_KEYS and a.get(k, "<absent>") != b.get(k, "<absent>")
  )
  if diff:
    raise ConfigError(
      "the checkpoint was written for a different model config; mismatching keys: "
      + ", ".join(
        f"model.{k} (checkpoint {a.get(k, '<absent>')!r}, given {b.get(k, '<absent>')!r})"
        for k in diff
      )
    )


def make_manager(
  root: str, keep: int | None = None, save_every: int = 1, read_only: bool = False
) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep,
    save_interval_steps=save_every,
    enable_async_checkpointing=not read_only,
    create=not read_only,
    read_only=read_only,
  )
  handlers = {
    "params": ocp.StandardCheckpointHandler(),
    "ema": ocp.StandardCheckpointHandler(),
    "train": ocp.StandardCheckpointHandler(),
    "config": ocp.JsonCheckpointHandler(),
    "data": grain.checkpoint.CheckpointHandler(),
  }
  return ocp.CheckpointManager(
    epath.Path(os.path.abspath(root)) / SUBDIR,
    options=options,
    item_names=ITEMS,
    item_handlers=handlers,
  )


def _split(state) -> dict:
  """TrainState -> the arrays of the `params`, `ema` and `train` items."""
  items = {"params": state.params, "train": state.replace(params=None, ema_params=None)}
  if state.ema_params is not None:
    items["ema"] = state.ema_params
  return items


# ---------------------------------------------------------------------------------------------
# Parameters only: conversion, stage transitions, sampling, export.


def write_params(root: str, params: dict, config: Any) -> None:
  """Write `params` and the config as step 0 of ROOT (which must not hold a checkpoint yet).
  The parameters are checked against `config.model` first."""
  from pippo_jax.models import params as params_lib  # pylint: disable=g-import-not-at-top

  if os.path.isdir(os.path.join(root, SUBDIR)):
    raise FileExistsError(f"{root} already holds checkpoints")
  config = config_dict(config)
  params_lib.check_params(params, config["model"])
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  with make_manager(root) as manager:
    manager.save(
      0,
      args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), config=ocp.args.JsonSave(config)
      ),
    )
    manager.wait_until_finished()


def read_params(
  root: str, config: Any = None, step: int | None = None, ema: bool = False
) -> tuple[dict, dict]:
  """(parameters as float32 NumPy, saved config) of ROOT's newest step (or `step`).

  `ema=True` reads the EMA copy where the run kept one. With `config`, the saved model config
  must be compatible (`check_model_config`). Arrays land on the host, whatever mesh wrote them.
  """
  if not os.path.isdir(os.path.join(root, SUBDIR)):
    raise FileNotFoundError(
      f"{root} holds no checkpoints (no {SUBDIR}/ folder): give a training "
      "workdir or a `pippo-convert` output"
    )
  with make_manager(root, read_only=True) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{os.path.join(root, SUBDIR)} holds no finished checkpoint")
    saved = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    if config is not None:
      check_model_config(saved, config)
    item = (
      "ema" if ema and (epath.Path(manager.directory) / str(step) / "ema").exists() else "params"
    )
  # Restore onto this process's first device: the saved shardings name the writing run's devices
  # (another count, mesh or process layout fails orbax's topology check).
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  path = epath.Path(os.path.abspath(root)) / SUBDIR / str(step) / item
  with ocp.StandardCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(path).item_metadata
    target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata
    )
    params = checkpointer.restore(path, target)
  return jax.tree.map(lambda x: np.asarray(x, np.float32), params), saved


# ---------------------------------------------------------------------------------------------
# Whole training states: save and resume.


class IteratorSnapshot:
  """A data iterator's state at one moment, saved in its place (grain's checkpoint handler calls
  `get_state`): the training loop reads one batch ahead of the step it checkpoints."""

  def __init__(self, iterator):
    state = iterator.get_state()  # a dict (grain.DatasetIterator) or JSON bytes (others)
    self._state = state if isinstance(state, bytes) else json.dumps(state).encode()

  def get_state(self) -> bytes:
    return self._state


def save(
  manager: ocp.CheckpointManager, step: int, state, data_iterator, config: dict, force: bool = False
) -> bool:
  """Save a TrainState, the data iterator and the config at `step` if due (or `force`).

  `config` is `config_dict` of the run's config (the loop converts it once, not every step).
  """
  items = {k: ocp.args.StandardSave(v) for k, v in _split(state).items()}
  return manager.save(
    step,
    args=ocp.args.Composite(
      **items, data=grain.checkpoint.CheckpointSave(data_iterator), config=ocp.args.JsonSave(config)
    ),
    force=force,
  )


def _with_shardings(abstract, shardings):
  """ShapeDtypeStructs carrying the target shardings (what orbax restores into)."""
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )


def _restore_step(manager, step: int, abstract_state, shardings, data_iterator, config):
  """The TrainState of one step, in this run's layout (EMA on or off)."""
  saved = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
  check_model_config(saved, config)
  saved_ema = float(saved.get("train", {}).get("ema_decay", 0.0)) > 0
  run_ema = abstract_state.ema_params is not None
  if saved_ema and not run_ema:
    decay = saved["train"]["ema_decay"]
    raise ConfigError(
      f"train.ema_decay=0, but the checkpoint at step {step} in {manager.directory} keeps EMA "
      f"parameters (train.ema_decay={decay}): pass --config.train.ema_decay={decay} to resume "
      "it, or --config.train.init_from=<that workdir> in a new workdir to start over without EMA"
    )
  targets = _split(_with_shardings(abstract_state, shardings))
  if not saved_ema:
    targets.pop("ema", None)
  restored = manager.restore(
    step,
    args=ocp.args.Composite(
      **{k: ocp.args.StandardRestore(v) for k, v in targets.items()},
      data=grain.checkpoint.CheckpointRestore(data_iterator),
    ),
  )
  params = restored["params"]
  ema = restored["ema"] if saved_ema else None
  if run_ema and not saved_ema:
    logging.warning(
      "train.ema_decay=%s: the checkpoint at step %d has no EMA parameters; the EMA "
      "starts from its parameters",
      config.train.ema_decay,
      step,
    )
    ema = jax.tree.map(jnp.copy, params)
  return restored["train"].replace(params=params, ema_params=ema)


def restore_latest(
  manager: ocp.CheckpointManager, abstract_state, shardings, data_iterator, config
):
  """Restore the newest intact step into the current shardings; returns (state, step) or
  (None, 0).

  A step that cannot be read (an item missing or damaged) is skipped with a warning saying why,
  and the next older step is tried; once one restores, the unreadable newer ones are moved to
  ROOT/checkpoints_damaged/ (nothing is deleted) so that new saves can follow. When no step
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
      logging.warning(
        "checkpoint step %d in %s cannot be restored (%s); trying the next older step",
        step,
        manager.directory,
        reason,
      )
      continue
    if damaged:
      _set_aside(manager, damaged)
      logging.warning("resuming from step %d, the newest intact checkpoint", step)
    logging.info("restored step %d from %s", step, manager.directory)
    return state, step
  if damaged:  # nothing restores: a mismatch with this run, not damage; move nothing
    raise CheckpointError(
      f"no checkpoint in {manager.directory} can be restored (steps "
      f"{', '.join(map(str, damaged))}; the newest: {reasons[0]}); the log "
      "above has each reason"
    )
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
