"""Sampling novel views from a batch, and the image grids written during training."""

import io

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from pippo_jax.diffusion import guidance, sampler
from pippo_jax.models import codec as codec_lib
from pippo_jax.models import inputs


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
):
  """DDIM-sample the target views of `batch` given its reference and cameras -> uint8 images.

  `parameterization` is what the model predicts ("eps", "v" or "x0"); guidance combines any of
  them (each is affine in the others at a fixed x_t and t).
  """
  _, cond = inputs.model_inputs(batch, codec, cfg)
  b = batch["ref_image"].shape[0]
  shape = batch["target_images"].shape
  latent_shape = (b, shape[1], cfg.latent_size, cfg.latent_size, cfg.latent_channels)

  def model_fn(x_t, t, drop):
    tiled = guidance.tile_batch(cond, x_t.shape[0] // b)
    return model.apply({"params": params}, x_t, t, tiled, drop, attention_biasing=attention_biasing)

  eps_fn = guidance.guided_eps_fn(
    model_fn, dict(scales or {}), rescale=rescale, triangular=triangular
  )
  k_init, k_loop = jax.random.split(key)
  x_T = jax.random.normal(k_init, latent_shape, jnp.float32)
  x0 = sampler.ddim_sample(
    eps_fn, x_T, k_loop, schedule, num_steps=num_steps, eta=eta, parameterization=parameterization
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
