"""Geometry metrics between two surfaces given as point sets (with normals where asked).

Meshes are compared through area-uniform samples of their surfaces (`reconstruction.mesh.
surface_samples`, or exact samples of an analytic surface). With P the predicted points and G
the ground-truth points, d(x, S) the distance from x to the nearest point of S:

  accuracy     mean_{p in P} d(p, G)       (how far the prediction strays from the truth)
  completeness mean_{g in G} d(g, P)       (how much of the truth the prediction covers)
  chamfer      (accuracy + completeness) / 2   (the L1, not squared, Chamfer distance)
  precision(t) fraction of P within t of G;  recall(t): fraction of G within t of P
  fscore(t)    2 precision recall / (precision + recall)  (0 when both are 0)
  normal_consistency  mean over both directions of |n_x . n_nearest(x)| (orientation-free, as in
               Occupancy Networks): 1 for matching surfaces

Distances are in the points' units. Nearest neighbours come from scipy's k-d tree (exact).
"""

import numpy as np
from scipy import spatial


def _nearest(source: np.ndarray, target: np.ndarray):
  """(distance [N], index [N]) of each source point's nearest target point."""
  distance, index = spatial.cKDTree(target).query(source, k=1)
  return distance, index


def surface_metrics(
  pred, truth, pred_normals=None, truth_normals=None, thresholds=(0.01,)
) -> dict[str, float]:
  """accuracy, completeness, chamfer, normal_consistency (with both normals given), and
  precision / recall / fscore at each threshold (keys `fscore@t`, ...)."""
  pred, truth = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
  if pred.ndim != 2 or pred.shape[-1] != 3 or truth.ndim != 2 or truth.shape[-1] != 3:
    raise ValueError(f"point sets must be [N, 3], got {pred.shape} and {truth.shape}")
  if not len(pred) or not len(truth):
    raise ValueError(f"empty point set: {len(pred)} predicted, {len(truth)} true points")
  to_truth, near_truth = _nearest(pred, truth)
  to_pred, near_pred = _nearest(truth, pred)
  result = {"accuracy": float(to_truth.mean()), "completeness": float(to_pred.mean())}
  result["chamfer"] = 0.5 * (result["accuracy"] + result["completeness"])
  if pred_normals is not None and truth_normals is not None:
    pn = _unit(pred_normals)
    tn = _unit(truth_normals)
    forward = np.abs(np.sum(pn * tn[near_truth], -1)).mean()
    backward = np.abs(np.sum(tn * pn[near_pred], -1)).mean()
    result["normal_consistency"] = float(0.5 * (forward + backward))
  for t in thresholds:
    precision = float((to_truth < t).mean())
    recall = float((to_pred < t).mean())
    total = precision + recall
    result[f"precision@{t:g}"] = precision
    result[f"recall@{t:g}"] = recall
    result[f"fscore@{t:g}"] = 2 * precision * recall / total if total > 0 else 0.0
  return result


def _unit(v) -> np.ndarray:
  v = np.asarray(v, np.float64)
  return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
