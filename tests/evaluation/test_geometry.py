"""Geometry metrics against a float64 NumPy brute force (all pairwise distances) and exact cases."""

import numpy as np
import pytest

from pippo_jax.evaluation import geometry


def _brute(pred, truth, pn, tn, t):
  d = np.linalg.norm(pred[:, None, :] - truth[None, :, :], axis=-1)  # [P, G]
  to_truth, to_pred = d.min(1), d.min(0)
  near_truth, near_pred = d.argmin(1), d.argmin(0)
  unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)
  pn, tn = unit(pn), unit(tn)
  nc = 0.5 * (
    np.abs((pn * tn[near_truth]).sum(-1)).mean() + np.abs((tn * pn[near_pred]).sum(-1)).mean()
  )
  p, r = (to_truth < t).mean(), (to_pred < t).mean()
  return {
    "accuracy": to_truth.mean(),
    "completeness": to_pred.mean(),
    "chamfer": 0.5 * (to_truth.mean() + to_pred.mean()),
    "normal_consistency": nc,
    f"precision@{t:g}": p,
    f"recall@{t:g}": r,
    f"fscore@{t:g}": 2 * p * r / (p + r),
  }


def test_matches_brute_force():
  rng = np.random.default_rng(0)
  pred, truth = rng.normal(size=(300, 3)), rng.normal(size=(200, 3)) * 1.2 + 0.1
  pn, tn = rng.normal(size=(300, 3)), rng.normal(size=(200, 3))
  got = geometry.surface_metrics(pred, truth, pn, tn, thresholds=(0.3,))
  want = _brute(pred, truth, pn, tn, 0.3)
  assert set(got) == set(want)
  for key, value in want.items():
    np.testing.assert_allclose(got[key], value, rtol=1e-12, err_msg=key)


def test_exact_cases():
  rng = np.random.default_rng(1)
  x = rng.uniform(size=(500, 2))
  plane = np.concatenate([x, np.zeros((500, 1))], -1)
  up = np.tile([0.0, 0.0, 1.0], (500, 1))
  same = geometry.surface_metrics(plane, plane, up, -up, thresholds=(1e-6,))
  assert same["chamfer"] == 0 and same["fscore@1e-06"] == 1 and same["normal_consistency"] == 1
  # The same plane lifted by 0.05: every nearest distance is exactly 0.05.
  lifted = plane + [0, 0, 0.05]
  shifted = geometry.surface_metrics(lifted, plane, thresholds=(0.04, 0.06))
  np.testing.assert_allclose([shifted["accuracy"], shifted["chamfer"]], 0.05, rtol=1e-12)
  assert shifted["fscore@0.04"] == 0 and shifted["fscore@0.06"] == 1
  assert "normal_consistency" not in shifted
  # Perpendicular normals: consistency 0.
  side = np.tile([1.0, 0.0, 0.0], (500, 1))
  assert geometry.surface_metrics(plane, plane, side, up)["normal_consistency"] == 0


def test_bad_inputs():
  with pytest.raises(ValueError, match=r"must be \[N, 3\]"):
    geometry.surface_metrics(np.zeros((4, 2)), np.zeros((4, 3)))
  with pytest.raises(ValueError, match="empty point set: 0 predicted"):
    geometry.surface_metrics(np.zeros((0, 3)), np.zeros((4, 3)))
