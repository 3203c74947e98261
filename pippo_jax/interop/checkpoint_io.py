"""Our checkpoint format: parameters plus the resolved config, in an orbax checkpoint directory.

  DIR/0/params   `ocp.args.StandardSave` of the params tree: float32 arrays, the Flax layout of
                 `Pippo(cfg)` with the DiT / ControlMLP blocks stacked on a leading block axis
  DIR/0/config   `ocp.args.JsonSave` of the resolved stage config (`config.to_dict()`)

It is written by `orbax.checkpoint.CheckpointManager` at step 0 with the item names `params` and
`config`, so a training run can restore it the same way to start from it:

  with ocp.CheckpointManager(DIR, item_names=("params", "config")) as mngr:
    r = mngr.restore(0, args=ocp.args.Composite(params=ocp.args.StandardRestore(),
                                                  config=ocp.args.JsonRestore()))

`load_params(DIR, config)` does that and checks that the checkpoint was written for the given
model config. Keys that only change how the model runs (`RUNTIME_KEYS`) are not compared.
"""
import json
import os
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from pippo_jax.models.config import ModelConfig
from pippo_jax.models.pippo import Pippo, dummy_inputs

ITEMS = ("params", "config")
STEP = 0
# Model keys that change neither the parameters nor the function the model computes.
RUNTIME_KEYS = frozenset({"attention_impl", "attention_block_q", "attention_block_kv", "dtype",
                          "remat_policy"})


def config_dict(config: Any) -> dict:
  """A ConfigDict or mapping as plain JSON data (tuples become lists)."""
  d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return json.loads(json.dumps(d))


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  """'/'-joined parameter path -> shape of `Pippo(cfg)` (via jax.eval_shape; nothing allocated)."""
  x_t, t, cond = dummy_inputs(cfg, batch=1)
  variables = jax.eval_shape(Pippo(cfg).init, jax.random.key(0), x_t, t, cond)
  return _flat_shapes(nn.unbox(variables["params"]))


def _flat_shapes(tree) -> dict[str, tuple[int, ...]]:
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(np.shape(x))
          for path, x in leaves}


def check_params(params: dict, cfg: ModelConfig) -> None:
  """Raise ValueError listing parameters missing, unexpected or of the wrong shape for `cfg`."""
  want, got = param_shapes(cfg), _flat_shapes(params)
  missing = sorted(set(want) - set(got))
  unknown = sorted(set(got) - set(want))
  shapes = sorted(f"{k}: {got[k]} (config wants {want[k]})"
                  for k in set(want) & set(got) if got[k] != want[k])
  if missing or unknown or shapes:
    raise ValueError("parameters do not match the model config:"
                     + (f"\n  missing ({len(missing)}): {missing}" if missing else "")
                     + (f"\n  unexpected ({len(unknown)}): {unknown}" if unknown else "")
                     + (f"\n  wrong shape ({len(shapes)}):\n    " + "\n    ".join(shapes)
                        if shapes else ""))


def check_config(saved: dict, given: Any) -> None:
  """Raise ValueError naming every model key whose value differs between two configs."""
  a, b = config_dict(saved).get("model", {}), config_dict(given).get("model", {})
  diff = sorted(k for k in set(a) | set(b)
                if k not in RUNTIME_KEYS and a.get(k, "<absent>") != b.get(k, "<absent>"))
  if diff:
    raise ValueError("the checkpoint was written for a different model config; mismatching keys: "
                     + ", ".join(f"model.{k} (checkpoint {a.get(k, '<absent>')!r}, given "
                                 f"{b.get(k, '<absent>')!r})" for k in diff))


def _manager(directory: str) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(os.path.abspath(directory), item_names=ITEMS)


def save_params(directory: str, params: dict, config: Any) -> None:
  """Write `params` (checked against `config.model`) and the config as step 0 of `directory`.

  Raises FileExistsError if `directory` exists and is not empty.
  """
  if os.path.isdir(directory) and os.listdir(directory):
    raise FileExistsError(f"{directory} exists and is not empty")
  config = config_dict(config)
  check_params(params, ModelConfig.from_config(config["model"]))
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  with _manager(directory) as mngr:
    mngr.save(STEP, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                            config=ocp.args.JsonSave(config)))
    mngr.wait_until_finished()


def load_params(directory: str, config: Any = None) -> tuple[dict, dict]:
  """(params tree of float32 NumPy arrays, config dict) from a checkpoint directory.

  Reads step 0 (or the latest step if there is no step 0). With `config` (a ConfigDict or dict),
  raises ValueError naming the model keys whose values differ from the checkpoint's.
  """
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no checkpoint directory {directory}")
  with _manager(directory) as mngr:
    steps = mngr.all_steps()
    if not steps:
      raise FileNotFoundError(f"{directory} holds no orbax checkpoint")
    step = STEP if STEP in steps else max(steps)
    restored = mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(),
                                                          config=ocp.args.JsonRestore()))
  saved = restored.config
  if config is not None:
    check_config(saved, config)
  return jax.tree.map(lambda x: np.asarray(x, np.float32), restored.params), saved
