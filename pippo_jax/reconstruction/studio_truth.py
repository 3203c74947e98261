"""Synthetic-studio views with their exact surface: the ground truth a lift is measured against.

A studio figure is a union of ellipsoids (`data_pipelines.figures`, world frame in metres, z up).
`studio_views` renders one figure from the studio's camera dome and crops each view around the
person as training does (`data_pipelines.multiview.crop_view`: composited on the background,
a square with the config's margin, K moved with the crop). `surface_points` samples the union's
outer surface uniformly by area, with exact normals: points on each ellipsoid (area-weighted
rejection sampling), minus those inside any other ellipsoid.
"""

import dataclasses

import numpy as np

from pippo_jax.data_pipelines import multiview, synthetic_studio, transforms
from pippo_jax.geometry import cameras

BACKGROUND = (255, 255, 255)


@dataclasses.dataclass
class StudioViews:
  images: np.ndarray  # uint8 [V, R, R, 3]
  masks: np.ndarray  # bool [V, R, R]
  K: np.ndarray  # [V, 3, 3]
  E: np.ndarray  # [V, 4, 4]
  names: list[str]
  prims: dict  # the figure's ellipsoids (raycast.render's layout)


def studio_views(
  subject: int = 0, num_cameras: int = 32, resolution: int = 128, seed: int = 0, margin=0.1
) -> StudioViews:
  """Subject `subject` of studio `seed` seen by its dome of `num_cameras` cameras."""
  K, E, names = synthetic_studio.dome_cameras(num_cameras, resolution, seed)
  figure, out = synthetic_studio.render_capture_views(seed, subject, 0, K, E, resolution)
  crop = transforms.CropSettings(resolution, "person", margin, BACKGROUND)
  images, masks, Ks = [], [], []
  for image, mask, k in zip(out["image"], out["mask"], K):
    image, mask, box = multiview.crop_view(image, mask, crop)
    images.append(image)
    masks.append(mask > 127)
    Ks.append(cameras.crop_and_resize_intrinsics(k, box, crop.out_hw))
  return StudioViews(np.stack(images), np.stack(masks), np.stack(Ks), E, names, figure["prims"])


def _inside(prims: dict, points: np.ndarray, skip: int | None = None) -> np.ndarray:
  """Which points (bool [N]) lie strictly inside some ellipsoid other than `skip`."""
  inside = np.zeros(len(points), bool)
  for p, (c, rot, r) in enumerate(zip(prims["center"], prims["rotation"], prims["radii"])):
    if p != skip:
      local = (points - c) @ rot / r
      inside |= (local**2).sum(-1) < 1.0 - 1e-9
  return inside


def surface_points(prims: dict, count: int, seed: int = 0):
  """~`count` points uniform by area on the outer surface of the union of ellipsoids, and their
  unit outward normals: (points [N, 3], normals [N, 3]), float64."""
  rng = np.random.default_rng(seed)
  radii = np.asarray(prims["radii"], np.float64)
  # Approximate areas (Knud Thomsen's formula) share out the points.
  a, b, c = (radii[:, i] ** 1.6075 for i in range(3))
  areas = 4 * np.pi * ((a * b + a * c + b * c) / 3) ** (1 / 1.6075)
  per_prim = rng.multinomial(count, areas / areas.sum())
  points, normals = [], []
  for p, n in enumerate(per_prim):
    r, rot, centre = radii[p], np.asarray(prims["rotation"][p], np.float64), prims["center"][p]
    q = rng.normal(size=(4 * n + 16, 3))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    # The map q -> diag(r) q stretches area by prod(r) |q / r|: keep q with that probability.
    stretch = np.linalg.norm(q / r, axis=-1)
    q = q[rng.uniform(0, stretch.max(), len(q)) < stretch][:n]
    x = (q * r) @ rot.T + centre
    normal = (q / r) @ rot.T
    keep = ~_inside(prims, x, skip=p)
    points.append(x[keep])
    normals.append(normal[keep] / np.linalg.norm(normal[keep], axis=-1, keepdims=True))
  return np.concatenate(points), np.concatenate(normals)
