"""The DDPM noise schedule and the forward (noising) process.

Conventions:
  * Discrete time t in {0, ..., T-1}, T = 1000. `alphas_cumprod[t]` is abar_t,
    the signal fraction after step t: x_t = sqrt(abar_t) x0 + sqrt(1-abar_t) eps.
    t = 0 is already slightly noisy (abar_0 = 1 - beta_0 < 1).
  * Cosine schedule (Nichol & Dhariwal 2021): f(t) = cos^2(((t/T + s)/(1 + s)) pi/2),
    abar_t = f(t + 1) / f(0), beta_t = 1 - f(t + 1)/f(t) clipped to <= max_beta, and
    abar recomputed as the cumulative product of the clipped (1 - beta).
  * Numerics follow the authors' release: betas and their cumulative product in
    float64, abar then cast to float32 and every square root taken in float32.
  * Batches are [B, views, ...]: one t per sample, shared by all of its views, so
    `q_sample` takes t of shape [B] and broadcasts over every other axis.
"""

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np


class DiffusionSchedule(NamedTuple):
  """Per-timestep coefficients, each a float32 array of shape [T].

  A NamedTuple of arrays is a JAX pytree: pass it into jitted functions or close
  over it; `num_timesteps` is its static length.
  """

  betas: jnp.ndarray
  alphas: jnp.ndarray
  alphas_cumprod: jnp.ndarray
  alphas_cumprod_prev: jnp.ndarray
  sqrt_alphas_cumprod: jnp.ndarray
  sqrt_one_minus_alphas_cumprod: jnp.ndarray

  @property
  def num_timesteps(self) -> int:
    return int(self.betas.shape[0])


def cosine_betas(
  num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999
) -> np.ndarray:
  """float64 betas of the cosine schedule, clipped to <= max_beta."""
  if num_timesteps < 1:
    raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}.")
  steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
  f = np.cos((steps + s) / (1.0 + s) * np.pi / 2.0) ** 2
  f = f / f[0]
  return np.minimum(1.0 - f[1:] / f[:-1], max_beta)


def schedule_from_betas(betas: np.ndarray) -> DiffusionSchedule:
  """Builds every coefficient from float64 betas (release numerics, see top)."""
  betas = np.asarray(betas, dtype=np.float64)
  if betas.ndim != 1 or np.any(betas <= 0) or np.any(betas >= 1):
    raise ValueError("betas must be a 1-D array with values in (0, 1).")
  abar = np.cumprod(1.0 - betas).astype(np.float32)
  abar_prev = np.concatenate([np.ones(1, np.float32), abar[:-1]])
  abar_j = jnp.asarray(abar)
  return DiffusionSchedule(
    betas=jnp.asarray(betas, jnp.float32),
    alphas=jnp.asarray(1.0 - betas, jnp.float32),
    alphas_cumprod=abar_j,
    alphas_cumprod_prev=jnp.asarray(abar_prev),
    sqrt_alphas_cumprod=jnp.sqrt(abar_j),
    sqrt_one_minus_alphas_cumprod=jnp.sqrt(1.0 - abar_j),
  )


def cosine_schedule(
  num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999
) -> DiffusionSchedule:
  """The cosine DDPM schedule used by Pippo (T = 1000, s = 0.008)."""
  return schedule_from_betas(cosine_betas(num_timesteps, s, max_beta))


def extract(coefficients: jnp.ndarray, t: jnp.ndarray, ndim: int) -> jnp.ndarray:
  """coefficients[t] for t of shape [B], reshaped to [B, 1, ..., 1] (ndim axes)."""
  t = jnp.asarray(t)
  if t.ndim != 1:
    raise ValueError(f"t must have shape [B] (one timestep per sample), got shape {t.shape}.")
  values = jnp.take(coefficients, t.astype(jnp.int32))
  return values.reshape(t.shape + (1,) * (ndim - 1))


def q_sample(
  schedule: DiffusionSchedule, x0: jnp.ndarray, t: jnp.ndarray, noise: jnp.ndarray
) -> jnp.ndarray:
  """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise.

  Args:
    schedule: the noise schedule.
    x0: clean latents [B, views, ...].
    t: int timesteps [B], one per sample, shared by all its views.
    noise: standard normal noise, same shape as x0.
  """
  if x0.shape != noise.shape:
    raise ValueError(f"x0 {x0.shape} and noise {noise.shape} must match.")
  if t.shape != x0.shape[:1]:
    raise ValueError(f"t must have shape [B] = {x0.shape[:1]}, got {t.shape}.")
  a = extract(schedule.sqrt_alphas_cumprod, t, x0.ndim)
  b = extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim)
  return a * x0 + b * noise
