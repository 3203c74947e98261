"""Reprojection error (RE): the paper's 3D-consistency metric for generated views.

RE needs no ground-truth images, only the cameras the views were generated for. For a
set of V views with known cameras (K [V, 3, 3] in pixels, E [V, 4, 4] world -> camera,
the `pippo_jax.geometry.cameras` convention):

1. Pairs (`view_pairs`): the V x V matrix of distances between the cameras, with an
   infinite diagonal, goes through a minimum-cost assignment (Hungarian,
   `scipy.optimize.linear_sum_assignment`); each view i is paired with its assigned view
   j, and (i, j) / (j, i) are merged: the unique unordered pairs, in sorted order. The
   pairs depend on the cameras only, so every sample (and the ground truth) uses the same.
2. For each pair, a matcher finds corresponding pixels between the two uint8 images.
   A pair with fewer than `min_matches` (5) matches is invalid for that sample.
3. The matches are triangulated (linear DLT, `geometry.triangulate.triangulate_points`)
   with the projection matrices P = K [R | t] and reprojected into both views; the pair's
   error is the mean pixel L2 distance between reprojections and matches in view 1 plus
   the same in view 2, halved (equal match counts: the mean over both views).
4. Per sample: "unbalanced" RE is the mean over the sample's valid pairs; "balanced" RE
   is the mean over the pairs that are valid in every row (every sample and, when given,
   the ground truth), which compares all rows on the same pairs.
5. The generated RE is the mean over samples; the same computation on ground-truth views
   gives the floor (matcher and calibration noise); `deviation_*` is generated minus
   ground truth (the paper reports RE relative to ground truth). Every scalar also comes
   as `*_pct`: RE / max(H, W) * 100, the paper's "% of image size".

The matcher is a parameter: any callable `(img1, img2) -> (uv1 [M, 2], uv2 [M, 2])` on
uint8 [H, W, 3] images returning matched pixel coordinates in our convention (pixel
(row i, column j) centred at (j + 0.5, i + 0.5)); its `name` attribute (else
`__name__`) is written into every result. The default, `SiftMatcher`, is OpenCV SIFT
with Lowe's ratio test (0.75) on brute-force L2 2-nearest neighbours plus a mutual
nearest-neighbour check (on procedural studio views the check removes most of the
repeated-texture outliers that a single wrong match turns into a large mean error), and
no geometric filtering (a RANSAC on an estimated fundamental matrix would remove exactly
the inconsistency that RE measures). OpenCV's SIFT locates keypoints with a known bias of
about +0.25 px on both axes (its doubled first octave; opencv/opencv#23123, measured here
at +0.27 px on Gaussian blobs); it is the same in both views of a pair and is not
corrected.

Relation to the authors' release (`scripts/pippo/reprojection_error.py`), which this
follows: Hungarian pairing with an infinite diagonal and unique unordered pairs, at least
5 matches per pair, DLT triangulation from K @ [R | t], mean L2 per view averaged over
the two views, unbalanced and balanced aggregation with the balanced pairs chosen over
the ground-truth row and every generated row together, generated RE averaged over
samples, percentage = RE / max(W, H) * 100. Deliberate differences:

* Matcher: the release uses DISK keypoints (2048) + LightGlue (kornia, network weights
  downloaded at run time; its `conf_thresh` argument is unused); the paper names
  SuperGlue. We default to SIFT + ratio test + mutual check, which needs no weights, and
  accept any matcher. Absolute RE values therefore differ from the paper's; compare
  generated views against the ground-truth floor of the same matcher.
* Pairing distances: the release measures distances between the translation columns t
  of the world -> camera extrinsics, which equal the camera centres only up to each
  camera's rotation (t = -R o); for cameras aimed at one point from one distance every t
  is the same and the pairing is arbitrary. We use camera centres (`pair_by="centers"`);
  `pair_by="translations"` reproduces the release.
* Pixel convention: the release feeds the detector's coordinates (pixel centres at
  integers) straight into its rescaled and cropped K; we shift the matcher's coordinates
  to pixel centres at +0.5, the convention of our K (a consistent 0.5 px offset changes
  RE very little, but this makes exact synthetic matches reproject exactly).
* Triangulation: `cv2.triangulatePoints` solves the same DLT without normalising the
  rows of the 4 x 4 system; ours scales each row to unit norm (the geometry module's
  choice). Identical for exact matches; for wrong matches the two least-squares problems
  differ (on one 256 px studio capture in the tests, 0.775 px here vs 0.539 px with
  OpenCV's; on two others they agree to 0.001 px).
* Undefined values are NaN: a sample without any valid pair has unbalanced RE NaN (the
  release divides a zero sum by 1e-6 and reports 0) and is left out of the mean over
  samples; with no pair valid in every row the balanced RE is NaN (the release: -1). The
  release divides sums by (count + 1e-6); we divide by the count.
"""

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from pippo_jax.geometry import cameras, triangulate

