"""Position tables, timestep embeddings and the patch (un)embedding of latents.

Latents are channels-last [..., h, w, C] in this package. Pixel (un)shuffle keeps PyTorch's channel
order (channel = c * p * p + i * p + j for sub-pixel (i, j)), so 1x1-conv weights from the reference
implementation map onto our Dense kernels by a transpose.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pippo_jax.models import layers


def sincos_2d_table(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
  """MAE-style 2D sin-cos table [grid_h * grid_w, dim], tokens in row-major order.

  The first dim/2 channels encode the column index and the last dim/2 the row index (the
  reference builds its meshgrid with the width coordinate first); each half is
  [sin(p * w_i), cos(p * w_i)] with w_i = 10000^(-i / (dim / 4)).
  """
  if dim % 4:
    raise ValueError(f"sin-cos position table needs a width divisible by 4, got {dim}")
  quarter = dim // 4
  omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
  rows, cols = np.meshgrid(
    np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64), indexing="ij"
  )

  def encode(pos):
    angles = pos.reshape(-1, 1) * omega[None]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

  return np.concatenate([encode(cols), encode(rows)], axis=1).astype(np.float32)


def sincos_param(module: nn.Module, name: str, cfg) -> jax.Array:
  """A learnable [tokens, D] position table initialised to the 2D sin-cos table."""
  table = sincos_2d_table(cfg.width, *cfg.grid)
  return module.param(
    name,
    nn.with_logical_partitioning(lambda *_: jnp.asarray(table), ("length", "embed")),
    table.shape,
  )


def timestep_embedding(t: jax.Array, dim: int = 256, max_period: float = 1e4) -> jax.Array:
  """Sinusoidal embedding [..., dim] of (integer) timesteps, ordered [cos, sin]."""
  half = dim // 2
  freqs = jnp.exp(-np.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(t, jnp.float32)[..., None] * freqs
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[..., :1])], axis=-1)
  return emb


class TimestepEmbedder(nn.Module):
  """t -> sinusoid(freq_dim) -> Linear -> SiLU -> Linear, weights N(0, 0.02)."""

  width: int
  freq_dim: int = 256
  max_period: float = 1e4
  compute_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    init = nn.initializers.normal(0.02)
    h = timestep_embedding(t, self.freq_dim, self.max_period)
    h = layers.Dense(
      self.width, ("freq", "embed"), kernel_init=init, compute_dtype=self.compute_dtype, name="fc1"
    )(h)
    h = nn.silu(h)
    return layers.Dense(
      self.width,
      ("embed", "embed_out"),
      kernel_init=init,
      compute_dtype=self.compute_dtype,
      name="fc2",
    )(h)


def pixel_unshuffle(x: jax.Array, p: int) -> jax.Array:
  """[..., H, W, C] -> [..., H/p, W/p, C*p*p], channel index c*p*p + i*p + j."""
  *lead, h, w, c = x.shape
  if h % p or w % p:
    raise ValueError(f"spatial size {(h, w)} is not divisible by the patch size {p}")
  x = x.reshape(*lead, h // p, p, w // p, p, c)
  n = len(lead)
  x = jnp.transpose(x, (*range(n), n, n + 2, n + 4, n + 1, n + 3))
  return x.reshape(*lead, h // p, w // p, c * p * p)


def pixel_shuffle(x: jax.Array, p: int) -> jax.Array:
  """Inverse of `pixel_unshuffle`: [..., h, w, C*p*p] -> [..., h*p, w*p, C]."""
  *lead, h, w, cpp = x.shape
  c = cpp // (p * p)
  x = x.reshape(*lead, h, w, c, p, p)
  n = len(lead)
  x = jnp.transpose(x, (*range(n), n, n + 3, n + 1, n + 4, n + 2))
  return x.reshape(*lead, h * p, w * p, c)


class Patchify(nn.Module):
  """Latent [N, h, w, C] -> tokens [N, (h/p)*(w/p), D].

  Unshuffle, 1x1 conv, LayerNorm (no affine).
  """

  width: int
  patch_size: int = 2
  norm_eps: float = 1e-6
  compute_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = pixel_unshuffle(x, self.patch_size)
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    x = layers.Dense(
      self.width,
      ("patch_in", "embed"),
      kernel_init=layers.xavier_uniform_gain(0.02),
      compute_dtype=self.compute_dtype,
      name="proj",
    )(x)
    return layers.layer_norm_stats(x, self.norm_eps)


class Unpatchify(nn.Module):
  """Tokens [N, gh*gw, D] -> latent [N, gh*p, gw*p, C].

  LayerNorm (no affine), zero 1x1 conv, shuffle.
  """

  channels: int
  grid: tuple[int, int]
  patch_size: int = 2
  norm_eps: float = 1e-6
  compute_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.patch_size
    x = layers.layer_norm_stats(x, self.norm_eps)
    x = layers.Dense(
      self.channels * p * p,
      ("embed", "patch_in"),
      kernel_init=layers.zeros,
      compute_dtype=self.compute_dtype,
      name="proj",
    )(x)
    x = x.reshape(x.shape[0], *self.grid, -1)
    return pixel_shuffle(x, p)
