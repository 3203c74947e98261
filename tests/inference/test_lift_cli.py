"""pippo-lift as a user runs it on a synthetic-studio views folder, its one-line errors, and
pippo-sample --lift from a photo end to end (small random-weights checkpoint)."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import trimesh
from cli_helpers import user_env
from PIL import Image

from pippo_jax.reconstruction import studio_truth, views

BIN = pathlib.Path(sys.executable).parent
FILES = {"mesh.glb", "mesh.ply", "renders.png", "turntable.gif", "turntable.png", "lift.json"}


def run(program, args, cwd) -> subprocess.CompletedProcess:
  return subprocess.run(
    [str(BIN / program), *args],
    cwd=cwd,
    env=user_env(),
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.fixture(scope="module")
def studio_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("lift")
  sv = studio_truth.studio_views(num_cameras=8, resolution=64)
  views.write_views(str(root / "studio"), sv.images, sv.K, sv.E, sv.names)
  return root


def test_lift_a_studio_folder(studio_folder):
  out = run(
    "pippo-lift",
    ["--views", "studio", "--out", "lifted", "--steps", "40", "--resolution", "24"],
    studio_folder,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert "fit step 40/40" in out.stderr and "lifting 8 views of 64x64 px" in out.stderr
  folder = studio_folder / "lifted"
  assert {p.name for p in folder.iterdir()} == FILES
  record = json.loads((folder / "lift.json").read_text())
  mesh = trimesh.load(folder / "mesh.glb", force="mesh", process=False)
  assert len(mesh.faces) == record["mesh"]["faces"] > 500
  assert len(mesh.vertices) == record["mesh"]["vertices"]
  assert mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)
  ply = trimesh.load(folder / "mesh.ply", process=False)
  np.testing.assert_allclose(ply.vertices, mesh.vertices, atol=1e-5)
  # The figure stands on the floor (z = 0) and is about as tall as the studio makes people.
  lo, hi = np.asarray(record["mesh"]["bounds"])
  assert -0.1 < lo[2] < 0.1 and 1.3 < hi[2] - lo[2] < 2.1, record["mesh"]["bounds"]
  assert record["views"] == 8 and record["psnr_input_views"] > 18
  with Image.open(folder / "turntable.gif") as gif:
    assert gif.n_frames == 24 and gif.size == (128, 128)
  renders = np.asarray(Image.open(folder / "renders.png"))
  assert renders.shape == (3 * 128 + 2 * 4, 8 * 128 + 7 * 4, 3)
  again = run("pippo-lift", ["--views", "studio", "--out", "lifted"], studio_folder)
  assert again.returncode == 1 and "exists and is not empty" in again.stderr


def test_bad_inputs_name_the_file(studio_folder, tmp_path):
  bad = tmp_path / "bad"
  bad.mkdir()
  for name in ("view_000.png", "view_001.png"):
    (bad / name).write_bytes((studio_folder / "studio" / name).read_bytes())
  out = run("pippo-lift", ["--views", str(bad), "--out", str(tmp_path / "o")], tmp_path)
  assert out.returncode == 1
  assert out.stderr.strip().splitlines() == [
    f"pippo-lift: error: {bad / 'cameras.json'}: no such file; a views folder needs its cameras "
    "(a pippo-sample output, or images with a cameras.json in our convention)"
  ]
  (bad / "cameras.json").write_bytes((studio_folder / "studio" / "cameras.json").read_bytes())
  out = run("pippo-lift", ["--views", str(bad), "--out", str(tmp_path / "o")], tmp_path)
  assert out.returncode == 1 and "8 cameras but 2 view_NNN.png files" in out.stderr
  for i in range(2, 8):
    (bad / f"view_{i:03d}.png").write_bytes(b"\x89PNG broken")
  out = run("pippo-lift", ["--views", str(bad), "--out", str(tmp_path / "o")], tmp_path)
  assert out.returncode == 1
  assert f"image {bad / 'view_002.png'}: not a readable image" in out.stderr
  assert not (tmp_path / "o").exists()
  usage = run("pippo-lift", ["--views", str(bad), "--out", "o", "--resolution", "4"], tmp_path)
  assert usage.returncode == 2 and "--resolution must be in [16, 256]" in usage.stderr
  usage = run("pippo-lift", ["--out", "o"], tmp_path)
  assert usage.returncode == 2 and "--views and --out are required" in usage.stderr
  usage = run("pippo-lift", ["--views", "v", "--out", "o", "--representation", "mesh"], tmp_path)
  assert usage.returncode == 2 and "value should be one of <voxel|hash>" in usage.stderr


def test_lift_with_the_hash_grid(studio_folder):
  args = ["--views", "studio", "--out", "hashed", "--steps", "20", "--resolution", "24"]
  out = run("pippo-lift", [*args, "--representation", "hash"], studio_folder)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "(hash field, 20 steps" in out.stderr
  record = json.loads((studio_folder / "hashed" / "lift.json").read_text())
  assert record["settings"]["representation"] == "hash"
  mesh = trimesh.load(studio_folder / "hashed" / "mesh.glb", force="mesh", process=False)
  assert len(mesh.faces) == record["mesh"]["faces"] > 500
  lo, hi = np.asarray(record["mesh"]["bounds"])
  assert -0.1 < lo[2] < 0.1 and 1.3 < hi[2] - lo[2] < 2.1, record["mesh"]["bounds"]


@pytest.mark.slow
def test_sample_then_lift(user_dir):
  args = ["--checkpoint", "ckpt", "--image", "cutout.png", "--views", "6", "--steps", "2"]
  out = run(
    "pippo-sample",
    [*args, "--out", "out/lifted", "--lift", "--lift-steps", "30", "--lift-resolution", "24"],
    user_dir,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert "pippo-sample: fit step 30/30" in out.stderr
  folder = user_dir / "out" / "lifted" / "lift"
  assert {p.name for p in folder.iterdir()} == FILES
  mesh = trimesh.load(folder / "mesh.glb", force="mesh", process=False)
  record = json.loads((folder / "lift.json").read_text())
  assert len(mesh.vertices) == record["mesh"]["vertices"] > 0
  assert record["views"] == 6 and record["files"][0] == "view_000.png"
  usage = run("pippo-sample", [*args, "--out", "o", "--lift", "--lift-steps", "0"], user_dir)
  assert usage.returncode == 2 and "--lift-steps must be >= 1" in usage.stderr
