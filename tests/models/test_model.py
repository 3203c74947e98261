"""The Flax denoiser against the independent float64 NumPy reference, and its invariants."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import numpy_pippo as ref

from pippo_jax.interop.release_layout import params_to_release
from pippo_jax.models import control_mlp, dit, embeddings
from pippo_jax.models.config import ModelConfig
from pippo_jax.models.pippo import Pippo, dummy_inputs

# Deliberately unlike the golden model: 3 target views, 3 heads of 16, depth 3, 12x12 latents.
CFG = ModelConfig(
  width=48,
  depth=3,
  num_heads=3,
  latent_size=12,
  image_size=48,
  num_views=3,
  cam_mlp_hidden=40,
  remat_policy="none",
  attention_impl="xla",
)


def rel_err(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, (got.shape, want.shape)
  return float(np.abs(got - want).max() / np.abs(want).max())


def random_inputs(cfg, batch=2, seed=1):
  x_t, t, cond = dummy_inputs(cfg, batch)
  keys = iter(jax.random.split(jax.random.key(seed), 16))
  rnd = lambda a: jax.random.normal(next(keys), a.shape, jnp.float32)
  cond = {k: rnd(v) for k, v in cond.items()}
  t = jax.random.randint(next(keys), t.shape, 0, 1000)
  return rnd(x_t), t, cond


def perturbed_params(cfg, seed=0, std=0.05):
  """Initialised parameters plus N(0, std) noise, so that zero-initialised layers are live."""
  x_t, t, cond = dummy_inputs(cfg, 1)
  params = nn.unbox(jax.jit(Pippo(cfg).init)(jax.random.key(seed), x_t, t, cond)["params"])
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  return jax.tree.unflatten(
    tree, [p + std * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
  )


def golden_layout(x_t, t, cond):
  """Our channels-last inputs -> the reference's NCHW layout with a time axis of length 1."""
  nchw = lambda a: np.moveaxis(np.asarray(a, np.float64), -1, -3)
  return {
    "x_t": nchw(x_t),
    "t": np.asarray(t),
    "ref_latent": nchw(cond["ref_latent"])[:, None, None],
    "anchor": nchw(cond["anchor_latent"])[:, :, None],
    "ref_anchor": nchw(cond["ref_anchor_latent"])[:, None, None],
    "plucker": nchw(cond["plucker"])[:, :, None],
    "ref_plucker": nchw(cond["ref_plucker"])[:, None, None],
    "cam_pose": np.asarray(cond["cam_pose"], np.float64)[:, :, None],
    "ref_cam_pose": np.asarray(cond["ref_cam_pose"], np.float64)[:, None, None],
  }


@pytest.fixture(scope="module")
def live():
  params = perturbed_params(CFG)
  return params, params_to_release(jax.device_get(params), CFG), random_inputs(CFG)


def test_full_forward_matches_float64_reference(live):
  params, weights, (x_t, t, cond) = live
  eps = Pippo(CFG).apply({"params": params}, x_t, t, cond)
  want, _ = ref.pippo_forward(weights, golden_layout(x_t, t, cond), CFG.depth, CFG.num_heads)
  assert rel_err(eps, np.moveaxis(want, -3, -1)) < 2e-5


@pytest.mark.parametrize("scale", [None, 0.41])
def test_dit_block_matches_float64_reference(live, scale):
  params, weights, _ = live
  rng = np.random.default_rng(0)
  b, length, d = 2, 4 * CFG.tokens_per_view, CFG.width
  x = rng.normal(size=(b, length, d)).astype(np.float32)
  c = rng.normal(size=(b, d)).astype(np.float32)
  control = rng.normal(size=(b, length - CFG.tokens_per_view, d)).astype(np.float32)  # shorter
  ctrl = {
    "h": control,
    "temb": np.zeros((b, d), np.float32),
    "drop": np.zeros((b,), bool),
    "zero_token": np.zeros((d,), np.float32),
  }
  identity = {
    "adaln": {"kernel": np.zeros((d, 2 * d), np.float32), "bias": np.zeros(2 * d, np.float32)},
    "linear": {"kernel": np.eye(d, dtype=np.float32), "bias": np.zeros(d, np.float32)},
  }
  block_params = jax.tree.map(lambda a: a[1], params["generator"]["blocks"])
  attn_scale = CFG.head_dim**-0.5 if scale is None else scale
  out, _ = dit.DiTBlock(CFG, attn_scale).apply({"params": block_params}, x, c, ctrl, identity)
  want, _ = ref.dit_block(weights, "generator.blocks.1", x, c, control, CFG.num_heads, scale)
  assert rel_err(out, want) < 1e-5


def test_control_mlp_per_block_outputs_match_float64_reference(live):
  params, weights, (x_t, t, cond) = live
  b, v = x_t.shape[:2]
  anchor = jnp.concatenate([cond["anchor_latent"], cond["ref_anchor_latent"][:, None]], 1)
  plucker = jnp.concatenate([cond["plucker"], cond["ref_plucker"][:, None]], 1)
  xt_all = jnp.concatenate([x_t, jnp.zeros_like(x_t[:, :1])], 1)
  drop = jnp.zeros((b,), bool)
  ctrl, stacked = control_mlp.ControlMLP(CFG).apply(
    {"params": params["control_mlp"]}, anchor, plucker, xt_all, t, drop
  )
  nchw = lambda a: np.moveaxis(np.asarray(a, np.float64), -1, -3).reshape(
    b * (v + 1), -1, *a.shape[2:4]
  )
  want, _ = ref.control_mlp(
    weights, np.repeat(np.asarray(t), v + 1), nchw(anchor), nchw(plucker), nchw(xt_all)
  )
  for layer in range(CFG.depth):
    got = dit.apply_control_block(ctrl, jax.tree.map(lambda a: a[layer], stacked), jnp.float32)
    assert rel_err(got.reshape(b * (v + 1), CFG.tokens_per_view, -1), want[layer]) < 1e-5, layer


