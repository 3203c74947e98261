"""Data batch -> model inputs: the one place that knows which batch keys the model reads.

A batch is the data pipelines' dict (uint8 images, float camera data; every key is documented in
`data_pipelines/schemas.py`). Training (`training.step`) and sampling (`inference.sample`) both
turn it into `Pippo`'s inputs here: the target latents and the condition dict.
"""

import jax
import jax.numpy as jnp

from pippo_jax.models.config import ModelConfig

BASE_KEYS = ("target_images", "ref_image")
CAM_KEYS = ("target_cam_pose", "ref_cam_pose")
CONTROL_KEYS = ("target_plucker", "ref_plucker", "target_anchor", "ref_anchor")
# Per-example noise keys (see `training.step.example_keys`).
EXAMPLE_KEYS = ("record_index", "epoch")
MASK_KEY = "target_masks"


def batch_keys(cfg: ModelConfig, loss_mask: str = "none") -> tuple[str, ...]:
  """The batch keys a training step reads for this model (and loss mask)."""
  keys = (
    BASE_KEYS
    + (CAM_KEYS if cfg.use_cam_mlp else ())
    + (CONTROL_KEYS if cfg.use_control_mlp else ())
    + EXAMPLE_KEYS
  )
  return keys + ((MASK_KEY,) if loss_mask == "person" else ())


def latent_mask(mask: jax.Array, downsample: int) -> jax.Array:
  """Pixel mask [..., H, W] (person > 0) -> [..., H/f, W/f, 1]: latent cells with any person
  pixel."""
  *lead, h, w = mask.shape
  f = downsample
  cells = mask.reshape(*lead, h // f, f, w // f, f) > 0
  return cells.any(axis=(-3, -1))[..., None]


def model_inputs(batch: dict, codec, cfg: ModelConfig, key=None):
  """Data batch -> (x0 latents [B, V, h, w, C], cond dict for `Pippo`). With a key, each image
  group is encoded with its own key (posterior samples of a VAE)."""
  keys = [None] * 4 if key is None else list(jax.random.split(key, 4))
  x0 = codec.encode(batch["target_images"], keys[0])
  cond = {"ref_latent": codec.encode(batch["ref_image"], keys[1])}
  if cfg.use_cam_mlp:
    cond["cam_pose"] = batch["target_cam_pose"].astype(jnp.float32)
    cond["ref_cam_pose"] = batch["ref_cam_pose"].astype(jnp.float32)
  if cfg.use_control_mlp:
    cond["anchor_latent"] = codec.encode(batch["target_anchor"], keys[2])
    cond["ref_anchor_latent"] = codec.encode(batch["ref_anchor"], keys[3])
    cond["plucker"] = batch["target_plucker"].astype(jnp.float32)
    cond["ref_plucker"] = batch["ref_plucker"].astype(jnp.float32)
  return x0, cond
