"""Turntable orbits, camera JSON files and head-centred scene normalisation."""

import json

import numpy as np
import pytest

from pippo_jax.geometry import cameras, normalize, orbits

HEAD = np.array([0.3, 1.6, -0.2])


def _head_rotation():
  """Head frame tilted and turned (columns: left, up, forward)."""
  a, b = np.radians(30.0), np.radians(-10.0)
  turn = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
  tilt = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
  return turn @ tilt


def _angle(a, b):
  return np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1)))


def test_turntable_looks_at_the_head_and_is_evenly_spaced():
  Hr = _head_rotation()
  K, E = orbits.turntable_cameras(
    12, 2.0, HEAD, Hr, elevations_deg=(0.0, 20.0), image_hw=(512, 384), fov_deg=30.0
  )
  assert K.shape == (24, 3, 3) and E.shape == (24, 4, 4)
  cameras.validate_cameras(K, E)
  uv, depth = cameras.project_points(K, E, np.broadcast_to(HEAD, (24, 1, 3)))
  np.testing.assert_allclose(
    uv[:, 0], np.broadcast_to([192.0, 256.0], (24, 2)), atol=1e-9
  )  # the head sits at the image centre
  np.testing.assert_allclose(depth[:, 0], 2.0, atol=1e-12)
  np.testing.assert_allclose(K[0, 1, 1], 256 / np.tan(np.radians(15)))
  offsets = cameras.camera_centers(E) - HEAD
  np.testing.assert_allclose(np.linalg.norm(offsets, axis=-1), 2.0, atol=1e-12)
  for ring, elevation in ((offsets[:12], 0.0), (offsets[12:], 20.0)):
    elevations = [90.0 - _angle(o, Hr[:, 1]) for o in ring]
    np.testing.assert_allclose(elevations, elevation, atol=1e-9)
    flat = ring - np.outer(ring @ Hr[:, 1], Hr[:, 1])
    steps = [_angle(flat[i], flat[(i + 1) % 12]) for i in range(12)]
    np.testing.assert_allclose(steps, 30.0, atol=1e-9)
  # azimuth 0 faces the subject; azimuth 90 is on the subject's left
  np.testing.assert_allclose(offsets[0] / 2.0, Hr[:, 2], atol=1e-12)
  np.testing.assert_allclose(offsets[3] / 2.0, Hr[:, 0], atol=1e-12)
  # the head's up axis points up in every image
  top, _ = cameras.project_points(K, E, np.broadcast_to(HEAD + 0.1 * Hr[:, 1], (24, 1, 3)))
  assert np.all(top[:, 0, 1] < 256.0)
  with pytest.raises(ValueError, match="elevations"):
    orbits.turntable_cameras(4, 1.0, elevations_deg=(90.0,))


def test_json_round_trip_and_errors(tmp_path):
  K, E = orbits.turntable_cameras(5, 1.5, HEAD, image_hw=(256, 256))
  names = [f"view{i}" for i in range(5)]
  path = tmp_path / "orbit.json"
  orbits.cameras_to_json(path, K, E, names, image_hw=(256, 256))
  loaded = orbits.cameras_from_json(path)
  np.testing.assert_allclose(loaded.K, K, atol=1e-12)
  np.testing.assert_allclose(loaded.E, E, atol=1e-12)
  assert loaded.names == names
  np.testing.assert_array_equal(loaded.image_hw, [[256, 256]] * 5)

  data = json.loads(path.read_text())
  data["cameras"][2]["E"][0][0] *= 2.0
  path.write_text(json.dumps(data))
  with pytest.raises(ValueError, match=r"camera 'view2': E is not rigid"):
    orbits.cameras_from_json(path)
  del data["cameras"][1]["K"]
  path.write_text(json.dumps(data))
  with pytest.raises(ValueError, match=r"camera 'view1' needs both"):
    orbits.cameras_from_json(path)


def test_reads_krt_and_nerf_files(tmp_path):
  K, E = orbits.turntable_cameras(3, 1.5, image_hw=(100, 80))
  krt_path = tmp_path / "camera_calibration.json"
  krt_path.write_text(json.dumps(cameras.KE_to_krt(K, E, ["a", "b", "c"])))
  loaded = orbits.cameras_from_json(krt_path)
  assert loaded.names == ["a", "b", "c"]
  np.testing.assert_allclose(loaded.E, E, atol=1e-12)

  c2w = cameras.opencv_E_to_opengl_c2w(E)
  nerf = {
    "camera_angle_x": 2 * np.arctan(40 / K[0, 0, 0]),
    "w": 80,
    "h": 100,
    "frames": [{"file_path": f"img{i}", "transform_matrix": c2w[i].tolist()} for i in range(3)],
  }
  nerf_path = tmp_path / "transforms.json"
  nerf_path.write_text(json.dumps(nerf))
  loaded = orbits.cameras_from_json(nerf_path)
  np.testing.assert_allclose(loaded.K, K, atol=1e-9)
  np.testing.assert_allclose(loaded.E, E, atol=1e-12)
  assert loaded.names == ["img0", "img1", "img2"]
  nerf["frames"][1]["transform_matrix"][0][3] = float("nan")
  nerf_path.write_text(json.dumps(nerf))
  with pytest.raises(ValueError, match=r"camera 'img1': E contains NaN"):
    orbits.cameras_from_json(nerf_path)


def test_normalisation_centres_and_scales_on_the_head():
  Hr = _head_rotation()
  K, E = orbits.turntable_cameras(8, 2.7, HEAD, Hr, elevations_deg=(-15.0, 30.0))
  X = HEAD + np.random.default_rng(0).uniform(-0.2, 0.2, (20, 3))
  E_n, tf = normalize.normalize_scene(E, HEAD, Hr, target_distance=1.0)
  cameras.validate_cameras(K, E_n)
  np.testing.assert_allclose(tf.points(HEAD), 0.0, atol=1e-12)
  np.testing.assert_allclose(np.linalg.norm(cameras.camera_centers(E_n), axis=-1).mean(), 1.0)
  head_point, head_rotation = tf.head_pose(HEAD, Hr)
  np.testing.assert_allclose(head_rotation, np.eye(3), atol=1e-12)
  # every image is unchanged: same pixels, depth scaled by s
  uv, depth = cameras.project_points(K, E, np.broadcast_to(X, (16, 20, 3)))
  uv_n, depth_n = cameras.project_points(K, E_n, np.broadcast_to(tf.points(X), (16, 20, 3)))
  np.testing.assert_allclose(uv_n, uv, atol=1e-9)
  np.testing.assert_allclose(depth_n, depth * tf.scale, rtol=1e-12)
  np.testing.assert_allclose(tf.inverse_points(tf.points(X)), X, atol=1e-12)
  # the normalised turntable is the canonical one around the origin
  _, E_canon = orbits.turntable_cameras(8, 1.0, elevations_deg=(-15.0, 30.0))
  np.testing.assert_allclose(E_n, E_canon, atol=1e-12)
  # explicit scale, no rotation alignment
  _, tf2 = normalize.normalize_scene(E, HEAD, Hr, scale=5.0, align_rotation=False)
  assert tf2.scale == 5.0 and np.allclose(tf2.rotation, np.eye(3))
  with pytest.raises(ValueError, match="rotation matrix"):
    normalize.head_normalization(E, HEAD, 2 * np.eye(3))
