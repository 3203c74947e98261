"""The SDXL VAE (diffusers' `AutoencoderKL` architecture) in Flax, channels-last, and its weights.

Images [N, H, W, C] in [-1, 1] go through the encoder and `quant_conv` to a diagonal Gaussian
posterior over latents [N, H/f, W/f, latent_channels] (f = 2^(blocks - 1), 8 for SDXL); latents go
through `post_quant_conv` and the decoder back to images. Each encoder block has `layers_per_block`
resnets and (but the last) a stride-2 conv; each decoder block has one resnet more and (but the
last) a nearest x2 upsampling and a conv. Both halves have a middle block of resnet, single-head
self-attention over all positions, resnet. GroupNorm statistics are float32; convs and matmuls take
`VAEConfig.dtype` inputs and accumulate in float32.

`encode` and `decode` take `chunk=K` to run K images at a time (`jax.lax.map` over chunks), so
decoding many 1024^2 views fits a memory budget; the result equals the unchunked one up to float32
rounding (XLA may order a convolution's sums differently for another batch size).

Weights: `load_vae` reads a local diffusers folder (`config.json` + `diffusion_pytorch_model
.safetensors`) or one `.safetensors` file, in diffusers' layout (current or legacy attention names)
or the original latent-diffusion layout (`encoder.down.0.block.0...`, 1x1-conv attention weights).
Nothing is ever downloaded. `to_diffusers_state_dict` is the inverse mapping.
"""

import dataclasses
import json
import os
import re
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file

from pippo_jax.models import attention, layers

DTYPES = ("float32", "bfloat16")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
WEIGHTS_FILE_FP16 = "diffusion_pytorch_model.fp16.safetensors"
WHERE = (
  "put config.json and diffusion_pytorch_model.safetensors of the SDXL VAE "
  "(stabilityai/sdxl-vae or madebyollin/sdxl-vae-fp16-fix on the Hugging Face Hub) in "
  "{dir}, or give the path of a single .safetensors file of it; nothing is downloaded"
)


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """The VAE's dimensions (defaults: SDXL's) and compute dtype.

  Attributes:
    in_channels: image channels in.
    out_channels: image channels out.
    latent_channels: channels of the latents (the posterior has twice as many moments).
    block_out_channels: channels of each resolution level, highest resolution first.
    layers_per_block: resnets per encoder block (decoder blocks have one more).
    norm_num_groups: GroupNorm groups (eps is 1e-6 everywhere).
    scaling_factor: latents are scaled by this before diffusion.
    shift_factor: and shifted by this first (0 for SDXL).
    dtype: input dtype of convs and matmuls, "float32" or "bfloat16".
    attention_impl: `pippo_jax.models.attention` implementation for the middle blocks; "blockwise"
      keeps the [tokens, tokens] scores out of memory (16384 tokens per 1024^2 image).
  """

  in_channels: int = 3
  out_channels: int = 3
  latent_channels: int = 4
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  norm_num_groups: int = 32
  scaling_factor: float = 0.13025
  shift_factor: float = 0.0
  dtype: str = "float32"
  attention_impl: str = "xla"

  def __post_init__(self):
    object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
    if self.dtype not in DTYPES:
      raise ValueError(f"VAEConfig.dtype={self.dtype!r}: use one of {DTYPES}")
    if any(c % self.norm_num_groups for c in self.block_out_channels):
      raise ValueError(
        f"VAEConfig.block_out_channels={self.block_out_channels} are not all "
        f"divisible by norm_num_groups={self.norm_num_groups}"
      )

  @property
  def downsample(self) -> int:
    """Image side / latent side."""
    return 2 ** (len(self.block_out_channels) - 1)


# ----------------------------------------------------------------------------------------------
# Layers.
# ----------------------------------------------------------------------------------------------


