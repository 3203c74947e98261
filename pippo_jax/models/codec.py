"""Pixel <-> latent codecs, chosen by the `codec` config section.

- `space_to_depth`: parameter-free and exactly invertible: images in [-1, 1] are pixel-unshuffled by
  `downsample` (f x f blocks -> 3 f^2 channels) and scaled. Small runs use it since no pretrained
  VAE can be downloaded here.
- `sdxl_vae`: the frozen SDXL VAE of the paper (4 channels, x8, scale 0.13025,
  `pippo_jax.models.autoencoder`), read from the local weights at `codec.weights_path`.

Both map uint8 images [..., H, W, 3] to latents [..., H/f, W/f, C] and back to float images in
[-1, 1]. Both are pytrees (`flax.struct.dataclass`): pass a codec to a jitted function as an
argument and the VAE's parameters are inputs of the computation, not constants folded into it;
everything else about a codec is static.
"""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from pippo_jax.errors import ConfigError
from pippo_jax.models import autoencoder, embeddings


def to_unit(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1] as the release does: (x - 127.5) / 127.5."""
  return (images.astype(jnp.float32) - 127.5) / 127.5


def to_uint8(images: jax.Array) -> jax.Array:
  return jnp.clip(jnp.round(images * 127.5 + 127.5), 0, 255).astype(jnp.uint8)


@flax.struct.dataclass
class SpaceToDepthCodec:
  downsample: int = flax.struct.field(pytree_node=False, default=8)
  scale_factor: float = flax.struct.field(pytree_node=False, default=1.0)
  shift_factor: float = flax.struct.field(pytree_node=False, default=0.0)

  @property
  def latent_channels(self) -> int:
    return 3 * self.downsample**2

  def encode(self, images: jax.Array, key: jax.Array | None = None) -> jax.Array:
    del key  # deterministic
    z = embeddings.pixel_unshuffle(to_unit(images), self.downsample)
    return (z - self.shift_factor) * self.scale_factor

  def decode(self, latents: jax.Array) -> jax.Array:
    z = latents / self.scale_factor + self.shift_factor
    return embeddings.pixel_shuffle(z, self.downsample)


@flax.struct.dataclass
class SDXLVAECodec:
  """The SDXL VAE as a codec: latents are (z - shift_factor) * scale_factor.

  `encode` takes a posterior sample when given a key and `sample_posterior` is set, else its mode.
  `chunk` images go through the VAE at a time (None: all at once).
  """

  params: Any
  config: autoencoder.VAEConfig = flax.struct.field(pytree_node=False)
  scale_factor: float = flax.struct.field(pytree_node=False, default=0.13025)
  shift_factor: float = flax.struct.field(pytree_node=False, default=0.0)
  sample_posterior: bool = flax.struct.field(pytree_node=False, default=True)
  chunk: int | None = flax.struct.field(pytree_node=False, default=None)

  @property
  def latent_channels(self) -> int:
    return self.config.latent_channels

  @property
  def downsample(self) -> int:
    return self.config.downsample

  def encode(self, images: jax.Array, key: jax.Array | None = None) -> jax.Array:
    lead, x = images.shape[:-3], to_unit(images)
    posterior = autoencoder.encode(
      self.config, self.params, x.reshape(-1, *x.shape[-3:]), self.chunk
    )
    z = posterior.sample(key) if key is not None and self.sample_posterior else posterior.mode()
    z = (z - self.shift_factor) * self.scale_factor
    return z.reshape(*lead, *z.shape[1:])

  def decode(self, latents: jax.Array) -> jax.Array:
    lead = latents.shape[:-3]
    z = latents.reshape(-1, *latents.shape[-3:]) / self.scale_factor + self.shift_factor
    images = autoencoder.decode(self.config, self.params, z, self.chunk)
    return images.reshape(*lead, *images.shape[1:])


def _load_sdxl_vae(codec_cfg) -> SDXLVAECodec:
  path = codec_cfg.get("weights_path", "")
  if not path:
    raise ConfigError(
      "codec.kind='sdxl_vae' needs the SDXL VAE's weights: set --config.codec.weights_path to a "
      "folder with config.json and diffusion_pytorch_model.safetensors (stabilityai/sdxl-vae or "
      "madebyollin/sdxl-vae-fp16-fix on the Hugging Face Hub) or to a single .safetensors file "
      "of it; or train with codec.kind='space_to_depth' (e.g. the smoke size)"
    )
  dtype = codec_cfg.get("dtype", "float32")
  if dtype not in autoencoder.DTYPES:
    raise ConfigError(f"codec.dtype={dtype!r}: use one of {autoencoder.DTYPES}")
  try:
    vae_cfg, params = autoencoder.load_vae(path, dtype=dtype)
  except ValueError as e:
    raise ConfigError(f"codec.weights_path={path!r}: {e}") from e
  codec = SDXLVAECodec(
    params,
    vae_cfg,
    scale_factor=codec_cfg.get("scale_factor", vae_cfg.scaling_factor),
    shift_factor=codec_cfg.get("shift_factor", vae_cfg.shift_factor),
    sample_posterior=codec_cfg.get("sample_posterior", True),
    chunk=codec_cfg.get("chunk", 0) or None,
  )
  for key in ("latent_channels", "downsample"):
    if key in codec_cfg and codec_cfg[key] != getattr(codec, key):
      raise ConfigError(
        f"codec.{key}={codec_cfg[key]} but the VAE at {path} has {getattr(codec, key)}"
      )
  return codec


def make_codec(codec_cfg):
  """The codec named by `config.codec`."""
  if codec_cfg.kind == "space_to_depth":
    codec = SpaceToDepthCodec(codec_cfg.downsample, codec_cfg.scale_factor, codec_cfg.shift_factor)
    if codec.latent_channels != codec_cfg.latent_channels:
      raise ConfigError(
        f"codec.latent_channels={codec_cfg.latent_channels} but a space-to-depth "
        f"codec with downsample {codec.downsample} makes {codec.latent_channels}"
      )
    return codec
  if codec_cfg.kind == "sdxl_vae":
    return _load_sdxl_vae(codec_cfg)
  raise ConfigError(f"unknown codec.kind={codec_cfg.kind!r}: use 'space_to_depth' or 'sdxl_vae'")
