"""pippo-data encode-latents and data.latents: the stored latents are the codec's moments of the
transforms' own crops; batches of them give the model the inputs images give; the job resumes to
the bytes of an uninterrupted run; configs that do not fit the stored latents are refused; and a
short training run reads them."""

import dataclasses
import io
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from pippo_jax import config_lib
from pippo_jax.cli import data as cli
from pippo_jax.configs import p1_pretrain, p3_posttrain
from pippo_jax.data_pipelines import (
  latents,
  multiview,
  pipelines,
  schemas,
  sources,
  transforms,
  writer,
)
from pippo_jax.errors import ConfigError
from pippo_jax.models import autoencoder as vae_lib
from pippo_jax.models import codec as codec_lib
from pippo_jax.models import inputs
from pippo_jax.models.config import ModelConfig

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = "configs/p3_posttrain.py:size=smoke,views=2"  # 64 px, space-to-depth x4: 48 channels
# A small diffusers-layout VAE (x2, 4 latent channels) with random weights.
VAE = dict(block_out_channels=(16, 16), layers_per_block=1, norm_num_groups=8)


def smoke_config(path="", **data):
  config = p3_posttrain.get_config("size=smoke,views=2")
  config.batch_size = 2
  config.data.update(path=str(path), **data)
  return config


def vae_config(weights, path="", **data):
  config = smoke_config(path, **data)
  config.codec = config_lib.codec_config("sdxl_vae")
  config.codec.update(weights_path=str(weights), downsample=2, latent_channels=4)
  config.model.update(latent_channels=4, latent_size=32)
  return config


def encode(src, out, config, **kwargs):
  """encode-latents of one dataset directory, in process."""
  return latents.encode_dataset(
    str(src),
    str(out),
    transforms.CropSettings.from_config(config.data),
    codec_lib.make_codec(config.codec),
    codec_lib.identity(config.codec),
    stream=io.StringIO(),
    **kwargs,
  )


def records(directory, split="train"):
  src = sources.ArrayRecordSource(str(directory), split)
  return [src[i] for i in range(len(src))]


def expected_moments(element, kind, config, codec):
  """What encode-latents must store for a source record: the codec's moments of the crops the
  transforms make (float32)."""
  crop = transforms.CropSettings.from_config(config.data)
  if kind == "image":
    rec = schemas.decode_image_record(element["bytes"])
    crops = [transforms.crop_image(transforms.decode_photo(rec, "x"), rec, crop)[0]]
  else:
    rec = schemas.decode_capture(element["bytes"])
    crops = [
      multiview.crop_view(*multiview.decode_view(rec, c, "x"), crop)[0]
      for c in range(len(rec["images"]))
    ]
  return np.asarray(codec.encode_moments(np.stack(crops)))


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
  """A diffusers folder of a small VAE with random weights."""
  rng = np.random.default_rng(0)

  def init(path, leaf):
    if path[-1].key == "scale":
      return 1 + 0.05 * rng.standard_normal(leaf.shape)
    if leaf.ndim == 1:
      return 0.05 * rng.standard_normal(leaf.shape)
    return rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))

  cfg = vae_lib.VAEConfig(**VAE)
  params = jax.tree_util.tree_map_with_path(init, vae_lib.abstract_params(cfg))
  folder = tmp_path_factory.mktemp("vae")
  save_file(vae_lib.to_diffusers_state_dict(params), str(folder / vae_lib.WEIGHTS_FILE))
  blocks = len(VAE["block_out_channels"])
  (folder / vae_lib.CONFIG_FILE).write_text(
    json.dumps(
      dict(
        VAE,
        latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * blocks,
        up_block_types=["UpDecoderBlock2D"] * blocks,
      )
    )
  )
  return folder


