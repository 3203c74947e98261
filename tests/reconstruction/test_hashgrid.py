"""The hash-grid field: its encoding against a float64 NumPy one (Python-integer hashing), its
start equal to the voxel field's, its volumes, and a fit of a sphere."""

import jax
import jax.numpy as jnp
import numpy as np
from scenes import ALBEDO, fitted_sphere_scores, sphere_views
from scipy import ndimage

from pippo_jax.reconstruction import field, hashgrid


def _encode_reference(tables, u, box_side):
  """float64, one point at a time, hashes in Python integers."""
  out = []
  for x in np.clip(u, 0, 1):
    features = []
    for level, n in enumerate(hashgrid.resolutions(box_side)):
      p = x * n
      base = np.minimum(np.floor(p).astype(int), n - 1)
      f = p - base
      acc = np.zeros(hashgrid.FEATURES)
      for corner in np.ndindex(2, 2, 2):
        c = [int(v) for v in base + corner]
        if (n + 1) ** 3 <= hashgrid.TABLE:
          row = c[0] + (n + 1) * c[1] + (n + 1) ** 2 * c[2]
        else:
          row = ((c[0] * 1) ^ (c[1] * 2654435761) ^ (c[2] * 805459861)) % 2**32 % hashgrid.TABLE
        w = np.prod([f[a] if corner[a] else 1 - f[a] for a in range(3)])
        acc += w * tables[level, row]
      features.append(acc)
    out.append(np.concatenate(features))
  return np.array(out)


def test_levels_span_coarse_to_four_times_the_box():
  n = hashgrid.resolutions(65)
  assert len(n) == hashgrid.LEVELS and n[0] == hashgrid.N_MIN and n[-1] == 4 * 64
  assert np.all(np.diff(n) > 0)
  # Both kinds of level occur: dense at the coarse end, hashed at the fine end.
  assert (n[0] + 1) ** 3 <= hashgrid.TABLE < (n[-1] + 1) ** 3


def test_encoding_matches_float64_reference():
  rng = np.random.default_rng(0)
  tables = rng.normal(size=(hashgrid.LEVELS, hashgrid.TABLE, hashgrid.FEATURES))
  u = rng.uniform(-0.05, 1.05, (64, 3))  # some outside the box: clamped
  u[0] = 1.0  # the far corner
  got = hashgrid.encode(jnp.asarray(tables, jnp.float32), jnp.asarray(u, jnp.float32), 65)
  np.testing.assert_allclose(np.asarray(got), _encode_reference(tables, u, 65), atol=2e-5)


def test_starts_where_the_voxel_field_starts():
  box = field.Box(np.zeros(3), 0.1, (11, 9, 7))
  hull = np.zeros(box.shape, bool)
  hull[3:8, 2:7, 2:5] = True
  voxel = field.init_params(box, hull, jax.random.key(0))
  hashed = field.init_params(box, hull, jax.random.key(0), "hash")
  g = np.random.default_rng(1).uniform(0, np.array(box.shape) - 1, (100, 3)).astype(np.float32)
  raw = np.asarray(field.raw_values(hashed, jnp.asarray(g)))
  want = ndimage.map_coordinates(np.asarray(voxel["density"], np.float64), g.T, order=1)
  np.testing.assert_allclose(raw[:, 0], want, atol=1e-5)
  np.testing.assert_array_equal(raw[:, 1:], 0.0)  # grey
  density, color = field.volumes(hashed, box, chunk=128)  # several chunks, the last padded
  np.testing.assert_allclose(density, jax.nn.softplus(voxel["density"]), atol=1e-5)
  assert color.shape == box.shape + (3,) and np.all(color == 0.5)


def test_unknown_representation_is_refused():
  box = field.Box(np.zeros(3), 0.1, (4, 4, 4))
  try:
    field.init_params(box, np.ones(box.shape, bool), jax.random.key(0), "gaussians")
  except ValueError as e:
    assert "gaussians" in str(e) and "hash" in str(e)
  else:
    raise AssertionError("no error")


def test_fit_recovers_a_sphere():
  images, masks, K, E = sphere_views()
  box = field.hull_box(K, E, masks, 24)
  settings = field.FitSettings(steps=120, rays=1024, seed=0, representation="hash")
  params, losses = field.fit(images, masks, K, E, box, (255, 255, 255), settings)
  assert losses[-10:].mean() < 0.2 * losses[:5].mean()
  scores, color = fitted_sphere_scores(params, box)
  assert scores["chamfer"] < 0.015 and scores["fscore@0.03"] > 0.9, scores
  assert scores["normal_consistency"] > 0.85, scores
  np.testing.assert_allclose(color, ALBEDO, atol=0.06)