def test_embeddings_match_float64_reference():
  np.testing.assert_allclose(
    embeddings.sincos_2d_table(64, 3, 5), ref.sincos_2d_table(64, 3, 5), atol=1e-6
  )
  t = np.array([0, 1, 17, 500, 999])
  np.testing.assert_allclose(
    embeddings.timestep_embedding(t, 256), ref.timestep_embedding(t, 256), atol=2e-4
  )  # float32 arguments up to 999 rad
  x = np.arange(2 * 3 * 4 * 6, dtype=np.float32).reshape(2, 3, 4, 6)  # NCHW
  ours = embeddings.pixel_unshuffle(np.moveaxis(x, 1, -1), 2)
  np.testing.assert_array_equal(np.moveaxis(np.asarray(ours), -1, 1), ref.pixel_unshuffle(x, 2))
  np.testing.assert_array_equal(embeddings.pixel_shuffle(ours, 2), np.moveaxis(x, 1, -1))


def test_output_is_exactly_zero_at_init_and_not_after_one_step():
  x_t, t, cond = random_inputs(CFG)
  model = Pippo(CFG)
  params = nn.unbox(model.init(jax.random.key(0), x_t, t, cond)["params"])
  assert float(jnp.abs(model.apply({"params": params}, x_t, t, cond)).max()) == 0.0
  target = jax.random.normal(jax.random.key(5), x_t.shape)
  loss = lambda p: jnp.mean((model.apply({"params": p}, x_t, t, cond) - target) ** 2)
  grads = jax.grad(loss)(params)
  params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
  eps = model.apply({"params": params}, x_t, t, cond)
  assert float(jnp.abs(eps).max()) > 1e-4
  assert float(loss(params)) < float(jnp.mean(target**2))


def test_scan_and_unrolled_blocks_agree(live):
  params, _, (x_t, t, cond) = live
  unrolled_cfg = dataclasses.replace(CFG, scan_blocks=False)
  unrolled = jax.tree.map(lambda a: a, params)
  blocks = unrolled["generator"].pop("blocks")
  for i in range(CFG.depth):
    unrolled["generator"][f"blocks_{i}"] = jax.tree.map(lambda a, i=i: a[i], blocks)
  a = Pippo(CFG).apply({"params": params}, x_t, t, cond)
  b = Pippo(unrolled_cfg).apply({"params": unrolled}, x_t, t, cond)
  assert rel_err(a, b) < 1e-6


def test_remat_does_not_change_gradients(live):
  params, _, (x_t, t, cond) = live

  def grads(policy):
    model = Pippo(dataclasses.replace(CFG, remat_policy=policy))
    return jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x_t, t, cond) ** 2))(params)

  plain, remat = grads("none"), grads("nothing_saveable")
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
  "group, inputs",
  [
    ("ref", ("ref_latent", "ref_cam_pose")),
    ("cam", ("cam_pose",)),
    ("control", ("plucker", "anchor_latent")),
  ],
)
def test_dropped_condition_group_is_ignored(live, group, inputs):
  """A dropped group is replaced by its null token: its inputs no longer change the output."""
  params, _, (x_t, t, cond) = live
  model = Pippo(CFG)
  drop = {group: jnp.array([True, False])}
  rng = np.random.default_rng(3)  # random changes (a constant shift would vanish in LayerNorms)
  changed = dict(cond, **{k: cond[k] + rng.normal(size=cond[k].shape) for k in inputs})
  a = model.apply({"params": params}, x_t, t, cond, drop)
  b = model.apply({"params": params}, x_t, t, changed, drop)
  np.testing.assert_allclose(a[0], b[0], rtol=0, atol=1e-6)  # dropped sample: unchanged
  assert float(jnp.abs(a[1] - b[1]).max()) > 1e-4  # kept sample: conditioned


def test_biasing_is_neutral_at_trained_views_and_gamma_one(live):
  params, _, (x_t, t, cond) = live
  neutral = dataclasses.replace(CFG, attention_gamma=1.0, attention_train_views=CFG.num_views + 1)
  a = Pippo(neutral).apply({"params": params}, x_t, t, cond, attention_biasing=True)
  b = Pippo(neutral).apply({"params": params}, x_t, t, cond)
  assert rel_err(a, b) < 1e-6
  more_views = dataclasses.replace(CFG, attention_train_views=1)  # 4 views vs 1 trained
  c = Pippo(more_views).apply({"params": params}, x_t, t, cond, attention_biasing=True)
  assert rel_err(c, b) > 1e-3


def test_bfloat16_matmuls_stay_close_to_float32(live):
  params, _, (x_t, t, cond) = live
  a = Pippo(CFG).apply({"params": params}, x_t, t, cond)
  b = Pippo(dataclasses.replace(CFG, dtype="bfloat16")).apply({"params": params}, x_t, t, cond)
  assert b.dtype == jnp.float32
  assert 1e-5 < rel_err(b, a) < 5e-2


def test_wrong_latent_shape_is_rejected(live):
  params, _, (x_t, t, cond) = live
  with pytest.raises(ValueError, match="do not match"):
    Pippo(CFG).apply({"params": params}, x_t[:, :, :8, :8], t, cond)
