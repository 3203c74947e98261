"""Checks the float64 NumPy reference against the release's golden pass."""

import math

import numpy as np
import pytest

from . import numpy_pippo as ref

DEPTH = 2
NUM_HEADS = 4
# Golden data is float32; errors are measured relative to the tensor's max.
RTOL = 1e-5
# The 256-d timestep sinusoid at t ~ 1e3 loses ~t * 2^-24 in float32, so the
# time-embedding path is a little looser.
RTOL_TEMB = 5e-5


def _rel(got, want):
  got = np.asarray(got, np.float64)
  want = np.asarray(want, np.float64)
  assert got.shape == want.shape, (got.shape, want.shape)
  return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


@pytest.fixture(scope="module")
def golden(golden_dir):
  def load(name):
    with np.load(golden_dir / name) as f:
      return {k: f[k] for k in f.files}

  return {
    "weights": load("weights.npz"),
    "inputs": load("inputs.npz"),
    "outputs": load("outputs.npz"),
    "inter": load("intermediates.npz"),
  }


@pytest.fixture(scope="module")
def forward(golden):
  return ref.pippo_forward(golden["weights"], golden["inputs"], DEPTH, NUM_HEADS)


# ---------------------------------------------------------------------------
# Elementary ops.
# ---------------------------------------------------------------------------


def test_pixel_shuffle_roundtrip():
  x = np.random.default_rng(0).normal(size=(2, 3, 8, 6))
  y = ref.pixel_unshuffle(x, 2)
  assert y.shape == (2, 12, 4, 3)
  np.testing.assert_array_equal(ref.pixel_shuffle(y, 2), x)
  np.testing.assert_array_equal(ref.pixel_unshuffle(ref.pixel_shuffle(y, 2), 2), y)


def test_pixel_unshuffle_channel_order():
  n, c, h, w, p = 1, 3, 6, 4, 2
  x = np.arange(n * c * h * w, dtype=np.float64).reshape(n, c, h, w)
  y = ref.pixel_unshuffle(x, p)
  for ci in range(c):
    for i in range(p):
      for j in range(p):
        np.testing.assert_array_equal(y[:, ci * p * p + i * p + j], x[:, ci, i::p, j::p])


def test_bilinear_align_corners():
  x = np.arange(2 * 5 * 7, dtype=np.float64).reshape(1, 2, 5, 7)
  # Affine in (row, col): bilinear interpolation reproduces it exactly.
  y = ref.bilinear_resize_align_corners(x, 3, 4)
  rows = np.arange(3) * 4 / 2
  cols = np.arange(4) * 6 / 3
  want = rows[:, None] * 7 + cols[None, :]
  np.testing.assert_allclose(y[0, 0], want, atol=1e-12)
  np.testing.assert_allclose(y[0, 1], want + 35, atol=1e-12)
  # Upsampling with a non-integer ratio.
  z = ref.bilinear_resize_align_corners(x[:, :, :2, :2], 3, 3)
  np.testing.assert_allclose(z[0, 0], [[0, 0.5, 1], [3.5, 4, 4.5], [7, 7.5, 8]], atol=1e-12)


def test_conv2d_matches_direct_loops():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 3, 5, 6))
  w = rng.normal(size=(4, 3, 3, 3))
  b = rng.normal(size=(4,))
  y = ref.conv2d_nchw(x, w, b, stride=2, padding=1)
  xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
  want = np.zeros((2, 4, 3, 3))
  for u in range(3):
    for v in range(3):
      patch = xp[:, :, 2 * u : 2 * u + 3, 2 * v : 2 * v + 3]
      want[:, :, u, v] = np.einsum("nckl,ockl->no", patch, w) + b
  np.testing.assert_allclose(y, want, atol=1e-12)


def test_gelu_and_timestep_embedding():
  np.testing.assert_allclose(
    ref.gelu_exact(np.array([1.0])), [0.5 * (1 + math.erf(1 / math.sqrt(2)))]
  )
  emb = ref.timestep_embedding(np.array([0.0, 3.0]), dim=8)
  f = np.exp(-math.log(1e4) * np.arange(4) / 4)
  np.testing.assert_allclose(emb[1], np.concatenate([np.cos(3 * f), np.sin(3 * f)]))
  np.testing.assert_allclose(emb[0], [1, 1, 1, 1, 0, 0, 0, 0])


def test_sincos_table_layout(golden):
  table = ref.sincos_2d_table(8, 2, 3)
  assert table.shape == (6, 8)
  # Token 4 is row 1, column 1; token 2 is row 0, column 2.
  np.testing.assert_allclose(table[2, :2], [np.sin(2.0), np.sin(0.02)])
  np.testing.assert_allclose(table[2, 4:], [0, 0, 1, 1], atol=1e-15)
  np.testing.assert_allclose(table[3, :4], [0, 0, 1, 1], atol=1e-15)
  # The learned tables are the sin-cos init plus N(0, 0.02) noise.
  full = ref.sincos_2d_table(64, 4, 4)
  for name in ("generator.pos_embed", "ref_encoder.pos_embed"):
    resid = golden["weights"][name][0] - full
    assert resid.std() < 0.03 and np.abs(resid).max() < 0.15, name


