"""Plücker rays and DLT triangulation against float64 formulas."""

import numpy as np
import pytest

from pippo_jax.geometry import cameras, orbits, plucker, triangulate


def _two_cameras():
  K, E = orbits.turntable_cameras(8, 2.5, image_hw=(480, 640), fov_deg=40.0)
  return K[[0, 1]], E[[0, 1]]  # 45 degrees apart, both looking at the origin


def test_plucker_map_matches_formula():
  K, E = _two_cameras()
  rays = plucker.plucker_rays(K, E, 6, 8)
  assert rays.shape == (2, 6, 8, 6) and rays.dtype == np.float32
  for c in range(2):
    R, t = E[c, :3, :3], E[c, :3, 3]
    o = -R.T @ t
    for i, j in [(0, 0), (5, 7), (2, 3)]:
      # K is used as is (no intrinsics_hw): pixel (i, j) is at (j + .5, i + .5)
      d = R.T @ np.linalg.solve(K[c], [j + 0.5, i + 0.5, 1.0])
      d /= np.linalg.norm(d)
      np.testing.assert_allclose(rays[c, i, j, :3], d, atol=1e-6)
      np.testing.assert_allclose(rays[c, i, j, 3:], np.cross(o, d), atol=1e-6)
  d, m = rays[..., :3].astype(np.float64), rays[..., 3:].astype(np.float64)
  np.testing.assert_allclose(np.linalg.norm(d, axis=-1), 1.0, atol=1e-6)
  np.testing.assert_allclose((d * m).sum(-1), 0.0, atol=1e-6)


def test_moments_vanish_for_camera_at_origin():
  K, E = _two_cameras()
  E0 = E[0].copy()
  E0[:3, 3] = 0.0  # camera centre at the world origin
  rays = plucker.plucker_rays(K[0], E0, 16, 16, dtype=np.float64)
  assert np.abs(rays[..., 3:]).max() < 1e-15
  assert np.abs(rays[..., :3]).max() > 0.5


def test_rays_at_any_resolution():
  K, E = _two_cameras()
  coarse = plucker.plucker_rays(K, E, 60, 80, intrinsics_hw=(480, 640), dtype=np.float64)
  # latent pixel (i, j) covers full-res pixels [8i, 8i+8): its centre is 8 (j + .5)
  i, j = np.meshgrid(np.arange(60), np.arange(80), indexing="ij")
  uv = np.stack([8 * (j + 0.5), 8 * (i + 0.5)], -1).reshape(-1, 2)
  fine = plucker.plucker_from_pixels(K, E, uv).reshape(2, 60, 80, 6)
  np.testing.assert_allclose(coarse, fine, atol=1e-12)


def test_triangulated_points_lie_on_both_rays():
  K, E = _two_cameras()
  X = np.random.default_rng(0).uniform(-0.3, 0.3, (50, 3))
  uv, depth = cameras.project_points(K, E, X)
  assert np.all(depth > 0)
  P = cameras.projection_matrix(K, E)
  X_hat = triangulate.triangulate_points(P[0], P[1], uv[0], uv[1])
  assert np.abs(X_hat - X).max() < 1e-9
  for c in range(2):
    ray = plucker.plucker_from_pixels(K[c], E[c], uv[c])
    d, m = ray[..., :3], ray[..., 3:]
    # a point p is on the line (d, m) iff p x d = m
    assert np.abs(np.cross(X_hat, d) - m).max() < 1e-9
    assert triangulate.reprojection_errors(P[c], X_hat, uv[c]).max() < 1e-6


def test_noisy_matches_reprojection_error():
  K, E = _two_cameras()
  rng = np.random.default_rng(1)
  X = rng.uniform(-0.3, 0.3, (500, 3))
  uv, _ = cameras.project_points(K, E, X)
  noisy = uv + rng.normal(0.0, 0.5, uv.shape)
  P = cameras.projection_matrix(K, E)
  X_hat = triangulate.triangulate_with_cameras(K[0], E[0], K[1], E[1], noisy[0], noisy[1])
  errors = np.concatenate(
    [triangulate.reprojection_errors(P[c], X_hat, noisy[c]) for c in range(2)]
  )
  # two views leave one residual degree of freedom per match: measured mean
  # 0.28 px for 0.5 px noise per coordinate, median 3D error 3.2e-3
  assert 0.15 < errors.mean() < 0.5, errors.mean()
  assert np.median(np.linalg.norm(X_hat - X, axis=-1)) < 5e-3
  with pytest.raises(ValueError, match="expected P"):
    triangulate.triangulate_views(P[0], uv)
