"""DDIM sampling (Song et al. 2021) as in the authors' release.

Timesteps: "uniform" spacing c = T // num_steps, timesteps = range(0, T - 1, c) + 1.
For 30 configured steps and T = 1000 this is 1, 34, ..., 991: 31 model calls.
Sampling walks them from 991 down to 1. At a step with abar = a (at the current
timestep) and abar_prev = a_prev (at the next smaller timestep; abar[0] for the
last step, t = 1):

  x0_hat = (x_t - sqrt(1 - a) eps_hat) / sqrt(a)                 (no clipping)
  sigma  = eta sqrt((1 - a_prev) / (1 - a)) sqrt(1 - a / a_prev)
  x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps_hat + sigma z

with z ~ N(0, I) drawn fresh at every step (also the last). The default eta is
0.1. The returned sample is the x_prev of the last step, i.e. a latent at noise
level abar[0] (~0.99996 for the cosine schedule), as in the release.

The loop is one `lax.scan` inside `jax.jit`; the per-step noise keys come from
`jax.random.split(key, num_model_calls)`, so a sample is a deterministic function
of (x_T, key).
"""

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pippo_jax.diffusion import objective
from pippo_jax.diffusion.schedule import DiffusionSchedule

EpsFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def ddim_timesteps(num_steps: int = 30, num_timesteps: int = 1000) -> np.ndarray:
  """Ascending int32 DDIM timesteps; [1, 34, ..., 991] for (30, 1000)."""
  if not 1 <= num_steps < num_timesteps:
    raise ValueError(f"num_steps must be in [1, {num_timesteps}), got {num_steps}.")
  stride = num_timesteps // num_steps
  return (np.arange(0, num_timesteps - 1, stride) + 1).astype(np.int32)


class DDIMPlan(NamedTuple):
  """Per-step quantities in sampling order (largest t first), float64 NumPy."""

  timesteps: np.ndarray
  alphas: np.ndarray
  alphas_prev: np.ndarray
  sigmas: np.ndarray


def ddim_plan(schedule: DiffusionSchedule, num_steps: int = 30, eta: float = 0.1) -> DDIMPlan:
  """Timesteps, abar, abar_prev and sigma for every DDIM step.

  The schedule must be concrete (not a tracer): the plan is computed on the host
  in float64 from the schedule's float32 abar, as the release does.
  """
  abar = np.asarray(schedule.alphas_cumprod, dtype=np.float64)
  steps = ddim_timesteps(num_steps, abar.shape[0])
  a = abar[steps]
  a_prev = np.concatenate([abar[:1], abar[steps[:-1]]])
  sigmas = eta * np.sqrt((1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev))
  return DDIMPlan(steps[::-1].copy(), a[::-1].copy(), a_prev[::-1].copy(), sigmas[::-1].copy())


def ddim_step(x_t, eps, alpha, alpha_prev, sigma, z):
  """One DDIM update (formulas at the top). Returns (x_prev, x0_hat)."""
  x0_hat = (x_t - jnp.sqrt(1.0 - alpha) * eps) / jnp.sqrt(alpha)
  direction = jnp.sqrt(1.0 - alpha_prev - sigma**2) * eps
  x_prev = jnp.sqrt(alpha_prev) * x0_hat + direction + sigma * z
  return x_prev, x0_hat


@functools.partial(
  jax.jit, static_argnames=("eps_fn", "parameterization", "return_x0_preds", "progress")
)
def _ddim_loop(
  x_T,
  key,
  timesteps,
  coefficients,
  schedule,
  *,
  eps_fn,
  parameterization,
  return_x0_preds,
  progress=None,
):
  """The jitted scan over steps; coefficients is [S, 3] = (a, a_prev, sigma)."""
  batch = x_T.shape[0]
  keys = jax.random.split(key, timesteps.shape[0])

  def body(x, step):
    i, t, coeff, step_key = step
    alpha, alpha_prev, sigma = coeff[0], coeff[1], coeff[2]
    t_batch = jnp.full((batch,), t, jnp.int32)
    x32 = x.astype(jnp.float32)
    out = objective.model_output_to_eps(
      schedule, x32, t_batch, eps_fn(x, t_batch).astype(jnp.float32), parameterization
    )
    z = jax.random.normal(step_key, x.shape, jnp.float32)
    x_prev, x0_hat = ddim_step(x32, out, alpha, alpha_prev, sigma, z)
    if progress is not None:  # after the step's result exists, so the report follows the work
      jax.debug.callback(progress, i, x_prev[0, 0, 0, 0, 0])
    return x_prev.astype(x.dtype), (x0_hat if return_x0_preds else None)

  steps = jnp.arange(timesteps.shape[0], dtype=jnp.int32)
  return jax.lax.scan(body, x_T, (steps, timesteps, coefficients, keys))


def ddim_sample(
  eps_fn: EpsFn,
  x_T: jnp.ndarray,
  key: jax.Array,
  schedule: DiffusionSchedule,
  num_steps: int = 30,
  eta: float = 0.1,
  *,
  parameterization: str = "eps",
  return_x0_preds: bool = False,
  progress=None,
):
  """Runs the DDIM sampler from pure noise x_T.

  Args:
    eps_fn: `eps_fn(x_t, t) -> eps` with x_t like x_T and t int32 [B]; e.g. a
      closure over the model parameters, or `guidance.guided_eps_fn(...)`. It is
      a static argument of the jitted loop: pass the same function object to
      reuse the compilation, or call `ddim_sample` inside your own `jax.jit`.
    x_T: starting noise [B, views, ...].
    key: PRNG key for the per-step noise (unused in effect when eta = 0).
    schedule: the (concrete) training schedule.
    num_steps: configured DDIM steps (30 -> 31 model calls, see the top).
    eta: DDIM stochasticity; 0 is deterministic DDIM, 1 is DDPM-like.
    parameterization: "eps", or "v" / "x0" when eps_fn returns v or x0
      predictions.
    return_x0_preds: also return every step's x0_hat, stacked [S, B, ...].
    progress: optional host callable `progress(step_index, value)` called as each step
      finishes (a static argument, like eps_fn; for progress bars).

  Returns:
    The final latent [B, views, ...] (and the x0_hat trajectory if asked).
  """
  if parameterization not in ("eps", "v", "x0"):
    raise ValueError(f"parameterization must be 'eps', 'v' or 'x0', got {parameterization!r}.")
  plan = ddim_plan(schedule, num_steps, eta)
  coefficients = np.stack([plan.alphas, plan.alphas_prev, plan.sigmas], axis=1)
  x, x0_preds = _ddim_loop(
    x_T,
    key,
    jnp.asarray(plan.timesteps),
    jnp.asarray(coefficients, jnp.float32),
    schedule,
    eps_fn=eps_fn,
    parameterization=parameterization,
    return_x0_preds=return_x0_preds,
    progress=progress,
  )
  return (x, x0_preds) if return_x0_preds else x