# ---------------------------------------------------------------------------
# End to end and intermediates.
# ---------------------------------------------------------------------------


def test_eps_and_loss(golden, forward):
  eps, _ = forward
  assert _rel(eps, golden["outputs"]["eps"]) < RTOL
  loss = np.mean((eps - golden["inputs"]["noise"].astype(np.float64)) ** 2)
  want = float(golden["outputs"]["loss"])
  assert abs(loss - want) / abs(want) < RTOL


INTERMEDIATES = [
  ("ref_encoder.out", RTOL),
  ("cam_mlp.call0.out.0", RTOL),
  ("cam_mlp.call1.out.0", RTOL),
  ("control_mlp.t_embedder.out", RTOL_TEMB),
  ("control_mlp.plucker_encoder.in.0", RTOL),
  ("control_mlp.plucker_encoder.out", RTOL),
  ("control_mlp.control_encoder.in.0", RTOL),
  ("control_mlp.control_encoder.out", RTOL),
  ("control_mlp.out.0", RTOL),
  ("control_mlp.out.1", RTOL),
  ("generator.patchify.out", RTOL),
  ("generator.t_embedder.out", RTOL_TEMB),
  ("generator.blocks.0.cond_adaln.out", RTOL),
  ("generator.blocks.0.in_norm.in.0", RTOL),
  ("generator.blocks.0.in_norm.out", RTOL),
  ("generator.blocks.0.in_proj.out", RTOL),
  ("generator.blocks.0.q_norm.in.0", RTOL),
  ("generator.blocks.0.q_norm.out", RTOL),
  ("generator.blocks.0.k_norm.out", RTOL),
  ("generator.blocks.0.attn_out_proj.in.0", RTOL),
  ("generator.blocks.0.attn_out_proj.out", RTOL),
  ("generator.blocks.0.mlp_act.out", RTOL),
  ("generator.blocks.0.mlp_out_proj.out", RTOL),
  ("generator.blocks.0.in.0", RTOL),
  ("generator.blocks.0.in.control", RTOL),
  ("generator.blocks.0.out", RTOL),
  ("generator.blocks.1.out", RTOL),
  ("generator.unpatchify.in.0", RTOL),
  ("generator.unpatchify.out", RTOL),
  ("conds.cond_attn", RTOL),
  ("conds.pos_enc_x", RTOL),
  ("conds.controls.0", RTOL),
  ("conds.controls.1", RTOL),
]


@pytest.mark.parametrize("name,rtol", INTERMEDIATES)
def test_intermediate(golden, forward, name, rtol):
  _, inter = forward
  assert _rel(inter[name], golden["inter"][name]) < rtol


def test_block0_standalone(golden):
  """dit_block on the golden block input reproduces the golden output."""
  w, g = golden["weights"], golden["inter"]
  b = g["generator.blocks.0.in_norm.in.0"].shape[0]
  x = g["generator.blocks.0.in.0"].reshape(b, -1, 64)
  ctl = g["generator.blocks.0.in.control"].reshape(b, -1, 64)
  out, inter = ref.dit_block(
    w, "generator.blocks.0", x, g["generator.blocks.0.in.cond"], ctl, num_heads=NUM_HEADS
  )
  assert _rel(out.reshape(-1, 16, 64), g["generator.blocks.0.out"]) < RTOL
  assert _rel(inter["k_norm.out"], g["generator.blocks.0.k_norm.out"]) < RTOL
  # The release adds the control to the reference tokens as well: restricting
  # it to the target tokens is measurably different.
  out_tgt, _ = ref.dit_block(
    w, "generator.blocks.0", x, g["generator.blocks.0.in.cond"], ctl[:, :64], num_heads=NUM_HEADS
  )
  assert _rel(out_tgt.reshape(-1, 16, 64), g["generator.blocks.0.out"]) > 1e-3


def test_modules_standalone(golden):
  """Separately callable pieces on golden inputs."""
  w, g, inp = golden["weights"], golden["inter"], golden["inputs"]
  b = inp["t"].shape[0]
  ctl_t = ref.timestep_embedder(w, "control_mlp.t_embedder", np.repeat(inp["t"], 5))
  assert _rel(ctl_t, g["control_mlp.t_embedder.out"]) < RTOL_TEMB
  pl = ref.siren(w, "control_mlp.plucker_encoder.network", g["control_mlp.plucker_encoder.in.0"])
  assert _rel(pl, g["control_mlp.plucker_encoder.out"]) < RTOL
  enc = ref.control_encoder(w, "control_mlp.control_encoder", g["control_mlp.control_encoder.in.0"])
  assert _rel(enc, g["control_mlp.control_encoder.out"]) < RTOL
  cam = ref.cam_mlp(w, inp["ref_cam_pose"].reshape(b, 16))
  assert _rel(cam, g["cam_mlp.call0.out.0"]) < RTOL
  eps = ref.unpatchify(w, "generator.unpatchify", g["generator.unpatchify.in.0"], 4, 4)
  assert _rel(eps, g["generator.unpatchify.out"]) < RTOL
