"""Pixel <-> latent codecs, chosen by the `codec` config section.

- `space_to_depth`: parameter-free and exactly invertible: images in [-1, 1] are pixel-unshuffled by
  `downsample` (f x f blocks -> 3 f^2 channels) and scaled. Small runs use it since no pretrained
  VAE can be downloaded here.
- `sdxl_vae`: the frozen SDXL VAE of the paper (4 channels, x8, scale 0.13025). Its port needs a local
  weights file and is not part of this release yet; asking for it fails with a clear message.

Both map uint8 images [..., H, W, 3] to latents [..., H/f, W/f, C] and back to float images in
[-1, 1].
"""
import dataclasses

import jax
import jax.numpy as jnp

from pippo_jax.errors import ConfigError
from pippo_jax.models import embeddings


def to_unit(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1] as the release does: (x - 127.5) / 127.5."""
  return (images.astype(jnp.float32) - 127.5) / 127.5


def to_uint8(images: jax.Array) -> jax.Array:
  return jnp.clip(jnp.round(images * 127.5 + 127.5), 0, 255).astype(jnp.uint8)


@dataclasses.dataclass(frozen=True)
class SpaceToDepthCodec:
  downsample: int = 8
  scale_factor: float = 1.0
  shift_factor: float = 0.0

  @property
  def latent_channels(self) -> int:
    return 3 * self.downsample ** 2

  def encode(self, images: jax.Array, key: jax.Array | None = None) -> jax.Array:
    del key  # deterministic
    z = embeddings.pixel_unshuffle(to_unit(images), self.downsample)
    return (z - self.shift_factor) * self.scale_factor

  def decode(self, latents: jax.Array) -> jax.Array:
    z = latents / self.scale_factor + self.shift_factor
    return embeddings.pixel_shuffle(z, self.downsample)


def make_codec(codec_cfg):
  """The codec named by `config.codec`."""
  if codec_cfg.kind == "space_to_depth":
    codec = SpaceToDepthCodec(codec_cfg.downsample, codec_cfg.scale_factor, codec_cfg.shift_factor)
    if codec.latent_channels != codec_cfg.latent_channels:
      raise ConfigError(f"codec.latent_channels={codec_cfg.latent_channels} but a space-to-depth "
                        f"codec with downsample {codec.downsample} makes {codec.latent_channels}")
    return codec
  if codec_cfg.kind == "sdxl_vae":
    raise ConfigError("codec.kind='sdxl_vae': the SDXL VAE port is not available yet; train "
                      "with codec.kind='space_to_depth' (e.g. the smoke size) or set codec.* to "
                      "match it")
  raise ConfigError(f"unknown codec.kind={codec_cfg.kind!r}: use 'space_to_depth' or 'sdxl_vae'")
