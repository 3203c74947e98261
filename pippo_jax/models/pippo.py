"""The Pippo denoiser: targets + reference view jointly attended, predicting epsilon.

Inputs (channels-last latents; B samples, V target views, h x w latents with C channels):
  x_t            [B, V, h, w, C]  noisy target latents
  t              [B]              integer timestep, shared by all views of a sample
  cond["ref_latent"]        [B, h, w, C]   clean reference latent
  cond["cam_pose"]          [B, V, 16]     flattened target camera poses   (use_cam_mlp)
  cond["ref_cam_pose"]      [B, 16]        flattened reference camera pose (use_cam_mlp)
  cond["anchor_latent"]     [B, V, h, w, C] Spatial Anchor images, encoded (use_control_mlp)
  cond["ref_anchor_latent"] [B, h, w, C]
  cond["plucker"]           [B, V, H, W, 6] Plücker rays at pixel resolution (use_control_mlp)
  cond["ref_plucker"]       [B, H, W, 6]
  drop: optional {"ref", "cam", "control"} -> bool [B]: replace that condition group by its
        learned null token (ref, cam) or the zero control token, for classifier-free guidance.
Output: eps [B, V, h, w, C].

P1 (no cameras) sets use_cam_mlp = use_control_mlp = False; M2 adds the camera MLP; P3 adds
ControlMLP. The whole model outputs exactly zero at initialisation.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from pippo_jax.diffusion.guidance import CONDITION_GROUPS
from pippo_jax.models import attention, conditioning, control_mlp, dit, layers
from pippo_jax.models.config import ModelConfig


class Pippo(nn.Module):
  cfg: ModelConfig

  def attn_scale(self, total_views: int, biased: bool) -> float:
    cfg = self.cfg
    if not biased:
      return 1.0 / math.sqrt(cfg.head_dim)
    return attention.biased_attention_scale(
      cfg.head_dim, cfg.tokens_per_view, total_views, cfg.attention_train_views, cfg.attention_gamma
    )

  @nn.compact
  def __call__(
    self,
    x_t: jax.Array,
    t: jax.Array,
    cond: dict,
    drop: dict | None = None,
    attention_biasing: bool = False,
  ) -> jax.Array:
    cfg = self.cfg
    b, v, h, w, c = x_t.shape
    if (h, w) != (cfg.latent_size, cfg.latent_size) or c != cfg.latent_channels:
      raise ValueError(
        f"x_t latents {x_t.shape[2:]} do not match the config's "
        f"{(cfg.latent_size, cfg.latent_size, cfg.latent_channels)}"
      )
    drop = {
      k: jnp.zeros((b,), bool) if drop is None or drop.get(k) is None else drop[k]
      for k in CONDITION_GROUPS
    }

    cam = None
    ref = conditioning.RefEncoder(cfg, name="ref_encoder")(cond["ref_latent"])
    if cfg.use_cam_mlp:
      cam_mlp = conditioning.CamMLP(cfg, name="cam_mlp")
      null_cam = self.param(
        "null_cam",
        nn.with_logical_partitioning(layers.zeros, ("embed",)),
        (cfg.width,),
        jnp.float32,
      )
      cam = jnp.where(drop["cam"][:, None, None], null_cam, cam_mlp(cond["cam_pose"]))
      ref = ref + cam_mlp(cond["ref_cam_pose"])[:, None, :]
    null_ref = self.param(
      "null_ref", nn.with_logical_partitioning(layers.zeros, ("embed",)), (cfg.width,), jnp.float32
    )
    ref = jnp.where(drop["ref"][:, None, None], null_ref, ref)

    ctrl = ctrl_params = None
    if cfg.use_control_mlp:
      ctrl, ctrl_params = control_mlp.ControlMLP(cfg, name="control_mlp")(
        anchor=jnp.concatenate([cond["anchor_latent"], cond["ref_anchor_latent"][:, None]], 1),
        plucker=jnp.concatenate([cond["plucker"], cond["ref_plucker"][:, None]], 1),
        x_t=jnp.concatenate([x_t, jnp.zeros_like(x_t[:, :1])], 1),
        t=t,
        drop=drop["control"],
      )

    return dit.DiT(cfg, self.attn_scale(v + 1, attention_biasing), name="generator")(
      x_t, t, cam, ref, ctrl, ctrl_params
    )


def dummy_inputs(cfg: ModelConfig, batch: int = 1, num_views: int | None = None):
  """Zero inputs of the right shapes (for init, eval_shape and compilation)."""
  v = cfg.num_views if num_views is None else num_views
  s, c, px = cfg.latent_size, cfg.latent_channels, cfg.image_size
  x_t = jnp.zeros((batch, v, s, s, c), jnp.float32)
  t = jnp.zeros((batch,), jnp.int32)
  cond = {"ref_latent": jnp.zeros((batch, s, s, c), jnp.float32)}
  if cfg.use_cam_mlp:
    cond["cam_pose"] = jnp.zeros((batch, v, cfg.cam_pose_dim), jnp.float32)
    cond["ref_cam_pose"] = jnp.zeros((batch, cfg.cam_pose_dim), jnp.float32)
  if cfg.use_control_mlp:
    cond["anchor_latent"] = jnp.zeros((batch, v, s, s, c), jnp.float32)
    cond["ref_anchor_latent"] = jnp.zeros((batch, s, s, c), jnp.float32)
    cond["plucker"] = jnp.zeros((batch, v, px, px, cfg.plucker_dim), jnp.float32)
    cond["ref_plucker"] = jnp.zeros((batch, px, px, cfg.plucker_dim), jnp.float32)
  return x_t, t, cond