Matcher = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

MIN_MATCHES = 5  # the release skips a pair with fewer LightGlue matches than this


@dataclasses.dataclass(frozen=True)
class SiftMatcher:
  """OpenCV SIFT keypoints matched by L2 2-nearest neighbours and Lowe's ratio test.

  Attributes:
    ratio: a match is kept when its distance is below `ratio` times the second best's.
    mutual: also require the match to be mutual (the nearest neighbour both ways).
    max_features: SIFT's `nfeatures` (0: all keypoints).
  """

  ratio: float = 0.75
  mutual: bool = True
  max_features: int = 0

  @property
  def name(self) -> str:
    extra = ",mutual" if self.mutual else ""
    extra += f",max_features={self.max_features}" if self.max_features else ""
    return f"opencv-sift(ratio={self.ratio}{extra})"

  def __call__(self, img1, img2) -> tuple[np.ndarray, np.ndarray]:
    """Matched pixels (uv1 [M, 2], uv2 [M, 2]), float64, pixel centres at +0.5."""
    import cv2  # only the default matcher needs OpenCV

    sift = cv2.SIFT_create(nfeatures=self.max_features)
    kp1, d1 = sift.detectAndCompute(cv2.cvtColor(_as_uint8(img1), cv2.COLOR_RGB2GRAY), None)
    kp2, d2 = sift.detectAndCompute(cv2.cvtColor(_as_uint8(img2), cv2.COLOR_RGB2GRAY), None)
    empty = np.zeros((0, 2))
    if d1 is None or d2 is None or len(kp1) == 0 or len(kp2) < 2:
      return empty, empty.copy()
    bf = cv2.BFMatcher(cv2.NORM_L2)
    knn = bf.knnMatch(d1, d2, k=2)
    good = [m[0] for m in knn if len(m) == 2 and m[0].distance < self.ratio * m[1].distance]
    if self.mutual:
      back = {m[0].queryIdx: m[0].trainIdx for m in bf.knnMatch(d2, d1, k=1) if m}
      good = [m for m in good if back.get(m.trainIdx) == m.queryIdx]
    # OpenCV puts pixel centres at integer coordinates; ours are at +0.5.
    uv1 = np.array([kp1[m.queryIdx].pt for m in good], np.float64).reshape(-1, 2) + 0.5
    uv2 = np.array([kp2[m.trainIdx].pt for m in good], np.float64).reshape(-1, 2) + 0.5
    return uv1, uv2


def matcher_name(matcher) -> str:
  """The name a result records for `matcher`: its `name`, else `__name__`, else its type."""
  for attr in ("name", "__name__"):
    value = getattr(matcher, attr, None)
    if isinstance(value, str) and value:
      return value
  return type(matcher).__name__


def _as_uint8(img) -> np.ndarray:
  img = np.asarray(img)
  if img.dtype == np.uint8:
    return img
  if not np.issubdtype(img.dtype, np.floating):
    raise TypeError(f"images must be uint8 or float in [0, 1], got dtype {img.dtype}.")
  return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def view_pairs(E, pair_by: str = "centers") -> list[tuple[int, int]]:
  """Unique unordered view pairs (i < j), sorted, from a Hungarian assignment on distances.

  Args:
    E: world -> camera extrinsics [V, 4, 4] (or [V, 3, 4]), V >= 2.
    pair_by: "centers" (camera centres -R^T t) or "translations" (the t columns, as the
      authors' release does).
  """
  E = cameras.as_E44(E)
  if E.ndim != 3 or E.shape[0] < 2:
    raise ValueError(f"need E [V, 4, 4] with V >= 2 views, got {E.shape}.")
  if pair_by == "centers":
    points = cameras.camera_centers(E)
  elif pair_by == "translations":
    points = E[:, :3, 3]
  else:
    raise ValueError(f"pair_by must be 'centers' or 'translations', got {pair_by!r}.")
  dist = np.linalg.norm(points[None] - points[:, None], axis=-1)
  np.fill_diagonal(dist, np.inf)
  rows, cols = linear_sum_assignment(dist)
  return sorted({tuple(sorted((int(r), int(c)))) for r, c in zip(rows, cols)})


