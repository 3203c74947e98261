"""Classifier-free guidance over Pippo's three condition groups.

Condition groups (keys of every `drop` dict):
  "ref"      the reference image tokens   -> replaced by a learned null token,
  "cam"      the camera-pose embedding     -> replaced by a learned null token,
  "control"  the ControlMLP inputs (Plücker rays, Spatial Anchor) -> zeros.
The denoiser is called as `model_fn(x_t, t, drop)` with `drop[g]` a bool array [B]
(True = that sample sees the null version of group g).

Training: `sample_condition_drops` draws each group's drop independently per
sample with its own probability (Pippo's released configs use 0 for all three).

Sampling, several groups (nested guidance, as InstructPix2Pix does for two
conditions). The groups that get a scale are ordered g_1..g_k (default order
ref, cam, control); c_j is the model output with g_1..g_j kept and g_{j+1}..g_k
dropped, so c_0 is fully unconditional (among the guided groups; unguided groups
are always kept) and c_k fully conditional:

  out = c_0 + sum_{j=1..k} s_j (c_j - c_{j-1})

All s_j = s gives plain CFG, c_0 + s (c_k - c_0); all s_j = 1 gives c_k. With the
SV3D-style triangular option a group's scale varies over the target views of an
orbit (view 0 = the front/reference side, view V/2 = the back):

  s_j(v) = 1 + (s_j - 1) w_v,   w_v = 1 - |1 - 2 v / V|      (0 at v = 0, 1 at V/2)

CFG-rescale (Lin et al. 2023, eq. 15-16) with factor phi then pulls the standard
deviation back to that of c_k: out <- phi out std(c_k)/std(out) + (1 - phi) out,
with std taken per sample and per view (over all axes after [B, V]).

All k + 1 passes go through ONE call of model_fn on a batch of (k + 1) B
(pass-major: rows [j B, (j + 1) B) are pass j), so model_fn must tile its own
batch-B conditioning (`tile_batch`). Scales and phi are ordinary traced values:
changing them never recompiles, and scales of 1.0 reproduce the conditional
output with the same compiled function. Only the set of guided groups is static.
"""

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

CONDITION_GROUPS = ("ref", "cam", "control")

ModelFn = Callable[[jnp.ndarray, jnp.ndarray, Mapping[str, jnp.ndarray]], jnp.ndarray]


def model_groups(cfg) -> tuple[str, ...]:
  """The condition groups a model config reads (those guidance may drop), in nesting order."""
  return ("ref",) + ("cam",) * cfg.use_cam_mlp + ("control",) * cfg.use_control_mlp


def _check_groups(names, where: str) -> None:
  unknown = sorted(set(names) - set(CONDITION_GROUPS))
  if unknown:
    raise ValueError(
      f"{where}: unknown condition group(s) {unknown}; expected a subset of {CONDITION_GROUPS}."
    )


def no_drops(batch: int) -> dict:
  """A drop dict that keeps every condition for every sample."""
  return {g: jnp.zeros((batch,), bool) for g in CONDITION_GROUPS}


def sample_condition_drops(key: jax.Array, batch: int, probs: Mapping[str, float]) -> dict:
  """Training-time condition dropout: {group: bool [B]}, True = drop.

  Each group is dropped independently (its own key, `fold_in(key, index)`) with
  probability probs[group]; groups missing from probs are never dropped.
  """
  _check_groups(probs, "sample_condition_drops")
  for group, p in probs.items():
    if isinstance(p, (int, float)) and not 0.0 <= p <= 1.0:
      raise ValueError(
        f"sample_condition_drops: probability for {group!r} must be in [0, 1], got {p}."
      )
  drops = {}
  for index, group in enumerate(CONDITION_GROUPS):
    p = probs.get(group, 0.0)
    drops[group] = jax.random.bernoulli(jax.random.fold_in(key, index), p, (batch,))
  return drops


def triangular_view_weights(num_views: int) -> np.ndarray:
  """SV3D triangle over an orbit: w_v = 1 - |1 - 2 v / V|, in [0, 1]."""
  v = np.arange(num_views, dtype=np.float64)
  return 1.0 - np.abs(1.0 - 2.0 * v / num_views)


