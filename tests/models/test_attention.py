"""Tests for pippo_jax.models.attention against a float64 NumPy reference."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pippo_jax.models import attention

TOL = dict(rtol=1e-5, atol=1e-5)


def _reference(q, k, v, scale):
  """softmax(scale * q k^T) v in float64, inputs [B, N, H, D]."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
  logits -= logits.max(-1, keepdims=True)
  weights = np.exp(logits)
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", weights, v)


def _qkv(shape, seed=0, kv_tokens=None, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  kv_shape = (shape[0], kv_tokens or shape[1], *shape[2:])
  return (
    jnp.asarray(rng.standard_normal(shape), dtype),
    jnp.asarray(rng.standard_normal(kv_shape), dtype),
    jnp.asarray(rng.standard_normal(kv_shape), dtype),
  )


# 1/sqrt(16) and a Pippo-biased scale (more views than trained, gamma > 1).
SCALES = [0.25, attention.biased_attention_scale(16, 50, 4, 2, 1.3)]


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("impl", ["xla", "blockwise"])
def test_matches_reference(impl, scale):
  # 200 tokens: not a multiple of either block size.
  q, k, v = _qkv((2, 200, 3, 16))
  out = attention.dot_product_attention(
    q, k, v, scale=scale, implementation=impl, block_q=64, block_kv=48
  )
  assert out.shape == q.shape and out.dtype == jnp.float32
  np.testing.assert_allclose(out, _reference(q, k, v, scale), **TOL)


@pytest.mark.parametrize("tokens", [256, 200])
def test_splash_interpret_matches_reference(tokens):
  q, k, v = _qkv((2, tokens, 2, 16), seed=1)
  scale = SCALES[1]
  out = attention.dot_product_attention(
    q, k, v, scale=scale, implementation="splash", block_q=128, block_kv=128
  )
  assert out.shape == q.shape and out.dtype == jnp.float32
  np.testing.assert_allclose(out, _reference(q, k, v, scale), **TOL)


def test_splash_first_traced_in_a_scan_then_traced_again():
  # A model is traced more than once (abstract init, then the step), its blocks under a scan: a
  # kernel built in the first trace must not hand that trace's values to the next one (it did:
  # UnexpectedTracerError). A shape no other test uses, so the first call is the traced one.
  q, k, v = _qkv((1, 136, 3, 16), seed=4)
  scale = SCALES[1]
  attend = lambda q, k, v: attention.dot_product_attention(
    q, k, v, scale=scale, implementation="splash", block_q=128, block_kv=128
  )
  scanned = lambda q: jax.lax.scan(lambda x, _: (attend(x, k, v), None), q, None, length=2)[0]
  assert jax.eval_shape(scanned, q).shape == q.shape
  np.testing.assert_allclose(jax.jit(attend)(q, k, v), _reference(q, k, v, scale), **TOL)


def test_splash_interpret_attends_fewer_queries_to_all_keys():
  # Sequence parallelism: a device's share of the queries against every key (padded: 200).
  _, k, v = _qkv((1, 200, 2, 16), seed=2)
  q = _qkv((1, 72, 2, 16), seed=3)[0]
  scale = SCALES[1]
  out = attention.dot_product_attention(
    q, k, v, scale=scale, implementation="splash", block_q=128, block_kv=128
  )
  assert out.shape == q.shape
  np.testing.assert_allclose(out, _reference(q, k, v, scale), **TOL)


def test_blockwise_cross_attention_and_jit():
  q, k, v = _qkv((1, 70, 2, 8), kv_tokens=130, seed=2)
  fn = jax.jit(
    lambda q, k, v: attention.blockwise_attention(q, k, v, scale=0.4, block_q=32, block_kv=64)
  )
  np.testing.assert_allclose(fn(q, k, v), _reference(q, k, v, 0.4), **TOL)


def test_blockwise_bfloat16_keeps_dtype():
  q, k, v = _qkv((1, 96, 2, 16), seed=3, dtype=jnp.bfloat16)
  out = attention.dot_product_attention(
    q, k, v, scale=0.25, implementation="blockwise", block_q=32, block_kv=32
  )
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(jnp.float32), _reference(q, k, v, 0.25), atol=2e-2)