def pair_error(P1, P2, uv1, uv2) -> float:
  """RE of one pair: triangulate the matches, reproject, mean L2 per view, mean of the two.

  Args:
    P1, P2: projection matrices K [R | t], [3, 4].
    uv1, uv2: matched pixels [M, 2] (M >= 1) in the two views.
  """
  uv1, uv2 = np.asarray(uv1, np.float64), np.asarray(uv2, np.float64)
  X = triangulate.triangulate_points(P1, P2, uv1, uv2)
  e1 = triangulate.reprojection_errors(P1, X, uv1).mean()
  e2 = triangulate.reprojection_errors(P2, X, uv2).mean()
  return float((e1 + e2) / 2.0)


def pairwise_errors(
  views, K, E, pairs: Sequence[tuple[int, int]], matcher: Matcher, min_matches: int = MIN_MATCHES
) -> tuple[np.ndarray, np.ndarray]:
  """RE of every pair in every row of views.

  Args:
    views: [R, V, H, W, 3] images (uint8, or float in [0, 1]); R rows (samples).
    K, E: cameras of the V views, [V, 3, 3] and [V, 4, 4].
    pairs: (i, j) view index pairs.
    matcher: (img1, img2) -> (uv1, uv2).
    min_matches: fewer matches make the pair invalid (NaN).

  Returns:
    (errors [R, P] float64 with NaN for invalid pairs, match counts [R, P] int).
  """
  views = np.asarray(views)
  P = cameras.projection_matrix(K, E)
  errors = np.full((views.shape[0], len(pairs)), np.nan)
  counts = np.zeros((views.shape[0], len(pairs)), np.int64)
  for r, row in enumerate(views):
    for p, (i, j) in enumerate(pairs):
      uv1, uv2 = matcher(_as_uint8(row[i]), _as_uint8(row[j]))
      uv1, uv2 = np.asarray(uv1, np.float64).reshape(-1, 2), np.asarray(uv2, np.float64)
      uv2 = uv2.reshape(-1, 2)
      if uv1.shape != uv2.shape:
        raise ValueError(f"matcher returned {uv1.shape} and {uv2.shape} coordinates.")
      counts[r, p] = uv1.shape[0]
      if uv1.shape[0] >= max(min_matches, 1):
        errors[r, p] = pair_error(P[i], P[j], uv1, uv2)
  return errors, counts


def aggregate(errors) -> dict:
  """Unbalanced and balanced RE per row from pair errors [R, P] (NaN = invalid pair).

  Returns:
    {"unbalanced": [R], "balanced": [R], "balanced_pairs": [P] bool}: unbalanced is the
    mean over each row's valid pairs (NaN when none), balanced the mean over the pairs
    valid in every row (NaN when there is no such pair).
  """
  errors = np.asarray(errors, np.float64)
  valid = np.isfinite(errors)
  counts = valid.sum(-1)
  sums = np.where(valid, errors, 0.0).sum(-1)
  unbalanced = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
  columns = valid.all(0)
  if columns.any():
    balanced = errors[:, columns].mean(-1)
  else:
    balanced = np.full(errors.shape[0], np.nan)
  return {"unbalanced": unbalanced, "balanced": balanced, "balanced_pairs": columns}


def _nanmean(x) -> float:
  x = np.asarray(x, np.float64)
  x = x[np.isfinite(x)]
  return float(x.mean()) if x.size else float("nan")


def _listed(errors) -> list:
  return [[None if not np.isfinite(e) else float(e) for e in row] for row in errors]


