"""Reprojection error: the formula against a float64 NumPy reference, and SIFT on studio views."""

import itertools

import cv2
import numpy as np
import pytest

from pippo_jax.data_pipelines import synthetic_studio
from pippo_jax.evaluation import reprojection
from pippo_jax.geometry import cameras

# ------------------------------------------------------------------ float64 NumPy reference


def ref_pairs(E):
  """Minimum-cost fixed-point-free assignment by brute force over all permutations."""
  o = np.stack([-e[:3, :3].T @ e[:3, 3] for e in E])
  d = np.linalg.norm(o[:, None] - o[None], axis=-1)
  v = len(E)
  best = min(
    (p for p in itertools.permutations(range(v)) if all(p[i] != i for i in range(v))),
    key=lambda p: sum(d[i, p[i]] for i in range(v)),
  )
  return sorted({(min(i, j), max(i, j)) for i, j in enumerate(best)})


def ref_triangulate(P1, P2, x1, x2):
  out = []
  for (u1, v1), (u2, v2) in zip(x1, x2):
    A = np.stack([u1 * P1[2] - P1[0], v1 * P1[2] - P1[1], u2 * P2[2] - P2[0], v2 * P2[2] - P2[1]])
    A /= np.linalg.norm(A, axis=1, keepdims=True)
    X = np.linalg.svd(A)[2][-1]
    out.append(X / X[3])
  return np.array(out)


def ref_pair_error(P1, P2, x1, x2):
  Xh = ref_triangulate(P1, P2, x1, x2)
  errs = []
  for P, x in ((P1, x1), (P2, x2)):
    y = Xh @ P.T
    errs.append(np.mean(np.sqrt(np.sum((y[:, :2] / y[:, 2:] - x) ** 2, axis=1))))
  return (errs[0] + errs[1]) / 2


# ------------------------------------------------------------------ a hand-made scene


def scene(num_views=5, num_points=40, seed=0):
  rng = np.random.default_rng(seed)
  X = rng.normal(0, 0.3, (num_points, 3)) + [0, 0, 1.0]
  Ks, Es = [], []
  for v in range(num_views):
    a = 2 * np.pi * v / num_views + rng.uniform(-0.3, 0.3)
    eye = np.array([3 * np.cos(a), 3 * np.sin(a), 1.0 + rng.uniform(-0.5, 0.5)])
    Es.append(synthetic_studio.look_at(eye, [0, 0, 1.0], roll=rng.normal(0, 0.05)))
    f = rng.uniform(150, 250)
    Ks.append(cameras.make_K(f, f * rng.uniform(0.95, 1.05), 64 + rng.normal(), 64 + rng.normal()))
  return np.stack(Ks), np.stack(Es), X


class ExactMatcher:
  """Knows the scene: the images carry (row, view) in their first pixel; returns the true
  projections of the points plus seeded noise; `starve` lists (row, i, j) pairs for which
  it returns only 3 matches."""

  name = "exact-synthetic"

  def __init__(self, K, E, X, noise=0.7, starve=()):
    self.K, self.E, self.X, self.noise, self.starve = K, E, X, noise, set(starve)
    self.calls = []

  def __call__(self, img1, img2):
    (i, r), (j, _) = img1[0, 0, :2], img2[0, 0, :2]
    r, i, j = int(r), int(i), int(j)
    self.calls.append((r, i, j))
    rng = np.random.default_rng([r, i, j])
    uv1 = cameras.project_points(self.K[i], self.E[i], self.X)[0]
    uv2 = cameras.project_points(self.K[j], self.E[j], self.X)[0]
    uv1 = uv1 + rng.normal(0, self.noise, uv1.shape)
    uv2 = uv2 + rng.normal(0, self.noise, uv2.shape)
    n = 3 if (r, i, j) in self.starve else len(uv1)
    return uv1[:n], uv2[:n]


def tagged_images(rows, views, size=16):
  img = np.zeros((rows, views, size, size, 3), np.uint8)
  img[..., 0, 0, 0] = np.arange(views)[None]
  img[..., 0, 0, 1] = np.arange(rows)[:, None]
  return img


def test_view_pairs_match_brute_force_assignment():
  for v, seed in [(2, 0), (4, 1), (5, 2), (6, 3), (7, 4)]:
    _, E, _ = scene(v, seed=seed)
    assert reprojection.view_pairs(E) == ref_pairs(E)


