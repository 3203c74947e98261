"""Points from partial observations (OpenCV as the reference), the rig's aim point, and K for a
frame cropped to its centred square (the authors' formula as the reference)."""

import cv2
import numpy as np

from pippo_jax.geometry import cameras, orbits, triangulate


def _rig(n=5, seed=0):
  rng = np.random.default_rng(seed)
  target = np.array([0.1, -0.2, 1.5])
  Ks, Es = [], []
  for i in range(n):
    az = np.deg2rad(-60 + 30 * i)
    eye = target + 2.5 * np.array([np.sin(az), rng.normal(0, 0.2), -np.cos(az)])
    Es.append(orbits.look_at(eye, target, (0.0, -1.0, 0.0)))
    Ks.append(cameras.make_K(*rng.uniform(200, 300, 2), *rng.uniform(100, 140, 2)))
  return np.stack(Ks), np.stack(Es), target


def test_partial_observations_match_opencv_and_report_residuals():
  K, E, target = _rig()
  rng = np.random.default_rng(1)
  X = target + rng.normal(0, 0.1, (4, 3))
  uv = np.stack([cameras.project_points(k, e, X)[0] for k, e in zip(K, E)])
  uv[:, 1:] += rng.normal(0, 0.4, uv[:, 1:].shape)  # point 0 exact: DLT variants agree
  uv[0, 0] = uv[1, 0] = uv[2, 0] = np.nan  # point 0: two views (3, 4) left
  uv[:4, 3] = np.nan  # point 3: one view, not triangulated
  got, errors = triangulate.triangulate_observations(K, E, uv)
  P = cameras.projection_matrix(K, E)
  ref = cv2.triangulatePoints(P[3], P[4], uv[3, 0][:, None], uv[4, 0][:, None])
  np.testing.assert_allclose(got[0], ref[:3, 0] / ref[3, 0], atol=1e-9)
  np.testing.assert_allclose(got[0], X[0], atol=1e-9)
  assert np.all(np.isnan(got[3])) and np.all(np.isnan(errors[:, 3]))
  assert np.all(np.isnan(errors[:3, 0])) and np.all(np.isfinite(errors[3:, 0]))
  # The errors are the pixel distances of the reprojections.
  want = np.linalg.norm(cameras.project_points(K[4], E[4], got[1:2])[0][0] - uv[4, 1])
  np.testing.assert_allclose(errors[4, 1], want, rtol=1e-9)
  assert np.linalg.norm(got[1:3] - X[1:3], axis=-1).max() < 0.01


def test_nearest_point_to_axes_is_the_aim_point_and_a_least_squares_minimum():
  K, E, target = _rig()
  np.testing.assert_allclose(triangulate.nearest_point_to_axes(E), target, atol=1e-9)
  # Cameras that miss the target: the result minimises the summed squared distances to the axes.
  rng = np.random.default_rng(2)
  E2 = np.stack(
    [
      orbits.look_at(cameras.camera_centers(e), target + rng.normal(0, 0.05, 3), (0, -1, 0))
      for e in E
    ]
  )
  x = triangulate.nearest_point_to_axes(E2)
  o, d = cameras.camera_centers(E2), E2[:, 2, :3]

  def cost(p):
    v = p - o
    return np.sum(np.sum(v * v, -1) - np.sum(v * d, -1) ** 2)

  for step in rng.normal(0, 1e-3, (20, 3)):
    assert cost(x) <= cost(x + step)


def test_frame_to_square_intrinsics_matches_the_release_formula():
  # The release's evaluation: scale by W / 2668, then move cy by (4096 s - H) / 2.
  K = cameras.make_K(10355.1, 10348.6, 1413.07, 1783.60)
  side = 512
  s = side / 2668
  want = K.copy()
  want[:2] *= s
  want[1, 2] -= (4096 * s - side) * 0.5
  got = cameras.frame_to_square_intrinsics(K, cameras.MUGSY_FRAME_HW, side)
  np.testing.assert_allclose(got, want, rtol=1e-12)
