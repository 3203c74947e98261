"""Plücker ray maps: per pixel (d, o x d) in the world frame.

d is the unit direction of the ray from the camera centre o through the pixel,
m = o x d its moment. Any point p on the ray has p x d = m, and d . m = 0. Channels
are ordered (d_x, d_y, d_z, m_x, m_y, m_z), the order Pippo's ControlMLP reads.
Pixel centres sit at (j + 0.5, i + 0.5) (see cameras.py). Rays are computed in
float64 and returned as float32 (they feed the model) unless asked otherwise.
"""

import numpy as np

from pippo_jax.geometry import cameras


def pixel_centers(height: int, width: int) -> np.ndarray:
  """(u, v) of every pixel centre, [H, W, 2] float64."""
  v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
  return np.stack([u, v], axis=-1)


def ray_directions(K, E, uv) -> np.ndarray:
  """Unit world-frame directions through pixels uv [..., N, 2] -> [..., N, 3]."""
  K, E = np.asarray(K, np.float64), cameras.as_E44(E)
  uv = np.asarray(uv, np.float64)
  uv1 = np.concatenate([uv, np.ones(uv.shape[:-1] + (1,))], axis=-1)
  # d = R^T K^-1 (u, v, 1) for all pixels as one matmul per camera: uv1 @ (R^T K^-1)^T.
  # (NumPy's einsum did not use BLAS here: it cost a quarter of a training example's transform.)
  to_world = np.swapaxes(E[..., :3, :3], -1, -2) @ np.linalg.inv(K)
  d_world = uv1 @ np.swapaxes(to_world, -1, -2)
  return d_world / np.linalg.norm(d_world, axis=-1, keepdims=True)


def plucker_from_pixels(K, E, uv, dtype=np.float64) -> np.ndarray:
  """(d, o x d) for rays through pixels uv [..., N, 2] -> [..., N, 6]."""
  d = ray_directions(K, E, uv)
  o = np.broadcast_to(cameras.camera_centers(E)[..., None, :], d.shape)
  return np.concatenate([d, np.cross(o, d)], axis=-1).astype(dtype)


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
  uv = pixel_centers(height, width).reshape(-1, 2)
  rays = plucker_from_pixels(K, E, uv)
  return rays.reshape(rays.shape[:-2] + (height, width, 6)).astype(dtype)