def test_view_pairs_translations_mode_and_errors():
  _, E, _ = scene(6, seed=5)
  t = E[:, :3, 3]
  d = np.linalg.norm(t[:, None] - t[None], axis=-1)
  np.fill_diagonal(d, np.inf)
  pairs = reprojection.view_pairs(E, pair_by="translations")
  assert all(i < j for i, j in pairs) and {i for p in pairs for i in p} == set(range(6))
  with pytest.raises(ValueError):
    reprojection.view_pairs(E[:1])
  with pytest.raises(ValueError):
    reprojection.view_pairs(E, pair_by="nearest")


def test_exact_matches_reproject_exactly():
  K, E, X = scene(4)
  P = cameras.projection_matrix(K, E)
  uv = cameras.project_points(K, E, X)[0]
  assert reprojection.pair_error(P[0], P[1], uv[0], uv[1]) < 1e-9
  # Same DLT solution as OpenCV's for exact matches.
  Xh = cv2.triangulatePoints(P[0], P[1], uv[0].T.copy(), uv[1].T.copy())
  np.testing.assert_allclose((Xh[:3] / Xh[3]).T, X, atol=1e-8)


def test_reprojection_error_matches_numpy_reference():
  num_views, samples = 6, 3
  K, E, X = scene(num_views, seed=7)
  pairs = ref_pairs(E)
  # Row 0 is the ground truth; starve one pair in sample 1 and another in the ground truth.
  starve = {(2, *pairs[1]), (0, *pairs[2])}
  matcher = ExactMatcher(K, E, X, starve=starve)
  rows = tagged_images(samples + 1, num_views)
  res = reprojection.reprojection_error(rows[1:], K, E, ground_truth=rows[0], matcher=matcher)

  P = [k @ e[:3] for k, e in zip(K, E)]
  ref = np.full((samples + 1, len(pairs)), np.nan)
  for r in range(samples + 1):
    for p, (i, j) in enumerate(pairs):
      uv1, uv2 = matcher(rows[r, i], rows[r, j])
      if len(uv1) >= 5:
        ref[r, p] = ref_pair_error(P[i], P[j], uv1, uv2)
  unbalanced = [np.mean([e for e in row if np.isfinite(e)]) for row in ref]
  keep = [p for p in range(len(pairs)) if np.all(np.isfinite(ref[:, p]))]
  balanced = [np.mean(row[keep]) for row in ref]

  assert res["matcher"] == "exact-synthetic"
  assert res["pairs"] == [list(p) for p in pairs]
  assert res["image_size"] == 16 and res["min_matches"] == 5
  assert res["balanced_pairs"] == [p in keep for p in range(len(pairs))]
  got = np.array([res["gt_pair_errors"]] + res["gen_pair_errors"], dtype=np.float64)  # None -> nan
  np.testing.assert_allclose(got, ref, rtol=1e-9, equal_nan=True)
  np.testing.assert_allclose(res["gen_unbalanced_per_sample"], unbalanced[1:], rtol=1e-9)
  np.testing.assert_allclose(res["gen_balanced_per_sample"], balanced[1:], rtol=1e-9)
  np.testing.assert_allclose(res["gt_unbalanced"], unbalanced[0], rtol=1e-9)
  np.testing.assert_allclose(res["gt_balanced"], balanced[0], rtol=1e-9)
  np.testing.assert_allclose(res["gen_unbalanced"], np.mean(unbalanced[1:]), rtol=1e-9)
  np.testing.assert_allclose(res["gen_balanced"], np.mean(balanced[1:]), rtol=1e-9)
  np.testing.assert_allclose(
    res["deviation_balanced"], np.mean(balanced[1:]) - balanced[0], rtol=1e-9
  )
  np.testing.assert_allclose(res["gen_balanced_pct"], np.mean(balanced[1:]) / 16 * 100)
  assert res["gen_pair_matches"][1][1] == 3 and res["gt_pair_matches"][2] == 3
  # With noise 0.7 px per coordinate, the error is a fraction of a pixel but not zero.
  assert 0.05 < res["gen_unbalanced"] < 1.0


