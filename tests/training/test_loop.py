"""The training loop on the synthetic studio: loss falls, logs and grids are written; stage
transitions load what matches and keep new modules at their zero init."""

import glob
import importlib
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pippo_jax import checkpoints, config_lib
from pippo_jax.data_pipelines import synthetic_studio
from pippo_jax.models.config import ModelConfig
from pippo_jax.models.pippo import Pippo, dummy_inputs
from pippo_jax.training import loop, transitions


def small_config(stage, arg):
  config = importlib.import_module(f"pippo_jax.configs.{stage}").get_config(arg)
  config.model.update(width=64, depth=2, num_heads=2, cam_mlp_hidden=16)
  config.train.update(
    log_every=10,
    checkpoint_every=1000,
    sample_every=0,
    sample_steps=4,
    sample_batch=1,
    peak_flops=1e11,
  )
  config.sharding.mesh.update(data=1, fsdp=1, tensor=1)
  return config


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("studio"))
  settings = synthetic_studio.StudioSettings(
    seed=0, subjects=3, cameras=8, moments=1, resolution=64, images_per_subject=2
  )
  synthetic_studio.write_studio(out, settings, ("captures",))
  return out + "/captures"


def test_loss_falls_and_logs_and_grids_are_written(studio, tmp_path):
  config = small_config("p3_posttrain", "size=smoke,views=2,batch=4")
  config.data.path = studio
  config.optimizer.update(lr=2e-3, warmup_steps=10)
  config.train.update(
    num_steps=80, sample_every=80, eval_every=40, eval_samples=2, eval_views=3, eval_lpips="alex"
  )
  last = loop.train(config, str(tmp_path))
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  lines = [r for r in rows if "loss" in r]
  assert [l["step"] for l in lines] == list(range(10, 81, 10))
  # Evaluation at steps 40 and 80: its own lines, reports and TensorBoard scalars.
  evals = [r for r in rows if "eval/psnr" in r]
  assert [r["step"] for r in evals] == [40, 80]
  assert {"eval/ssim", "eval/lpips", "eval/psnr_person", "eval/re_gt_unbalanced"} <= set(evals[0])
  result = json.loads((tmp_path / "eval" / "step_0000080" / "metrics.json").read_text())
  assert result["num_captures"] == 1 and result["views"] == 3 and result["step"] == 80
  assert np.isclose(result["mean"]["psnr"], evals[1]["eval/psnr"])
  assert (tmp_path / "eval" / "step_0000080" / "best_worst.png").exists()
  tags = {
    v.tag
    for path in glob.glob(str(tmp_path / "events.out.tfevents.*"))
    for event in tf.compat.v1.train.summary_iterator(path)
    for v in event.summary.value
  }
  assert {"eval/psnr", "eval/lpips"} <= tags
  assert {"loss", "grad_norm", "lr", "examples_per_sec", "mfu", "skipped"} <= set(lines[0])
  first, final = lines[0]["loss"], np.mean([l["loss"] for l in lines[-3:]])
  assert final < 0.85 * first, (first, final)
  assert last["skipped"] == 0 and last["lr"] == pytest.approx(2e-3)
  grid = np.asarray(Image.open(tmp_path / "samples" / "step_0000080.png"))
  assert grid.shape == (64, 64 * 5 + 8, 3)  # one row: reference | 2 targets | 2 samples
  assert glob.glob(str(tmp_path / "events.out.tfevents.*"))
  assert os.path.isdir(tmp_path / "checkpoints" / "80")


