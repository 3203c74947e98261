"""DDIM sampler against a float64 NumPy reference written from the formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pippo_jax.diffusion import sampler
from pippo_jax.diffusion.schedule import cosine_schedule

SCHED = cosine_schedule()
SHAPE = (2, 3, 4, 4, 2)  # [B, views, h, w, C]


def _abar64():
  f = lambda s: np.cos((s / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2
  steps = np.arange(1000, dtype=np.float64)
  return np.cumprod(1 - np.minimum(1 - f(steps + 1) / f(steps), 0.999))


def _reference_step(x, eps, a, a_prev, eta, z):
  sigma = eta * np.sqrt((1 - a_prev) / (1 - a)) * np.sqrt(1 - a / a_prev)
  x0 = (x - np.sqrt(1 - a) * eps) / np.sqrt(a)
  return np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - sigma**2) * eps + sigma * z


def test_timesteps():
  ts = sampler.ddim_timesteps(30, 1000)
  np.testing.assert_array_equal(ts, 1 + 33 * np.arange(31))
  assert ts[0] == 1 and ts[1] == 34 and ts[-1] == 991 and len(ts) == 31
  np.testing.assert_array_equal(sampler.ddim_timesteps(50), 1 + 20 * np.arange(50))
  np.testing.assert_array_equal(sampler.ddim_timesteps(10), 1 + 100 * np.arange(10))
  with pytest.raises(ValueError, match="num_steps"):
    sampler.ddim_timesteps(0)


def test_plan_uses_abar0_at_last_step():
  plan = sampler.ddim_plan(SCHED, 30, eta=0.1)
  abar = _abar64()
  np.testing.assert_array_equal(plan.timesteps, (1 + 33 * np.arange(31))[::-1])
  np.testing.assert_allclose(plan.alphas, abar[plan.timesteps], rtol=1e-6)
  np.testing.assert_allclose(plan.alphas_prev[:-1], abar[plan.timesteps[1:]], rtol=1e-6)
  np.testing.assert_allclose(plan.alphas_prev[-1], abar[0], rtol=1e-7)
  a, ap = abar[plan.timesteps], plan.alphas_prev
  sigma = 0.1 * np.sqrt((1 - ap) / (1 - a) * (1 - a / ap))
  np.testing.assert_allclose(plan.sigmas, sigma, rtol=1e-4)
  assert np.all(plan.sigmas > 0)


def test_step_matches_reference():
  rng = np.random.default_rng(0)
  x, eps, z = (rng.standard_normal(SHAPE) for _ in range(3))
  a, a_prev, eta = 0.3, 0.45, 0.7
  sigma = eta * np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
  j = lambda v: jnp.asarray(v, jnp.float32)
  x_prev, x0 = sampler.ddim_step(j(x), j(eps), a, a_prev, sigma, j(z))
  np.testing.assert_allclose(
    x_prev, _reference_step(x, eps, a, a_prev, eta, z), rtol=1e-5, atol=1e-5
  )
  np.testing.assert_allclose(x0, (x - np.sqrt(1 - a) * eps) / np.sqrt(a), rtol=1e-5, atol=1e-5)


def _linear_eps(x, t):
  """A t-dependent toy denoiser, so the result depends on the step order."""
  assert t.shape == (x.shape[0],) and t.dtype == jnp.int32
  return x * (0.2 + 0.6 * t.astype(jnp.float32) / 1000).reshape(-1, 1, 1, 1, 1)


def test_deterministic_ddim_matches_reference_loop():
  x_T = np.random.default_rng(1).standard_normal(SHAPE)
  got = sampler.ddim_sample(
    _linear_eps, jnp.asarray(x_T, jnp.float32), jax.random.key(0), SCHED, 30, eta=0.0
  )
  abar, x = _abar64(), x_T.copy()
  steps = (1 + 33 * np.arange(31))[::-1]
  for i, t in enumerate(steps):
    a_prev = abar[steps[i + 1]] if i + 1 < len(steps) else abar[0]
    eps = x * (0.2 + 0.6 * t / 1000)
    x = _reference_step(x, eps, abar[t], a_prev, 0.0, 0.0)
  np.testing.assert_allclose(got, x, rtol=1e-4, atol=1e-5)


# Module-level denoisers: `eps_fn` is a static argument of the jitted loop, so
# reusing the same function objects reuses the compilation across tests.
_RNG = np.random.default_rng(2)
X0 = jnp.asarray(_RNG.standard_normal(SHAPE), jnp.float32)
X_T = jnp.asarray(_RNG.standard_normal(SHAPE), jnp.float32)


def _oracle_eps(x_t, t):
  """The denoiser that returns the true noise of x_t given the known X0."""
  a = SCHED.alphas_cumprod[t].reshape(-1, 1, 1, 1, 1)
  return (x_t - jnp.sqrt(a) * X0) / jnp.sqrt(1 - a)


def _oracle_v(x_t, t):
  a = SCHED.alphas_cumprod[t].reshape(-1, 1, 1, 1, 1)
  return jnp.sqrt(a) * _oracle_eps(x_t, t) - jnp.sqrt(1 - a) * X0


def test_oracle_denoiser_recovers_x0():
  x, x0_preds = sampler.ddim_sample(
    _oracle_eps, X_T, jax.random.key(1), SCHED, 30, eta=0.1, return_x0_preds=True
  )
  assert x0_preds.shape == (31,) + SHAPE
  # every step's x0 estimate is x0 (up to float32 rounding / sqrt(abar_991));
  # measured 8e-6
  assert float(jnp.max(jnp.abs(x0_preds - X0))) < 1e-4
  # the output sits at noise level abar[0]: residual rms ~ sqrt(1 - abar[0])
  # = 0.0064 (measured 0.0068)
  rms = float(jnp.sqrt(jnp.mean((x - X0) ** 2)))
  expected = np.sqrt(1 - _abar64()[0])
  assert 0.7 * expected < rms < 1.3 * expected, (rms, expected)


def test_v_parameterization_equals_eps():
  key = jax.random.key(4)
  x_eps, _ = sampler.ddim_sample(_oracle_eps, X_T, key, SCHED, 30, 0.1, return_x0_preds=True)
  x_v = sampler.ddim_sample(_oracle_v, X_T, key, SCHED, 30, 0.1, parameterization="v")
  np.testing.assert_allclose(x_v, x_eps, atol=1e-4)
  x_x0 = sampler.ddim_sample(
    lambda x, t: jnp.broadcast_to(X0, x.shape), X_T, key, SCHED, 30, 0.1, parameterization="x0"
  )
  np.testing.assert_allclose(x_x0, x_eps, atol=1e-4)


def test_sampling_is_deterministic_given_key():
  run = lambda key, eta: sampler.ddim_sample(_linear_eps, X_T, key, SCHED, 30, eta)
  a, b = run(jax.random.key(7), 0.1), run(jax.random.key(7), 0.1)
  np.testing.assert_array_equal(a, b)
  c = run(jax.random.key(8), 0.1)
  assert float(jnp.max(jnp.abs(a - c))) > 1e-3
  np.testing.assert_array_equal(run(jax.random.key(7), 0.0), run(jax.random.key(8), 0.0))


def test_runs_inside_an_outer_jit_with_traced_closure():
  x_T = jnp.asarray(np.random.default_rng(6).standard_normal(SHAPE), jnp.float32)

  @jax.jit
  def sample(gain, x_T, key):
    return sampler.ddim_sample(lambda x, t: gain * _linear_eps(x, t), x_T, key, SCHED, 10, 0.1)

  key = jax.random.key(9)
  eager = sampler.ddim_sample(lambda x, t: 1.5 * _linear_eps(x, t), x_T, key, SCHED, 10, 0.1)
  np.testing.assert_allclose(sample(1.5, x_T, key), eager, rtol=1e-5, atol=1e-5)
