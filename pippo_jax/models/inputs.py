"""Data batch -> model inputs: the one place that knows which batch keys the model reads.

A batch is the data pipelines' dict (uint8 images, float camera data; every key is documented in
`data_pipelines/schemas.py`). Training (`training.step`) and sampling (`inference.sample`) both
turn it into `Pippo`'s inputs here: the target latents and the condition dict.

With `data.latents` the batch holds the codec's stored moments of the target and reference views
(`target_latents`, `ref_latent`) instead of their images; they become latents through
`codec.sample_moments` with the key `codec.encode` would have used for the images, so both batches
give the same inputs up to the storage rounding. Spatial Anchors are images and always encoded.
"""

import jax
import jax.numpy as jnp

from pippo_jax.models.config import ModelConfig

BASE_KEYS = ("target_images", "ref_image")
# data.latents: the stored moments of each image group, by the image key they replace.
STORED = {"target_images": "target_latents", "ref_image": "ref_latent"}
LATENT_KEYS = tuple(STORED.values())
CAM_KEYS = ("target_cam_pose", "ref_cam_pose")
CONTROL_KEYS = ("target_plucker", "ref_plucker", "target_anchor", "ref_anchor")
# Per-example noise keys (see `training.step.example_keys`).
EXAMPLE_KEYS = ("record_index", "epoch")
MASK_KEY = "target_masks"


def batch_keys(cfg: ModelConfig, loss_mask: str = "none", latents: bool = False) -> tuple[str, ...]:
  """The batch keys a training step reads for this model (and loss mask, and `data.latents`)."""
  keys = (
    (LATENT_KEYS if latents else BASE_KEYS)
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


def batch_size(batch: dict) -> int:
  """Examples in a batch (of images or of stored latents)."""
  return batch[
    STORED["target_images"] if STORED["target_images"] in batch else "target_images"
  ].shape[0]


def image_latents(batch: dict, image_key: str, codec, key=None) -> jax.Array:
  """The scaled latents of an image group: sampled from its stored moments when the batch has
  them (`data.latents`), else encoded from its images; the same key draws the same sample."""
  if STORED.get(image_key) in batch:
    return codec.sample_moments(batch[STORED[image_key]], key)
  return codec.encode(batch[image_key], key)


def conditions(batch: dict, codec, cfg: ModelConfig, key=None) -> dict:
  """Data batch -> the cond dict for `Pippo` (everything but the target latents). With a key,
  each image group is encoded with its own key (posterior samples of a VAE)."""
  keys = [None] * 3 if key is None else list(jax.random.split(key, 3))
  cond = {"ref_latent": image_latents(batch, "ref_image", codec, keys[0])}
  if cfg.use_cam_mlp:
    cond["cam_pose"] = batch["target_cam_pose"].astype(jnp.float32)
    cond["ref_cam_pose"] = batch["ref_cam_pose"].astype(jnp.float32)
  if cfg.use_control_mlp:
    cond["anchor_latent"] = codec.encode(batch["target_anchor"], keys[1])
    cond["ref_anchor_latent"] = codec.encode(batch["ref_anchor"], keys[2])
    cond["plucker"] = batch["target_plucker"].astype(jnp.float32)
    cond["ref_plucker"] = batch["ref_plucker"].astype(jnp.float32)
  return cond


def model_inputs(batch: dict, codec, cfg: ModelConfig, key=None):
  """Data batch -> (x0 latents [B, V, h, w, C], cond dict for `Pippo`)."""
  k_x0, k_cond = (None, None) if key is None else jax.random.split(key)
  return image_latents(batch, "target_images", codec, k_x0), conditions(batch, codec, cfg, k_cond)
