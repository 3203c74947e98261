"""Linear (DLT) triangulation of matched pixels, and reprojection errors.

For a camera P (3x4) and an observation (u, v) of the point X (homogeneous), the
rows u P_3 - P_1 and v P_3 - P_2 annihilate X. Stacking them over views gives A
(2 V x 4); X is the right singular vector of A's smallest singular value. Each row
is scaled to unit norm first, which keeps the least-squares problem balanced
between views with very different focal lengths or pixel scales.
"""

import numpy as np

from pippo_jax.geometry import cameras


def triangulate_views(P, uv) -> np.ndarray:
  """Points seen by V cameras: P [V, 3, 4], uv [V, N, 2] -> X [N, 3] (float64)."""
  P, uv = np.asarray(P, np.float64), np.asarray(uv, np.float64)
  if P.ndim != 3 or P.shape[1:] != (3, 4) or uv.ndim != 3 or uv.shape[0] != P.shape[0]:
    raise ValueError(f"expected P [V, 3, 4] and uv [V, N, 2], got {P.shape} and {uv.shape}.")
  rows_u = uv[..., 0, None] * P[:, None, 2] - P[:, None, 0]  # [V, N, 4]
  rows_v = uv[..., 1, None] * P[:, None, 2] - P[:, None, 1]
  A = np.concatenate([rows_u, rows_v], axis=0).transpose(1, 0, 2)  # [N, 2V, 4]
  A = A / np.linalg.norm(A, axis=-1, keepdims=True)
  X = np.linalg.svd(A)[2][:, -1]
  return X[:, :3] / X[:, 3:]


def triangulate_points(P1, P2, uv1, uv2) -> np.ndarray:
  """DLT triangulation of N matches between two views -> X [N, 3]."""
  return triangulate_views(np.stack([P1, P2]), np.stack([uv1, uv2]))


def reprojection_errors(P, X, uv) -> np.ndarray:
  """Pixel distances between projections of X [N, 3] by P [3, 4] and uv [N, 2]."""
  Xh = np.concatenate([np.asarray(X, np.float64), np.ones(np.shape(X)[:-1] + (1,))], axis=-1)
  x = Xh @ np.asarray(P, np.float64).T
  return np.linalg.norm(x[:, :2] / x[:, 2:] - uv, axis=-1)


def triangulate_with_cameras(K1, E1, K2, E2, uv1, uv2) -> np.ndarray:
  """Validated cameras in the module convention -> X [N, 3]."""
  cameras.validate_cameras(np.stack([K1, K2]), np.stack([cameras.as_E44(E1), cameras.as_E44(E2)]))
  return triangulate_points(
    cameras.projection_matrix(K1, E1), cameras.projection_matrix(K2, E2), uv1, uv2
  )


def triangulate_observations(K, E, uv):
  """Points seen by some of V cameras, each from wherever it was observed.

  Args:
    K: intrinsics [V, 3, 3]; E: extrinsics [V, 4, 4] (module convention, validated).
    uv: pixels [V, N, 2]; NaN where point n was not observed in view v.

  Returns:
    (X [N, 3], errors [V, N]): the DLT points (NaN where fewer than two views observed them)
    and each observation's reprojection error in pixels (NaN where not observed).
  """
  K, E = cameras.validate_cameras(K, E)
  uv = np.asarray(uv, np.float64)
  P = cameras.projection_matrix(K, E)
  seen = np.all(np.isfinite(uv), axis=-1)  # [V, N]
  X = np.full((uv.shape[1], 3), np.nan)
  errors = np.full(seen.shape, np.nan)
  for n in range(uv.shape[1]):
    views = np.flatnonzero(seen[:, n])
    if len(views) < 2:
      continue
    X[n] = triangulate_views(P[views], uv[views, n][:, None])[0]
    for v in views:
      errors[v, n] = reprojection_errors(P[v], X[n][None], uv[v, n][None])[0]
  return X, errors


def nearest_point_to_axes(E) -> np.ndarray:
  """The point closest (least squares) to every camera's optical axis, [3].

  For a rig whose cameras all aim at one spot (a head dome) this is that spot. Each axis is the
  line through the camera centre o along its viewing direction d (the third row of R); the
  point minimises sum |(I - d d^T)(X - o)|^2.
  """
  E = cameras.as_E44(E)
  o = cameras.camera_centers(E)
  d = E[:, 2, :3] / np.linalg.norm(E[:, 2, :3], axis=-1, keepdims=True)
  M = np.eye(3)[None] - d[:, :, None] * d[:, None, :]
  return np.linalg.solve(M.sum(0), np.einsum("vij,vj->i", M, o))
