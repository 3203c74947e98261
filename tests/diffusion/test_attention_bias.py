"""Attention biasing: the biased scale lowers attention entropy for many views.

The scale itself lives in pippo_jax.models.attention; these tests check it against
the spec's formula and its effect on the entropy of softmax(scale q k^T).
"""

import math

import numpy as np
import pytest

from pippo_jax.models.attention import biased_attention_scale


def _entropy(scale, tokens, head_dim=64, heads=4, queries=64, seed=0):
  """Mean entropy (nats) of attention rows for random QK-normed q, k (float64).

  q, k entries have std 2 (a LayerNorm with gain 2), so the logits at scale
  1/sqrt(d) have variance 16: peaked enough for the scale to matter.
  """
  rng = np.random.default_rng(seed)
  q = 2.0 * rng.standard_normal((heads, queries, head_dim))
  k = 2.0 * rng.standard_normal((heads, tokens, head_dim))
  logits = scale * np.einsum("hqd,hkd->hqk", q, k)
  logits -= logits.max(-1, keepdims=True)
  p = np.exp(logits)
  p /= p.sum(-1, keepdims=True)
  return float(-(p * np.log(np.maximum(p, 1e-300))).sum(-1).mean())


@pytest.mark.parametrize(
  "d,n_v,views,train,gamma", [(64, 256, 13, 5, 1.4), (32, 64, 49, 25, 1.0), (64, 1024, 3, 3, 1.6)]
)
def test_scale_matches_formula(d, n_v, views, train, gamma):
  expected = math.sqrt(gamma * math.log(n_v * views) / math.log(n_v * train) / d)
  assert biased_attention_scale(d, n_v, views, train, gamma) == pytest.approx(expected, rel=1e-12)


def test_same_views_gamma_one_is_the_standard_scale():
  assert biased_attention_scale(64, 256, 5, 5, 1.0) == pytest.approx(1 / 8.0, rel=1e-12)
  e_std = _entropy(1 / 8.0, 5 * 64)
  e_biased = _entropy(biased_attention_scale(64, 64, 5, 5, 1.0), 5 * 64)
  assert e_biased == pytest.approx(e_std, abs=1e-12)


@pytest.mark.parametrize("gamma", [1.0, 1.4])
def test_more_views_than_trained_lowers_entropy(gamma):
  n_v, train_views, views = 64, 5, 25  # 4 + 1 trained -> 24 + 1 at sampling
  tokens = n_v * views
  e_std = _entropy(1 / 8.0, tokens)
  e_biased = _entropy(biased_attention_scale(64, n_v, views, train_views, gamma), tokens)
  assert e_biased < e_std - 0.1, (e_biased, e_std)
  # and it moves the entropy back towards its value at the trained length
  e_train = _entropy(1 / 8.0, n_v * train_views)
  if gamma == 1.0:
    assert abs(e_biased - e_train) < abs(e_std - e_train)
