"""The training objective: timestep/noise sampling, targets and the loss.

Pippo trains an epsilon predictor: per sample one t ~ UniformInt[0, T), shared by
all its views, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, and a plain MSE
between predicted and true eps over all target latents (no masking, no SNR
weighting, no noise offset). Two other targets are config options, with the same
plain MSE:

  "v"   v-prediction (Salimans & Ho 2022): v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0.
  "x0"  the clean latent itself. Clean images lie near a low-dimensional manifold
        and noise does not, so a network whose width is not much larger than its
        token's patch dimension learns x0 far more easily than eps or v (Li & He
        2025, "Back to Basics: Let Denoising Generative Models Denoise"); the smoke
        size (width 128, 192 values per token) trains this way.

Every function takes arrays with the batch axis first ([B, views, ...]) and t of
shape [B]; everything else is layout-agnostic.
"""

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from pippo_jax.diffusion.schedule import DiffusionSchedule, extract, q_sample

Parameterization = Literal["eps", "v", "x0"]
PARAMETERIZATIONS = ("eps", "v", "x0")


def _check_parameterization(parameterization: str) -> None:
  if parameterization not in PARAMETERIZATIONS:
    raise ValueError(
      f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}."
    )


def _coefficients(schedule: DiffusionSchedule, t: jnp.ndarray, ndim: int):
  """(sqrt(abar_t), sqrt(1 - abar_t)) broadcastable to an ndim-array."""
  return (
    extract(schedule.sqrt_alphas_cumprod, t, ndim),
    extract(schedule.sqrt_one_minus_alphas_cumprod, t, ndim),
  )


def sample_timesteps_and_noise(key: jax.Array, x0: jnp.ndarray, num_timesteps: int = 1000):
  """T ~ UniformInt[0, T) per sample ([B] int32) and eps ~ N(0, I) like x0."""
  t_key, noise_key = jax.random.split(key)
  t = jax.random.randint(t_key, x0.shape[:1], 0, num_timesteps, jnp.int32)
  noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
  return t, noise


def eps_to_x0(schedule, x_t, t, eps):
  """x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)."""
  a, b = _coefficients(schedule, t, x_t.ndim)
  return (x_t - b * eps) / a


def x0_to_eps(schedule, x_t, t, x0):
  """Eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)."""
  a, b = _coefficients(schedule, t, x_t.ndim)
  return (x_t - a * x0) / b


def v_target(schedule, x0, t, noise):
  """V = sqrt(abar) eps - sqrt(1 - abar) x0."""
  a, b = _coefficients(schedule, t, x0.ndim)
  return a * noise - b * x0


def v_to_eps(schedule, x_t, t, v):
  """Eps = sqrt(abar) v + sqrt(1 - abar) x_t."""
  a, b = _coefficients(schedule, t, x_t.ndim)
  return a * v + b * x_t


def v_to_x0(schedule, x_t, t, v):
  """x0 = sqrt(abar) x_t - sqrt(1 - abar) v."""
  a, b = _coefficients(schedule, t, x_t.ndim)
  return a * x_t - b * v


def model_output_to_eps(schedule, x_t, t, output, parameterization: Parameterization = "eps"):
  """The model's raw output converted to an epsilon prediction."""
  _check_parameterization(parameterization)
  if parameterization == "eps":
    return output
  if parameterization == "x0":
    return x0_to_eps(schedule, x_t, t, output)
  return v_to_eps(schedule, x_t, t, output)


def training_target(schedule, x0, t, noise, parameterization: Parameterization = "eps"):
  """What the network regresses: eps itself, v, or x0."""
  _check_parameterization(parameterization)
  if parameterization == "eps":
    return noise
  if parameterization == "x0":
    return x0
  return v_target(schedule, x0, t, noise)


class NoisedBatch(NamedTuple):
  """The network input (x_t, t) and its regression target."""

  x_t: jnp.ndarray
  t: jnp.ndarray
  noise: jnp.ndarray
  target: jnp.ndarray


def noise_batch(
  key: jax.Array,
  schedule: DiffusionSchedule,
  x0: jnp.ndarray,
  parameterization: Parameterization = "eps",
) -> NoisedBatch:
  """Samples (t, eps) per sample, noises x0 [B, views, ...], builds the target."""
  t, noise = sample_timesteps_and_noise(key, x0, schedule.num_timesteps)
  x_t = q_sample(schedule, x0, t, noise)
  return NoisedBatch(x_t, t, noise, training_target(schedule, x0, t, noise, parameterization))


def diffusion_loss(
  pred: jnp.ndarray, target: jnp.ndarray, mask: jnp.ndarray | None = None
) -> jnp.ndarray:
  """Mean squared error, computed in float32.

  Args:
    pred: network output, e.g. [B, views, h, w, C].
    target: eps (or v), same shape.
    mask: optional weights broadcastable to pred (e.g. the person mask at latent
      resolution, [B, views, h, w, 1]). With a mask the loss is
      sum(mask * err^2) / sum(broadcast mask), i.e. the mean over masked
      elements; an all-zero mask gives 0. Pippo trains without one (default).
  """
  if pred.shape != target.shape:
    raise ValueError(f"pred {pred.shape} and target {target.shape} must match.")
  err = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
  if mask is None:
    return jnp.mean(err)
  mask = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), err.shape)
  return jnp.sum(mask * err) / jnp.maximum(jnp.sum(mask), 1e-8)
