"""Views folders: which image meets which camera, rescaled intrinsics, masks from the background
or the alpha channel, and one-line errors naming the file."""

import json

import numpy as np
import pytest
from PIL import Image
from scenes import sphere_views

from pippo_jax.geometry import cameras, orbits
from pippo_jax.reconstruction import views


def _folder(tmp_path, names=None, image_hw=None, reference=False, files=None):
  images, masks, K, E = sphere_views(views_per_ring=2)
  names = names or [f"cam{i}" for i in range(len(K))]
  files = files or [f"view_{i:03d}.png" for i in range(len(K))]
  for f, image in zip(files, images):
    Image.fromarray(image).save(tmp_path / f)
  if reference:  # a pippo-sample folder: the reference camera first, reference.png beside
    K, E, names = np.concatenate([K[:1], K]), np.concatenate([E[:1], E]), ["reference", *names]
    Image.fromarray(images[0]).save(tmp_path / "reference.png")
  orbits.cameras_to_json(tmp_path / "cameras.json", K, E, names, image_hw=image_hw)
  return images, masks, K, E


def test_pippo_sample_folder(tmp_path):
  images, masks, K, E = _folder(tmp_path, image_hw=(96, 96), reference=True)
  got = views.read_views(str(tmp_path))
  assert got.names == ["cam0", "cam1", "cam2", "cam3"]  # the reference is left out
  np.testing.assert_array_equal(got.images, images)
  np.testing.assert_array_equal(got.masks, masks)  # white background, exact
  # K was written for 96 px images: rescaled to the 48 px files.
  np.testing.assert_allclose(got.K, cameras.resize_intrinsics(K[1:], (96, 96), (48, 48)))
  np.testing.assert_allclose(got.E, E[1:])
  np.testing.assert_array_equal(got.background, [255, 255, 255])


def test_image_keys_and_alpha(tmp_path):
  images, masks, K, E = sphere_views(views_per_ring=2)
  entries = []
  for i, (image, mask) in enumerate(zip(images, masks)):
    rgba = np.dstack([image, np.where(mask, 255, 0).astype(np.uint8)])
    rgba[..., :3][~mask] = (0, 255, 0)  # a colour the alpha must override
    Image.fromarray(rgba).save(tmp_path / f"z{3 - i}.png")
    entries.append(
      {"name": f"c{i}", "K": K[i].tolist(), "E": E[i].tolist(), "image": f"z{3 - i}.png"}
    )
  (tmp_path / "cameras.json").write_text(json.dumps({"cameras": entries}))
  got = views.read_views(str(tmp_path))
  assert got.files[0].endswith("z3.png")
  np.testing.assert_array_equal(got.masks, masks)


def test_bad_folders(tmp_path):
  with pytest.raises(views.LiftInputError, match="no such folder"):
    views.read_views(str(tmp_path / "nope"))
  _folder(tmp_path)
  (tmp_path / "cameras.json").rename(tmp_path / "other.json")
  with pytest.raises(views.LiftInputError, match=r"cameras\.json: no such file"):
    views.read_views(str(tmp_path))
  (tmp_path / "other.json").rename(tmp_path / "cameras.json")
  (tmp_path / "view_004.png").write_bytes((tmp_path / "view_000.png").read_bytes())
  with pytest.raises(views.LiftInputError, match=r"4 cameras but 5 view_NNN\.png files"):
    views.read_views(str(tmp_path))
  (tmp_path / "view_004.png").unlink()
  (tmp_path / "view_002.png").write_bytes(b"not a png")
  with pytest.raises(views.LiftInputError, match=r"image .*view_002\.png: not a readable image"):
    views.read_views(str(tmp_path))
  Image.new("RGB", (40, 40), "white").save(tmp_path / "view_002.png")
  with pytest.raises(views.LiftInputError, match=r"view_002\.png: 40x40 pixels, but .*48x48"):
    views.read_views(str(tmp_path))
  Image.new("RGB", (48, 48), "white").save(tmp_path / "view_002.png")
  with pytest.raises(views.LiftInputError, match=r"view_002\.png: nothing differs"):
    views.read_views(str(tmp_path))
  (tmp_path / "cameras.json").write_text('{"cameras": [{"name": "a"}]}')
  with pytest.raises(views.LiftInputError, match=r"cameras\.json: .*camera 'a' needs both"):
    views.read_views(str(tmp_path))
