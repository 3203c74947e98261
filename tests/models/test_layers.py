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
