"""Camera convention, projection, crops, converters and validation."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pippo_jax.geometry import cameras


def _rotation(seed):
  """A random rotation (QR of a Gaussian, det fixed to +1)."""
  q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((3, 3)))
  q = q * np.sign(np.diag(r))
  return q * np.linalg.det(q)


def _camera(seed=0):
  R = _rotation(seed)
  E = np.eye(4)
  E[:3, :3], E[:3, 3] = R, [0.1, -0.2, 3.0]
  K = np.array([[900.0, 0.0, 310.0], [0.0, 880.0, 405.0], [0.0, 0.0, 1.0]])
  return K, E


def test_point_lands_on_expected_pixel():
  K = np.array([[500.0, 0, 320], [0, 400.0, 240], [0, 0, 1]])
  E = np.eye(4)
  E[2, 3] = 2.0  # camera 2 units behind the world origin, looking along +z
  uv, depth = cameras.project_points(K, E, [[0.1, -0.2, 3.0]])
  # X_cam = (0.1, -0.2, 5): u = 500 * 0.02 + 320, v = 400 * -0.04 + 240
  np.testing.assert_allclose(uv, [[330.0, 224.0]], atol=1e-12)
  np.testing.assert_allclose(depth, [5.0])
  assert tuple(np.floor(uv[0]).astype(int)[::-1]) == (224, 330)  # row, col
  np.testing.assert_allclose(cameras.camera_centers(E), [0, 0, -2])


def test_projection_matches_formula_batched():
  K, E = _camera(1)
  X = np.random.default_rng(2).standard_normal((2, 5, 3))
  Es = np.stack([E, cameras.make_E(_rotation(3), [0, 0, 4.0])])
  uv, depth = cameras.project_points(np.stack([K, K]), Es, X)
  for c in range(2):
    R, t = Es[c, :3, :3], Es[c, :3, 3]
    for n in range(5):
      xc = R @ X[c, n] + t
      np.testing.assert_allclose(uv[c, n], (K @ xc)[:2] / xc[2], rtol=1e-12)
      np.testing.assert_allclose(depth[c, n], xc[2], rtol=1e-12)
  P = cameras.projection_matrix(K, E)
  np.testing.assert_allclose(P, K @ E[:3], rtol=1e-12)


def _blob(uv0, height, width, sigma=3.0):
  """An image of a Gaussian spot centred at uv0, sampled at pixel centres."""
  v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
  return np.exp(-((u - uv0[0]) ** 2 + (v - uv0[1]) ** 2) / (2 * sigma**2))


def _centroid(img):
  v, u = np.meshgrid(np.arange(img.shape[0]) + 0.5, np.arange(img.shape[1]) + 0.5, indexing="ij")
  return np.array([(u * img).sum(), (v * img).sum()]) / img.sum()


def test_crop_and_resize_keeps_projection_consistent():
  K, E = _camera(4)
  X = np.array([[0.02, 0.03, 0.1]])
  uv, _ = cameras.project_points(K, E, X)
  img = _blob(uv[0], 800, 600)
  box = (100, 150, 400, 500)  # x0, y0, w, h (integer crop, then resize x0.5)
  crop = img[150:650, 100:500]
  small = np.asarray(jax.image.resize(jnp.asarray(crop), (250, 200), "linear"))
  K2 = cameras.crop_and_resize_intrinsics(K, box, (250, 200))
  uv2, _ = cameras.project_points(K2, E, X)
  np.testing.assert_allclose(_centroid(small), uv2[0], atol=1e-3)  # 2e-6 measured
  # a half-pixel convention error would move it by 0.25 px
  assert np.abs(_centroid(small) - (uv[0] - [100, 150]) * 0.5).max() < 0.02
  np.testing.assert_allclose(cameras.resize_intrinsics(K, (800, 600), (400, 300))[:2], K[:2] * 0.5)


def test_camera_pose_16_is_row_major():
  _, E = _camera(5)
  pose = cameras.camera_pose_16(E)
  assert pose.shape == (16,) and pose.dtype == np.float32
  np.testing.assert_allclose(pose[[3, 7, 11]], E[:3, 3], rtol=1e-6)
  np.testing.assert_allclose(pose.reshape(4, 4), E, rtol=1e-6, atol=1e-7)
  c2w = cameras.camera_pose_16(np.stack([E, E]), kind="camera_to_world")
  assert c2w.shape == (2, 16)
  np.testing.assert_allclose(c2w[0, [3, 7, 11]], cameras.camera_centers(E), rtol=1e-6)
  with pytest.raises(ValueError, match="kind"):
    cameras.camera_pose_16(E, kind="pose")


def test_opengl_round_trip_and_semantics():
  _, E = _camera(6)
  np.testing.assert_allclose(
    cameras.opengl_c2w_to_opencv_E(cameras.opencv_E_to_opengl_c2w(E)), E, atol=1e-12
  )
  # an OpenGL camera at the origin looks down -z with y up
  E_cv = cameras.opengl_c2w_to_opencv_E(np.eye(4))
  K = cameras.make_K(100, 100, 50, 50)
  uv, depth = cameras.project_points(K, E_cv, [[0, 0, -5.0], [1, 1, -5.0]])
  np.testing.assert_allclose(uv[0], [50, 50])
  assert depth[0] == 5.0 and uv[1, 0] > 50 and uv[1, 1] < 50  # right, up
  c2w_gl = cameras.opencv_E_to_opengl_c2w(E)
  np.testing.assert_allclose(c2w_gl[:3, 3], cameras.camera_centers(E))


def test_colmap_round_trip():
  q = np.array([np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)])  # 90 deg about z
  E = cameras.colmap_to_E(q, [1.0, 2.0, 3.0])
  np.testing.assert_allclose(E[:3, :3], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
  for seed in range(5):
    _, E = _camera(seed)
    q, t = cameras.E_to_colmap(E)
    assert q[0] >= 0 and abs(np.linalg.norm(q) - 1) < 1e-12
    np.testing.assert_allclose(cameras.colmap_to_E(q, t), E, atol=1e-12)
  R180 = np.diag([1.0, -1.0, -1.0])  # 180 degrees about x
  q180 = cameras.rotation_to_quaternion(R180)
  np.testing.assert_allclose(cameras.quaternion_to_rotation(q180), R180, atol=1e-12)
  np.testing.assert_allclose(
    cameras.colmap_camera_to_K("PINHOLE", [5, 6, 7, 8]), [[5, 0, 7], [0, 6, 8], [0, 0, 1]]
  )
  np.testing.assert_allclose(
    cameras.colmap_camera_to_K("SIMPLE_PINHOLE", [5, 7, 8])[:2, :2], np.eye(2) * 5
  )
  with pytest.raises(ValueError, match="undistort"):
    cameras.colmap_camera_to_K("OPENCV", [5, 6, 7, 8, 0.1, 0, 0, 0])


def test_krt_round_trip_and_layout():
  K0, E0 = _camera(7)
  K1, E1 = _camera(8)
  krt = cameras.KE_to_krt(np.stack([K0, K1]), np.stack([E0, E1]), ["400029", "400030"])
  entry = krt["KRT"][0]
  assert entry["cameraId"] == "400029"
  assert entry["K"][2][0] == K0[0, 2] and entry["K"][0][2] == 0.0  # K^T
  np.testing.assert_allclose(entry["T"][3][:3], E0[:3, 3])  # T = E^T
  K, E, names = cameras.krt_to_KE(json.loads(json.dumps(krt)))
  assert names == ["400029", "400030"]
  np.testing.assert_allclose(K, np.stack([K0, K1]))
  np.testing.assert_allclose(E, np.stack([E0, E1]))
  K_shift, _, _ = cameras.krt_to_KE(krt, integer_pixel_centers=True)
  np.testing.assert_allclose(K_shift[:, :2, 2] - K[:, :2, 2], 0.5)
  # a 4x3 "T" ([R|t]^T) is accepted too
  entry43 = dict(entry, T=np.asarray(entry["T"])[:, :3].tolist())
  np.testing.assert_allclose(cameras.krt_to_KE(entry43)[1][0], E0)


def test_bad_cameras_raise_naming_the_camera():
  K, E = _camera(9)
  names = ["front", "left", "back"]
  Ks, Es = np.stack([K] * 3), np.stack([E] * 3)
  cameras.validate_cameras(Ks, Es, names)  # fine

  bad = Ks.copy()
  bad[1, 0, 0] = 0.0
  with pytest.raises(ValueError, match=r"camera 'left': K is not invertible"):
    cameras.validate_cameras(bad, Es, names)
  bad = Es.copy()
  bad[2, :3, :3] *= 1.5
  with pytest.raises(ValueError, match=r"camera 'back': E is not rigid"):
    cameras.validate_cameras(Ks, bad, names)
  bad = Es.copy()
  bad[0, 1, 3] = np.nan
  with pytest.raises(ValueError, match=r"camera 'front': E contains NaN"):
    cameras.validate_cameras(Ks, bad, names)
  bad = Ks.copy()
  bad[2, 0, 2] = np.inf
  with pytest.raises(ValueError, match=r"camera 'back': K contains NaN or inf"):
    cameras.validate_cameras(bad, Es, names)
  bad = Es.copy()
  bad[1, :3, :3] = bad[1, :3, :3] @ np.diag([1.0, 1.0, -1.0])
  with pytest.raises(ValueError, match=r"camera 'left'.*reflection"):
    cameras.validate_cameras(Ks, bad, names)
  with pytest.raises(ValueError, match=r"camera '1'.*transposed K"):
    cameras.validate_cameras(np.stack([K, K.T]), np.stack([E, E]))
  krt = cameras.KE_to_krt(Ks, Es, names)
  krt["KRT"][2]["T"][0][0] = float("nan")
  with pytest.raises(ValueError, match=r"camera 'back'"):
    cameras.krt_to_KE(krt)
