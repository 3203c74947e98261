"""Evaluation end to end: `evaluate.score` on real studio views (exact, degraded, swapped) against
direct metric calls, and `pippo-eval` as a user runs it."""

import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from cli_helpers import user_env

from pippo_jax.data_pipelines import synthetic_studio
from pippo_jax.evaluation import evaluate, metrics
from pippo_jax.inference import studio

PIPPO_EVAL = str(pathlib.Path(sys.executable).parent / "pippo-eval")
SPLITS = ("train", "test")


@pytest.fixture(scope="module")
def studio_samples(tmp_path_factory):
  """Two captures (8 views at 128 px) as Samples whose 'generated' views are the ground truth."""
  root = tmp_path_factory.mktemp("eval_studio")
  settings = synthetic_studio.StudioSettings(
    seed=3, subjects=2, cameras=16, moments=1, resolution=256, images_per_subject=1
  )
  synthetic_studio.write_studio(str(root), settings, ("captures",), progress_stream=io.StringIO())
  from pippo_jax.configs import p3_posttrain  # pylint: disable=g-import-not-at-top

  data = p3_posttrain.get_config("size=smoke,views=2").data
  data.update(path=str(root / "captures"), resolution=128)
  caps = [studio.capture_views(data, studio.open_split(data, split), 0, 8) for split in SPLITS]
  return evaluate.Samples(
    names=[c.where for c in caps],
    reference=np.stack([c.reference for c in caps]),
    generated=np.stack([c.truth for c in caps]),
    truth=np.stack([c.truth for c in caps]),
    masks=np.stack([c.masks for c in caps]),
    K=np.stack([c.scene.K for c in caps]),
    E=np.stack([c.scene.E for c in caps]),
  )


def test_score_matches_direct_metrics_and_sees_inconsistent_views(studio_samples):
  s = studio_samples
  rng = np.random.default_rng(0)
  noisy = np.clip(s.truth + rng.normal(0, 4, s.truth.shape), 0, 255).astype(np.uint8)
  slightly = evaluate.Samples(**{**vars(s), "generated": noisy})
  r = evaluate.score(slightly, lpips_net="alex", match_size=256)
  # Image metrics: the mean over views, then over captures, of the metric functions.
  want = np.asarray(metrics.psnr(noisy, s.truth)).mean()
  assert np.isclose(r["mean"]["psnr"], want, rtol=1e-6)
  mask = s.masks > 127
  assert np.isclose(r["mean"]["ssim_person"], np.asarray(metrics.ssim(noisy, s.truth, mask)).mean())
  assert np.isclose(r["mean"]["lpips"], np.asarray(metrics.lpips(noisy, s.truth, "alex")).mean())
  # RE: views that are the ground truth sit exactly on the floor; the same views in another
  # order (neighbours swapped) contradict the cameras and lie above it (few SIFT matches on
  # these textureless figures make the floor itself several pixels: compare deviations).
  exact = evaluate.score(s, lpips_net="alex", match_size=256)["mean"]
  assert np.isfinite(exact["re_gt_unbalanced"]) and exact["re_deviation_unbalanced"] == 0
  swapped = evaluate.Samples(**{**vars(s), "generated": s.truth[:, [1, 0, 3, 2, 5, 4, 7, 6]]})
  r2 = evaluate.score(swapped, lpips_net="alex", match_size=256)
  assert r2["mean"]["re_deviation_unbalanced"] > 2.0
  assert r2["mean"]["psnr"] < r["mean"]["psnr"] - 5
  table = evaluate.markdown_table(r)
  assert "| generated |" in table and "opencv-sift" in table
  print(table, evaluate.markdown_table(r2), sep="\n")


def test_pippo_eval_writes_report_and_tensorboard(user_dir):
  run = subprocess.run(
    [
      PIPPO_EVAL,
      "--checkpoint=ckpt",
      "--out=out/eval",
      "--split=train",
      "--views=3",
      "--num-samples=2",
      "--steps=2",
      "--lpips=alex",
      "--match-size=128",
    ],
    cwd=user_dir,
    env=user_env(),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  assert "generated capture 1/1" in run.stderr  # the studio's training split has one capture
  out = user_dir / "out" / "eval"
  files = set(os.listdir(out))
  assert {"metrics.json", "table.md", "best_worst.png"} <= files
  assert any(f.startswith("events.out.tfevents") for f in files)
  result = json.loads((out / "metrics.json").read_text())
  assert result["num_captures"] == 1 and result["views"] == 3 and result["split"] == "train"
  assert len(result["captures"]) == 1 and result["num_steps"] == 2
  assert all(np.isfinite(result["mean"][k]) for k in ("psnr", "ssim", "lpips", "psnr_person"))
  assert "| generated |" in (out / "table.md").read_text()
  assert "| generated |" in run.stdout
  bad = subprocess.run(
    [PIPPO_EVAL, "--checkpoint=ckpt", "--out=out/bad", "--split=nope"],
    cwd=user_dir,
    env=user_env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert bad.returncode == 1 and "no split 'nope'" in bad.stderr
  assert not (user_dir / "out" / "bad").exists()
