"""A sphere seen by a ring of cameras: the smallest scene whose surface is known exactly."""

import numpy as np

from pippo_jax.data_pipelines import raycast
from pippo_jax.evaluation import geometry
from pippo_jax.geometry import orbits
from pippo_jax.reconstruction import field, mesh

RADIUS = 0.3
ALBEDO = (0.8, 0.3, 0.2)


def sphere_prims(radius=RADIUS, center=(0.0, 0.0, 0.0)) -> dict:
  return {
    "center": np.array([center], np.float64),
    "rotation": np.eye(3)[None],
    "radii": np.full((1, 3), radius),
    "color": np.array([ALBEDO]),
    "second": np.zeros((1, 4)),
    "texture": np.array([raycast.PLAIN]),
    "part": np.array([0]),
  }


def sphere_views(views_per_ring: int = 6, side: int = 48, elevations=(-20.0, 25.0)):
  """(images uint8 [V, side, side, 3] on white, masks bool, K, E): flat lighting, so every
  sphere pixel has exactly the albedo's colour."""
  K, E = orbits.turntable_cameras(
    views_per_ring, 3.0, elevations_deg=elevations, image_hw=(side, side), fov_deg=15.0
  )
  lights = {
    "ambient": np.ones(3),
    "sky": np.zeros(3),
    "directions": np.zeros((0, 3)),
    "powers": np.zeros((0, 3)),
  }
  out = raycast.render(
    sphere_prims(), K, E, side, side, lights, np.full((side, side, 3), 255, np.uint8)
  )
  return out["image"], out["mask"] > 127, K, E


def fitted_sphere_scores(params, box):
  """(surface scores against the true sphere at 3 cm, the median vertex colour) of a field fitted
  to `sphere_views`, through its mesh."""
  density, color = field.volumes(params, box)
  m = mesh.extract_mesh(density, color, box.lo, box.voxel)
  points, normals, colors = mesh.surface_samples(m, 5000)
  truth = np.random.default_rng(0).normal(size=(5000, 3))
  truth /= np.linalg.norm(truth, axis=-1, keepdims=True)
  scores = geometry.surface_metrics(points, RADIUS * truth, normals, truth, thresholds=(0.03,))
  return scores, np.median(colors, 0)
