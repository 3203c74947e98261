"""Spatial Anchor images: a head-fixed 3D point and orientation drawn per camera.

Pippo conditions each target view on an image of a "spatial anchor": a 3D point
with an orientation, fixed to the subject's head, projected into that camera. We
draw it as an oriented marker on black:
  * a white disc at the projected head point (radius `radius` world units),
  * three line segments from the head point along the head frame's axes
    (`axis_length` world units): x red, y green, z blue (head frame convention in
    normalize.py: x to the subject's left, y up, z out of the face),
so both position and orientation are visible and change consistently across
views. Sizes are metric, hence shrink with distance like the subject does.
Edges are anti-aliased (coverage ramp of one pixel, evaluated at pixel centres);
segments are painted far to near and the disc last. Axis segments crossing the
camera plane are clipped at `near`; if the head point itself is not in front of
the camera (depth <= near) the image is blank.
"""

import numpy as np

from pippo_jax.geometry import cameras

AXIS_COLORS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.float64)
CENTER_COLOR = np.array([255, 255, 255], np.float64)


def _draw_capsule(img, a, b, radius, color) -> None:
  """Composites an anti-aliased capsule (segment a-b, pixel radius) in place."""
  height, width = img.shape[:2]
  reach = radius + 1.0
  x0 = max(int(np.floor(min(a[0], b[0]) - reach)), 0)
  x1 = min(int(np.ceil(max(a[0], b[0]) + reach)), width)
  y0 = max(int(np.floor(min(a[1], b[1]) - reach)), 0)
  y1 = min(int(np.ceil(max(a[1], b[1]) + reach)), height)
  if x0 >= x1 or y0 >= y1:
    return
  # pixel centres relative to a, as a row of columns and a column of rows (broadcast, no grid)
  px = (np.arange(x0, x1) + (0.5 - a[0]))[None, :]
  py = (np.arange(y0, y1) + (0.5 - a[1]))[:, None]
  abx, aby = b[0] - a[0], b[1] - a[1]
  length2 = abx * abx + aby * aby
  s = np.clip((px * abx + py * aby) / length2, 0.0, 1.0) if length2 > 0 else 0.0
  dist = np.sqrt((px - s * abx) ** 2 + (py - s * aby) ** 2)
  alpha = np.clip(radius + 0.5 - dist, 0.0, 1.0)[..., None]
  img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1.0 - alpha) + color * alpha


def render_spatial_anchor(K, E, head_point, head_rotation, height: int, width: int, **sizes):
  """The anchor marker seen by one camera (K 3x3, E 4x4): uint8 [H, W, 3].

  Arguments as for render_spatial_anchors.
  """
  K, E = np.asarray(K), np.asarray(E)
  if K.shape != (3, 3) or E.shape not in ((4, 4), (3, 4)):
    raise ValueError(
      "render_spatial_anchor draws one camera; use render_spatial_anchors for a batch."
    )
  return render_spatial_anchors(
    K[None], E[None], head_point, head_rotation, height, width, **sizes
  )[0]


def render_spatial_anchors(
  K,
  E,
  head_point,
  head_rotation,
  height: int,
  width: int,
  names=None,
  *,
  radius: float = 0.03,
  axis_length: float = 0.12,
  line_width: float = 0.012,
  min_pixels: float = 1.0,
  near: float = 1e-3,
) -> np.ndarray:
  """The anchor marker seen by each camera K [N, 3, 3], E [N, 4, 4]: uint8 [N, H, W, 3].

  Args:
    K, E: cameras (world -> camera), validated; `names` label them in errors.
    head_point: [3] the anchor position (world).
    head_rotation: [3, 3] head-to-world rotation; its columns are the head's
      x, y, z axes in world coordinates.
    height, width: output size; K must refer to it.
    radius, axis_length, line_width: marker sizes in world units.
    min_pixels: lower bound of the drawn disc radius / line width in pixels.
    near: minimum depth in front of the camera.
  """
  K, E = cameras.validate_cameras(K, E, names)
  head_point = np.asarray(head_point, np.float64).reshape(3)
  head_rotation = np.asarray(head_rotation, np.float64).reshape(3, 3)
  # the head point and the ends of its three axes, [4, 3] in world coordinates
  marker = head_point + axis_length * np.vstack([np.zeros(3), head_rotation.T])
  batch = np.broadcast_shapes(K.shape[:-2], E.shape[:-2])
  Ks = np.broadcast_to(K, batch + (3, 3)).reshape(-1, 3, 3)
  Es = np.broadcast_to(E, batch + (4, 4)).reshape(-1, 4, 4)
  images = np.zeros((len(Ks), height, width, 3), np.float64)
  for img, k, e in zip(images, Ks, Es):
    center, *ends_cam = cameras.world_to_camera(e, marker)
    if not center[2] > near:
      continue  # the head is not in front of this camera: blank
    to_pixels = lambda x, k=k: (k @ x)[:2] / x[2]
    center_px = to_pixels(center)
    focal = np.sqrt(k[0, 0] * k[1, 1])
    ends = []
    for axis, end in enumerate(ends_cam):
      if end[2] < near:  # clip the segment where it leaves the visible half-space
        end = center + (center[2] - near) / (center[2] - end[2]) * (end - center)
      ends.append((end[2], axis, to_pixels(end)))
    half_width = max(0.5 * min_pixels, 0.5 * focal * line_width / center[2])
    for _, axis, end_px in sorted(ends, key=lambda e: -e[0]):
      _draw_capsule(img, center_px, end_px, half_width, AXIS_COLORS[axis])
    disc = max(min_pixels, focal * radius / center[2])
    _draw_capsule(img, center_px, center_px, disc, CENTER_COLOR)
  return np.round(images).astype(np.uint8).reshape(batch + (height, width, 3))