@pytest.fixture(scope="module")
def encoded(studio, tmp_path_factory):
  """encode-latents as a user runs it (a subprocess, relative paths) on the session studio with
  the smoke P3 config: (its output folder, stdout)."""
  work = tmp_path_factory.mktemp("user")
  (work / "configs").symlink_to(ROOT / "configs")
  (work / "studio").symlink_to(studio)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  args = ["encode-latents", "--config", CONFIG, "--data", "studio", "--out", "out/lat"]
  run = subprocess.run(
    [sys.executable, "-m", "pippo_jax.cli.data", *args, "--batch", "8"],
    cwd=work,
    env=dict(env, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert run.returncode == 0, run.stderr
  assert "captures/train: 8/8 records (100%)" in run.stderr and "rec/s, eta" in run.stderr
  return work / "out" / "lat", run.stdout


def test_cli_stores_the_codec_moments_of_the_transform_crops(studio, encoded):
  out, stdout = encoded
  assert f"train on it with --config.data.path={out}/captures --config.data.latents=True" in stdout
  assert f"{out}/images/train: 40 of 40 records in 3 shards" in stdout
  config = smoke_config()
  codec = codec_lib.make_codec(config.codec)
  for kind, folder in (("capture", "captures"), ("image", "images")):
    src_index, out_index = (writer.read_index(str(d / folder)) for d in (studio, out))
    assert out_index["splits"].keys() == src_index["splits"].keys() == {"train", "test"}
    meta = out_index["splits"]["train"]["settings"]["meta"]["latents"]
    assert meta["codec"] == codec_lib.identity(config.codec)
    assert meta["crop"] == dict(resolution=64, crop="person", crop_margin=0.1, background=[255] * 3)
    for split in ("train", "test"):
      shards = [(s["start"], s["count"]) for s in src_index["splits"][split]["shards"]]
      assert [(s["start"], s["count"]) for s in out_index["splits"][split]["shards"]] == shards
      for a, b in zip(records(studio / folder, split), records(out / folder, split)):
        got = transforms.decode(b, kind)
        want = transforms.decode(a, kind)
        assert got["latents"].dtype == np.float16
        # Space-to-depth is exact: the stored values are the float16 of the moments.
        want_moments = expected_moments(a, kind, config, codec).astype(np.float16)
        np.testing.assert_array_equal(got["latents"], want_moments)
        for key, value in want.items():  # the record itself is unchanged
          assert (
            np.array_equal(got[key], value)
            if isinstance(value, np.ndarray)
            else (got[key] == value)
          ), key


def test_vae_moments_are_stored_and_sampled_with_the_training_key(studio, tiny_vae, tmp_path):
  config = vae_config(tiny_vae, tmp_path / "lat")
  results = encode(studio / "captures", tmp_path / "lat", config, batch=16)
  assert [r["encoded"] for r in results] == [8, 4]
  codec = codec_lib.make_codec(config.codec)
  for a, b in zip(records(studio / "captures")[:2], records(tmp_path / "lat")[:2]):
    stored = schemas.decode_capture(b["bytes"])["latents"]
    want = expected_moments(a, "capture", config, codec)
    assert stored.shape == (12, 32, 32, 8)  # mean and log-variance of 4 channels at x2
    np.testing.assert_allclose(stored, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())
  # A training batch of stored moments gives the inputs its images give, posterior samples
  # included (the same key draws the same noise).
  cfg = dataclasses.replace(ModelConfig.from_config(config.model), use_control_mlp=False)
  key = jax.random.key(3)
  x_img, c_img, _ = _inputs(vae_config(tiny_vae, studio / "captures"), codec, cfg, key)
  x_lat, c_lat, batch = _inputs(
    vae_config(tiny_vae, tmp_path / "lat", latents=True), codec, cfg, key
  )
  scale = np.abs(x_img).max()
  np.testing.assert_allclose(x_lat, x_img, atol=5e-3 * scale)
  np.testing.assert_allclose(c_lat["ref_latent"], c_img["ref_latent"], atol=5e-3 * scale)
  x_mode = np.asarray(codec.sample_moments(batch["target_latents"]))  # the posterior mean
  assert np.abs(x_mode - x_lat).max() > 50 * np.abs(x_lat - x_img).max()  # it does sample


def _inputs(config, codec, cfg, key):
  """(x0, cond, batch) of the first batch of `config`'s pipeline (jitted: the VAE is slow
  op by op)."""
  batch = next(pipelines.make_iterator(config.data, process_index=0, process_count=1))
  batch = {k: batch[k] for k in inputs.batch_keys(cfg, latents=config.data.latents)}
  x0, cond = jax.jit(lambda b, c: inputs.model_inputs(b, c, cfg, key))(batch, codec)
  return np.asarray(x0), jax.tree.map(np.asarray, cond), batch


def test_latent_batches_give_the_model_inputs_of_image_batches(studio, encoded):
  images = smoke_config(studio / "captures")
  stored = smoke_config(encoded[0] / "captures", latents=True)
  it_img, it_lat = (
    pipelines.make_iterator(c.data, process_index=0, process_count=1) for c in (images, stored)
  )
  cfg = ModelConfig.from_config(images.model)
  codec = codec_lib.make_codec(images.codec)
  keys = inputs.batch_keys(cfg, "person", latents=True)
  assert keys[:2] == ("target_latents", "ref_latent") and "target_masks" in keys
  for _ in range(2):
    a, b = next(it_img), next(it_lat)
    assert set(a) - set(b) == {"target_images", "ref_image"}
    assert set(b) - set(a) == {"target_latents", "ref_latent"}
    assert b["target_latents"].shape == (2, 2, 16, 16, 48) and b["ref_latent"].dtype == np.float16
    for key in set(a) & set(b):  # masks, cameras, Plücker maps, anchors: the same views
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    x_a, c_a = inputs.model_inputs(a, codec, cfg, jax.random.key(0))
    x_b, c_b = inputs.model_inputs(b, codec, cfg, jax.random.key(0))
    np.testing.assert_allclose(x_b, x_a, rtol=0, atol=2**-11)  # float16 rounding of [-1, 1]
    assert c_a.keys() == c_b.keys()
    for key in c_a:
      np.testing.assert_allclose(c_b[key], c_a[key], rtol=0, atol=2**-11, err_msg=key)
  # P1: the target crop's latents, the reference the same crop (ref_jitter 0), no face.
  p1 = p1_pretrain.get_config("size=smoke")
  p1.data.update(path=str(encoded[0] / "images"), latents=True, ref_jitter=0.0, batch_size=2)
  batch = next(pipelines.make_iterator(p1.data, process_index=0, process_count=1))
  assert sorted(batch) == ["epoch", "record_index", "ref_latent", "target_latents"]
  np.testing.assert_array_equal(batch["ref_latent"], batch["target_latents"][:, 0])


def test_interrupted_job_resumes_to_the_same_bytes(studio, tmp_path, capsys):
  config_args = ["--config", f"{ROOT}/{CONFIG}", "--data", str(studio / "captures")]
  whole, part = tmp_path / "whole", tmp_path / "part"
  assert cli.main(["encode-latents", *config_args, "--out", str(whole)]) == 0
  assert cli.main(["encode-latents", *config_args, "--out", str(part), "--max-shards", "2"]) == 0
  out = capsys.readouterr().out
  assert f"{part}/train: 4 of 8 records in 2 shards" in out and "INCOMPLETE" in out
  with pytest.raises(ConfigError, match="incomplete .4 of 8 records.; re-run the same"):
    config_lib.validate(smoke_config(part, latents=True))
  # A shard cut short (a crash while copying) is rewritten too.
  index = writer.read_index(str(part))
  shard = part / index["splits"]["train"]["shards"][1]["file"]
  shard.write_bytes(shard.read_bytes()[:1000])
  assert cli.main(["encode-latents", *config_args, "--out", str(part)]) == 0
  out = capsys.readouterr().out
  assert f"{part}/train: 8 of 8 records in 4 shards" in out and "this run: 6 encoded" in out
  files = lambda d: {p.name: p.read_bytes() for p in d.iterdir()}
  assert files(part) == files(whole)
  config_lib.validate(smoke_config(part, latents=True))


def test_corrupt_records_are_counted_copied_and_skipped(studio, tmp_path):
  src = sources.ArrayRecordSource(str(studio / "captures"))

  def record(i):
    raw = src[i]["bytes"]
    if i == 1:  # one camera's PNG cut short
      rec = schemas.decode_capture(raw)
      rec["images"][3] = rec["images"][3][:60]
      raw = schemas.encode_capture(rec)
    return b"garbage" if i == 2 else raw

  writer.write_split(str(tmp_path / "src"), "train", "capture", 6, record, 3)
  stream = io.StringIO()
  config = smoke_config(tmp_path / "lat", latents=True, corrupt_threshold=0.5)
  (result,) = latents.encode_dataset(
    str(tmp_path / "src"),
    str(tmp_path / "lat"),
    transforms.CropSettings.from_config(config.data),
    codec_lib.make_codec(config.codec),
    codec_lib.identity(config.codec),
    stream=stream,
  )
  assert (result["encoded"], result["corrupt"]) == (4, 2)
  text = stream.getvalue()
  assert "skipping corrupt record train-00000-of-00002.array_record#1 (1 corrupt so far" in text
  assert "cannot decode image" in text and "not a pippo record" in text
  assert records(tmp_path / "lat")[2]["bytes"] == b"garbage"  # copied as it was
  config.data.num_epochs = 1
  it = pipelines.make_iterator(config.data, process_index=0, process_count=1, batch=False)
  got = [int(ex["record_index"]) for ex in it]
  assert sorted(got) == [0, 3, 4, 5] and pipelines.skip_counts(it)["corrupt"] == 2


def test_configs_that_do_not_fit_the_latents_are_refused(studio, encoded, tiny_vae):
  lat = encoded[0] / "captures"
  config_lib.validate(smoke_config(lat, latents=True))
  config_lib.validate(smoke_config(studio / "captures"))  # images need no latents
  with pytest.raises(ConfigError, match="holds no stored latents: write them with `pippo-data"):
    config_lib.validate(smoke_config(studio / "captures", latents=True))
  # Another resolution or crop.
  config = p3_posttrain.get_config("size=smoke,views=2,res=128")
  config.data.update(path=str(lat), latents=True, crop_margin=0.2)
  with pytest.raises(ConfigError) as e:
    config_lib.validate(config)
  assert "data.resolution: stored 64, config 128; data.crop_margin: stored 0.1, config 0.2" in str(
    e.value
  )
  assert "encode them again with `pippo-data encode-latents`" in str(e.value)
  # Another codec: a VAE instead of space-to-depth.
  with pytest.raises(ConfigError, match="codec.kind: stored 'space_to_depth', config 'sdxl_vae'"):
    config_lib.validate(vae_config(tiny_vae, lat, latents=True))
  # The pipeline checks the dataset it opens as well.
  data = smoke_config(lat, latents=True, crop="full").data
  with pytest.raises(ConfigError, match="data.crop: stored 'person', config 'full'"):
    pipelines.make_iterator(data, process_index=0, process_count=1)
  # P1's jittered reference cannot be stored.
  p1 = p1_pretrain.get_config("size=smoke")
  p1.data.update(path=str(encoded[0] / "images"), latents=True)
  with pytest.raises(ConfigError, match="ref_jitter=0.1: the jittered reference crop"):
    config_lib.validate(p1)


@pytest.mark.slow
def test_training_steps_on_stored_latents(encoded, tmp_path):
  from pippo_jax.training import loop  # pylint: disable=g-import-not-at-top

  config = smoke_config(encoded[0] / "captures", latents=True)
  config.model.update(width=32, depth=2, num_heads=2, cam_mlp_hidden=16)
  config.diffusion.loss_mask = "person"  # target_masks still reach the step
  config.sharding.mesh.update(data=1, fsdp=1, tensor=1)
  config.train.update(
    num_steps=3, log_every=1, checkpoint_every=3, sample_every=3, sample_steps=2, peak_flops=1e12
  )
  loop.train(config, str(tmp_path))
  lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [1, 2, 3]
  assert all(np.isfinite(l["loss"]) and l["skipped"] == 0 for l in lines)
  assert (tmp_path / "samples" / "step_0000003.png").exists()  # grids of the images


def test_help_and_usage(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["encode-latents", "--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  for flag in ("--config", "--data", "--out", "--batch", "--dtype", "--max-shards"):
    assert flag in out
  with pytest.raises(SystemExit) as e:
    cli.main(["encode-latents", "--out", "x"])
  assert e.value.code == 2
  assert (
    capsys.readouterr().err == "pippo-data: error: encode-latents needs --config (see --help)\n"
  )


def test_the_crop_is_the_transforms_own(studio):
  """One crop function: the multi-view transform's views are `crop_view`'s crops."""
  cfg = smoke_config(studio / "captures", batch_size=1).data
  cfg.with_controls = False
  ex = next(pipelines.make_iterator(cfg, process_index=0, process_count=1, batch=False))
  rec = schemas.decode_capture(records(studio / "captures")[int(ex["record_index"])]["bytes"])
  crop = transforms.CropSettings.from_config(cfg)
  for cam, image in zip(ex["target_cameras"], ex["target_images"]):
    want = multiview.crop_view(*multiview.decode_view(rec, int(cam), "x"), crop)[0]
    np.testing.assert_array_equal(image, want)
