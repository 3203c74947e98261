"""Matmuls with a low-precision compute dtype: values and gradients against float64."""

import jax
import jax.numpy as jnp
import numpy as np

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