def test_no_valid_pairs_give_nan():
  K, E, X = scene(4, seed=3)
  matcher = ExactMatcher(K, E, X, starve={(0, i, j) for i in range(4) for j in range(4)})
  res = reprojection.reprojection_error(tagged_images(1, 4)[0], K, E, matcher=matcher)
  assert np.isnan(res["gen_unbalanced"]) and np.isnan(res["gen_balanced"])
  assert np.isnan(res["gen_unbalanced_pct"])
  assert all(e is None for e in res["gen_pair_errors"][0])


def test_sift_matcher_uses_pixel_centres_at_half():
  size = 96
  yy, xx = np.mgrid[0:size, 0:size] + 0.5
  blobs = [(30.5, 40.5, 3.0), (60.0, 25.0, 4.0), (20.0, 75.0, 2.5)]

  def draw(offset):
    img = sum(
      np.exp(-((xx - u - offset[0]) ** 2 + (yy - v - offset[1]) ** 2) / (2 * s * s))
      for u, v, s in blobs
    )
    return np.repeat((40 + 180 * img)[..., None], 3, -1).round().astype(np.uint8)

  matcher = reprojection.SiftMatcher()
  uv1, uv2 = matcher(draw((0, 0)), draw((3, 2)))
  assert len(uv1) >= 3
  np.testing.assert_allclose(uv2 - uv1, np.broadcast_to([3.0, 2.0], uv1.shape), atol=0.02)
  # Each keypoint sits at a blob centre within OpenCV SIFT's known ~0.25 px bias.
  dist = np.min(np.linalg.norm(uv1[:, None] - np.array(blobs)[None, :, :2], axis=-1), axis=1)
  assert np.all(dist < 0.5), dist
  assert matcher.name == "opencv-sift(ratio=0.75,mutual)"


# ------------------------------------------------------------------ SIFT on studio views


def studio_rig(res, az_step=14.0, elevations=(6.0, 16.0), dist=3.0):
  """Three vertical camera pairs 14 degrees apart in azimuth, all aimed at the figure."""
  Ks, Es = [], []
  for k in range(3):
    for el in np.deg2rad(elevations):
      az = np.deg2rad(20 + k * az_step)
      eye = dist * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
      Es.append(synthetic_studio.look_at(eye + [0, 0, 0.9], [0, 0, 0.9]))
      Ks.append(cameras.make_K(res * dist / 2, res * dist / 2, res / 2, res / 2))
  return np.stack(Ks), np.stack(Es)


def rotate(img, degrees):
  h, w = img.shape[:2]
  M = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
  return cv2.warpAffine(img, M, (w, h), borderMode=cv2.BORDER_REPLICATE)


def test_sift_reprojection_error_on_studio_views():
  res = 256
  K, E = studio_rig(res)
  floors, perturbed = [], {"shift": [], "rotate": [], "swap": []}
  for subject in (1, 2, 3):
    gt = synthetic_studio.render_capture_views(0, subject, 0, K, E, res)[1]["image"]
    odd = np.arange(6) % 2 == 1
    gens = np.stack(
      [
        np.where(odd[:, None, None, None], np.roll(gt, (6, 6), axis=(1, 2)), gt),  # 6 px diag.
        np.stack([rotate(v, 6.0) if o else v for v, o in zip(gt, odd)]),  # 6 degrees
        gt[[0, 2, 1, 4, 3, 5]],  # each pair sees a view from the neighbouring pair
      ]
    )
    out = reprojection.reprojection_error(gens, K, E, ground_truth=gt)
    assert out["pairs"] == [[0, 1], [2, 3], [4, 5]]
    assert out["matcher"] == "opencv-sift(ratio=0.75,mutual)"
    assert min(out["gt_pair_matches"]) >= 15
    print(
      f"subject {subject}: GT RE {out['gt_unbalanced']:.2f} px "
      f"({out['gt_unbalanced_pct']:.3f}% of {res}); shifted/rotated/swapped "
      + ", ".join(f"{e:.2f}" for e in out["gen_unbalanced_per_sample"])
      + " px"
    )
    floors.append(out["gt_unbalanced"])
    for name, e in zip(perturbed, out["gen_unbalanced_per_sample"]):
      assert e > out["gt_unbalanced"], (subject, name)
      perturbed[name].append(e)
  floor = np.mean(floors)
  assert floor < 1.0  # exact views: a fraction of a pixel (matcher noise)
  for name, errs in perturbed.items():
    assert np.mean(errs) > max(1.5, 3 * floor), (name, errs, floor)
