"""Reference-image and camera encoders.

- `RefEncoder`: the clean reference latent through its own patchify and its own learnable sin-cos
  position table; the result is appended to the target tokens as one more view.
- `CamMLP`: flattened 4x4 camera pose (16-d) -> LN -> Linear -> + learned position -> LN ->
  GEGLU -> Linear_zero, broadcast to every token of its view. No skip connection.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from pippo_jax.models import embeddings, layers
from pippo_jax.models.config import ModelConfig


class RefEncoder(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, ref_latent: jax.Array) -> jax.Array:
    """ref_latent [B, h, w, C] -> tokens [B, N, D]."""
    cfg = self.cfg
    x = embeddings.Patchify(
      cfg.width, cfg.patch_size, cfg.patch_norm_eps, cfg.compute_dtype, name="patchify"
    )(ref_latent)
    return x + embeddings.sincos_param(self, "pos_embed", cfg)


class CamMLP(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, pose: jax.Array) -> jax.Array:
    """Pose [..., 16] -> [..., D]; exactly zero at initialisation."""
    cfg = self.cfg
    hid, cd = cfg.cam_mlp_hidden, cfg.compute_dtype
    x = layers.LayerNorm(cfg.cam_norm_eps, name="in_norm")(pose)
    x = layers.Dense(hid, ("cam_in", "cam_hidden"), compute_dtype=cd, name="in_proj")(x)
    x = x + self.param(
      "pos_embed", nn.with_logical_partitioning(layers.zeros, ("cam_hidden",)), (hid,), jnp.float32
    )
    x = layers.LayerNorm(cfg.cam_norm_eps, axis_name="cam_hidden", name="norm")(x)
    value, gate = jnp.split(
      layers.Dense(2 * hid, ("cam_hidden", "mlp"), compute_dtype=cd, name="geglu")(x), 2, axis=-1
    )
    x = value * nn.gelu(gate, approximate=False)
    return layers.Dense(
      cfg.width, ("cam_hidden", "embed"), kernel_init=layers.zeros, compute_dtype=cd, name="out"
    )(x)
