"""Analytic model FLOPs (2 x multiply-accumulates of every matmul, conv and attention product).

Elementwise work (norms, activations, softmax) is left out, as in the usual MFU accounting; a
training step counts 3 x the forward (forward + backward through activations and weights).
"""

from pippo_jax.models.config import ModelConfig


def forward_flops(cfg: ModelConfig, batch: int = 1, num_views: int | None = None) -> dict[str, int]:
  """Per-component FLOPs of one forward pass; key "total" sums them."""
  v = cfg.num_views if num_views is None else num_views
  d, n, m = cfg.width, cfg.tokens_per_view, cfg.mlp_hidden
  tokens = (v + 1) * n
  patch_in = cfg.latent_channels * cfg.patch_size**2
  temb = 2 * (cfg.freq_dim * d + d * d)
  out = {
    "patchify": 2 * (v + 1) * n * patch_in * d,
    "unpatchify": 2 * v * n * d * patch_in,
    "t_embedder": temb,
    "blocks.linear": cfg.depth * 2 * tokens * d * (m + 3 * d + d + m),
    "blocks.attention": cfg.depth * 4 * tokens * tokens * d,
    "blocks.adaln": cfg.depth * 2 * d * 6 * d,
  }
  if cfg.use_cam_mlp:
    h = cfg.cam_mlp_hidden
    out["cam_mlp"] = (v + 1) * 2 * (cfg.cam_pose_dim * h + h * 2 * h + h * d)
  if cfg.use_control_mlp:
    px, s, g = cfg.image_size, cfg.latent_size, cfg.grid[0]
    widths = (cfg.plucker_dim, *cfg.siren_hidden, cfg.siren_out)
    siren = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    out["control.siren"] = (v + 1) * px * px * 2 * siren
    out["control.resize"] = (v + 1) * 2 * cfg.siren_out * (s * px * px + s * s * px)
    out["control.encoder"] = (
      (v + 1)
      * 2
      * (s * s * 9 * cfg.control_in_channels * d + g * g * 9 * d * 2 * d + g * g * 2 * d * d)
    )
    out["control.t_embedder"] = temb
    out["control.blocks"] = cfg.depth * 2 * (d * 2 * d + tokens * d * d)
  out = {k: batch * val for k, val in out.items()}
  out["total"] = sum(out.values())
  return out


def train_step_flops(cfg: ModelConfig, batch: int = 1, num_views: int | None = None) -> int:
  return 3 * forward_flops(cfg, batch, num_views)["total"]


# Dense bfloat16 peak FLOP/s per chip (vendors' figures), by device-kind prefix: the MFU reference
# in training logs when `train.peak_flops` is not set. CPUs have none (their peak depends on the
# part).
PEAK_FLOPS = {
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,
  "TPU v5e": 197e12,
  "TPU v5p": 459e12,
  "TPU v6 lite": 918e12,
  "TPU v6e": 918e12,
  "NVIDIA A100": 312e12,
  "NVIDIA H100": 989e12,
  "NVIDIA H200": 989e12,
  "NVIDIA B200": 2250e12,
}


def device_peak_flops(device) -> float | None:
  """The peak FLOP/s of `device` from `PEAK_FLOPS`, or None when its kind is not listed."""
  kind = getattr(device, "device_kind", "")
  return next((v for k, v in PEAK_FLOPS.items() if kind.startswith(k)), None)
