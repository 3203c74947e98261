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
  patch_in = cfg.latent_channels * cfg.patch_size ** 2
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
    out["control.encoder"] = (v + 1) * 2 * (s * s * 9 * cfg.control_in_channels * d
                                            + g * g * 9 * d * 2 * d + g * g * 2 * d * d)
    out["control.t_embedder"] = temb
    out["control.blocks"] = cfg.depth * 2 * (d * 2 * d + tokens * d * d)
  out = {k: batch * val for k, val in out.items()}
  out["total"] = sum(out.values())
  return out


def train_step_flops(cfg: ModelConfig, batch: int = 1, num_views: int | None = None) -> int:
  return 3 * forward_flops(cfg, batch, num_views)["total"]


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
  """This machine's best achieved float32 FLOP/s on an n x n x n jitted matmul (MFU reference)."""
  import time  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(f(a, a))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(f(a, a))
    best = min(best, time.perf_counter() - start)
  return 2 * n ** 3 / best