@pytest.mark.parametrize("scale", SCALES)
def test_blockwise_gradients_match_xla(scale):
  q, k, v = _qkv((2, 100, 3, 16), seed=4)
  weights = jnp.asarray(np.random.default_rng(5).standard_normal(q.shape), jnp.float32)

  def loss(impl):
    def f(q, k, v):
      out = attention.dot_product_attention(
        q, k, v, scale=scale, implementation=impl, block_q=32, block_kv=24
      )
      return jnp.sum(out * weights)

    return f

  expected = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
  actual = jax.jit(jax.grad(loss("blockwise"), argnums=(0, 1, 2)))(q, k, v)
  for a, e in zip(actual, expected):
    np.testing.assert_allclose(a, e, **TOL)


def test_splash_interpret_gradients_match_xla():
  q, k, v = _qkv((1, 200, 2, 16), seed=6)

  def loss(impl):
    return lambda q, k, v: jnp.sum(
      jnp.sin(
        attention.dot_product_attention(
          q, k, v, scale=0.25, implementation=impl, block_q=128, block_kv=128
        )
      )
    )

  expected = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
  actual = jax.grad(loss("splash"), argnums=(0, 1, 2))(q, k, v)
  for a, e in zip(actual, expected):
    np.testing.assert_allclose(a, e, **TOL)


def test_blockwise_memory_is_subquadratic():
  n, h = 2048, 2
  spec = jax.ShapeDtypeStruct((1, n, h, 32), jnp.float32)

  def temp_bytes(impl):
    def fwd_bwd(q, k, v):
      f = lambda q, k, v: attention.dot_product_attention(
        q, k, v, scale=0.2, implementation=impl, block_q=256, block_kv=256
      )
      out, vjp = jax.vjp(f, q, k, v)
      return vjp(out)

    compiled = jax.jit(fwd_bwd).lower(spec, spec, spec).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  score_matrix = n * n * h * 4
  assert temp_bytes("xla") >= score_matrix
  assert temp_bytes("blockwise") < score_matrix / 4


@pytest.mark.parametrize(
  "head_dim,tokens,views,train,gamma",
  [(64, 1024, 3, 2, 1.0), (64, 256, 5, 3, 1.5), (128, 4096, 8, 2, 0.8)],
)
def test_biased_attention_scale(head_dim, tokens, views, train, gamma):
  expected = np.sqrt(
    np.float64(gamma)
    * np.log(np.float64(tokens * views))
    / np.log(np.float64(tokens * train))
    / head_dim
  )
  got = attention.biased_attention_scale(head_dim, tokens, views, train, gamma)
  assert got == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("head_dim,tokens,views", [(64, 1024, 2), (48, 17, 5)])
def test_biased_scale_is_plain_scale_without_bias(head_dim, tokens, views):
  got = attention.biased_attention_scale(head_dim, tokens, views, views, 1.0)
  assert got == pytest.approx(1 / math.sqrt(head_dim), rel=1e-12)


def test_resolve_implementation():
  assert attention.resolve_implementation("auto") == "xla"  # CPU tests.
  assert attention.resolve_implementation("auto", "cpu") == "xla"
  assert attention.resolve_implementation("auto", "gpu") == "cudnn"
  assert attention.resolve_implementation("auto", "tpu") == "splash"
  for name in attention.IMPLEMENTATIONS[1:]:
    assert attention.resolve_implementation(name, "cpu") == name


def test_bad_names_raise():
  with pytest.raises(ValueError, match="blockwise"):
    attention.resolve_implementation("flash")
  q, k, v = _qkv((1, 8, 1, 4))
  with pytest.raises(ValueError, match="valid ones"):
    attention.dot_product_attention(q, k, v, scale=1.0, implementation="Xla")


def test_cudnn_on_cpu_raises():
  q, k, v = _qkv((1, 8, 1, 4))
  with pytest.raises(ValueError, match="needs a GPU"):
    attention.dot_product_attention(q, k, v, scale=1.0, implementation="cudnn")


def test_bad_shapes_raise():
  q, k, v = _qkv((1, 8, 2, 4))
  with pytest.raises(ValueError, match="rank 4"):
    attention.dot_product_attention(q[0], k, v, scale=1.0)
  with pytest.raises(ValueError, match="head dims"):
    attention.dot_product_attention(q, k[..., :3], v, scale=1.0)
  with pytest.raises(ValueError, match="k and v"):
    attention.dot_product_attention(q, k, v[:, :5], scale=1.0)
