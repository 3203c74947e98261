"""Spatial Anchor rendering: position, orientation, size and visibility."""

import numpy as np
import pytest

from pippo_jax.geometry import anchors, cameras, orbits

HEAD = np.array([0.05, -0.02, 0.01])
H, W = 256, 192


def _head_rotation():
  a = np.radians(25.0)  # head turned 25 degrees about its vertical axis
  return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def _cameras():
  return orbits.turntable_cameras(6, 1.5, image_hw=(H, W), fov_deg=35.0, elevations_deg=(10.0,))


def _centroid(weight):
  v, u = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
  return np.array([(u * weight).sum(), (v * weight).sum()]) / weight.sum()


def test_marker_is_drawn_where_the_head_projects():
  K, E = _cameras()
  for c in (0, 1, 5):
    img = anchors.render_spatial_anchor(K[c], E[c], HEAD, _head_rotation(), H, W)
    assert img.shape == (H, W, 3) and img.dtype == np.uint8
    uv, depth = cameras.project_points(K[c], E[c], HEAD[None])
    # the disc is white and drawn last: its coverage is the minimum channel
    white = img.min(-1).astype(np.float64) / 255.0
    np.testing.assert_allclose(_centroid(white), uv[0], atol=0.05)
    radius_px = np.sqrt(K[c, 0, 0] * K[c, 1, 1]) * 0.03 / depth[0]
    np.testing.assert_allclose(white.sum(), np.pi * radius_px**2, rtol=0.03)
    edge = img.min(-1)
    assert np.any((edge > 20) & (edge < 235))  # anti-aliased rim


def test_axes_point_along_the_projected_head_axes():
  K, E = _cameras()
  c = 1
  img = anchors.render_spatial_anchor(K[c], E[c], HEAD, _head_rotation(), H, W, radius=0.01)
  tips = HEAD + 0.12 * _head_rotation().T  # rows: tips of the x, y, z axes
  uv = cameras.project_points(K[c], E[c], np.stack([HEAD, tips[0], tips[1]]))[0]
  for axis, channel in ((1, 0), (2, 1)):  # x axis red, y axis green
    others = [ch for ch in range(3) if ch != channel]
    mask = (img[..., channel] > 200) & (img[..., others].max(-1) < 30)
    v, u = np.nonzero(mask)
    offsets = np.stack([u + 0.5, v + 0.5], -1) - uv[0]
    direction = offsets.mean(0) / np.linalg.norm(offsets.mean(0))
    expected = (uv[axis] - uv[0]) / np.linalg.norm(uv[axis] - uv[0])
    assert np.degrees(np.arccos(np.clip(direction @ expected, -1, 1))) < 3.0
    # the segment ends where the axis tip projects
    far = offsets[np.argmax(np.linalg.norm(offsets, axis=-1))]
    assert np.linalg.norm(far - (uv[axis] - uv[0])) < 3.0


def test_blank_when_head_is_behind_the_camera():
  K, E = _cameras()
  c = 0
  centre = cameras.camera_centers(E[c])
  forward = E[c, 2, :3]  # camera z axis in world coordinates
  behind = centre - 0.5 * forward
  img = anchors.render_spatial_anchor(K[c], E[c], behind, np.eye(3), H, W)
  assert img.shape == (H, W, 3) and not img.any()
  # just in front: drawn
  front = centre + 0.5 * forward
  assert anchors.render_spatial_anchor(K[c], E[c], front, np.eye(3), H, W).any()


def test_batched_rendering_and_errors():
  K, E = _cameras()
  imgs = anchors.render_spatial_anchors(K, E, HEAD, _head_rotation(), H, W)
  assert imgs.shape == (6, H, W, 3)
  np.testing.assert_array_equal(
    imgs[2], anchors.render_spatial_anchor(K[2], E[2], HEAD, _head_rotation(), H, W)
  )
  # one K for all cameras, and a [2, 3] batch of cameras: broadcast like the cameras module
  shared = anchors.render_spatial_anchors(K[0], E, HEAD, _head_rotation(), H, W)
  np.testing.assert_array_equal(shared[2], imgs[2])  # turntable cameras share their K
  grid = anchors.render_spatial_anchors(
    K.reshape(2, 3, 3, 3), E.reshape(2, 3, 4, 4), HEAD, _head_rotation(), H, W
  )
  np.testing.assert_array_equal(grid.reshape(imgs.shape), imgs)
  with pytest.raises(ValueError, match="draws one camera"):
    anchors.render_spatial_anchor(K, E, HEAD, _head_rotation(), H, W)
  bad = E.copy()
  bad[3, 0, 3] = np.nan
  with pytest.raises(ValueError, match=r"camera 'cam3': E contains NaN"):
    anchors.render_spatial_anchors(
      K, bad, HEAD, np.eye(3), H, W, names=[f"cam{i}" for i in range(6)]
    )
