"""Number-for-number parity with the authors' PyTorch release (shared/golden/release_s0)."""

import golden_io
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pippo_jax.interop.release_layout import params_to_release, release_to_params
from pippo_jax.models import dit
from pippo_jax.models.pippo import Pippo


def rel_err(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, (got.shape, want.shape)
  return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def golden():
  cfg = golden_io.model_config()
  weights = golden_io.load("weights.npz")
  params, dropped = release_to_params(weights, cfg)
  return dict(
    cfg=cfg,
    weights=weights,
    params=params,
    dropped=dropped,
    inputs=golden_io.model_inputs(golden_io.load("inputs.npz")),
    outputs=golden_io.load("outputs.npz"),
    inter=golden_io.load("intermediates.npz"),
    grads=golden_io.load("grads.npz"),
  )


def loss_fn(params, cfg, x_t, t, cond, noise):
  eps = Pippo(cfg).apply({"params": params}, x_t, t, cond)
  return jnp.mean((eps - noise) ** 2), eps


def test_only_unused_weights_dropped(golden):
  assert len(golden["dropped"]) == 6 * golden["cfg"].depth + 9  # cond-attn weights + schedule
  assert all(
    "cond_attn" in k or "k_cond_norm" in k or k.startswith("schedule.") for k in golden["dropped"]
  )


def test_eps_and_loss_match_release(golden):
  x_t, t, cond, noise = golden["inputs"]
  loss, eps = loss_fn(golden["params"], golden["cfg"], x_t, t, cond, noise)
  assert rel_err(eps, golden_io.nhwc(golden["outputs"]["eps"])) < 1e-5
  assert (
    abs(float(loss) - float(golden["outputs"]["loss"])) / float(golden["outputs"]["loss"]) < 1e-5
  )


def test_gradients_match_release(golden):
  cfg = golden["cfg"]
  x_t, t, cond, noise = golden["inputs"]
  grads = jax.grad(lambda p: loss_fn(p, cfg, x_t, t, cond, noise)[0])(golden["params"])
  ours = params_to_release(jax.device_get(grads), cfg)
  want = golden["grads"]
  # Null tokens get no gradient in a forward without condition dropout; the release omits them.
  assert set(want) == set(ours) - {
    "null_conds.ref",
    "null_conds.cam_pose",
    "control_mlp.control_zero_token",
  }
  # K-norm biases get an analytically zero gradient (softmax ignores a constant added to every
  # key); both implementations give float noise of ~1e-12 there.
  zero = {k for k in want if np.abs(want[k]).max() < 1e-9}
  assert {k.split(".")[-2] for k in zero} <= {"k_norm"}
  assert all(np.abs(ours[k]).max() < 1e-9 for k in zero)
  errors = {k: rel_err(ours[k], want[k]) for k in set(want) - zero}
  worst = max(errors, key=errors.get)
  assert errors[worst] < 1e-4, (worst, errors[worst])


def test_block0_intermediates_match_release(golden):
  """Block 0 on the release's own block inputs: every internal tensor."""
  cfg, inter = golden["cfg"], golden["inter"]
  p = jax.tree.map(lambda a: a[0], golden["params"]["generator"]["blocks"])
  b = inter["generator.blocks.0.in.cond"].shape[0]
  x = inter["generator.blocks.0.in.0"].reshape(b, -1, cfg.width)
  control = inter["generator.blocks.0.in.control"].reshape(b, -1, cfg.width)
  block = dit.DiTBlock(cfg, attn_scale=cfg.head_dim**-0.5)

  # Feed the release's control tensor through an identity "zero block" (adaLN 0, linear = I).
  d = cfg.width
  ctrl = {
    "h": control,
    "temb": np.zeros((b, d), np.float32),
    "drop": np.zeros((b,), bool),
    "zero_token": np.zeros((d,), np.float32),
  }
  ctrl_params = {
    "adaln": {"kernel": np.zeros((d, 2 * d), np.float32), "bias": np.zeros((2 * d,), np.float32)},
    "linear": {"kernel": np.eye(d, dtype=np.float32), "bias": np.zeros((d,), np.float32)},
  }
  (out, _), state = block.apply(
    {"params": p},
    x,
    inter["generator.blocks.0.in.cond"],
    ctrl,
    ctrl_params,
    capture_intermediates=True,
  )
  got = {k: v["__call__"][0] for k, v in state["intermediates"].items() if "__call__" in v}
  pre = "generator.blocks.0."
  pairs = {
    "adaln": "cond_adaln.out",
    "in_norm": "in_norm.out",
    "in_proj": "in_proj.out",
    "q_norm": "q_norm.out",
    "k_norm": "k_norm.out",
    "attn_out": "attn_out_proj.out",
    "mlp_out": "mlp_out_proj.out",
  }
  for ours, theirs in pairs.items():
    want = inter[pre + theirs]
    assert rel_err(np.asarray(got[ours]).reshape(want.shape), want) < 1e-5, ours
  assert (
    rel_err(np.asarray(out).reshape(-1, *inter[pre + "out"].shape[1:]), inter[pre + "out"]) < 1e-5
  )


def test_release_layout_round_trip_is_exact(golden):
  back = params_to_release(golden["params"], golden["cfg"])
  for k, v in back.items():
    np.testing.assert_array_equal(v, golden["weights"][k], err_msg=k)


def test_mismatched_checkpoint_lists_keys(golden):
  weights = dict(golden["weights"])
  del weights["generator.blocks.1.in_proj.weight"]
  weights["generator.extra.weight"] = np.zeros(3)
  with pytest.raises(
    ValueError, match=r"missing keys \(1\).*in_proj[\s\S]*unknown keys \(1\).*extra"
  ):
    release_to_params(weights, golden["cfg"])
