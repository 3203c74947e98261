"""Plücker ray maps: per pixel (d, o x d) in the world frame.

d is the unit direction of the ray from the camera centre o through the pixel,
m = o x d its moment. Any point p on the ray has p x d = m, and d . m = 0. Channels
are ordered (d_x, d_y, d_z, m_x, m_y, m_z), the order Pippo's ControlMLP reads.
Pixel centres sit at (j + 0.5, i + 0.5) (see cameras.py). Rays are computed in
float64 and returned as float32 (they feed the model) unless asked otherwise.

Both halves are linear in the homogeneous pixel (u, v, 1) before d is normalised:
with M = R^T K^-1, d = M (u, v, 1) / |M (u, v, 1)| and o x d = [o]x M (u, v, 1) / |...|,
so a map is one 6 x 3 matrix per camera applied to all pixels and one division
(the data pipeline draws a map per view of every example).
"""

import numpy as np

from pippo_jax.geometry import cameras


def _ray_matrix(K, E) -> np.ndarray:
  """[M; [o]x M] [..., 6, 3] with M = R^T K^-1, o the camera centre."""
  K, E = np.asarray(K, np.float64), cameras.as_E44(E)
  M = np.swapaxes(E[..., :3, :3], -1, -2) @ np.linalg.inv(K)
  ox, oy, oz = np.moveaxis(cameras.camera_centers(E), -1, 0)
  zero = np.zeros_like(ox)
  cross = np.stack(
    [np.stack([zero, -oz, oy], -1), np.stack([oz, zero, -ox], -1), np.stack([-oy, ox, zero], -1)],
    -2,
  )
  return np.concatenate([M, cross @ M], axis=-2)


def _apply(A, uv1t, dtype) -> np.ndarray:
  """Rays [..., N, 6] from A [..., 6, 3] and homogeneous pixels [..., 3, N]."""
  rays = A @ uv1t  # [..., 6, N]: each channel contiguous for the norm
  rays /= np.sqrt(rays[..., 0, :] ** 2 + rays[..., 1, :] ** 2 + rays[..., 2, :] ** 2)[..., None, :]
  return np.swapaxes(rays, -1, -2).astype(dtype)


def plucker_from_pixels(K, E, uv, dtype=np.float64) -> np.ndarray:
  """(d, o x d) for rays through pixels uv [..., N, 2] -> [..., N, 6]."""
  uv = np.asarray(uv, np.float64)
  uv1t = np.concatenate([np.swapaxes(uv, -1, -2), np.ones(uv.shape[:-2] + (1, uv.shape[-2]))], -2)
  return _apply(_ray_matrix(K, E), uv1t, dtype)


def plucker_rays(
  K, E, height: int, width: int, *, intrinsics_hw: tuple[int, int] | None = None, dtype=np.float32
) -> np.ndarray:
  """The Plücker map of cameras (K [..., 3, 3], E [..., 4, 4]): [..., H, W, 6].

  Args:
    K, E: cameras in the module convention.
    height, width: the grid to sample, e.g. the image or the latent size.
    intrinsics_hw: the image size K refers to, if not (height, width); K is then
      rescaled to the grid with `cameras.resize_intrinsics`, so the same camera
      gives consistent rays at any resolution.
    dtype: output dtype (float32 for the model).
  """
  K = np.asarray(K, np.float64)
  if intrinsics_hw is not None:
    K = cameras.resize_intrinsics(K, intrinsics_hw, (height, width))
  v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
  uv1t = np.stack([u.ravel(), v.ravel(), np.ones(height * width)])  # pixel centres, row-major
  rays = _apply(_ray_matrix(K, E), uv1t, dtype)
  return rays.reshape(rays.shape[:-2] + (height, width, 6))
