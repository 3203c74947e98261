"""ControlMLP: pixel-aligned controls (Spatial Anchor, Plücker rays, x_t) into every DiT block.

Per view (targets, then the reference last) a map at latent resolution with
[anchor latent (C), SIREN(Plücker) downsampled to latent size (32), x_t (C; zeros for the
reference)] channels goes through a small conv encoder that lands on the DiT token grid. Each DiT
block l then receives `Linear_zero(modulate(h, shift_l, scale_l))` with (shift_l, scale_l) from a
zero-initialised adaLN of ControlMLP's own timestep embedding.

The per-block weights are created here as arrays stacked over blocks and applied inside the DiT's
block scan (`dit.apply_control_block`), so the depth x tokens x width control tensors never exist
all at once.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pippo_jax.models import embeddings, layers
from pippo_jax.models.config import ModelConfig


def align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] linear-interpolation weights with align_corners=True sampling positions."""
  pos = np.zeros(n_out) if n_out == 1 else np.arange(n_out) * (n_in - 1) / (n_out - 1)
  lo = np.clip(np.floor(pos).astype(int), 0, n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = pos - lo
  w = np.zeros((n_out, n_in), np.float64)
  np.add.at(w, (np.arange(n_out), lo), 1 - frac)
  np.add.at(w, (np.arange(n_out), hi), frac)
  return w.astype(np.float32)


def resize_bilinear_align_corners(x: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
  """Bilinear resize of [N, H, W, C] with align_corners=True and no antialiasing (PyTorch's
  `interpolate(mode="bilinear", align_corners=True)`), as two small matmuls: along the width
  first, within each row, so that rows sharded over devices shrink before the height contraction
  gathers them."""
  wh = align_corners_matrix(x.shape[1], out_hw[0])
  ww = align_corners_matrix(x.shape[2], out_hw[1])
  x = jnp.einsum("pw,nhwc->nhpc", ww, x, precision=jax.lax.Precision.HIGHEST)
  return jnp.einsum("oh,nhpc->nopc", wh, x, precision=jax.lax.Precision.HIGHEST)


class Siren(nn.Module):
  """Per-pixel SIREN: Linear -> sin(w0_first x) -> [Linear -> sin(w0 x)]* -> Linear.

  Weights U(+-sqrt(6 / fan_in)) and biases U(+-1 / sqrt(fan_in)), as the reference
  implementation's SIREN initialisation leaves them.
  """

  hidden: tuple[int, ...]
  out: int
  w0_first: float = 30.0
  w0: float = 1.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init_w, init_b = layers.uniform_fan_in(6.0), layers.uniform_fan_in(1.0)
    for i, (feat, w0) in enumerate(
      zip(self.hidden, [self.w0_first] + [self.w0] * len(self.hidden))
    ):
      x = layers.Dense(feat, (None, None), kernel_init=init_w, bias_init=init_b, name=f"fc{i}")(x)
      x = jnp.sin(w0 * x)
    return layers.Dense(
      self.out, (None, None), kernel_init=init_w, bias_init=init_b, name=f"fc{len(self.hidden)}"
    )(x)


class ControlEncoder(nn.Module):
  """[N, h, w, 40] -> tokens [N, (h/2)*(w/2), D].

  conv3x3 - SiLU - conv3x3/2 - SiLU - conv1x1 - LayerNorm.
  """

  width: int
  norm_eps: float = 1e-6
  compute_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cd = self.compute_dtype
    x = nn.silu(
      layers.Conv(
        self.width, 3, kernel_axes=(None, None, None, "embed"), compute_dtype=cd, name="conv0"
      )(x)
    )
    x = nn.silu(
      layers.Conv(
        2 * self.width,
        3,
        stride=2,
        kernel_axes=(None, None, "embed", "mlp"),
        compute_dtype=cd,
        name="conv1",
      )(x)
    )
    x = layers.Conv(
      self.width, 1, kernel_axes=(None, None, "mlp", "embed"), compute_dtype=cd, name="conv2"
    )(x)
    x = layers.LayerNorm(self.norm_eps, name="norm")(x)
    return x.reshape(x.shape[0], -1, x.shape[-1])


class ControlMLP(nn.Module):
  """Builds the control inputs and the stacked per-block weights for `dit.run_blocks`."""

  cfg: ModelConfig

  @nn.compact
  def __call__(
    self, anchor: jax.Array, plucker: jax.Array, x_t: jax.Array, t: jax.Array, drop: jax.Array
  ) -> tuple[dict, dict]:
    """anchor, x_t: [B, V, h, w, C] latents; plucker [B, V, H, W, 6]; t [B]; drop bool [B].

    V counts every view, reference last. Returns (ctrl, block_params): ctrl = {"h": [B, V*N, D],
    "temb": [B, D], "drop": [B], "zero_token": [D]}; block_params = stacked zero-block weights.
    """
    cfg = self.cfg
    b, v, h, w, _ = anchor.shape
    d = cfg.width
    # Pixel maps are sharded by rows over the sequence-parallel axis (`act_rows`): the
    # per-pixel SIREN at image resolution is the largest activation of P3 at 1K.
    rows = lambda x: layers.constrain(x, ("act_batch", "act_rows", None, None))
    rays = Siren(cfg.siren_hidden, cfg.siren_out, cfg.siren_w0_first, cfg.siren_w0, name="siren")(
      rows(plucker.reshape(b * v, *plucker.shape[2:]))
    )
    rays = rows(resize_bilinear_align_corners(rows(rays), (h, w)))
    maps = rows(
      jnp.concatenate([anchor.reshape(b * v, h, w, -1), rays, x_t.reshape(b * v, h, w, -1)], -1)
    )
    tokens = ControlEncoder(d, cfg.control_norm_eps, cfg.compute_dtype, name="encoder")(maps)
    tokens = tokens.reshape(b, -1, d)
    temb = embeddings.TimestepEmbedder(
      d, cfg.freq_dim, cfg.max_period, cfg.compute_dtype, name="t_embedder"
    )(t)
    zero_token = self.param(
      "zero_token", nn.with_logical_partitioning(layers.zeros, ("embed",)), (d,), jnp.float32
    )

    def stacked(name, shape, axes):
      return self.param(
        name,
        nn.with_logical_partitioning(layers.zeros, ("layers", *axes)),
        (cfg.depth, *shape),
        jnp.float32,
      )

    block_params = {
      "adaln": {
        "kernel": stacked("adaln_kernel", (d, 2 * d), ("embed", "mlp")),
        "bias": stacked("adaln_bias", (2 * d,), ("mlp",)),
      },
      "linear": {
        "kernel": stacked("linear_kernel", (d, d), ("embed", "embed_out")),
        "bias": stacked("linear_bias", (d,), ("embed_out",)),
      },
    }
    ctrl = {"h": tokens, "temb": temb, "drop": drop, "zero_token": zero_token}
    return ctrl, block_params
