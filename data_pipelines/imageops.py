"""Image operations of the transforms: compositing, boxes, crop-and-resize.

Boxes are (x, y, w, h) in the continuous pixel frame of
`pippo_jax.geometry.cameras`: pixel (row i, column j) covers [j, j + 1) x
[i, i + 1), so (0, 0, W, H) is the whole image. `crop_resize` maps the box's
edges onto the output's edges, u' = (u - x) out_w / w, the mapping
`cameras.crop_and_resize_intrinsics` applies to K; it antialiases when
shrinking and fills what lies outside the image with `fill`.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def composite(image: np.ndarray, mask: np.ndarray, background) -> np.ndarray:
  """Image * mask + background * (1 - mask), mask uint8 0..255."""
  m = mask.astype(np.float32)[..., None] / 255.0
  bg = np.asarray(background, np.float32)
  return np.round(image * m + bg * (1 - m)).astype(np.uint8)


def mask_box(mask: np.ndarray) -> np.ndarray | None:
  """Tight box (x, y, w, h) around mask > 127, or None if empty."""
  rows = np.flatnonzero((mask > 127).any(1))
  cols = np.flatnonzero((mask > 127).any(0))
  if not len(rows):
    return None
  return np.array([cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1], np.float64)


def square_box(box, margin: float = 0.0, scale: float = 1.0, shift=(0.0, 0.0)) -> np.ndarray:
  """Square box around `box` with side max(w, h) * (1 + 2 margin) * scale,
  its centre moved by `shift` (fractions of the side)."""
  x, y, w, h = (float(v) for v in box)
  side = max(w, h, 1.0) * (1 + 2 * margin) * scale
  cx = x + w / 2 + shift[0] * side
  cy = y + h / 2 + shift[1] * side
  return np.array([cx - side / 2, cy - side / 2, side, side])


def centre_square(height: int, width: int) -> np.ndarray:
  side = min(height, width)
  return np.array([(width - side) / 2, (height - side) / 2, side, side], np.float64)


def crop_resize(image: np.ndarray, box, out_hw: tuple[int, int], fill=0) -> np.ndarray:
  """Crops `box` (may leave the image) and resizes it to `out_hw`.

  Works for HxWx3 and HxW uint8 arrays. Bilinear with PIL's antialiasing.
  """
  h, w = image.shape[:2]
  x0, y0 = float(box[0]), float(box[1])  # PIL uses the same frame
  x1, y1 = x0 + box[2], y0 + box[3]
  # Only the part of the image under the box matters; pad what lies outside.
  left, top = min(w, max(0, math.floor(x0))), min(h, max(0, math.floor(y0)))
  right = max(left, min(w, math.ceil(x1)))
  bottom = max(top, min(h, math.ceil(y1)))
  pad_l, pad_t = max(0, math.ceil(-x0)), max(0, math.ceil(-y0))
  pad_r, pad_b = max(0, math.ceil(x1 - w)), max(0, math.ceil(y1 - h))
  ox, oy = left - pad_l, top - pad_t  # canvas origin in image coordinates
  cw = (right - left) + pad_l + pad_r
  ch = (bottom - top) + pad_t + pad_b
  canvas = np.empty((max(ch, 1), max(cw, 1)) + image.shape[2:], np.uint8)
  canvas[:] = np.asarray(fill, np.uint8)
  if right > left and bottom > top:
    canvas[top - oy : bottom - oy, left - ox : right - ox] = image[top:bottom, left:right]
  pil = Image.fromarray(canvas)
  out = pil.resize((out_hw[1], out_hw[0]), Image.BILINEAR, box=(x0 - ox, y0 - oy, x1 - ox, y1 - oy))
  return np.asarray(out)
