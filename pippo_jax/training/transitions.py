"""Stage transitions: start M2 from a P1 checkpoint, P3 from M2 (and change resolution).

Parameters whose path and shape match are loaded; new modules (the camera MLP in M2, ControlMLP in
P3) keep their zero-initialised values, so the model's output is unchanged at the start of the new
stage; parameters whose shape changed (the position tables at a new resolution) keep their fresh
sin-cos initialisation. A table of loaded / new / reshaped / dropped parameters is printed.
"""

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath


def _flat(tree) -> dict[str, object]:
  return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def read_params(path: str) -> dict:
  """Parameters (host NumPy) of a training workdir's newest checkpoint, or of a converted
  checkpoint (`pippo-convert` output). Small-model friendly: everything lands on the host."""
  root = epath.Path(path)
  ckpt_dir = root / "checkpoints" if (root / "checkpoints").exists() else root
  with ocp.CheckpointManager(ckpt_dir) as manager:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {ckpt_dir}")
    item = "state" if (ckpt_dir / str(step) / "state").exists() else "params"
  # Restore onto this process's first device: the saved shardings name the writing run's devices
  # (another count, mesh or process layout fails orbax's topology check).
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  with ocp.StandardCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(ckpt_dir / str(step) / item).item_metadata
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          metadata)
    restored = checkpointer.restore(ckpt_dir / str(step) / item, target)
  params = restored["params"] if item == "state" else restored
  return jax.tree.map(np.asarray, params)


def merge(target_params, source_params):
  """Copy matching leaves of `source_params` into `target_params` -> (params, report rows)."""
  src = _flat(source_params)
  rows, loaded = [], {}
  for name, leaf in _flat(target_params).items():
    if name not in src:
      rows.append((name, "new", tuple(leaf.shape)))
    elif tuple(src[name].shape) != tuple(leaf.shape):
      rows.append((name, f"new (shape {tuple(src[name].shape)} -> {tuple(leaf.shape)})",
                   tuple(leaf.shape)))
    else:
      loaded[name] = src[name]
      rows.append((name, "loaded", tuple(leaf.shape)))
  for name in sorted(set(src) - set(_flat(target_params))):
    rows.append((name, "dropped", tuple(src[name].shape)))

  def pick(path, leaf):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    if name not in loaded:
      return leaf
    return jax.device_put(np.asarray(loaded[name], leaf.dtype), leaf.sharding)

  return jax.tree_util.tree_map_with_path(pick, target_params), rows


def format_table(rows) -> str:
  counts = {}
  for _, status, shape in rows:
    key = status.split(" ")[0]
    n, p = counts.get(key, (0, 0))
    counts[key] = (n + 1, p + int(np.prod(shape)))
  lines = [f"{'parameter':<58}{'status':<34}shape"]
  lines += [f"{name:<58}{status:<34}{shape}" for name, status, shape in rows]
  lines.append("summary: " + ", ".join(f"{k} {n} tensors / {p:,} params"
                                         for k, (n, p) in sorted(counts.items())))
  return "\n".join(lines)
