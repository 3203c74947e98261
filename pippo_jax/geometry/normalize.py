"""Scene normalisation on the subject's head.

Head frame (used by anchors.py and orbits.py too): origin at the head anchor point
(e.g. the head centre from head pose or 3D face keypoints) and a head-to-world
rotation H whose columns are the head's axes in world coordinates:
x to the subject's left, y up (to the top of the head), z forward (out of the face);
right-handed, x = y cross z.

Normalisation is the similarity X' = s Q (X - c) with c the head point, Q = H^T
(the world axes become the head axes; identity if no rotation is given or
`align_rotation=False`), and s either given (e.g. 1 / head size) or chosen so the
mean camera-to-head distance becomes `target_distance`. Cameras follow as
R' = R Q^T, t' = s (R c + t): camera coordinates scale by s, so every image, K,
and projection is unchanged, while camera poses and Plücker moments become
comparable across captures.
"""

from typing import NamedTuple

import numpy as np

from pippo_jax.geometry import cameras


class SceneTransform(NamedTuple):
  """The similarity X' = scale * rotation @ (X - center)."""

  scale: float
  rotation: np.ndarray
  center: np.ndarray

  def points(self, X) -> np.ndarray:
    """World points [..., 3] into the normalised frame."""
    return self.scale * (np.asarray(X, np.float64) - self.center) @ self.rotation.T

  def inverse_points(self, X) -> np.ndarray:
    """Normalised points [..., 3] back to the original world frame."""
    return np.asarray(X, np.float64) @ self.rotation / self.scale + self.center

  def cameras(self, E) -> np.ndarray:
    """World->camera extrinsics [..., 4, 4] for the normalised frame."""
    E = cameras.as_E44(E)
    R, t = E[..., :3, :3], E[..., :3, 3]
    t_new = self.scale * (np.einsum("...ij,j->...i", R, self.center) + t)
    return cameras.make_E(R @ self.rotation.T, t_new)

  def head_pose(self, head_point, head_rotation):
    """(point, head-to-world rotation) in the normalised frame."""
    return self.points(head_point), self.rotation @ np.asarray(head_rotation, np.float64)


def head_normalization(
  E,
  head_point,
  head_rotation=None,
  *,
  target_distance: float = 1.0,
  scale: float | None = None,
  align_rotation: bool = True,
) -> SceneTransform:
  """The SceneTransform centring (and optionally aligning) the scene on the head.

  Args:
    E: the capture's cameras [..., 4, 4] (used for the distance-based scale).
    head_point: [3] head anchor point (world).
    head_rotation: [3, 3] head-to-world rotation (columns = head axes), optional.
    target_distance: mean camera-to-head distance after normalisation.
    scale: explicit scale factor instead (e.g. 1 / head size in world units).
    align_rotation: rotate the world onto the head axes when a rotation is given.
  """
  center = np.asarray(head_point, np.float64).reshape(3)
  if not np.all(np.isfinite(center)):
    raise ValueError(f"head point must be finite, got {center.tolist()}.")
  rotation = np.eye(3)
  if head_rotation is not None and align_rotation:
    H = np.asarray(head_rotation, np.float64).reshape(3, 3)
    if np.abs(H @ H.T - np.eye(3)).max() > 1e-4 or np.linalg.det(H) < 0:
      raise ValueError("head_rotation must be a rotation matrix (orthonormal, det +1).")
    rotation = H.T
  if scale is None:
    distances = np.linalg.norm(cameras.camera_centers(E).reshape(-1, 3) - center, axis=-1)
    if distances.size == 0 or distances.mean() <= 0:
      raise ValueError("cannot scale on camera distances: no cameras away from the head point.")
    scale = target_distance / distances.mean()
  if not scale > 0:
    raise ValueError(f"scale must be positive, got {scale}.")
  return SceneTransform(float(scale), rotation, center)


def normalize_scene(E, head_point, head_rotation=None, **kwargs):
  """Normalised cameras and the transform: (E' [..., 4, 4], SceneTransform)."""
  transform = head_normalization(E, head_point, head_rotation, **kwargs)
  return transform.cameras(E), transform