class GroupNorm(nn.Module):
  """GroupNorm over channels-last maps with float32 statistics; groups are contiguous channels."""

  groups: int
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    g = x.astype(jnp.float32).reshape(*x.shape[:-1], self.groups, c // self.groups)
    axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)  # positions and the channels of a group
    mean = g.mean(axes, keepdims=True)
    var = jnp.square(g - mean).mean(axes, keepdims=True)
    g = (g - mean) * jax.lax.rsqrt(var + self.eps)
    return g.reshape(x.shape) * scale + bias


class Conv(nn.Module):
  """k x k conv, kernel [k, k, in, out]; `padding` per spatial side, default k // 2 all round."""

  features: int
  kernel_size: int = 3
  stride: int = 1
  padding: tuple[tuple[int, int], tuple[int, int]] | None = None
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features), jnp.float32
    )
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    padding = self.padding or ((k // 2, k // 2),) * 2
    y = jax.lax.conv_general_dilated(
      x.astype(self.dtype),
      kernel.astype(self.dtype),
      (self.stride, self.stride),
      padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      preferred_element_type=jnp.float32,
    )
    return y + bias


class Dense(nn.Module):
  """x @ kernel[in, out] + bias with `dtype` inputs and float32 accumulation."""

  features: int
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features), jnp.float32
    )
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    return layers.matmul(x, kernel, self.dtype) + bias


class Resnet(nn.Module):
  """x + conv(silu(norm(conv(silu(norm(x)))))), with a 1x1 conv on x when the channels change."""

  features: int
  cfg: VAEConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    g, dt = self.cfg.norm_num_groups, self.cfg.dtype
    h = Conv(self.features, dtype=dt, name="conv1")(nn.silu(GroupNorm(g, name="norm1")(x)))
    h = Conv(self.features, dtype=dt, name="conv2")(nn.silu(GroupNorm(g, name="norm2")(h)))
    if x.shape[-1] != self.features:
      x = Conv(self.features, 1, dtype=dt, name="conv_shortcut")(x)
    return x + h


class Attention(nn.Module):
  """x + single-head self-attention over all positions of each image."""

  cfg: VAEConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    dt = self.cfg.dtype
    t = GroupNorm(self.cfg.norm_num_groups, name="group_norm")(x).reshape(n, h * w, 1, c)
    q, k, v = (Dense(c, dt, name=name)(t).astype(dt) for name in ("to_q", "to_k", "to_v"))
    o = attention.dot_product_attention(
      q, k, v, scale=c**-0.5, implementation=self.cfg.attention_impl
    )
    return x + Dense(c, dt, name="to_out_0")(o).reshape(n, h, w, c)


class MidBlock(nn.Module):
  cfg: VAEConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    x = Resnet(c, self.cfg, name="resnets_0")(x)
    x = Attention(self.cfg, name="attentions_0")(x)
    return Resnet(c, self.cfg, name="resnets_1")(x)


class Downsample(nn.Module):
  """Stride-2 3x3 conv after padding one zero row and column at the bottom and right."""

  cfg: VAEConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return Conv(x.shape[-1], 3, 2, ((0, 1), (0, 1)), self.cfg.dtype, name="conv")(x)


class Upsample(nn.Module):
  """Nearest-neighbour x2, then a 3x3 conv."""

  cfg: VAEConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return Conv(x.shape[-1], dtype=self.cfg.dtype, name="conv")(x)


class DownBlock(nn.Module):
  """`layers_per_block` resnets, then (but in the last block) a stride-2 conv."""

  features: int
  downsample: bool
  cfg: VAEConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for j in range(self.cfg.layers_per_block):
      x = Resnet(self.features, self.cfg, name=f"resnets_{j}")(x)
    return Downsample(self.cfg, name="downsamplers_0")(x) if self.downsample else x


class UpBlock(nn.Module):
  """`layers_per_block + 1` resnets, then (but in the last block) a x2 upsampling."""

  features: int
  upsample: bool
  cfg: VAEConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for j in range(self.cfg.layers_per_block + 1):
      x = Resnet(self.features, self.cfg, name=f"resnets_{j}")(x)
    return Upsample(self.cfg, name="upsamplers_0")(x) if self.upsample else x


