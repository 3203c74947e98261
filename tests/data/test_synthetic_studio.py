"""The synthetic studio: deterministic, calibrated, with exact masks and head pose."""

import numpy as np

from pippo_jax.data_pipelines import figures, imageops, raycast, schemas
from pippo_jax.data_pipelines import synthetic_studio as ss
from pippo_jax.geometry import cameras

SETTINGS = ss.StudioSettings(seed=5, cameras=24, resolution=64)


def test_captures_are_deterministic_by_seed():
  cams = ss.dome_cameras(8, 32, 1)
  settings = ss.StudioSettings(seed=1, cameras=8, resolution=32)
  a = schemas.encode_capture(ss.make_capture(settings, 2, 0, "train", cams))
  b = schemas.encode_capture(ss.make_capture(settings, 2, 0, "train", cams))
  assert a == b
  other = ss.StudioSettings(seed=2, cameras=8, resolution=32)
  c = ss.make_capture(other, 2, 0, "train", ss.dome_cameras(8, 32, 2))
  assert schemas.encode_capture(c) != a


def test_dome_cameras_are_valid_and_all_around():
  K, E, names = ss.dome_cameras(48, 128, 0)
  cameras.validate_cameras(K, E, names)
  centres = cameras.camera_centers(E)
  azimuth = np.degrees(np.arctan2(centres[:, 1], centres[:, 0])) % 360
  assert np.histogram(azimuth, bins=8, range=(0, 360))[0].min() >= 3
  elevation = np.degrees(
    np.arcsin((centres[:, 2] - 0.95) / np.linalg.norm(centres - [0, 0, 0.95], axis=1))
  )
  assert elevation.min() < 0 and elevation.max() > 40
  # Every camera sees the subject near its image centre.
  uv, depth = cameras.project_points(K, E, np.array([[0, 0, 0.95]]))
  assert np.all(depth > 0) and np.all(np.abs(uv[:, 0] - 64) < 20)


def test_head_point_projects_into_the_rendered_head_and_mask():
  K, E, _ = ss.dome_cameras(SETTINGS.cameras, SETTINGS.resolution, SETTINGS.seed)
  head_hits, views = 0, 0
  for subject in range(6):
    figure, out = ss.render_capture_views(SETTINGS.seed, subject, 0, K, E, 64)
    uv, depth = cameras.project_points(K, E, figure["head_point"][None])
    cols, rows = np.floor(uv[:, 0, 0]).astype(int), np.floor(uv[:, 0, 1]).astype(int)
    for v, (i, j) in enumerate(zip(rows, cols)):
      assert 0 <= i < 64 and 0 <= j < 64
      assert out["mask"][v, i, j] == 255
      if np.isin(out["part"][v, i, j], figures.HEAD_PARTS):
        head_hits += 1
      else:  # only an occluder in front of the head may hide it
        assert out["depth"][v, i, j] < depth[v, 0]
      views += 1
  assert head_hits >= 0.95 * views


def test_masks_are_exact():
  K, E, _ = ss.dome_cameras(6, 48, 0)
  _, out = ss.render_capture_views(0, 1, 0, K, E, 48)
  np.testing.assert_array_equal(out["mask"] == 255, out["part"] >= 0)
  np.testing.assert_array_equal(out["mask"] == 255, np.isfinite(out["depth"]))
  assert set(np.unique(out["mask"])) == {0, 255}


def test_front_and_back_of_the_head_differ():
  """Eyes (albedo 0.95 sclera) show from the front only."""
  flat = {
    "ambient": np.ones(3),
    "sky": np.zeros(3),
    "directions": np.zeros((0, 3)),
    "powers": np.zeros((0, 3)),
  }
  for subject in range(4):
    figure, _ = ss.subject_figure(0, subject, 0)
    hp, hr = figure["head_point"], figure["head_rotation"]
    E = np.stack([ss.look_at(hp + 0.8 * hr[:, 2], hp), ss.look_at(hp - 0.8 * hr[:, 2], hp)])
    K = np.stack([cameras.make_K(200, 200, 32, 32)] * 2)
    out = raycast.render(figure["prims"], K, E, 64, 64, flat, np.zeros((64, 64, 3), np.uint8))
    sclera = (out["image"] == round(0.95 * 255)).all(-1).sum((1, 2))
    assert sclera[0] > 4 and sclera[1] == 0


def test_image_records_have_consistent_metadata():
  settings = ss.StudioSettings(seed=0, resolution=64)
  faces = 0
  for k in range(12):
    rec = ss.make_image(settings, 1, k, "train")
    img = schemas.decode_image(rec["image"])
    assert img.shape == (rec["height"], rec["width"], 3)
    for name in schemas.IMAGE_SCORES:
      assert 0.0 <= rec[name] <= 1.0
    x, y, w, h = rec["person_box"]
    assert w > 0 and h > 0 and x >= 0 and y >= 0
    assert x + w <= rec["width"] and y + h <= rec["height"]
    fx, fy, fw, fh = rec["face_box"]
    if fw > 0:
      faces += 1
      assert fx >= x and fy >= y and fx + fw <= x + w and fy + fh <= y + h
  assert 0 < faces < 12


def test_render_speed_scales_to_hundreds_of_views():
  """Not a timing assertion: 200 views of 128 px render in one call."""
  K, E, _ = ss.dome_cameras(200, 128, 0)
  _, out = ss.render_capture_views(0, 0, 0, K, E, 128)
  assert out["image"].shape == (200, 128, 128, 3)
  coverage = (out["mask"] > 0).mean((1, 2))
  assert coverage.min() > 0.02 and coverage.max() < 0.5
  box = imageops.mask_box(out["mask"][0])
  assert box is not None and box[3] > 40
