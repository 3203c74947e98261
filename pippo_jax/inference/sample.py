"""Sampling novel views from a batch, and the image grids written during training."""

import io

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from pippo_jax.diffusion import guidance, sampler
from pippo_jax.models import codec as codec_lib
from pippo_jax.models import inputs

# Condition entries with one value per target view (the rest describe the reference).
VIEW_KEYS = ("cam_pose", "plucker", "anchor_latent")


def view_chunks(num_views: int, batch_views: int, anchor_views: int = 0) -> np.ndarray | None:
  """How to denoise more views than fit in one pass: [C, K] view indices (None: all at once).

  Every pass sees the same `anchor_views` views (spread evenly over the orbit) plus the next
  K - anchor_views of the others; the last pass wraps around to the first others. At every step
  each view's prediction is the mean over the passes that saw it, so all passes keep attending to
  shared anchor views that are denoised together, which is what keeps chunks consistent.
  """
  if batch_views <= 0 or num_views <= batch_views:
    return None
  if not 0 <= anchor_views < batch_views:
    raise ValueError(f"anchor_views={anchor_views} must be in [0, batch_views={batch_views}).")
  anchors = np.unique(np.linspace(0, num_views, anchor_views, endpoint=False).astype(int))
  others = np.setdiff1d(np.arange(num_views), anchors)
  per = batch_views - len(anchors)
  count = -(-len(others) // per)
  fill = np.resize(others, count * per).reshape(count, per)
  return np.concatenate([np.broadcast_to(anchors, (count, len(anchors))), fill], 1)


def num_target_views(batch: dict) -> int:
  for key in ("target_images", "target_cam_pose", "target_plucker", "target_anchor"):
    if key in batch:
      return batch[key].shape[1]
  raise KeyError("the batch has no target views (target_images, _cam_pose, _plucker or _anchor)")


def guided_denoiser(
  model,
  params,
  cond,
  *,
  scales=None,
  rescale=0.0,
  triangular=False,
  attention_biasing=False,
  chunks: np.ndarray | None = None,
):
  """The sampler's `eps_fn(x_t, t)` (one DDIM step's model call): the model on the conditions
  `cond` (`inputs.conditions`), run once per guided group on the tiled batch and combined by
  classifier-free guidance (`scales`, `rescale`, `triangular`), the views in `chunks` at a time
  (see `sample_views`)."""
  b = next(iter(cond.values())).shape[0]

  def apply(x_t, t, c, drop):
    return model.apply({"params": params}, x_t, t, c, drop, attention_biasing=attention_biasing)

  def model_fn(x_t, t, drop):
    tiled = guidance.tile_batch(cond, x_t.shape[0] // b)
    if chunks is None:
      return apply(x_t, t, tiled, drop)
    v = x_t.shape[1]

    def one(idx):
      c = {k: (x[:, idx] if k in VIEW_KEYS else x) for k, x in tiled.items()}
      return apply(x_t[:, idx], t, c, drop).astype(jnp.float32)

    outs = jax.lax.map(one, jnp.asarray(chunks))  # [C, B', K, ...], one pass at a time
    outs = jnp.moveaxis(outs, 0, 1).reshape((x_t.shape[0], -1) + x_t.shape[2:])
    flat = chunks.reshape(-1)
    total = jnp.zeros(x_t.shape, jnp.float32).at[:, flat].add(outs)
    counts = np.bincount(flat, minlength=v).astype(np.float32)
    return total / jnp.asarray(counts).reshape(1, v, 1, 1, 1)

  return guidance.guided_eps_fn(
    model_fn, dict(scales or {}), rescale=rescale, triangular=triangular
  )


def sample_views(
  model,
  params,
  batch,
  codec,
  cfg,
  schedule,
  key,
  *,
  num_steps=30,
  eta=0.1,
  scales=None,
  rescale=0.0,
  triangular=False,
  attention_biasing=False,
  parameterization="eps",
  chunks: np.ndarray | None = None,
  progress=None,
):
  """DDIM-sample the target views of `batch` given its reference and cameras -> uint8 images.

  The batch needs the reference image and the target cameras (`target_images` is not read, only
  its view count where it is the only per-view key). `parameterization` is what the model predicts
  ("eps", "v" or "x0"); guidance combines any of them (each is affine in the others at a fixed
  x_t and t). `chunks` (`view_chunks`) bounds the views per model pass; guidance then combines the
  merged predictions of all views, so the SV3D triangle still spans the whole orbit.
  """
  cond = inputs.conditions(batch, codec, cfg)
  b, v = batch["ref_image"].shape[0], num_target_views(batch)
  latent_shape = (b, v, cfg.latent_size, cfg.latent_size, cfg.latent_channels)
  eps_fn = guided_denoiser(
    model,
    params,
    cond,
    scales=scales,
    rescale=rescale,
    triangular=triangular,
    attention_biasing=attention_biasing,
    chunks=chunks,
  )
  k_init, k_loop = jax.random.split(key)
  x_T = jax.random.normal(k_init, latent_shape, jnp.float32)
  x0 = sampler.ddim_sample(
    eps_fn,
    x_T,
    k_loop,
    schedule,
    num_steps=num_steps,
    eta=eta,
    parameterization=parameterization,
    progress=progress,
  )
  return codec_lib.to_uint8(codec.decode(x0))


def grid(ref: np.ndarray, targets: np.ndarray, samples: np.ndarray) -> np.ndarray:
  """One row per sample: reference | ground-truth views | generated views (uint8 HWC)."""
  rows = []
  for r, t, s in zip(np.asarray(ref), np.asarray(targets), np.asarray(samples)):
    gap = np.full((r.shape[0], 4, 3), 255, np.uint8)
    rows.append(np.concatenate([r, gap, *t, gap, *s], axis=1))
  sep = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
  return np.concatenate([x for row in rows for x in (row, sep)][:-1], axis=0)


def save_png(image: np.ndarray, path) -> None:
  buf = io.BytesIO()
  Image.fromarray(np.asarray(image)).save(buf, format="PNG")
  with open(path, "wb") as f:
    f.write(buf.getvalue())
