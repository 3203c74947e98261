"""Guidance and sampling wired to the real Pippo denoiser (small random model)."""

import jax
import jax.numpy as jnp
import numpy as np
from models.test_model import perturbed_params, random_inputs

from pippo_jax.diffusion import guidance, sampler, schedule
from pippo_jax.models.config import ModelConfig
from pippo_jax.models.pippo import Pippo

CFG = ModelConfig(
  width=32,
  depth=2,
  num_heads=2,
  latent_size=8,
  image_size=32,
  num_views=2,
  cam_mlp_hidden=16,
  remat_policy="none",
  attention_impl="xla",
)


def make_model_fn(params, cond, batch, biasing=False):
  model = Pippo(CFG)

  def model_fn(x_t, t, drop):
    tiled = guidance.tile_batch(cond, x_t.shape[0] // batch)
    return model.apply({"params": params}, x_t, t, tiled, drop, attention_biasing=biasing)

  return jax.jit(model_fn)


def test_guidance_scales_interpolate_between_unconditional_and_conditional():
  params = perturbed_params(CFG)
  x_t, t, cond = random_inputs(CFG, batch=2)
  model_fn = make_model_fn(params, cond, 2)
  groups = ("ref", "cam", "control")
  cond_out = model_fn(x_t, t, guidance.no_drops(2))
  uncond_out = model_fn(x_t, t, {g: jnp.ones((2,), bool) for g in groups})
  guided = jax.jit(lambda x, t, s: guidance.guided_eps_fn(model_fn, {g: s for g in groups})(x, t))
  ones, zeros = guided(x_t, t, 1.0), guided(x_t, t, 0.0)
  np.testing.assert_allclose(ones, cond_out, atol=2e-5)
  np.testing.assert_allclose(zeros, uncond_out, atol=2e-5)
  # Plain CFG on all groups at once (equal scales): u + s (c - u).
  twos = guided(x_t, t, 2.0)
  np.testing.assert_allclose(twos, uncond_out + 2.0 * (cond_out - uncond_out), atol=5e-5)


def test_ddim_with_the_model_is_deterministic_per_key():
  params = perturbed_params(CFG)
  x_t, t, cond = random_inputs(CFG, batch=1)
  eps_fn = guidance.guided_eps_fn(make_model_fn(params, cond, 1, biasing=True), {"ref": 2.0})
  sched = schedule.cosine_schedule()
  x_T = jax.random.normal(jax.random.key(3), x_t.shape)
  run = lambda key: sampler.ddim_sample(eps_fn, x_T, key, sched, num_steps=4, eta=0.1)
  a, b, c = run(jax.random.key(0)), run(jax.random.key(0)), run(jax.random.key(1))
  assert a.shape == x_t.shape and bool(jnp.isfinite(a).all())
  np.testing.assert_array_equal(a, b)
  assert float(jnp.abs(a - c).max()) > 1e-3