class Encoder(nn.Module):
  cfg: VAEConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg, chans = self.cfg, self.cfg.block_out_channels
    x = Conv(chans[0], dtype=cfg.dtype, name="conv_in")(x)
    for i, c in enumerate(chans):
      x = DownBlock(c, i < len(chans) - 1, cfg, name=f"down_blocks_{i}")(x)
    x = MidBlock(cfg, name="mid_block")(x)
    x = nn.silu(GroupNorm(cfg.norm_num_groups, name="conv_norm_out")(x))
    return Conv(2 * cfg.latent_channels, dtype=cfg.dtype, name="conv_out")(x)


class Decoder(nn.Module):
  cfg: VAEConfig

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    cfg, chans = self.cfg, self.cfg.block_out_channels[::-1]
    x = Conv(chans[0], dtype=cfg.dtype, name="conv_in")(z)
    x = MidBlock(cfg, name="mid_block")(x)
    for i, c in enumerate(chans):
      x = UpBlock(c, i < len(chans) - 1, cfg, name=f"up_blocks_{i}")(x)
    x = nn.silu(GroupNorm(cfg.norm_num_groups, name="conv_norm_out")(x))
    return Conv(cfg.out_channels, dtype=cfg.dtype, name="conv_out")(x)


class AutoencoderKL(nn.Module):
  """`encode`: images -> posterior moments [mean | logvar]; `decode`: latents -> images."""

  cfg: VAEConfig

  def setup(self):
    dt = self.cfg.dtype
    self.encoder = Encoder(self.cfg)
    self.quant_conv = Conv(2 * self.cfg.latent_channels, 1, dtype=dt)
    self.post_quant_conv = Conv(self.cfg.latent_channels, 1, dtype=dt)
    self.decoder = Decoder(self.cfg)

  def encode(self, x: jax.Array) -> jax.Array:
    return self.quant_conv(self.encoder(x))

  def decode(self, z: jax.Array) -> jax.Array:
    return self.decoder(self.post_quant_conv(z))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.decode(self.encode(x)[..., : self.cfg.latent_channels])


@flax.struct.dataclass
class DiagonalGaussian:
  """The encoder's posterior: independent normals per latent element."""

  mean: jax.Array
  logvar: jax.Array  # clipped to [-30, 20]

  @classmethod
  def from_moments(cls, moments: jax.Array) -> "DiagonalGaussian":
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return cls(mean, jnp.clip(logvar, -30.0, 20.0))

  @property
  def std(self) -> jax.Array:
    return jnp.exp(0.5 * self.logvar)

  @property
  def var(self) -> jax.Array:
    return jnp.exp(self.logvar)

  def sample(self, key: jax.Array) -> jax.Array:
    return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)

  def mode(self) -> jax.Array:
    return self.mean

  def moments(self) -> jax.Array:
    """Mean then (clipped) log-variance on the channel axis: what `from_moments` reads back."""
    return jnp.concatenate([self.mean, self.logvar], axis=-1)


def _chunked(fn, x: jax.Array, chunk: int | None) -> jax.Array:
  """fn(x) computed `chunk` images at a time (zero-padded to whole chunks, then trimmed)."""
  n = x.shape[0]
  if not chunk or chunk >= n:
    return fn(x)
  pad = -n % chunk
  xs = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))
  ys = jax.lax.map(fn, xs.reshape(-1, chunk, *x.shape[1:]))
  return ys.reshape(-1, *ys.shape[2:])[:n]


def encode(cfg: VAEConfig, params, images: jax.Array, chunk: int | None = None) -> DiagonalGaussian:
  """Images [N, H, W, in_channels] in [-1, 1] -> posterior over latents [N, H/f, W/f, C]."""
  model = AutoencoderKL(cfg)
  moments = _chunked(lambda x: model.apply(params, x, method="encode"), images, chunk)
  return DiagonalGaussian.from_moments(moments)


