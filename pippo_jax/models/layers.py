"""Basic layers with logical axis names, float32 parameters and a configurable matmul dtype.

Every parameter carries logical axis names (see `pippo_jax.parallel.sharding` for the rules that map
them to mesh axes). Matmuls cast their inputs to `compute_dtype` and accumulate in float32
(`preferred_element_type`), which keeps the fast bf16 path on CPUs and TPUs; outputs are float32.
LayerNorm statistics are always computed in float32.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]

xavier_uniform = nn.initializers.xavier_uniform()
zeros = nn.initializers.zeros


def xavier_uniform_gain(gain: float) -> Initializer:
  """Xavier-uniform scaled by `gain` (PyTorch's `xavier_uniform_(w, gain)`)."""
  return nn.initializers.variance_scaling(gain**2, "fan_avg", "uniform")


def uniform_fan_in(c: float = 1.0) -> Initializer:
  """U(-sqrt(c / fan_in), sqrt(c / fan_in)) for a kernel or bias with known fan-in."""

  def init(key, shape, dtype=jnp.float32, fan_in=None):
    fan_in = shape[0] if fan_in is None else fan_in
    bound = (c / fan_in) ** 0.5
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _dot(x, kernel, contract):
  return jax.lax.dot_general(x, kernel, (contract, ((), ())), preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _low_precision_matmul(x, kernel, dtype):
  return _dot(x.astype(dtype), kernel.astype(dtype), ((x.ndim - 1,), (0,)))


def _low_precision_fwd(x, kernel, dtype):
  xl, kl = x.astype(dtype), kernel.astype(dtype)
  # 0-d arrays carry the primal dtypes (residuals must be arrays).
  return _dot(xl, kl, ((x.ndim - 1,), (0,))), (
    xl,
    kl,
    jnp.zeros((), x.dtype),
    jnp.zeros((), kernel.dtype),
  )


def _low_precision_bwd(dtype, res, g):
  xl, kl, x_like, k_like = res
  g = g.astype(dtype)  # keep both backward matmuls on the low-precision fast path
  dx = _dot(g, kl, ((g.ndim - 1,), (1,)))
  lead = tuple(range(g.ndim - 1))
  dk = _dot(xl, g, (lead, lead))
  return dx.astype(x_like.dtype), dk.astype(k_like.dtype)


_low_precision_matmul.defvjp(_low_precision_fwd, _low_precision_bwd)


def matmul(x: jax.Array, kernel: jax.Array, compute_dtype: Any) -> jax.Array:
  """x[..., in] @ kernel[in, out] with inputs in `compute_dtype`, float32 accumulation.

  With a low-precision `compute_dtype` the backward matmuls also take `compute_dtype` inputs
  (the cotangent is cast), with float32 accumulation: plain autodiff would mix a float32
  cotangent with bf16 operands and fall off the fast bf16 path on CPUs.
  """
  if jnp.dtype(compute_dtype) == jnp.float32:
    return _dot(x.astype(jnp.float32), kernel.astype(jnp.float32), ((x.ndim - 1,), (0,)))
  return _low_precision_matmul(x, kernel, jnp.dtype(compute_dtype))


class Dense(nn.Module):
  """Linear layer y = x W + b with W stored [in, out] and logical axes `kernel_axes`."""

  features: int
  kernel_axes: tuple[str | None, str | None] = ("embed", "mlp")
  use_bias: bool = True
  kernel_init: Initializer = xavier_uniform
  bias_init: Initializer = zeros
  compute_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
      "kernel",
      nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
      (x.shape[-1], self.features),
      jnp.float32,
    )
    y = matmul(x, kernel, self.compute_dtype)
    if self.use_bias:
      bias_init = self.bias_init
      if bias_init is not zeros:  # fan-in aware bias initialisers (SIREN) need the input size
        fan_in = x.shape[-1]
        bias_init = lambda k, s, d=jnp.float32, f=self.bias_init: f(k, s, d, fan_in=fan_in)
      bias = self.param(
        "bias",
        nn.with_logical_partitioning(bias_init, self.kernel_axes[1:]),
        (self.features,),
        jnp.float32,
      )
      y = y + bias
    return y


class Conv(nn.Module):
  """2D convolution on channels-last maps, kernel [kh, kw, in, out], padding k // 2, computed as
  a matmul over `patches`."""

  features: int
  kernel_size: int
  stride: int = 1
  kernel_axes: tuple[str | None, ...] = (None, None, "conv_in", "embed")
  compute_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param(
      "kernel",
      nn.with_logical_partitioning(xavier_uniform, self.kernel_axes),
      (k, k, x.shape[-1], self.features),
      jnp.float32,
    )
    bias = self.param(
      "bias",
      nn.with_logical_partitioning(zeros, self.kernel_axes[-1:]),
      (self.features,),
      jnp.float32,
    )
    y = matmul(
      patches(x, k, self.stride), kernel.reshape(k * k * x.shape[-1], -1), self.compute_dtype
    )
    return y + bias


def patches(x: jax.Array, k: int, stride: int = 1) -> jax.Array:
  """[N, H, W, C] -> [N, H', W', k*k*C]: the k x k windows (zero padding k // 2) that a
  convolution with this stride sees, features ordered (row, column, channel) as an HWIO kernel
  reshaped to [k*k*C, out]. A convolution is then one matmul, whose backward is matmuls too:
  XLA:CPU's convolution backward (weight gradients) runs at a fraction of its matmul speed."""
  if k == 1 and stride == 1:
    return x
  pad = k // 2
  n, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
  windows = [
    xp[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride]
    for i in range(k)
    for j in range(k)
  ]
  return jnp.concatenate(windows, axis=-1)


def unit_batch_squeezed(fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
  """`fn` called without its array arguments' leading dimension when that is 1 in all of them
  (batch 1), with the dimension put back on the result; otherwise `fn` as it is.

  XLA:CPU's YNNPACK reductions of a product of two arrays run 10-25x slower when the arrays keep a
  leading dimension of size 1 (one core): summing x * y over one axis took 0.6-1.1 ms for
  [1, 320, 768], 0.07-0.08 ms for [320, 768] and 0.12 ms for [2, 320, 768]; 27 ms for
  [1, 24, 320, 320] and 1.1 ms for [24, 320, 320]. At batch 1 every LayerNorm, the modulation
  gradients and attention's backward row sums are such reductions. The values are the same.
  """

  @functools.wraps(fn)
  def wrapped(*args):
    arrays = [isinstance(a, jax.Array) for a in args]
    if any(arrays) and all(a.ndim > 1 and a.shape[0] == 1 for a, i in zip(args, arrays) if i):
      return fn(*(a.reshape(a.shape[1:]) if i else a for a, i in zip(args, arrays)))[None]
    return fn(*args)

  return wrapped


@unit_batch_squeezed
def layer_norm_stats(x: jax.Array, eps: float) -> jax.Array:
  """(x - mean) / sqrt(var + eps) over the last axis, in float32."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


class LayerNorm(nn.Module):
  """LayerNorm over the last axis in float32; optional affine scale/bias (init 1 / 0)."""

  eps: float = 1e-5
  affine: bool = True
  axis_name: str | None = "norm"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = layer_norm_stats(x, self.eps)
    if self.affine:
      d = x.shape[-1]
      scale = self.param(
        "scale",
        nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
        (d,),
        jnp.float32,
      )
      bias = self.param(
        "bias", nn.with_logical_partitioning(zeros, (self.axis_name,)), (d,), jnp.float32
      )
      y = y * scale + bias
    return y


def sharded_mesh_axis(logical: str) -> str | tuple[str, ...] | None:
  """The mesh axis (or axes) that activations' logical axis `logical` is sharded over in the
  context (`parallel.sharding.activate`): None outside a mesh, when the rules replicate it, or
  when its mesh axes have size 1."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return None
  axis = nn.logical_to_mesh_axes((logical,))[0]
  axes = axis if isinstance(axis, tuple) else (axis,)
  axes = tuple(a for a in axes if a is not None and mesh.shape.get(a, 1) > 1)
  if not axes:
    return None
  return axes if len(axes) > 1 else axes[0]


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """Sharding constraint on an activation by logical axis names (no-op without rules/mesh)."""
  return nn.with_logical_constraint(x, tuple(axes))