def test_smoke_without_a_dataset_builds_its_studio_in_the_workdir(tmp_path, capsys):
  """The README's main job: no data.path -> the smoke size writes its studio under
  WORKDIR/cache (4 people, 24 cameras: 3 train / 1 test captures) and trains on it."""
  config = small_config("p3_posttrain", "size=smoke")
  config.train.update(num_steps=2, log_every=1)
  assert config.data.path == ""
  loop.train(config, str(tmp_path))
  studio = tmp_path / "cache" / "studio_64" / "captures"
  assert config.data.path == str(studio)
  splits = json.load(open(studio / "index.json"))["splits"]
  assert {k: v["num_records"] for k, v in splits.items()} == {"train": 3, "test": 1}
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [1, 2] and np.isfinite(lines[-1]["loss"])
  capsys.readouterr()
  assert loop.train(config, str(tmp_path)) == {}  # run again: restores step 2 and stops
  assert "already at step 2 (train.num_steps=2): nothing to do" in capsys.readouterr().out


def test_stage_transition_p1_to_m2_keeps_the_function(tmp_path):
  p1 = small_config("p1_pretrain", "size=smoke")
  m2 = small_config("m2_midtrain", "size=smoke,views=1")
  cfg1, cfg2 = ModelConfig.from_config(p1.model), ModelConfig.from_config(m2.model)
  x_t, t, cond = dummy_inputs(cfg2, 2)
  x_t = jax.random.normal(jax.random.key(0), x_t.shape)
  cond = jax.tree.map(lambda a: a + jax.random.normal(jax.random.key(1), a.shape), cond)
  params1 = nn.unbox(jax.jit(Pippo(cfg1).init)(jax.random.key(2), x_t, t, cond)["params"])
  params1 = jax.tree.map(lambda p: p + 0.05, params1)  # a "trained" P1 model
  checkpoints.write_params(str(tmp_path / "p1"), params1, p1)
  params2 = nn.unbox(jax.jit(Pippo(cfg2).init)(jax.random.key(3), x_t, t, cond)["params"])
  merged, rows = transitions.merge(params2, checkpoints.read_params(str(tmp_path / "p1"))[0])
  status = {name: s for name, s, _ in rows}
  assert status["generator/blocks/in_proj/kernel"] == "loaded"
  assert status["cam_mlp/out/kernel"] == "new" and status["null_cam"] == "new"
  assert "summary: loaded" in transitions.format_table(rows)
  out1 = Pippo(cfg1).apply({"params": params1}, x_t, t, {"ref_latent": cond["ref_latent"]})
  out2 = Pippo(cfg2).apply({"params": merged}, x_t, t, cond)
  np.testing.assert_allclose(out2, out1, atol=1e-5)  # the zero-init camera MLP adds nothing


def test_p3_trains_through_a_vae_codec(studio, tmp_path):
  """codec.kind=sdxl_vae on random weights in a diffusers folder (the SDXL layout at 4 levels,
  x8): training steps, a checkpoint and a sample grid decoded by the VAE."""
  import torch  # pylint: disable=g-import-not-at-top
  from diffusers import AutoencoderKL  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  vae = AutoencoderKL(
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(16, 32, 32, 32),
    layers_per_block=1,
    norm_num_groups=8,
    latent_channels=4,
    scaling_factor=0.13025,
  )
  vae.save_pretrained(tmp_path / "vae", safe_serialization=True)
  config = small_config("p3_posttrain", "size=smoke,views=2,batch=2")
  config.data.path = studio
  config.codec = config_lib.codec_config("sdxl_vae")
  config.codec.weights_path = str(tmp_path / "vae")
  config.model.update(latent_channels=4, latent_size=64 // 8)
  config.diffusion.loss_mask = "person"
  config.train.update(num_steps=3, log_every=1, sample_every=3, checkpoint_every=3)
  last = loop.train(config, str(tmp_path / "run"))
  lines = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [1, 2, 3]
  assert all(np.isfinite(l["loss"]) and l["skipped"] == 0 for l in lines), lines
  assert last["loss"] > 0
  grid = np.asarray(Image.open(tmp_path / "run" / "samples" / "step_0000003.png"))
  assert grid.shape == (64, 64 * 5 + 8, 3)
  assert os.path.isdir(tmp_path / "run" / "checkpoints" / "3")