def decode(cfg: VAEConfig, params, latents: jax.Array, chunk: int | None = None) -> jax.Array:
  """Latents [N, h, w, C] (unscaled) -> float32 images [N, h f, w f, out_channels], ~[-1, 1]."""
  model = AutoencoderKL(cfg)
  return _chunked(lambda z: model.apply(params, z, method="decode"), latents, chunk)


def abstract_params(cfg: VAEConfig):
  """ShapeDtypeStructs of the variables {"params": ...} of `AutoencoderKL(cfg)`."""
  x = jax.ShapeDtypeStruct((1, cfg.downsample, cfg.downsample, cfg.in_channels), jnp.float32)
  return jax.eval_shape(AutoencoderKL(cfg).init, jax.random.key(0), x)


# ----------------------------------------------------------------------------------------------
# Weights: diffusers state dicts <-> Flax variables.
# ----------------------------------------------------------------------------------------------

# Latent-diffusion layout -> diffusers layout (the decoder's `up.{i}` are reversed separately).
_LDM_RENAMES = (
  (r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out."),
  (r"^(encoder|decoder)\.mid\.block_1\.", r"\1.mid_block.resnets.0."),
  (r"^(encoder|decoder)\.mid\.block_2\.", r"\1.mid_block.resnets.1."),
  (r"^(encoder|decoder)\.mid\.attn_1\.norm\.", r"\1.mid_block.attentions.0.group_norm."),
  (r"^(encoder|decoder)\.mid\.attn_1\.([qkv])\.", r"\1.mid_block.attentions.0.to_\2."),
  (r"^(encoder|decoder)\.mid\.attn_1\.proj_out\.", r"\1.mid_block.attentions.0.to_out.0."),
  (r"^encoder\.down\.(\d+)\.block\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2."),
  (r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0."),
  (r"\.nin_shortcut\.", ".conv_shortcut."),
)
# Diffusers' legacy attention names -> current ones.
_LEGACY_RENAMES = (
  (r"\.attentions\.(\d+)\.query\.", r".attentions.\1.to_q."),
  (r"\.attentions\.(\d+)\.key\.", r".attentions.\1.to_k."),
  (r"\.attentions\.(\d+)\.value\.", r".attentions.\1.to_v."),
  (r"\.attentions\.(\d+)\.proj_attn\.", r".attentions.\1.to_out.0."),
)
_LDM_KEY = re.compile(r"^(encoder|decoder)\.(down|mid|up)\.")
_LDM_UP = re.compile(r"^decoder\.up\.(\d+)\.(block|upsample)\.")


def canonical_names(state: dict[str, Any]) -> dict[str, Any]:
  """The state dict with diffusers' current key names (from the legacy or latent-diffusion ones)."""
  ldm = any(_LDM_KEY.match(k) for k in state)
  ups = [int(m.group(1)) for m in map(_LDM_UP.match, state) if m]
  num_up = max(ups) + 1 if ups else 0

  def up_block(m):
    inner = "resnets" if m.group(2) == "block" else "upsamplers.0"
    return f"decoder.up_blocks.{num_up - 1 - int(m.group(1))}.{inner}."

  out = {}
  for key, value in state.items():
    new = key
    if ldm:
      new = _LDM_UP.sub(up_block, new)
      for pattern, repl in _LDM_RENAMES:
        new = re.sub(pattern, repl, new)
    for pattern, repl in _LEGACY_RENAMES:
      new = re.sub(pattern, repl, new)
    out[new] = value
  return out


def _diffusers_key(path: tuple[str, ...]) -> str:
  """('encoder', 'down_blocks_0', 'resnets_1', 'conv1', 'kernel') ->
  'encoder.down_blocks.0.resnets.1.conv1.weight' (kernels and norm scales are `weight`)."""
  parts = [re.sub(r"_(\d+)$", r".\1", p) for p in path[:-1]]
  return ".".join(parts + ["bias" if path[-1] == "bias" else "weight"])


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  """Flax kernel shape -> diffusers shape: HWIO -> OIHW, [in, out] -> [out, in]."""
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  return tuple(reversed(shape))


def _to_flax(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
  """A diffusers tensor in Flax layout, or None when its shape does not fit `shape`."""
  value = np.asarray(value)
  if len(shape) == 2 and value.ndim in (3, 4) and value.shape[2:] == (1,) * (value.ndim - 2):
    value = value.reshape(value.shape[:2])  # attention weights stored as 1x1 convs
  if value.shape != _torch_shape(shape):
    return None
  if value.ndim == 4:
    value = value.transpose(2, 3, 1, 0)
  elif value.ndim == 2:
    value = value.T
  return np.ascontiguousarray(value, dtype=np.float32)


def _listing(what: str, items: list[str]) -> str:
  shown = ", ".join(items[:10]) + (f", ... ({len(items) - 10} more)" if len(items) > 10 else "")
  return f"{len(items)} {what}: {shown}"


def from_diffusers_state_dict(
  state: dict[str, Any], cfg: VAEConfig, source: str = "the state dict"
):
  """Diffusers (or latent-diffusion) tensors -> Flax variables {"params": ...} of `cfg`'s VAE.

  Raises:
    ValueError: naming the keys that are missing, unexpected or of the wrong shape.
  """
  expected = traverse_util.flatten_dict(abstract_params(cfg)["params"])
  state = canonical_names(state)
  keys = {_diffusers_key(path): path for path in expected}
  flat, wrong = {}, []
  for key, path in keys.items():
    if key in state:
      value = _to_flax(state[key], expected[path].shape)
      if value is None:
        wrong.append(
          f"{key} {list(np.shape(state[key]))} (expected "
          f"{list(_torch_shape(expected[path].shape))})"
        )
      flat[path] = value
  missing = sorted(set(keys) - set(state))
  unexpected = sorted(set(state) - set(keys))
  if missing or unexpected or wrong:
    problems = [
      _listing(what, items)
      for what, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("keys of the wrong shape", wrong),
      )
      if items
    ]
    raise ValueError(f"{source} does not fit the VAE with {_describe(cfg)}: " + "; ".join(problems))
  return {"params": traverse_util.unflatten_dict(flat)}


def to_diffusers_state_dict(params) -> dict[str, np.ndarray]:
  """Flax variables {"params": ...} -> the diffusers state dict (current key names, float32)."""
  out = {}
  for path, value in traverse_util.flatten_dict(params["params"]).items():
    value = np.asarray(value, np.float32)
    if value.ndim == 4:
      value = value.transpose(3, 2, 0, 1)
    elif value.ndim == 2:
      value = value.T
    out[_diffusers_key(path)] = np.ascontiguousarray(value)
  return out


def _describe(cfg: VAEConfig) -> str:
  return (
    f"block_out_channels={cfg.block_out_channels}, layers_per_block={cfg.layers_per_block}, "
    f"latent_channels={cfg.latent_channels}, in/out channels {cfg.in_channels}/"
    f"{cfg.out_channels}"
  )


def config_from_diffusers(d: dict[str, Any], source: str = "config.json") -> VAEConfig:
  """A diffusers `AutoencoderKL` config dict -> VAEConfig; other architectures are refused."""
  blocks = len(d.get("block_out_channels", ()))
  unsupported = {
    "down_block_types": ["DownEncoderBlock2D"] * blocks,
    "up_block_types": ["UpDecoderBlock2D"] * blocks,
    "act_fn": "silu",
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
  }
  for key, want in unsupported.items():
    if key in d and (list(d[key]) if isinstance(want, list) else d[key]) != want:
      raise ValueError(f"{source}: {key}={d[key]!r} is not supported (the SDXL VAE has {want!r})")
  try:
    return VAEConfig(
      in_channels=d.get("in_channels", 3),
      out_channels=d.get("out_channels", 3),
      latent_channels=d.get("latent_channels", 4),
      block_out_channels=d["block_out_channels"],
      layers_per_block=d.get("layers_per_block", 2),
      norm_num_groups=d.get("norm_num_groups", 32),
      scaling_factor=d.get("scaling_factor", 0.13025),
      shift_factor=d.get("shift_factor") or 0.0,
    )
  except KeyError as e:
    raise ValueError(f"{source} has no {e.args[0]!r}: is it an AutoencoderKL config?") from None


def infer_config(state: dict[str, Any], source: str = "the state dict") -> VAEConfig:
  """The dimensions of a diffusers-named state dict from its shapes; SDXL's norm groups (32),
  scaling and shift factors are assumed."""
  shape = lambda key: np.shape(state[key])
  try:
    chans, layers_per_block = [], 0
    while f"encoder.down_blocks.{len(chans)}.resnets.0.conv1.weight" in state:
      chans.append(shape(f"encoder.down_blocks.{len(chans)}.resnets.0.conv1.weight")[0])
    while f"encoder.down_blocks.0.resnets.{layers_per_block}.conv1.weight" in state:
      layers_per_block += 1
    return VAEConfig(
      in_channels=shape("encoder.conv_in.weight")[1],
      out_channels=shape("decoder.conv_out.weight")[0],
      latent_channels=shape("post_quant_conv.weight")[0],
      block_out_channels=tuple(chans) or VAEConfig.block_out_channels,
      layers_per_block=layers_per_block or VAEConfig.layers_per_block,
    )
  except KeyError as e:
    raise ValueError(
      f"{source} has no {e.args[0]!r}: is it an SDXL VAE (AutoencoderKL) file?"
    ) from None


def weight_files(path: str) -> tuple[str | None, str]:
  """(config.json or None, weights file): the files `load_vae(path)` reads, absolute.

  Raises:
    FileNotFoundError: the folder or file is missing; the message says what to put where.
    ValueError: `path` is a file but not a .safetensors file.
  """
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(path):
    weights = next(
      (
        os.path.join(path, f)
        for f in (WEIGHTS_FILE, WEIGHTS_FILE_FP16)
        if os.path.isfile(os.path.join(path, f))
      ),
      None,
    )
    config_file = os.path.join(path, CONFIG_FILE)
    absent = [
      f
      for f, there in ((CONFIG_FILE, os.path.isfile(config_file)), (WEIGHTS_FILE, weights))
      if not there
    ]
    if absent:
      raise FileNotFoundError(f"no {' or '.join(absent)} in {path}: {WHERE.format(dir=path)}")
    return config_file, weights
  if os.path.isfile(path):
    if not path.endswith(".safetensors"):
      raise ValueError(
        f"{path} is not a .safetensors file: give a diffusers folder or a "
        ".safetensors file of the SDXL VAE"
      )
    return None, path
  raise FileNotFoundError(
    f"no SDXL VAE weights at {path}: " + WHERE.format(dir=f"a folder such as {path}")
  )


def load_vae(
  path: str, config: VAEConfig | None = None, dtype: str | None = None
) -> tuple[VAEConfig, Any]:
  """Reads the VAE's config and weights; never downloads anything.

  Args:
    path: a diffusers folder (`config.json` + `diffusion_pytorch_model.safetensors`, or its fp16
      variant) or a single `.safetensors` file, whose dimensions are inferred from the shapes
      (with SDXL's 32 norm groups, scaling and shift factors).
    config: use these dimensions instead of config.json's or the inferred ones.
    dtype: override the config's compute dtype ("float32" or "bfloat16").

  Returns:
    (config, Flax variables {"params": ...}: float32 arrays on the default device).

  Raises:
    FileNotFoundError: the folder or file is missing; the message says what to put where.
    ValueError: the weights do not fit the config (missing, unexpected or wrong-shaped keys).
  """
  config_file, weights = weight_files(path)
  if config_file is not None:
    if config is None:
      with open(config_file) as f:
        config = config_from_diffusers(json.load(f), config_file)
    state = load_file(weights)
  else:
    state = canonical_names(load_file(weights))
    config = config or infer_config(state, weights)
  if dtype is not None:
    config = dataclasses.replace(config, dtype=dtype)
  params = from_diffusers_state_dict(state, config, weights)
  return config, jax.tree.map(jnp.asarray, params)
