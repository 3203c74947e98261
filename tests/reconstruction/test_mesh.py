"""Mesh extraction on an analytic sphere volume, the files trimesh reads back, the splat renderer
against the ray-cast sphere, and the studio's exact surface samples."""

import numpy as np
import trimesh
from scenes import ALBEDO, RADIUS, sphere_prims, sphere_views
from scipy import ndimage

from pippo_jax.data_pipelines import raycast
from pippo_jax.reconstruction import field, mesh, studio_truth


def _sphere_volume(cavity: bool = False):
  """Density crossing mesh.LEVEL at RADIUS (linear in the distance), colour ALBEDO; optionally
  with an empty cavity inside (the unseen inside of a fitted body)."""
  box = field.Box(np.full(3, -0.5), 1.0 / 32, (33, 33, 33))
  r = np.linalg.norm(box.points(), axis=-1)
  density = np.maximum(mesh.LEVEL + (RADIUS - r) / box.voxel * 0.5, 0.0)
  if cavity:
    density[r < RADIUS / 2] = 0.0
  color = np.broadcast_to(np.asarray(ALBEDO), box.shape + (3,))
  return box, density, color


def test_sphere_surface_and_colours():
  box, density, color = _sphere_volume()
  m = mesh.extract_mesh(density, color, box.lo, box.voxel)
  r = np.linalg.norm(m.vertices, axis=-1)
  np.testing.assert_allclose(r, RADIUS, atol=0.01 * RADIUS)
  assert m.is_watertight
  want = np.broadcast_to(np.array(ALBEDO) * 255, (len(m.vertices), 3))
  np.testing.assert_allclose(m.visual.vertex_colors[:, :3], want, atol=1)
  # Outward normals.
  assert np.all(np.sum(m.vertex_normals * m.vertices, -1) > 0)


def test_cavities_are_filled():
  box, density, color = _sphere_volume(cavity=True)
  m = mesh.extract_mesh(density, color, box.lo, box.voxel)
  r = np.linalg.norm(m.vertices, axis=-1)
  assert r.min() > 0.98 * RADIUS  # no inner surface


def test_nothing_to_mesh():
  box, density, color = _sphere_volume()
  try:
    mesh.extract_mesh(np.zeros_like(density), color, box.lo, box.voxel)
  except ValueError as e:
    assert "never crosses the surface level" in str(e)
  else:
    raise AssertionError("no error")


def test_files_round_trip(tmp_path):
  box, density, color = _sphere_volume()
  m = mesh.extract_mesh(density, color, box.lo, box.voxel)
  for name in ("mesh.glb", "mesh.ply"):
    mesh.write_mesh(m, str(tmp_path / name))
    back = trimesh.load(str(tmp_path / name), force="mesh", process=False)
    assert len(back.vertices) == len(m.vertices) and len(back.faces) == len(m.faces)
    np.testing.assert_allclose(back.vertices, m.vertices, atol=1e-5)
    np.testing.assert_array_equal(back.visual.vertex_colors, m.visual.vertex_colors)


def test_splat_render_matches_ray_cast_silhouette():
  box, density, color = _sphere_volume()
  m = mesh.extract_mesh(density, color, box.lo, box.voxel)
  _, masks, K, E = sphere_views(views_per_ring=2)
  images = mesh.render_mesh(m, K, E, 48, 48, (255, 255, 255))
  drawn = np.any(images != 255, axis=-1)
  # Every pixel whose centre sees the sphere is drawn; the splats also reach the pixels the
  # silhouette only grazes (a one-pixel rim).
  assert (drawn & masks).sum() / masks.sum() > 0.995
  rim = ndimage.binary_dilation(masks) & ~masks
  assert not (drawn & ~masks & ~rim).any()
  # Facing the camera the light is full: the centre pixel has the albedo's colour.
  np.testing.assert_allclose(images[:, 24, 24] / 255, np.broadcast_to(ALBEDO, (4, 3)), atol=0.03)


def test_studio_surface_points_are_on_the_outer_surface():
  prims = studio_truth.studio_views(num_cameras=4, resolution=64).prims
  points, normals = studio_truth.surface_points(prims, 20000)
  assert 15000 < len(points) <= 20000  # points inside other ellipsoids are dropped
  level = np.stack(
    [
      np.linalg.norm((points - c) @ rot / r, axis=-1)
      for c, rot, r in zip(prims["center"], prims["rotation"], prims["radii"])
    ]
  )
  np.testing.assert_allclose(level.min(0), 1.0, atol=1e-9)  # on one ellipsoid, inside none
  # Normals point out: a step along them leaves every ellipsoid; a step back enters one.
  eps = 1e-4
  for sign, outside in ((1, True), (-1, False)):
    moved = points + sign * eps * normals
    inside = raycast_inside(prims, moved)
    assert (~inside).mean() > 0.999 if outside else inside.mean() > 0.999


def raycast_inside(prims, points):
  return np.any(
    [
      np.linalg.norm((points - c) @ rot / r, axis=-1) < 1
      for c, rot, r in zip(prims["center"], prims["rotation"], prims["radii"])
    ],
    axis=0,
  )


def test_studio_surface_points_are_area_uniform():
  """A prolate spheroid (semi-axes 1, 0.25, 0.25): the share of points with |x| < 0.5 equals the
  share of its area there (a surface of revolution, integrated in float64)."""
  prims = sphere_prims()
  prims["radii"] = np.array([[1.0, 0.25, 0.25]])
  points, _ = studio_truth.surface_points(prims, 200_000, seed=3)
  x = np.linspace(-1, 1, 400_001)
  y = 0.25 * np.sqrt(np.clip(1 - x**2, 0, None))
  dy = np.gradient(y, x)
  ring = 2 * np.pi * y * np.sqrt(1 + dy**2)
  share = ring[np.abs(x) < 0.5].sum() / ring.sum()
  np.testing.assert_allclose(np.mean(np.abs(points[:, 0]) < 0.5), share, atol=0.005)
  assert raycast.PLAIN == prims["texture"][0]