def tile_batch(tree, reps: int):
  """Tiles every leaf `reps` times along axis 0 (pass-major, like the passes)."""
  return jax.tree_util.tree_map(lambda x: jnp.tile(x, (reps,) + (1,) * (jnp.ndim(x) - 1)), tree)


def guidance_drops(batch, guided: Sequence[str]) -> dict:
  """Drop masks [(k + 1) B] for the nested passes (pass j keeps guided[:j]); `batch` may be
  symbolic (a `jax.export` shape)."""
  passes = len(guided) + 1
  drops = {}
  for group in CONDITION_GROUPS:
    if group in guided:
      first_kept = guided.index(group) + 1
      per_pass = np.arange(passes) < first_kept
    else:
      per_pass = np.zeros(passes, bool)
    drops[group] = jnp.broadcast_to(jnp.asarray(per_pass)[:, None], (passes, batch)).reshape(-1)
  return drops


def _view_scale(scale, ndim: int, num_views: int, triangular: bool):
  """A group's scale, shaped to broadcast against [B, V, ...] outputs."""
  scale = jnp.asarray(scale, jnp.float32)
  if not triangular:
    return scale
  w = jnp.asarray(triangular_view_weights(num_views), jnp.float32)
  return (1.0 + (scale - 1.0) * w).reshape((1, num_views) + (1,) * (ndim - 2))


def _std(x):
  """Per-sample, per-view standard deviation over the axes after [B, V]."""
  axes = tuple(range(2, x.ndim)) if x.ndim > 2 else tuple(range(1, x.ndim))
  return jnp.std(x, axis=axes, keepdims=True)


def combine_guidance(
  outputs: jnp.ndarray, scales: Sequence, *, rescale=0.0, triangular: bool = False
) -> jnp.ndarray:
  """Nested CFG combination of stacked pass outputs [k + 1, B, V, ...]."""
  outputs = outputs.astype(jnp.float32)
  if outputs.shape[0] != len(scales) + 1:
    raise ValueError(
      f"{outputs.shape[0]} passes need {outputs.shape[0] - 1} scales, got {len(scales)}."
    )
  ndim, num_views = outputs.ndim - 1, outputs.shape[2]
  guided = outputs[0]
  for j, scale in enumerate(scales, start=1):
    s = _view_scale(scale, ndim, num_views, triangular)
    guided = guided + s * (outputs[j] - outputs[j - 1])
  phi = jnp.asarray(rescale, jnp.float32)
  ratio = _std(outputs[-1]) / jnp.maximum(_std(guided), 1e-12)
  return phi * ratio * guided + (1.0 - phi) * guided


def guided_eps_fn(
  model_fn: ModelFn,
  scales: Mapping[str, float],
  *,
  rescale=0.0,
  triangular: bool = False,
  order: Sequence[str] = CONDITION_GROUPS,
):
  """Wraps `model_fn(x_t, t, drop)` into a guided `eps_fn(x_t, t)`.

  Args:
    model_fn: the denoiser; must accept a batch of (k + 1) B and tile its
      conditioning to match (see the module docstring).
    scales: {group: scale} for the guided groups (static set; values may be
      traced). An empty dict gives the plain conditional model, one pass.
    rescale: CFG-rescale factor phi in [0, 1]; 0 disables it.
    triangular: vary each scale over the views with the SV3D triangle.
    order: nesting order of the groups (first = guided first, from c_0).
  """
  _check_groups(scales, "guided_eps_fn")
  _check_groups(order, "guided_eps_fn order")
  guided = tuple(g for g in order if g in scales)
  if len(guided) != len(scales):
    raise ValueError(
      f"guided_eps_fn: every guided group must appear in order "
      f"{tuple(order)}, got scales for {sorted(scales)}."
    )
  group_scales = tuple(scales[g] for g in guided)

  def eps_fn(x_t, t):
    batch = x_t.shape[0]
    if not guided:
      return model_fn(x_t, t, no_drops(batch))
    passes = len(guided) + 1
    out = model_fn(tile_batch(x_t, passes), tile_batch(t, passes), guidance_drops(batch, guided))
    out = out.reshape((passes, batch) + out.shape[1:])
    return combine_guidance(out, group_scales, rescale=rescale, triangular=triangular).astype(
      x_t.dtype
    )

  return eps_fn
