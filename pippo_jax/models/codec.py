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

`encode` is `sample_moments(encode_moments(images), key)`: the moments (unscaled latents of an
exact codec; a VAE posterior's mean and log-variance) are what `pippo-data encode-latents` stores,
so training on stored latents draws the same posterior samples as encoding images on the fly.
`identity` names what makes the moments (kind, sizes, the VAE's weight files by hash).
"""

import hashlib
import os
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

  @property
  def moment_channels(self) -> int:
    return self.latent_channels

  def encode_moments(self, images: jax.Array) -> jax.Array:
    """uint8 [..., H, W, 3] -> the unscaled latents [..., H/f, W/f, 3 f^2] (exact)."""
    return embeddings.pixel_unshuffle(to_unit(images), self.downsample)

  def sample_moments(self, moments: jax.Array, key: jax.Array | None = None) -> jax.Array:
    del key  # deterministic
    return (moments.astype(jnp.float32) - self.shift_factor) * self.scale_factor

  def encode(self, images: jax.Array, key: jax.Array | None = None) -> jax.Array:
    return self.sample_moments(self.encode_moments(images), key)

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

  @property
  def moment_channels(self) -> int:
    return 2 * self.config.latent_channels

  def encode_moments(self, images: jax.Array) -> jax.Array:
    """uint8 [..., H, W, 3] -> the posterior's mean then log-variance [..., H/f, W/f, 2 C]."""
    lead, x = images.shape[:-3], to_unit(images)
    posterior = autoencoder.encode(
      self.config, self.params, x.reshape(-1, *x.shape[-3:]), self.chunk
    )
    moments = posterior.moments()
    return moments.reshape(*lead, *moments.shape[1:])

  def sample_moments(self, moments: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """Moments -> scaled latents: a posterior sample with a key (and `sample_posterior`), else
    its mean."""
    posterior = autoencoder.DiagonalGaussian.from_moments(moments.astype(jnp.float32))
    z = posterior.sample(key) if key is not None and self.sample_posterior else posterior.mode()
    return (z - self.shift_factor) * self.scale_factor

  def encode(self, images: jax.Array, key: jax.Array | None = None) -> jax.Array:
    return self.sample_moments(self.encode_moments(images), key)

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


_HASHES: dict[tuple, str] = {}


def _sha256(path: str) -> str:
  """sha256 of a file's bytes (remembered per path, size and modification time)."""
  st = os.stat(path)
  key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
  if key not in _HASHES:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 24), b""):
        digest.update(block)
    _HASHES[key] = digest.hexdigest()
  return _HASHES[key]


# The `identity` keys two codecs must share to make the same moments.
IDENTITY_KEYS = ("kind", "downsample", "latent_channels", "weights_sha256", "config_sha256")


def identity(codec_cfg) -> dict[str, Any]:
  """What makes a codec's moments (`encode_moments`), as JSON: kind, downsample, latent channels,
  and for a VAE its weight file's name and the sha256 of its bytes (and of its config.json).
  `IDENTITY_KEYS` must match; the scale and shift (moments are unscaled) and the VAE's compute
  dtype are recorded but may differ.

  Raises:
    FileNotFoundError, ValueError: a VAE's weights are not where `codec.weights_path` says.
  """
  out = {
    "kind": codec_cfg.kind,
    "downsample": int(codec_cfg.downsample),
    "latent_channels": int(codec_cfg.latent_channels),
    "scale_factor": float(codec_cfg.scale_factor),
    "shift_factor": float(codec_cfg.shift_factor),
  }
  if codec_cfg.kind == "sdxl_vae":
    config_file, weights = autoencoder.weight_files(codec_cfg.weights_path)
    out.update(
      weights=os.path.basename(weights),
      weights_sha256=_sha256(weights),
      config_sha256=_sha256(config_file) if config_file else None,
      dtype=codec_cfg.get("dtype", "float32"),
    )
  return out
