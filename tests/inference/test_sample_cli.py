"""pippo-sample as a user runs it (relative paths, from the folder the files are in) on a small
random-weights checkpoint: a JPEG photo, an RGBA cut-out with two elevations sampled in chunks, a
studio capture with its ground truth; same seed, same pixels; bad inputs fail naming the file and
leave no output folder."""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from cli_helpers import user_env
from PIL import Image

PIPPO_SAMPLE = str(pathlib.Path(sys.executable).parent / "pippo-sample")


def pippo_sample(args, cwd) -> subprocess.CompletedProcess:
  return subprocess.run(
    [PIPPO_SAMPLE, *args], cwd=cwd, env=user_env(), capture_output=True, text=True, timeout=300
  )


def _views(folder) -> np.ndarray:
  names = sorted(n for n in os.listdir(folder) if n.startswith("view_"))
  return np.stack([np.asarray(Image.open(os.path.join(folder, n))) for n in names])


def _check_outputs(folder, views: int, truth: bool = False) -> None:
  files = set(os.listdir(folder))
  expected = {"reference.png", "contact_sheet.png", "turntable.gif", "cameras.json", "sample.json"}
  expected |= {f"view_{i:03d}.png" for i in range(views)}
  if truth:
    expected |= {f"truth_{i:03d}.png" for i in range(views)}
  assert expected <= files, sorted(files)
  assert not {f for f in files - expected if f != "turntable.mp4"}, sorted(files)
  assert _views(folder).shape == (views, 64, 64, 3)
  assert np.asarray(Image.open(os.path.join(folder, "reference.png"))).shape == (64, 64, 3)
  with Image.open(os.path.join(folder, "turntable.gif")) as gif:
    assert gif.n_frames == views and gif.size == (64, 64)
  cams = json.loads(open(os.path.join(folder, "cameras.json")).read())["cameras"]
  assert len(cams) == views + 1 and cams[0]["name"] == "reference"
  assert all(c["height"] == c["width"] == 64 for c in cams)


def test_photo_to_views_same_seed_same_pixels(user_dir):
  args = ["--checkpoint", "ckpt", "--image", "astronaut.jpg", "--views", "4", "--steps", "3"]
  first = pippo_sample([*args, "--out", "out/astronaut"], user_dir)
  assert first.returncode == 0, first.stderr[-3000:]
  assert "no alpha and no plain background" in first.stderr  # the astronaut's busy backdrop
  assert "denoising step 3/3" in first.stderr  # 3 DDIM steps, 3 model calls
  # Only the program's own lines: no absl INFO or WARNING lines from restoring the checkpoint.
  assert not re.search(r"^[IW]\d{4} ", first.stderr, re.M), first.stderr[:3000]
  _check_outputs(user_dir / "out" / "astronaut", 4)
  settings = json.loads((user_dir / "out" / "astronaut" / "sample.json").read_text())
  assert settings["views"] == 4 and settings["num_steps"] == 3 and settings["passes"] == 1
  again = pippo_sample([*args, "--out", "out/again"], user_dir)
  assert again.returncode == 0, again.stderr[-3000:]
  views = _views(user_dir / "out" / "astronaut")
  np.testing.assert_array_equal(views, _views(user_dir / "out" / "again"))
  assert views.std() > 1  # not a constant image
  # A non-empty --out is refused unless --overwrite.
  refused = pippo_sample([*args, "--out", "out/again"], user_dir)
  assert refused.returncode == 1 and "--overwrite" in refused.stderr


def test_cutout_two_elevations_in_chunks(user_dir):
  run = pippo_sample(
    [
      "--checkpoint=ckpt",
      "--image=cutout.png",
      "--out=out/cutout",
      "--views=3",
      "--elevation=0,20",
      "--batch-views=4",
      "--anchor-views=2",
      "--steps=2",
      "--guidance=ref=2",
    ],
    user_dir,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  assert "2 passes of 4 views" in run.stderr
  _check_outputs(user_dir / "out" / "cutout", 6)
  settings = json.loads((user_dir / "out" / "cutout" / "sample.json").read_text())
  assert settings["scales"] == {"ref": 2.0} and settings["passes"] == 2


def test_studio_capture_with_ground_truth(user_dir):
  run = pippo_sample(
    ["--checkpoint", "ckpt", "--capture", "0", "--out", "out/studio", "--views", "5"], user_dir
  )
  assert run.returncode == 0, run.stderr[-3000:]
  _check_outputs(user_dir / "out" / "studio", 5, truth=True)  # 6 cameras: reference + 5
  cams = json.loads((user_dir / "out" / "studio" / "cameras.json").read_text())
  names = [c["name"] for c in cams["cameras"]]
  assert names[0] == "reference" and len(set(names[1:])) == 5
  assert set(names[1:]) <= {f"cam{i:03d}" for i in range(6)}
  missing = pippo_sample(["--checkpoint", "ckpt", "--capture", "9", "--out", "out/x"], user_dir)
  assert missing.returncode == 1 and "test split" in missing.stderr
  assert not (user_dir / "out" / "x").exists()


@pytest.mark.parametrize(
  "name,content,message",
  [
    ("empty.jpg", b"", "is empty"),
    ("notes.png", b"hello", "not a readable image"),
    ("white.png", "white", "no person found"),
  ],
)
def test_bad_photo_fails_naming_it_and_writes_nothing(user_dir, name, content, message):
  if content == "white":
    Image.new("RGB", (80, 120), "white").save(user_dir / name)
  else:
    (user_dir / name).write_bytes(content)
  run = pippo_sample(["--checkpoint", "ckpt", "--image", name, "--out", f"out/{name}"], user_dir)
  assert run.returncode == 1, run.stderr
  lines = [line for line in run.stderr.splitlines() if "error:" in line]
  assert len(lines) == 1 and name in lines[0] and message in lines[0], run.stderr[-2000:]
  assert "Traceback" not in run.stderr
  assert not (user_dir / "out" / name).exists()
  assert not [p for p in os.listdir(user_dir / "out") if p.endswith(".partial")]
