"""Sequence (context) parallelism: attention and the whole model with the joint token sequence
sharded over the `seq` mesh axis equal the unsharded ones, forward and gradients; a token count
the axis does not divide is refused; compiled temporary memory per device falls with the axis."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pippo_jax.models import attention, layers
from pippo_jax.models.config import ModelConfig
from pippo_jax.models.pippo import Pippo, dummy_inputs
from pippo_jax.parallel import sharding

CFG = ModelConfig(
  width=64,
  depth=2,
  num_heads=4,
  latent_size=8,
  image_size=32,
  num_views=3,
  cam_mlp_hidden=32,
  remat_policy="none",
  attention_impl="blockwise",
  attention_block_q=16,
  attention_block_kv=16,
)


def _normal(seed, shape):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@pytest.mark.parametrize("impl", ["xla", "blockwise"])
def test_attention_matches_unsharded_forward_and_gradients(impl):
  mesh = sharding.make_mesh(data=2, seq=4)
  q, k, v, w = (_normal(i, (2, 96, 4, 16)) for i in range(4))
  # Attention biasing (3x the trained views) is a scale: it must carry over unchanged.
  scale = attention.biased_attention_scale(16, 24, 4, 2, gamma=1.2)
  kwargs = dict(scale=scale, implementation=impl, block_q=16, block_kv=16)

  def loss(attend, q, k, v):
    return jnp.sum(attend(q, k, v, **kwargs) * w)

  plain = attention.dot_product_attention
  want = jax.jit(plain, static_argnames=tuple(kwargs))(q, k, v, **kwargs)
  want_grads = jax.jit(jax.grad(lambda *a: loss(plain, *a), (0, 1, 2)))(q, k, v)

  parallel = lambda q, k, v, **kw: attention.sharded_attention(
    q, k, v, batch_axis="data", seq_axis="seq", **kw
  )
  with jax.set_mesh(mesh):
    spec = NamedSharding(mesh, P("data", "seq"))
    q_s, k_s, v_s = (jax.device_put(x, spec) for x in (q, k, v))
    forward = jax.jit(lambda q, k, v: parallel(q, k, v, **kwargs))
    got = forward(q_s, k_s, v_s)
    grad_fn = jax.jit(jax.grad(lambda *a: loss(parallel, *a), (0, 1, 2)))
    got_grads = grad_fn(q_s, k_s, v_s)
    hlo = grad_fn.lower(q_s, k_s, v_s).compile().as_text()

  assert got.sharding.spec[:2] == ("data", "seq")  # the output stays sharded over tokens
  assert got.addressable_shards[0].data.shape == (1, 24, 4, 16)
  np.testing.assert_allclose(got, want, atol=2e-6)
  for g, w_ in zip(got_grads, want_grads):
    np.testing.assert_allclose(g, w_, atol=2e-5)
  # Keys and values are all-gathered forward; their gradients reduce-scattered backward.
  assert "all-gather" in hlo and "reduce-scatter" in hlo


def test_tokens_not_divisible_by_the_axis_are_refused():
  mesh = sharding.make_mesh(seq=8)
  q = _normal(0, (1, 36, 2, 8))
  with jax.set_mesh(mesh), pytest.raises(ValueError, match="36 queries are not divisible by the 8"):
    jax.jit(lambda q: attention.sharded_attention(q, q, q, seq_axis="seq", scale=0.3))(q)


def _model_setup(cfg, batch):
  model = Pippo(cfg)
  x_t, t, cond = dummy_inputs(cfg, batch)
  x_t = _normal(1, x_t.shape)
  cond = jax.tree.map(lambda a: a + 0.5, cond)
  params = nn.unbox(model.init(jax.random.key(0), x_t, t, cond)["params"])
  params = jax.tree.map(lambda p: p + 0.02, params)  # live zero-init layers
  return model, params, (x_t, t, cond)


def test_model_forward_and_gradients_match_unsharded():
  model, params, (x_t, t, cond) = _model_setup(CFG, 2)
  w = _normal(2, x_t.shape)
  forward = lambda p: model.apply({"params": p}, x_t, t, cond)
  grads = jax.grad(lambda p: jnp.sum(forward(p) * w))

  want, want_grads = jax.jit(forward)(params), jax.jit(grads)(params)
  mesh = sharding.make_mesh(data=1, fsdp=2, seq=4)
  with sharding.activate(mesh):
    got, got_grads = jax.jit(forward)(params), jax.jit(grads)(params)
    # 4 views x 16 tokens: the blocks attend with their tokens sharded over `seq`.
    assert layers.sharded_mesh_axis("act_length") == "seq"
  assert layers.sharded_mesh_axis("act_length") is None  # outside the mesh: plain attention
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Gradients reach ~50 while a few leaves (the patchify projections) are sums of such terms
  # that cancel to ~1e-4: any change of summation order (pure data parallelism too) moves those
  # by ~5e-4, so the tolerance is relative to the largest gradient.
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(want_grads))
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5 * scale),
    got_grads,
    want_grads,
  )


def test_temporary_memory_per_device_falls_with_the_seq_axis():
  cfg = dataclasses.replace(CFG, latent_size=32, image_size=128, num_views=12, depth=1)
  model, params, args = _model_setup(cfg, 1)  # 13 views x 256 tokens = 3328 tokens
  temp = {}
  for seq in (1, 2, 4, 8):
    mesh = sharding.make_mesh(seq=seq, devices=jax.devices()[:seq])
    with sharding.activate(mesh):
      compiled = (
        jax.jit(lambda p, *a: model.apply({"params": p}, *a)).lower(params, *args).compile()
      )
    temp[seq] = compiled.memory_analysis().temp_size_in_bytes
  print({s: f"{b / 2**20:.1f} MiB" for s, b in temp.items()})
  for seq in (2, 4, 8):
    assert temp[seq] < temp[seq // 2]
    # About linear: within a factor 2 of temp[1] / seq.
    assert temp[seq] < 2 * temp[1] / seq, temp
