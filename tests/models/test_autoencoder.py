"""The Flax SDXL VAE against diffusers' AutoencoderKL (small, randomly perturbed), its weight files,
chunking and the codec built on it."""

import dataclasses
import json
import math

import jax
import ml_collections
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors.numpy import load_file, save_file

from pippo_jax.errors import ConfigError
from pippo_jax.models import autoencoder as vae_lib
from pippo_jax.models import codec as codec_lib

# The SDXL layout at a small size: three levels (x4), a channel change, 2 resnets per block.
SMALL = dict(
  in_channels=3,
  out_channels=3,
  latent_channels=4,
  block_out_channels=(32, 64, 64),
  layers_per_block=2,
  norm_num_groups=8,
)
SIZE = 32


def _ldm_name(key: str, num_up: int) -> str:
  """A diffusers key in the original latent-diffusion layout (what single-file SDXL VAEs use)."""
  parts = key.split(".")
  if parts[1] == "down_blocks":
    inner = "block" if parts[3] == "resnets" else "downsample"
    rest = parts[4:] if inner == "block" else parts[5:]
    parts = [parts[0], "down", parts[2], inner] + rest
  elif parts[1] == "up_blocks":
    i = str(num_up - 1 - int(parts[2]))
    inner = "block" if parts[3] == "resnets" else "upsample"
    rest = parts[4:] if inner == "block" else parts[5:]
    parts = [parts[0], "up", i, inner] + rest
  elif parts[1] == "mid_block":
    if parts[2] == "resnets":
      parts = [parts[0], "mid", f"block_{int(parts[3]) + 1}"] + parts[4:]
    else:
      names = {
        "group_norm": ["norm"],
        "to_q": ["q"],
        "to_k": ["k"],
        "to_v": ["v"],
        "to_out": ["proj_out"],
      }
      rest = parts[6:] if parts[4] == "to_out" else parts[5:]
      parts = [parts[0], "mid", "attn_1"] + names[parts[4]] + rest
  elif parts[1] == "conv_norm_out":
    parts = [parts[0], "norm_out"] + parts[2:]
  return ".".join(parts).replace("conv_shortcut", "nin_shortcut")


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
  """(torch model, its state dict as numpy, folder, single file, latent-diffusion file)."""
  torch.manual_seed(0)
  model = AutoencoderKL(
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    sample_size=SIZE,
    scaling_factor=0.13025,
    **SMALL,
  )
  with torch.no_grad():  # zero biases and unit norm scales would hide layout mistakes
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  model.eval()
  state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
  root = tmp_path_factory.mktemp("vae")
  model.save_pretrained(root / "folder", safe_serialization=True)
  save_file(state, str(root / "vae.safetensors"))
  ldm = {}
  for k, v in state.items():
    if ".attentions." in k and v.ndim == 2:
      v = v[:, :, None, None]  # stored as 1x1 convs
    ldm[_ldm_name(k, 3)] = v
  save_file(ldm, str(root / "ldm.safetensors"))
  return model, state, root


@pytest.fixture(scope="module")
def loaded(vae):
  return vae_lib.load_vae(str(vae[2] / "folder"))


def _images(n=2, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (n, SIZE, SIZE, 3)).astype(np.float32)


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def _nhwc(t):
  return np.transpose(t.detach().numpy(), (0, 2, 3, 1))


