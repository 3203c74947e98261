"""Training objective: targets, conversions and loss against float64 NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pippo_jax.diffusion import objective
from pippo_jax.diffusion.schedule import cosine_schedule

SCHED = cosine_schedule()


def _abar64(t):
  f = lambda s: np.cos((s / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2
  steps = np.arange(1000, dtype=np.float64)
  abar = np.cumprod(1 - np.minimum(1 - f(steps + 1) / f(steps), 0.999))
  return abar[np.asarray(t)]


def _data(shape=(3, 4, 6, 6, 2), seed=0):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal(shape), rng.standard_normal(shape), np.array([3, 400, 950]))


def test_targets_and_conversions_match_formulas():
  x0, eps, t = _data()
  a = _abar64(t).reshape(-1, 1, 1, 1, 1)
  x_t = np.sqrt(a) * x0 + np.sqrt(1 - a) * eps
  v = np.sqrt(a) * eps - np.sqrt(1 - a) * x0
  j = lambda x: jnp.asarray(x, jnp.float32)
  tj = jnp.asarray(t, jnp.int32)
  tol = dict(rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(objective.training_target(SCHED, j(x0), tj, j(eps), "eps"), eps, **tol)
  np.testing.assert_allclose(objective.training_target(SCHED, j(x0), tj, j(eps), "v"), v, **tol)
  np.testing.assert_allclose(objective.v_to_eps(SCHED, j(x_t), tj, j(v)), eps, **tol)
  np.testing.assert_allclose(objective.v_to_x0(SCHED, j(x_t), tj, j(v)), x0, **tol)
  np.testing.assert_allclose(
    objective.x0_to_eps(SCHED, j(x_t), tj, j(x0)), eps, rtol=1e-3, atol=1e-3
  )  # t = 3: / sqrt(1-abar)
  np.testing.assert_allclose(
    objective.eps_to_x0(SCHED, j(x_t), tj, j(eps)), x0, rtol=1e-3, atol=1e-3
  )  # t = 950: / sqrt(abar)
  np.testing.assert_allclose(
    objective.model_output_to_eps(SCHED, j(x_t), tj, j(v), "v"), eps, **tol
  )
  np.testing.assert_array_equal(objective.training_target(SCHED, j(x0), tj, j(eps), "x0"), j(x0))
  np.testing.assert_allclose(
    objective.model_output_to_eps(SCHED, j(x_t), tj, j(x0), "x0"), eps, rtol=1e-3, atol=1e-3
  )
  with pytest.raises(ValueError, match="parameterization"):
    objective.training_target(SCHED, j(x0), tj, j(eps), "z")


def test_noise_batch_shares_t_across_views():
  x0 = jnp.asarray(np.random.default_rng(1).standard_normal((4, 3, 2, 2, 1)), jnp.float32)
  batch = objective.noise_batch(jax.random.key(0), SCHED, x0, "eps")
  assert batch.t.shape == (4,) and batch.t.dtype == jnp.int32
  a = _abar64(np.asarray(batch.t)).reshape(-1, 1, 1, 1, 1)
  expected = np.sqrt(a) * np.asarray(x0) + np.sqrt(1 - a) * np.asarray(batch.noise)
  np.testing.assert_allclose(batch.x_t, expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(batch.target, batch.noise)
  again = objective.noise_batch(jax.random.key(0), SCHED, x0, "eps")
  np.testing.assert_array_equal(again.x_t, batch.x_t)


def test_timesteps_are_uniform_integers():
  x0 = jnp.zeros((40000, 1))
  t, noise = objective.sample_timesteps_and_noise(jax.random.key(3), x0, 1000)
  t = np.asarray(t)
  assert t.min() == 0 and t.max() == 999
  assert abs(t.mean() - 499.5) < 5.0  # sd of the mean ~1.4
  counts = np.bincount(t // 100, minlength=10)
  assert np.all(np.abs(counts - 4000) < 300)  # sd per bin ~60
  assert abs(float(jnp.std(noise)) - 1.0) < 0.02


def test_diffusion_loss_plain_and_masked():
  rng = np.random.default_rng(2)
  pred, target = rng.standard_normal((2, 2, 4, 4, 3)), rng.standard_normal((2, 2, 4, 4, 3))
  mask = (rng.random((2, 2, 4, 4, 1)) > 0.5).astype(np.float64)
  err = (pred - target) ** 2
  j = lambda x: jnp.asarray(x, jnp.float32)
  np.testing.assert_allclose(objective.diffusion_loss(j(pred), j(target)), err.mean(), rtol=1e-6)
  masked = (err * mask).sum() / np.broadcast_to(mask, err.shape).sum()
  np.testing.assert_allclose(
    objective.diffusion_loss(j(pred), j(target), j(mask)), masked, rtol=1e-6
  )
  assert float(objective.diffusion_loss(j(pred), j(target), jnp.zeros_like(j(mask)))) == 0.0
  with pytest.raises(ValueError, match="must match"):
    objective.diffusion_loss(j(pred), j(target)[:1])
