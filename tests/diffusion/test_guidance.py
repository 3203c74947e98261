"""Classifier-free guidance: drop sampling, pass layout and combination."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pippo_jax.diffusion import guidance, sampler
from pippo_jax.diffusion.schedule import cosine_schedule

B, V = 2, 4
SHAPE = (B, V, 3, 3, 2)


def _reference_combine(outs, scales, phi=0.0, triangular=False):
  """Nested CFG in float64: c0 + sum_j s_j (c_j - c_{j-1}), then rescale."""
  outs = np.asarray(outs, np.float64)
  w = 1 - np.abs(1 - 2 * np.arange(V) / V)
  guided = outs[0].copy()
  for j, s in enumerate(scales, start=1):
    s_v = (1 + (s - 1) * w).reshape(1, V, 1, 1, 1) if triangular else s
    guided += s_v * (outs[j] - outs[j - 1])
  std_c = outs[-1].std(axis=(2, 3, 4), keepdims=True)
  std_g = guided.std(axis=(2, 3, 4), keepdims=True)
  return phi * std_c / std_g * guided + (1 - phi) * guided


def test_condition_drops_frequencies_and_independence():
  probs = {"ref": 0.1, "cam": 0.3}
  drops = guidance.sample_condition_drops(jax.random.key(0), 20000, probs)
  assert set(drops) == {"ref", "cam", "control"}
  assert all(d.shape == (20000,) and d.dtype == jnp.bool_ for d in drops.values())
  ref, cam = np.asarray(drops["ref"]), np.asarray(drops["cam"])
  assert abs(ref.mean() - 0.1) < 0.01 and abs(cam.mean() - 0.3) < 0.015
  assert abs((ref & cam).mean() - 0.03) < 0.006  # independent groups
  assert not np.asarray(drops["control"]).any()
  again = guidance.sample_condition_drops(jax.random.key(0), 20000, probs)
  np.testing.assert_array_equal(again["cam"], drops["cam"])
  with pytest.raises(ValueError, match="unknown condition group"):
    guidance.sample_condition_drops(jax.random.key(0), 4, {"text": 0.1})
  with pytest.raises(ValueError, match=r"in \[0, 1\]"):
    guidance.sample_condition_drops(jax.random.key(0), 4, {"ref": 1.5})


def test_pass_layout():
  drops = guidance.guidance_drops(2, ("ref", "control"))
  # pass 0: all guided dropped; pass 1: ref kept; pass 2: everything kept
  np.testing.assert_array_equal(drops["ref"], [1, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(drops["control"], [1, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(drops["cam"], [0] * 6)


def test_triangular_weights():
  np.testing.assert_allclose(guidance.triangular_view_weights(4), [0, 0.5, 1, 0.5])
  np.testing.assert_allclose(
    guidance.triangular_view_weights(8), [0, 0.25, 0.5, 0.75, 1, 0.75, 0.5, 0.25]
  )


@pytest.mark.parametrize(
  "scales,phi,triangular",
  [
    ((3.0,), 0.0, False),
    ((2.0, 4.0, 1.5), 0.0, False),
    ((2.0, 4.0), 0.7, False),
    ((2.5, 3.0), 0.0, True),
    ((2.5,), 1.0, True),
  ],
)
def test_combination_matches_reference(scales, phi, triangular):
  outs = np.random.default_rng(0).standard_normal((len(scales) + 1,) + SHAPE)
  got = guidance.combine_guidance(
    jnp.asarray(outs, jnp.float32), scales, rescale=phi, triangular=triangular
  )
  np.testing.assert_allclose(
    got, _reference_combine(outs, scales, phi, triangular), rtol=1e-5, atol=1e-5
  )


def test_combination_special_cases():
  outs = np.random.default_rng(1).standard_normal((4,) + SHAPE)
  j = jnp.asarray(outs, jnp.float32)
  # equal scales -> plain CFG between fully unconditional and conditional
  np.testing.assert_allclose(
    guidance.combine_guidance(j, (3.0,) * 3), outs[0] + 3 * (outs[3] - outs[0]), atol=1e-5
  )
  # unit scales -> the conditional output
  np.testing.assert_allclose(guidance.combine_guidance(j, (1.0,) * 3), outs[3], atol=1e-5)
  # full rescale -> per-(sample, view) std equal to the conditional one
  got = np.asarray(guidance.combine_guidance(j, (5.0, 2.0, 3.0), rescale=1.0))
  np.testing.assert_allclose(got.std(axis=(2, 3, 4)), outs[3].std(axis=(2, 3, 4)), rtol=1e-5)


def _toy_model(cond):
  """Out = 0.5 x + sum over kept groups of cond[g] (batch-B conditioning)."""
  calls = []

  def model_fn(x_t, t, drop):
    calls.append(x_t.shape[0])
    reps = x_t.shape[0] // cond["ref"].shape[0]
    out = 0.5 * x_t + 0.001 * t.reshape(-1, 1, 1, 1, 1)
    for g in guidance.CONDITION_GROUPS:
      keep = (~drop[g]).astype(x_t.dtype).reshape(-1, 1, 1, 1, 1)
      out = out + keep * guidance.tile_batch(cond[g], reps)
    return out

  return model_fn, calls


def test_guided_eps_fn_one_call_and_closed_form():
  rng = np.random.default_rng(2)
  cond = {
    g: jnp.asarray(rng.standard_normal(SHAPE), jnp.float32) for g in guidance.CONDITION_GROUPS
  }
  x = jnp.asarray(rng.standard_normal(SHAPE), jnp.float32)
  t = jnp.array([10, 500], jnp.int32)
  model_fn, calls = _toy_model(cond)
  eps_fn = guidance.guided_eps_fn(model_fn, {"ref": 2.0, "control": 3.0})
  got = eps_fn(x, t)
  assert calls == [3 * B]  # one batched call for 3 passes
  base = 0.5 * x + 0.001 * t.reshape(-1, 1, 1, 1, 1)
  # c_j - c_{j-1} isolates each guided group; "cam" is never dropped
  expected = base + 2.0 * cond["ref"] + cond["cam"] + 3.0 * cond["control"]
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  plain = guidance.guided_eps_fn(model_fn, {})(x, t)
  assert calls[-1] == B
  np.testing.assert_allclose(plain, base + sum(cond.values()), atol=1e-5)
  with pytest.raises(ValueError, match="unknown condition group"):
    guidance.guided_eps_fn(model_fn, {"face": 2.0})


def test_guided_and_unguided_share_one_compilation():
  rng = np.random.default_rng(3)
  cond = {
    g: jnp.asarray(rng.standard_normal(SHAPE), jnp.float32) for g in guidance.CONDITION_GROUPS
  }
  x = jnp.asarray(rng.standard_normal(SHAPE), jnp.float32)
  t = jnp.array([3, 900], jnp.int32)
  model_fn, _ = _toy_model(cond)

  @jax.jit
  def eps(scales, phi, x, t):
    fn = guidance.guided_eps_fn(
      model_fn, {"ref": scales[0], "cam": scales[1], "control": scales[2]}, rescale=phi
    )
    return fn(x, t)

  guided = eps(jnp.array([2.0, 3.0, 4.0]), 0.5, x, t)
  unguided = eps(jnp.array([1.0, 1.0, 1.0]), 0.0, x, t)
  assert eps._cache_size() == 1
  np.testing.assert_allclose(unguided, model_fn(x, t, guidance.no_drops(B)), atol=1e-5)
  assert float(jnp.max(jnp.abs(guided - unguided))) > 0.1


def test_guided_sampling_with_unit_scales_equals_conditional_sampling():
  rng = np.random.default_rng(4)
  cond = {
    g: jnp.asarray(0.1 * rng.standard_normal(SHAPE), jnp.float32) for g in guidance.CONDITION_GROUPS
  }
  model_fn, calls = _toy_model(cond)
  x_T = jnp.asarray(rng.standard_normal(SHAPE), jnp.float32)
  key, sched = jax.random.key(0), cosine_schedule()
  unit = guidance.guided_eps_fn(model_fn, {"ref": 1.0, "cam": 1.0}, rescale=0.0)
  plain = guidance.guided_eps_fn(model_fn, {})
  x_unit = sampler.ddim_sample(unit, x_T, key, sched, 10, 0.1)
  x_plain = sampler.ddim_sample(plain, x_T, key, sched, 10, 0.1)
  assert calls == [3 * B, B]  # traced once each: one batched call per step
  np.testing.assert_allclose(x_unit, x_plain, rtol=1e-5, atol=1e-5)