def reprojection_error(
  generated,
  K,
  E,
  *,
  ground_truth=None,
  matcher: Matcher | None = None,
  min_matches: int = MIN_MATCHES,
  pair_by: str = "centers",
) -> dict:
  """The paper's reprojection error of generated views, and of ground truth as the floor.

  Args:
    generated: [S, V, H, W, 3] or [V, H, W, 3] views (uint8 or float in [0, 1]), S samples
      of the same V cameras.
    K, E: the V cameras, [V, 3, 3] pixels (for H x W images) and [V, 4, 4] world -> camera.
    ground_truth: optional [V, H, W, 3] real views of the same cameras.
    matcher: (img1, img2) -> (uv1, uv2); default `SiftMatcher()`.
    min_matches: pairs with fewer matches are invalid.
    pair_by: "centers" or "translations" (see `view_pairs`).

  Returns:
    A dict of plain Python values: "matcher", "pair_by", "min_matches", "image_size"
    (max(H, W)), "pairs"; "gen_unbalanced", "gen_balanced" (means over samples, NaN when
    undefined), "gen_unbalanced_per_sample", "gen_balanced_per_sample", "gen_pair_errors"
    ([S][P], None for invalid), "gen_pair_matches" ([S][P] counts), "balanced_pairs";
    with ground truth also "gt_unbalanced", "gt_balanced", "gt_pair_errors",
    "gt_pair_matches", "deviation_unbalanced", "deviation_balanced" (generated - ground
    truth). Each RE scalar X also comes as "X_pct" = X / image_size * 100.
  """
  gen = np.asarray(generated)
  if gen.ndim == 4:
    gen = gen[None]
  if gen.ndim != 5 or gen.shape[-1] != 3:
    raise ValueError(f"generated must be [S, V, H, W, 3] or [V, H, W, 3], got {gen.shape}.")
  K, E = cameras.validate_cameras(K, E)
  if K.shape != (gen.shape[1], 3, 3) or E.shape != (gen.shape[1], 4, 4):
    raise ValueError(f"need one camera per view: {gen.shape[1]} views, K {K.shape}, E {E.shape}.")
  rows = gen
  if ground_truth is not None:
    gt = np.asarray(ground_truth)
    if gt.shape != gen.shape[1:]:
      raise ValueError(f"ground_truth must be {gen.shape[1:]}, got {gt.shape}.")
    rows = np.concatenate([_as_uint8(gt)[None], np.stack([_as_uint8(g) for g in gen])])
  matcher = SiftMatcher() if matcher is None else matcher
  pairs = view_pairs(E, pair_by)
  errors, counts = pairwise_errors(rows, K, E, pairs, matcher, min_matches)
  agg = aggregate(errors)
  off = 0 if ground_truth is None else 1
  size = max(gen.shape[2], gen.shape[3])
  out = {
    "matcher": matcher_name(matcher),
    "pair_by": pair_by,
    "min_matches": int(min_matches),
    "image_size": int(size),
    "pairs": [[int(i), int(j)] for i, j in pairs],
    "gen_unbalanced": _nanmean(agg["unbalanced"][off:]),
    "gen_balanced": _nanmean(agg["balanced"][off:]),
    "gen_unbalanced_per_sample": [float(x) for x in agg["unbalanced"][off:]],
    "gen_balanced_per_sample": [float(x) for x in agg["balanced"][off:]],
    "gen_pair_errors": _listed(errors[off:]),
    "gen_pair_matches": counts[off:].tolist(),
    "balanced_pairs": [bool(c) for c in agg["balanced_pairs"]],
  }
  scalars = ["gen_unbalanced", "gen_balanced"]
  if ground_truth is not None:
    out.update(
      gt_unbalanced=float(agg["unbalanced"][0]),
      gt_balanced=float(agg["balanced"][0]),
      gt_pair_errors=_listed(errors[:1])[0],
      gt_pair_matches=counts[0].tolist(),
    )
    for kind in ("unbalanced", "balanced"):
      out[f"deviation_{kind}"] = out[f"gen_{kind}"] - out[f"gt_{kind}"]
    scalars += ["gt_unbalanced", "gt_balanced", "deviation_unbalanced", "deviation_balanced"]
  for key in scalars:
    out[f"{key}_pct"] = out[key] / size * 100.0
  return out
