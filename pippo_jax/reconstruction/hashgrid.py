"""A multi-resolution hash-grid field (as in Instant-NGP) over the same box as the voxel field.

The alternative to `field`'s dense grids, measured against them in the README ("From views to
3D"). At a point with box coordinates u in [0, 1]^3 (the box's sample coordinates divided by
the longest side's sample count minus one):

  level l = 0 .. LEVELS-1 has N_l = floor(N_MIN * b^l) cells per unit,
    b = (n_max / N_MIN)^(1 / (LEVELS - 1))
  corners c = floor(u N_l) + {0,1}^3, looked up in that level's table [TABLE, FEATURES]:
    index = c_x + (N_l + 1) c_y + (N_l + 1)^2 c_z          when (N_l + 1)^3 <= TABLE (dense)
    index = (c_x * 1 ^ c_y * 2654435761 ^ c_z * 805459861) mod TABLE   otherwise (hashed, uint32)
  features = trilinear blend of the 8 corners' entries, concatenated over levels [LEVELS * FEATURES]
  raw (density, r, g, b) = MLP(features) (two ReLU layers of WIDTH, last layer zero at start)
  raw density += the starting density grid (hull inside / outside, as `field.init_params`,
                 trilinearly interpolated and held fixed)

so the field starts exactly where the voxel field starts (opaque hull, grey colour) and learns a
correction. `n_max` is 4 cells per voxel along the box's longest side. Tables start uniform in
+-1e-4; the MLP's hidden layers start He-normal. The fit (`field.fit`) holds the density change
small at random points of the box (`FitSettings.prior_weight`): without that, hash collisions
and the shared MLP carve tunnels into the never-seen inside of a body (a sphere's mesh then had
surface down to 0.2 of its radius; with it, Chamfer 9.5 mm on a 0.3 m sphere, as the voxel
field's 10.2 mm). All levels and corners are looked up in one gather: 64 separate gathers made
the step 6.5x slower (their gradients are 64 scatter-adds).
"""

import jax
import jax.numpy as jnp
import numpy as np

LEVELS = 8
FEATURES = 2
TABLE = 2**15
N_MIN = 16
WIDTH = 64
PRIMES = (1, 2654435761, 805459861)


def resolutions(box_side: int) -> np.ndarray:
  """Cells per unit of each level (box_side: samples along the box's longest side)."""
  n_max = 4 * (box_side - 1)
  growth = np.exp(np.log(n_max / N_MIN) / (LEVELS - 1))
  return np.floor(N_MIN * growth ** np.arange(LEVELS)).astype(np.int64)


def init_params(prior: np.ndarray, key) -> dict:
  """prior: the starting raw density grid [X, Y, Z] (held fixed, see the module docstring)."""
  k_table, k1, k2 = jax.random.split(key, 3)
  width_in = LEVELS * FEATURES
  he = lambda k, n, m: jax.random.normal(k, (n, m), jnp.float32) * np.sqrt(2.0 / n)
  return {
    "prior": jnp.asarray(prior, jnp.float32),
    "tables": jax.random.uniform(k_table, (LEVELS, TABLE, FEATURES), jnp.float32, -1e-4, 1e-4),
    "w1": he(k1, width_in, WIDTH),
    "b1": jnp.zeros(WIDTH),
    "w2": he(k2, WIDTH, WIDTH),
    "b2": jnp.zeros(WIDTH),
    "w3": jnp.zeros((WIDTH, 4)),
    "b3": jnp.zeros(4),
  }


def _index(corner, n: int):
  """Table rows of integer corners [..., 3] at a level with n cells per unit."""
  if (n + 1) ** 3 <= TABLE:
    return corner[..., 0] + (n + 1) * (corner[..., 1] + (n + 1) * corner[..., 2])
  c = corner.astype(jnp.uint32)
  h = c[..., 0] * jnp.uint32(PRIMES[0])
  h = h ^ (c[..., 1] * jnp.uint32(PRIMES[1]))
  h = h ^ (c[..., 2] * jnp.uint32(PRIMES[2]))
  return (h % jnp.uint32(TABLE)).astype(jnp.int32)


def encode(tables, u, box_side: int):
  """Hash-grid features [..., LEVELS * FEATURES] at unit-box coordinates u [..., 3]."""
  u = jnp.clip(u, 0.0, 1.0)
  corners = jnp.array([[dx, dy, dz] for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)])
  rows, weights = [], []
  for level, n in enumerate(resolutions(box_side)):
    p = u * n
    base = jnp.minimum(jnp.floor(p).astype(jnp.int32), int(n) - 1)
    f = (p - base)[..., None, :]  # [..., 1, 3]
    weights.append(jnp.prod(jnp.where(corners == 1, f, 1 - f), -1))  # [..., 8]
    rows.append(level * TABLE + _index(base[..., None, :] + corners, int(n)))
  # One gather (and, in the gradient, one scatter-add) for all levels and corners.
  entries = tables.reshape(LEVELS * TABLE, FEATURES)[jnp.stack(rows, -2)]  # [..., L, 8, F]
  features = jnp.sum(jnp.stack(weights, -2)[..., None] * entries, -2)  # [..., L, F]
  return features.reshape(*u.shape[:-1], LEVELS * FEATURES)


def correction(params, g):
  """The MLP's output [..., 4] at continuous sample coordinates g [..., 3] of a box whose grid
  is params["prior"]: raw colour and the raw density's change from the prior."""
  box_side = max(params["prior"].shape)
  h = encode(params["tables"], g / (box_side - 1), box_side)
  h = jax.nn.relu(h @ params["w1"] + params["b1"])
  h = jax.nn.relu(h @ params["w2"] + params["b2"])
  return h @ params["w3"] + params["b3"]


def raw_values(params, g, trilinear):
  """Raw (density, colour) [..., 4] at continuous sample coordinates g [..., 3];
  `trilinear(grid, g)` interpolates a grid (the voxel field's)."""
  out = correction(params, g)
  prior = trilinear(jax.lax.stop_gradient(params["prior"])[..., None], g)
  return out + jnp.concatenate([prior, jnp.zeros_like(out[..., 1:])], -1)
