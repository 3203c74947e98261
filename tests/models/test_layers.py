"""Matmuls with a low-precision compute dtype: values and gradients against float64."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pippo_jax.models import layers


def test_bf16_matmul_forward_and_backward_against_float64():
  rng = np.random.default_rng(0)
  x, k, w = rng.normal(size=(2, 5, 8)), rng.normal(size=(8, 3)), rng.normal(size=(2, 5, 3))
  loss = lambda x, k, d: jnp.sum(w * layers.matmul(x, k, d))
  for dtype, tol in ((jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)):
    y = layers.matmul(jnp.asarray(x, jnp.float32), jnp.asarray(k, jnp.float32), dtype)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, x @ k, rtol=tol, atol=tol * np.abs(x @ k).max())
    dx, dk = jax.grad(loss, (0, 1))(jnp.asarray(x, jnp.float32), jnp.asarray(k, jnp.float32), dtype)
    assert dx.dtype == dk.dtype == jnp.float32
    np.testing.assert_allclose(dx, w @ k.T, atol=tol * np.abs(w @ k.T).max())
    np.testing.assert_allclose(dk, np.einsum("bti,bto->io", x, w), atol=tol * 20)


@pytest.mark.parametrize("k, stride", [(3, 1), (3, 2), (1, 1), (1, 2)])
def test_conv_as_patches_matmul_equals_a_convolution(k, stride):
  x = jax.random.normal(jax.random.key(0), (2, 10, 10, 5))
  conv = layers.Conv(7, k, stride=stride)
  params = conv.init(jax.random.key(1), x)
  params = jax.tree.map(lambda p: p + 0.1, params)
  got = conv.apply(params, x)
  want = jax.lax.conv_general_dilated(
    x,
    nn.unbox(params["params"]["kernel"]),
    window_strides=(stride, stride),
    padding=((k // 2, k // 2),) * 2,
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision=jax.lax.Precision.HIGHEST,
  ) + nn.unbox(params["params"]["bias"])
  assert got.shape == want.shape == (2, -(-10 // stride), -(-10 // stride), 7)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_unit_batch_squeezed_drops_a_unit_batch_and_keeps_values_and_gradients():
  seen = []

  def modulate(x, shift, scale, eps):
    seen.append((x.shape, shift.shape, scale.shape))
    return x * (1 + scale) + shift + eps

  squeezed = layers.unit_batch_squeezed(modulate)
  rng = np.random.default_rng(0)
  for b in (1, 2):
    x, shift, scale, w = (rng.normal(size=s) for s in ((b, 5, 8), (b, 1, 8), (b, 1, 8), (b, 5, 8)))
    seen.clear()
    y = squeezed(*(jnp.asarray(a, jnp.float32) for a in (x, shift, scale)), 0.5)
    assert seen == ([((5, 8), (1, 8), (1, 8))] if b == 1 else [((b, 5, 8), (b, 1, 8), (b, 1, 8))])
    np.testing.assert_allclose(y, x * (1 + scale) + shift + 0.5, rtol=1e-6, atol=1e-6)
    loss = lambda x, s, c: jnp.sum(w * squeezed(x, s, c, 0.5))
    dx, dshift, dscale = jax.grad(loss, (0, 1, 2))(
      *(jnp.asarray(a, jnp.float32) for a in (x, shift, scale))
    )
    np.testing.assert_allclose(dx, w * (1 + scale), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dshift, w.sum(1, keepdims=True), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dscale, (w * x).sum(1, keepdims=True), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 6, 16), (2, 6, 16), (1, 6, 3, 8)])
def test_layer_norm_against_float64(shape):
  rng = np.random.default_rng(1)
  x, w = rng.normal(size=shape) * 3 + 1, rng.normal(size=shape)
  mean = x.mean(-1, keepdims=True)
  xhat = (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + 1e-5)
  got = layers.layer_norm_stats(jnp.asarray(x, jnp.float32), 1e-5)
  np.testing.assert_allclose(got, xhat, rtol=1e-5, atol=1e-5)
  # d/dx sum(w * xhat) = (w - mean(w) - xhat * mean(w * xhat)) / std
  std = np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + 1e-5)
  want = (w - w.mean(-1, keepdims=True) - xhat * (w * xhat).mean(-1, keepdims=True)) / std
  loss = lambda x: jnp.sum(w * layers.layer_norm_stats(x, 1e-5))
  dx = jax.grad(loss)(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(dx, want, rtol=1e-4, atol=1e-4)
