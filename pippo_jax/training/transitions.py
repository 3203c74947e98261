"""Stage transitions: start M2 from a P1 checkpoint, P3 from M2 (and change resolution).

Parameters whose path and shape match are loaded; new modules (the camera MLP in M2, ControlMLP in
P3) keep their zero-initialised values, so the model's output is unchanged at the start of the new
stage; parameters whose shape changed (the position tables at a new resolution) keep their fresh
sin-cos initialisation. A table of loaded / new / reshaped / dropped parameters is printed. The
source parameters come from `pippo_jax.checkpoints.read_params` (a training workdir or a
`pippo-convert` output).
"""

import jax
import numpy as np
from flax import traverse_util

from pippo_jax.models import params as params_lib


def merge(target_params, source_params):
  """Copy matching leaves of `source_params` into `target_params` -> (params, report rows)."""
  src, target = params_lib.flat(source_params), params_lib.flat(target_params)
  rows, out = [], dict(target)
  for name, leaf in target.items():
    if name not in src:
      rows.append((name, "new", tuple(leaf.shape)))
    elif tuple(src[name].shape) != tuple(leaf.shape):
      rows.append(
        (name, f"new (shape {tuple(src[name].shape)} -> {tuple(leaf.shape)})", tuple(leaf.shape))
      )
    else:
      out[name] = jax.device_put(np.asarray(src[name], leaf.dtype), leaf.sharding)
      rows.append((name, "loaded", tuple(leaf.shape)))
  for name in sorted(set(src) - set(target)):
    rows.append((name, "dropped", tuple(src[name].shape)))
  return traverse_util.unflatten_dict(out, sep="/"), rows


def format_table(rows) -> str:
  counts = {}
  for _, status, shape in rows:
    key = status.split(" ")[0]
    n, p = counts.get(key, (0, 0))
    counts[key] = (n + 1, p + int(np.prod(shape)))
  lines = [f"{'parameter':<58}{'status':<34}shape"]
  lines += [f"{name:<58}{status:<34}{shape}" for name, status, shape in rows]
  lines.append(
    "summary: "
    + ", ".join(f"{k} {n} tensors / {p:,} params" for k, (n, p) in sorted(counts.items()))
  )
  return "\n".join(lines)
