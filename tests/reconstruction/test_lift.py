"""The turntable around a lifted mesh: cameras on a circle about the input cameras' up axis."""

import numpy as np

from pippo_jax.data_pipelines import figures, synthetic_studio
from pippo_jax.geometry import cameras, orbits
from pippo_jax.reconstruction import lift


def test_turntable_circles_the_up_axis():
  """Input: two rings of cameras about a tilted axis (head frame y; world z in the test)."""
  tilt = figures.rot_z(0.3) @ np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # head y -> world z
  tilt = (
    np.array([[1.0, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]]) @ tilt
  )
  center = np.array([0.1, -0.2, 0.9])
  K, E = orbits.turntable_cameras(
    6, 2.5, center, tilt, elevations_deg=(-10, 30), image_hw=(100, 100), fov_deg=40.0
  )
  up = tilt[:, 1]
  tK, tE = lift.turntable_cameras(K, E, center, 8, 256)
  assert tK.shape == (8, 3, 3) and tE.shape == (8, 4, 4)
  cameras.validate_cameras(tK, tE)
  # The centre is seen at the image centre by every camera.
  uv, depth = cameras.project_points(tK, tE, np.broadcast_to(center, (8, 1, 3)))
  np.testing.assert_allclose(uv[:, 0], 128.0, atol=1e-9)
  assert np.all(depth > 0)
  offsets = cameras.camera_centers(tE) - center
  radius = np.linalg.norm(cameras.camera_centers(E) - center, axis=-1).mean()
  np.testing.assert_allclose(np.linalg.norm(offsets, axis=-1), radius)
  # One height above the centre (a circle about the up axis), at the inputs' mean height, 45
  # degrees apart, image up along up.
  np.testing.assert_allclose(offsets @ up, np.mean((cameras.camera_centers(E) - center) @ up))
  ring = offsets - np.outer(offsets @ up, up)
  cos = np.sum(ring * np.roll(ring, -1, 0), -1) / np.linalg.norm(ring, axis=-1) ** 2
  np.testing.assert_allclose(cos, np.cos(np.radians(45.0)), atol=1e-9)
  np.testing.assert_allclose(
    tE[:, 1, :3] @ up,
    -np.linalg.norm(np.cross(tE[:, 2, :3], up), axis=-1),  # -cos(elevation): image up is up
    atol=1e-9,
  )
  # The first camera's field of view: f / side = f_0 / (2 cx_0).
  np.testing.assert_allclose(tK[:, 0, 0] / 256, K[0, 0, 0] / (2 * K[0, 0, 2]))


def test_turntable_of_a_dome_is_level():
  """The studio's dome (world z up, cameras rolled by ~2 degrees): the circle's axis is within a
  degree of z."""
  K, E, _ = synthetic_studio.dome_cameras(12, 128, seed=0)
  center = np.array([0.0, 0.0, 0.9])
  _, tE = lift.turntable_cameras(K, E, center, 8, 128)
  heights = (cameras.camera_centers(tE) - center)[:, 2]
  radius = np.linalg.norm(cameras.camera_centers(tE) - center, axis=-1)[0]
  assert np.degrees(np.ptp(heights) / (2 * radius)) < 1.0
