"""The voxel field: interpolation (scipy), volume rendering (float64 NumPy quadrature and the
closed form of a uniform medium), the visual hull and box of a sphere, and a fit of a sphere."""

import jax
import jax.numpy as jnp
import numpy as np
from scenes import ALBEDO, RADIUS, fitted_sphere_scores, sphere_views
from scipy import ndimage

from pippo_jax.reconstruction import field


def test_trilinear_matches_scipy():
  rng = np.random.default_rng(0)
  grid = rng.normal(size=(5, 6, 7, 2)).astype(np.float32)
  g = rng.uniform([-0.5, -0.5, -0.5], [4.5, 5.5, 6.5], size=(200, 3)).astype(np.float32)
  got = np.asarray(field._trilinear(jnp.asarray(grid), jnp.asarray(g)))  # pylint: disable=protected-access
  want = np.stack(
    [
      ndimage.map_coordinates(grid[..., c].astype(np.float64), g.T, order=1, mode="nearest")
      for c in range(2)
    ],
    -1,
  )
  np.testing.assert_allclose(got, want, atol=2e-5)


def _box():
  return field.Box(np.zeros(3), 0.1, (11, 11, 11))  # the unit cube


def test_uniform_medium_is_exact():
  """Constant density: opacity 1 - exp(-sigma L) with L the path length in the box."""
  box, d0, c0 = _box(), 0.7, -0.4
  params = {"density": jnp.full(box.shape, d0), "color": jnp.full(box.shape + (3,), c0)}
  origins = jnp.array([[-1.0, 0.5, 0.5], [-1.0, 0.5, 0.5], [-1, -1, -1], [-1.0, 2.0, 0.5]])
  dirs = jnp.array([[1.0, 0, 0], [2.0, 0, 0], [1.0, 1, 1], [1.0, 0, 0]])
  bg = jnp.array([1.0, 0.5, 0.0])
  color, opacity = field.render_rays(params, box, origins, dirs, bg, 32, jax.random.key(0))
  sigma = np.log1p(np.exp(d0)) / 0.1
  length = np.array([1.0, 1.0, np.sqrt(3.0), 0.0])  # the last ray misses the box
  want = 1 - np.exp(-sigma * length)
  np.testing.assert_allclose(np.asarray(opacity), want, rtol=1e-5, atol=1e-6)
  rgb = 1 / (1 + np.exp(-c0))
  want_color = rgb * want[:, None] + (1 - want[:, None]) * np.array([1.0, 0.5, 0.0])
  np.testing.assert_allclose(np.asarray(color), want_color, rtol=1e-5, atol=1e-6)


def test_render_matches_float64_quadrature():
  box = _box()
  rng = np.random.default_rng(1)
  density = rng.normal(0, 2, box.shape)
  color = rng.normal(0, 1, box.shape + (3,))
  origins = rng.uniform(-1, 2, (16, 3))
  dirs = rng.uniform(0.2, 0.8, (16, 3)) - origins  # aimed into the cube
  samples, bg = 24, np.array([0.2, 0.4, 0.6])
  params = {"density": jnp.asarray(density, jnp.float32), "color": jnp.asarray(color, jnp.float32)}
  got_color, got_opacity = field.render_rays(
    params, box, jnp.asarray(origins, jnp.float32), jnp.asarray(dirs, jnp.float32), bg, samples
  )
  for o, d, gc, go in zip(origins, dirs, np.asarray(got_color), np.asarray(got_opacity)):
    t0, t1 = (0 - o) / d, (1 - o) / d
    near, far = max(np.minimum(t0, t1).max(), 0), np.maximum(t0, t1).min()
    step = (far - near) / samples
    t = near + (np.arange(samples) + 0.5) * step
    g = (o + t[:, None] * d) / 0.1
    sample = lambda v: ndimage.map_coordinates(v, g.T, order=1, mode="nearest")
    sigma = np.log1p(np.exp(sample(density))) / 0.1
    rgb = 1 / (1 + np.exp(-np.stack([sample(color[..., c]) for c in range(3)], -1)))
    alpha = 1 - np.exp(-sigma * step * np.linalg.norm(d))
    weights = alpha * np.concatenate([[1.0], np.cumprod(1 - alpha)[:-1]])
    np.testing.assert_allclose(go, weights.sum(), atol=2e-5)
    np.testing.assert_allclose(gc, weights @ rgb + (1 - weights.sum()) * bg, atol=2e-5)


def test_hull_and_box_of_a_sphere():
  _, masks, K, E = sphere_views()
  box = field.hull_box(K, E, masks, 32, margin=0.0)
  # The hull's box holds the sphere and is at most a couple of coarse voxels larger.
  assert np.all(box.lo < -RADIUS) and np.all(box.hi > RADIUS), (box.lo, box.hi)
  assert np.all(box.lo > -RADIUS - 0.15) and np.all(box.hi < RADIUS + 0.15), (box.lo, box.hi)
  assert max(box.shape) == 32
  hull = field.visual_hull(box, K, E, masks)
  radius = np.linalg.norm(box.points(), axis=-1)
  assert hull[radius < RADIUS - 0.03].all()
  assert not hull[radius > 1.4 * RADIUS].any()


def test_fit_recovers_a_sphere():
  images, masks, K, E = sphere_views()
  box = field.hull_box(K, E, masks, 24)
  settings = field.FitSettings(steps=120, rays=1024, seed=0)
  params, losses = field.fit(images, masks, K, E, box, (255, 255, 255), settings)
  assert losses.shape == (120,) and losses[-10:].mean() < 0.2 * losses[:5].mean()
  scores, color = fitted_sphere_scores(params, box)
  assert scores["chamfer"] < 0.015 and scores["fscore@0.03"] > 0.9, scores
  assert scores["normal_consistency"] > 0.9, scores
  np.testing.assert_allclose(color, ALBEDO, atol=0.06)
  renders, opacity = field.render_views(params, box, K[:2], E[:2], 48, 48, (255, 255, 255))
  assert renders.shape == (2, 48, 48, 3) and opacity.shape == (2, 48, 48)
  assert np.mean((opacity > 0.5) == masks[:2]) > 0.97