def _close(ours, ref, tol=1e-4):
  """Max abs difference within tol of the reference's scale (and reported)."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  err, scale = np.abs(ours - ref).max(), max(np.abs(ref).max(), 1.0)
  assert err <= tol * scale, f"max abs diff {err:.3g} vs reference scale {scale:.3g}"
  return err / scale


def test_matches_diffusers(vae, loaded):
  model, _, _ = vae
  cfg, params = loaded
  assert cfg == vae_lib.VAEConfig(**SMALL)
  x = _images()
  z = np.random.default_rng(1).normal(size=(2, SIZE // 4, SIZE // 4, 4)).astype(np.float32)
  with torch.no_grad():
    post = model.encode(_nchw(x)).latent_dist
    ref_dec = model.decode(_nchw(z)).sample
    ref_full = model(_nchw(x), sample_posterior=False).sample
  ours = vae_lib.encode(cfg, params, x)
  assert ours.mean.shape == (2, SIZE // 4, SIZE // 4, 4)
  _close(ours.mean, _nhwc(post.mean))
  _close(ours.std, _nhwc(post.std))
  _close(vae_lib.decode(cfg, params, z), _nhwc(ref_dec))
  full = vae_lib.decode(cfg, params, vae_lib.encode(cfg, params, x).mode())
  _close(full, _nhwc(ref_full))
  # bfloat16 matmuls/convs stay near the float32 result.
  bf16 = dataclasses.replace(cfg, dtype="bfloat16")
  _close(vae_lib.decode(bf16, params, z), _nhwc(ref_dec), tol=5e-2)


def test_single_files_load_the_same_weights(vae, loaded):
  _, state, root = vae
  cfg, params = loaded
  inferred, _ = vae_lib.load_vae(
    str(root / "vae.safetensors"), config=dataclasses.replace(cfg, norm_num_groups=32)
  )
  assert dataclasses.replace(inferred, norm_num_groups=8) == cfg
  # The test's latent-diffusion file is what diffusers' own converter reads back to `state`.
  ldm = {k: torch.from_numpy(v) for k, v in load_file(str(root / "ldm.safetensors")).items()}
  back = convert_ldm_vae_checkpoint(ldm, {"down_block_types": [0] * 3, "up_block_types": [0] * 3})
  assert sorted(back) == sorted(state)
  for key, value in back.items():
    np.testing.assert_array_equal(value.numpy(), state[key], err_msg=key)
  legacy = {
    k.replace("to_q", "query")
    .replace("to_k", "key")
    .replace("to_v", "value")
    .replace("to_out.0", "proj_attn"): v
    for k, v in state.items()
  }
  save_file(legacy, str(root / "legacy.safetensors"))
  for name in ("vae", "ldm", "legacy"):
    got_cfg, got = vae_lib.load_vae(str(root / f"{name}.safetensors"), config=cfg)
    assert got_cfg == cfg
    jax.tree.map(np.testing.assert_array_equal, got, params)
  assert vae_lib.infer_config(state).block_out_channels == SMALL["block_out_channels"]


def test_state_dict_round_trip(vae, loaded):
  state = vae[1]
  back = vae_lib.to_diffusers_state_dict(loaded[1])
  assert sorted(back) == sorted(state)
  for key, value in state.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_chunked_equals_unchunked(loaded):
  # Equal up to float32 rounding: XLA's convolutions may sum in another order for another batch.
  cfg, params = loaded
  z = np.random.default_rng(2).normal(size=(5, SIZE // 4, SIZE // 4, 4)).astype(np.float32)
  _close(vae_lib.decode(cfg, params, z, chunk=2), vae_lib.decode(cfg, params, z), tol=1e-5)
  x = _images(3, seed=3)
  _close(
    vae_lib.encode(cfg, params, x, chunk=2).mean, vae_lib.encode(cfg, params, x).mean, tol=1e-5
  )


def test_bad_weight_files_are_refused_by_name(vae, loaded, tmp_path):
  state = dict(vae[1])
  del state["decoder.conv_in.bias"]
  state["encoder.extra.weight"] = np.zeros(3, np.float32)
  state["quant_conv.weight"] = np.zeros((8, 8, 3, 3), np.float32)
  save_file(state, str(tmp_path / "bad.safetensors"))
  with pytest.raises(ValueError) as e:
    vae_lib.load_vae(str(tmp_path / "bad.safetensors"), config=loaded[0])
  for text in (
    "decoder.conv_in.bias",
    "encoder.extra.weight",
    "quant_conv.weight [8, 8, 3, 3]",
    "expected [8, 8, 1, 1]",
  ):
    assert text in str(e.value)


def test_missing_weights_name_the_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors"):
    vae_lib.load_vae(str(tmp_path / "nowhere"))
  (tmp_path / "config.json").write_text(json.dumps({"block_out_channels": [32]}))
  with pytest.raises(
    FileNotFoundError, match=f"no diffusion_pytorch_model.safetensors in {tmp_path}.*sdxl-vae"
  ):
    vae_lib.load_vae(str(tmp_path))


def _codec_cfg(path, **kw):
  return ml_collections.ConfigDict(
    dict(
      kind="sdxl_vae",
      downsample=4,
      latent_channels=4,
      scale_factor=0.13025,
      shift_factor=0.0,
      weights_path=str(path),
      sample_posterior=True,
      **kw,
    )
  )


def test_codec_scaling_and_views_axis(vae, loaded):
  cfg, params = loaded
  codec = codec_lib.make_codec(_codec_cfg(vae[2] / "folder"))
  assert isinstance(codec, codec_lib.SDXLVAECodec)
  assert (codec.latent_channels, codec.downsample) == (4, 4)
  images = np.random.default_rng(4).integers(0, 256, (2, 3, SIZE, SIZE, 3), dtype=np.uint8)
  flat = codec_lib.to_unit(images.reshape(6, SIZE, SIZE, 3))
  post = vae_lib.encode(cfg, params, flat)
  z = codec.encode(images)
  assert z.shape == (2, 3, SIZE // 4, SIZE // 4, 4)
  np.testing.assert_allclose(z.reshape(post.mean.shape), 0.13025 * post.mode(), rtol=1e-6)
  key = jax.random.key(5)
  sampled = codec.encode(images, key).reshape(post.mean.shape)
  np.testing.assert_allclose(sampled, 0.13025 * post.sample(key), rtol=1e-5, atol=1e-6)
  assert not np.allclose(sampled, 0.13025 * post.mean)
  np.testing.assert_allclose(
    codec.decode(z).reshape(6, SIZE, SIZE, 3), vae_lib.decode(cfg, params, post.mean), atol=1e-5
  )


def test_codec_is_a_jit_argument_not_a_constant(vae):
  codec = codec_lib.make_codec(_codec_cfg(vae[2] / "folder"))
  images = np.random.default_rng(6).integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
  traces = []

  @jax.jit
  def round_trip(c, x):
    traces.append(1)
    return c.decode(c.encode(x))

  out = round_trip(codec, images)
  other = codec.replace(params=jax.tree.map(lambda p: 0.9 * p, codec.params))
  assert not np.allclose(round_trip(other, images), out)
  assert len(traces) == 1  # new weights, same compiled function
  np.testing.assert_allclose(out, codec.decode(codec.encode(images)), atol=1e-5)
  jaxpr = jax.make_jaxpr(round_trip.__wrapped__)(codec, images)
  assert sum(math.prod(np.shape(c)) for c in jaxpr.consts) < 100  # the weights are inputs
  # The space-to-depth codec is a leafless pytree: jit takes it as an argument too.
  s2d = codec_lib.SpaceToDepthCodec(downsample=4)
  assert jax.tree.leaves(s2d) == []
  np.testing.assert_allclose(
    jax.jit(lambda c, x: c.encode(x))(s2d, images), s2d.encode(images), rtol=1e-6
  )


def test_codec_config_errors(vae):
  with pytest.raises(ConfigError, match="--config.codec.weights_path"):
    codec_lib.make_codec(_codec_cfg(""))
  bad = _codec_cfg(vae[2] / "folder")
  bad.downsample = 8
  with pytest.raises(ConfigError, match="codec.downsample=8 but the VAE"):
    codec_lib.make_codec(bad)
