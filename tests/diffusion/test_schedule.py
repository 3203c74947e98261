"""Cosine schedule and q_sample against float64 NumPy references."""

import jax.numpy as jnp
import numpy as np
import pytest

from pippo_jax.diffusion import schedule as schedule_lib


def _reference_abar(T=1000, s=0.008, max_beta=0.999):
  """abar_t = prod_{i<=t} (1 - min(1 - f(i+1)/f(i), max_beta)), float64."""
  f = lambda t: np.cos((t / T + s) / (1 + s) * np.pi / 2) ** 2
  t = np.arange(T, dtype=np.float64)
  betas = np.minimum(1.0 - f(t + 1) / f(t), max_beta)
  return betas, np.cumprod(1.0 - betas)


def test_cosine_schedule_matches_formula():
  sched = schedule_lib.cosine_schedule()
  betas, abar = _reference_abar()
  assert sched.num_timesteps == 1000
  assert sched.alphas_cumprod.dtype == jnp.float32
  np.testing.assert_allclose(sched.betas, betas, rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(sched.alphas_cumprod, abar, rtol=2e-6, atol=1e-12)
  np.testing.assert_allclose(sched.sqrt_alphas_cumprod, np.sqrt(abar), rtol=2e-6, atol=1e-9)
  # sqrt(1 - abar) is taken from float32 abar (release numerics): near t = 0
  # the cancellation costs up to ~half an ulp of 1 / (2 sqrt(1 - abar)) ~ 5e-6.
  np.testing.assert_allclose(
    sched.sqrt_one_minus_alphas_cumprod, np.sqrt(1 - abar), rtol=2e-6, atol=5e-6
  )
  np.testing.assert_allclose(sched.alphas_cumprod_prev[1:], abar[:-1], rtol=2e-6)
  assert sched.alphas_cumprod_prev[0] == 1.0


def test_cosine_schedule_landmarks():
  sched = schedule_lib.cosine_schedule()
  abar = np.asarray(sched.alphas_cumprod, np.float64)
  # beta_0 = 1 - f(1)/f(0) ~ 4.1e-5; the last beta hits the 0.999 clamp.
  f = lambda t: np.cos((t / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2
  np.testing.assert_allclose(abar[0], f(1) / f(0), rtol=1e-7)
  assert 4.0e-5 < 1 - abar[0] < 4.2e-5
  assert float(sched.betas[-1]) == pytest.approx(0.999, rel=1e-7)
  assert np.all(np.diff(abar) < 0)
  assert abar[-1] < 1e-7
  # the clamp only bites at the very end
  betas, _ = _reference_abar(max_beta=1.0)
  assert np.sum(betas > 0.999) == 1


def test_q_sample_broadcasts_one_t_per_sample():
  sched = schedule_lib.cosine_schedule()
  rng = np.random.default_rng(0)
  x0 = rng.standard_normal((3, 4, 2, 5, 5)).astype(np.float32)
  noise = rng.standard_normal(x0.shape).astype(np.float32)
  t = np.array([0, 500, 999], np.int32)
  _, abar = _reference_abar()
  a = abar[t].reshape(3, 1, 1, 1, 1)
  expected = np.sqrt(a) * x0 + np.sqrt(1 - a) * noise
  got = schedule_lib.q_sample(sched, jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=2e-5)
  with pytest.raises(ValueError, match=r"t must have shape \[B\]"):
    schedule_lib.q_sample(sched, jnp.asarray(x0), jnp.zeros((3, 4), jnp.int32), jnp.asarray(noise))


def test_q_sample_matches_release_golden(golden_dir):
  inputs = np.load(golden_dir / "inputs.npz")
  sched = schedule_lib.cosine_schedule()
  got = schedule_lib.q_sample(
    sched, jnp.asarray(inputs["x_0"]), jnp.asarray(inputs["t"]), jnp.asarray(inputs["noise"])
  )
  np.testing.assert_allclose(got, inputs["x_t"], rtol=1e-6, atol=1e-6)
