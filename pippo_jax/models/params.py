"""Parameter trees of `Pippo`: abstract shapes, "/"-joined paths, counts and the shape check.

Shapes come from `jax.eval_shape` of the model's init: nothing is allocated, so full-size configs
are cheap. Paths are "/"-joined module and parameter names, e.g.
`generator/blocks/in_proj/kernel` (the DiT blocks are stacked on a leading block axis).
"""

import math
from typing import Any

import flax.linen as nn
import jax
from flax import traverse_util

from pippo_jax.models.config import ModelConfig
from pippo_jax.models.pippo import Pippo, dummy_inputs


def abstract(cfg: ModelConfig, boxed: bool = False):
  """Parameter ShapeDtypeStructs of `Pippo(cfg)`; `boxed` keeps the `nn.LogicallyPartitioned`
  wrappers (their logical axis names give the shardings)."""
  x_t, t, cond = dummy_inputs(cfg, 1)
  params = jax.eval_shape(Pippo(cfg).init, jax.random.key(0), x_t, t, cond)["params"]
  return params if boxed else nn.unbox(params)


def flat(tree) -> dict[str, Any]:
  """{"a/b/c": leaf} of a nested parameter dict."""
  return traverse_util.flatten_dict(nn.unbox(tree), sep="/")


def count(tree) -> int:
  """Number of parameters in a tree (of arrays or ShapeDtypeStructs) or a single leaf."""
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(nn.unbox(tree))))


def check_params(params, model_config) -> None:
  """Raise ValueError listing parameters missing, unexpected or of the wrong shape for the model
  config (a ModelConfig, or the `model` section of a config)."""
  cfg = (
    model_config if isinstance(model_config, ModelConfig) else ModelConfig.from_config(model_config)
  )
  want = {k: tuple(v.shape) for k, v in flat(abstract(cfg)).items()}
  got = {k: tuple(getattr(v, "shape", ())) for k, v in flat(params).items()}
  missing = sorted(set(want) - set(got))
  unknown = sorted(set(got) - set(want))
  shapes = sorted(
    f"{k}: {got[k]} (config wants {want[k]})" for k in set(want) & set(got) if got[k] != want[k]
  )
  if missing or unknown or shapes:
    raise ValueError(
      "parameters do not match the model config:"
      + (f"\n  missing ({len(missing)}): {missing}" if missing else "")
      + (f"\n  unexpected ({len(unknown)}): {unknown}" if unknown else "")
      + (f"\n  wrong shape ({len(shapes)}):\n    " + "\n    ".join(shapes) if shapes else "")
    )
