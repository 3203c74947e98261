"""Independent float64 NumPy reference of the Pippo denoiser.

Written from `shared/pippo_spec.md` and checked against the golden forward pass
of the authors' PyTorch release (`shared/golden/release_s0`). It is meant as a
slow, obviously-correct oracle for testing the Flax model block by block, so
every piece is a separately callable function.

Weights are passed as a flat dict under the release's `state_dict()` key names
and layouts: Linear weights are [out, in], conv weights [out, in, kh, kw].
Everything is computed in float64 regardless of the input dtype.

Layouts used here:
  * images / latents: NCHW;
  * tokens: [batch, tokens, D], row-major over the token grid;
  * inside the DiT blocks: [B, views * tokens, D] with the target views first
    and the reference view last (the release's layout).
"""

import math

import numpy as np

# ---------------------------------------------------------------------------
# Elementary ops.
# ---------------------------------------------------------------------------


def _f64(x):
  return np.asarray(x, dtype=np.float64)


def _erf(x):
  """Vectorised error function (math.erf is exact to double precision)."""
  x = _f64(x)
  return np.vectorize(math.erf, otypes=[np.float64])(x)


def gelu_exact(x):
  """GELU with the exact erf form: x * Phi(x)."""
  x = _f64(x)
  return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def silu(x):
  x = _f64(x)
  return x / (1.0 + np.exp(-x))


def layer_norm(x, w=None, b=None, eps=1e-5):
  """LayerNorm over the last axis (biased variance, as torch)."""
  x = _f64(x)
  mu = x.mean(axis=-1, keepdims=True)
  var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
  y = (x - mu) / np.sqrt(var + eps)
  if w is not None:
    y = y * _f64(w)
  if b is not None:
    y = y + _f64(b)
  return y


def linear(x, w, b=None):
  """torch.nn.Linear: x @ w.T + b with w of shape [out, in]."""
  y = _f64(x) @ _f64(w).T
  if b is not None:
    y = y + _f64(b)
  return y


def _lin(weights, name, x):
  """Applies the Linear stored under `name.weight` / `name.bias`."""
  b = weights.get(name + ".bias")
  return linear(x, weights[name + ".weight"], b)


def conv2d_nchw(x, w, b=None, stride=1, padding=0):
  """torch.nn.functional.conv2d (no dilation, no groups) via im2col.

  Args:
    x: [N, C_in, H, W].
    w: [C_out, C_in, kh, kw].
    b: [C_out] or None.
    stride: int.
    padding: int (zero padding on all sides).

  Returns:
    [N, C_out, H_out, W_out].
  """
  x = _f64(x)
  w = _f64(w)
  n, c, h, wd = x.shape
  c_out, c_in, kh, kw = w.shape
  assert c == c_in, (x.shape, w.shape)
  xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
  h_out = (h + 2 * padding - kh) // stride + 1
  w_out = (wd + 2 * padding - kw) // stride + 1
  cols = np.empty((n, c, kh, kw, h_out, w_out), dtype=np.float64)
  for i in range(kh):
    for j in range(kw):
      cols[:, :, i, j] = xp[
        :, :, i : i + stride * (h_out - 1) + 1 : stride, j : j + stride * (w_out - 1) + 1 : stride
      ]
  y = np.einsum("nckluv,ockl->nouv", cols, w)
  if b is not None:
    y = y + _f64(b)[None, :, None, None]
  return y


def pixel_unshuffle(x, p):
  """torch.nn.functional.pixel_unshuffle on NCHW.

  Output channel c * p * p + i * p + j holds x[:, c, i::p, j::p].
  """
  x = _f64(x)
  n, c, h, w = x.shape
  y = x.reshape(n, c, h // p, p, w // p, p)
  y = y.transpose(0, 1, 3, 5, 2, 4)  # n, c, i, j, h', w'
  return y.reshape(n, c * p * p, h // p, w // p)


def pixel_shuffle(x, p):
  """torch.nn.functional.pixel_shuffle on NCHW (inverse of pixel_unshuffle)."""
  x = _f64(x)
  n, cpp, h, w = x.shape
  c = cpp // (p * p)
  y = x.reshape(n, c, p, p, h, w)
  y = y.transpose(0, 1, 4, 2, 5, 3)  # n, c, h', i, w', j
  return y.reshape(n, c, h * p, w * p)


def bilinear_resize_align_corners(x, out_h, out_w):
  """F.interpolate(x, (out_h, out_w), mode='bilinear', align_corners=True).

  No antialiasing. x is NCHW.
  """
  x = _f64(x)
  _, _, h, w = x.shape

  def _coords(n_in, n_out):
    if n_out == 1:
      src = np.zeros((1,), dtype=np.float64)
    else:
      src = np.arange(n_out, dtype=np.float64) * (n_in - 1) / (n_out - 1)
    i0 = np.clip(np.floor(src).astype(np.int64), 0, n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    return i0, i1, frac

  y0, y1, fy = _coords(h, out_h)
  x0, x1, fx = _coords(w, out_w)
  rows = x[:, :, y0, :] * (1.0 - fy)[None, None, :, None] + x[:, :, y1, :] * fy[None, None, :, None]
  out = (
    rows[:, :, :, x0] * (1.0 - fx)[None, None, None, :]
    + rows[:, :, :, x1] * fx[None, None, None, :]
  )
  return out


# ---------------------------------------------------------------------------
# Embeddings.
# ---------------------------------------------------------------------------


def _sincos_1d(dim, pos):
  """[len(pos), dim]: [sin(pos * omega), cos(pos * omega)], dim/2 freqs."""
  assert dim % 2 == 0
  omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
  omega = 1.0 / 10000.0**omega
  out = np.outer(_f64(pos).reshape(-1), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d_table(dim, grid_h, grid_w):
  """MAE-style 2D sin-cos table [grid_h * grid_w, dim], row-major tokens.

  As the release builds it: meshgrid(w, h), so the first dim/2 channels
  encode the column index and the last dim/2 the row index.
  """
  assert dim % 4 == 0
  rows, cols = np.meshgrid(
    np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64), indexing="ij"
  )
  emb_col = _sincos_1d(dim // 2, cols.reshape(-1))
  emb_row = _sincos_1d(dim // 2, rows.reshape(-1))
  return np.concatenate([emb_col, emb_row], axis=1)


def timestep_embedding(t, dim=256, max_period=1e4):
  """[len(t), dim] sinusoid ordered [cos(t f), sin(t f)]."""
  t = _f64(t).reshape(-1)
  half = dim // 2
  freqs = np.exp(-math.log(max_period) * np.arange(half, dtype=np.float64) / half)
  args = t[:, None] * freqs[None, :]
  emb = np.concatenate([np.cos(args), np.sin(args)], axis=-1)
  if dim % 2:
    emb = np.concatenate([emb, np.zeros_like(emb[:, :1])], axis=-1)
  return emb


def timestep_embedder(weights, prefix, t):
  """Linear(256 -> D) - SiLU - Linear(D -> D) on the 256-d embedding.

  Args:
    weights: dict under release key names.
    prefix: e.g. "generator.t_embedder" or "control_mlp.t_embedder".
    t: [N] timesteps.

  Returns:
    [N, D].
  """
  w0 = weights[prefix + ".mlp.0.weight"]
  emb = timestep_embedding(t, dim=w0.shape[1])
  h = silu(_lin(weights, prefix + ".mlp.0", emb))
  return _lin(weights, prefix + ".mlp.2", h)


# ---------------------------------------------------------------------------
# Patchify / unpatchify / reference encoder / camera MLP.
# ---------------------------------------------------------------------------


def patchify(weights, prefix, latent, patch=2):
  """Pixel-unshuffle, 1x1 conv, LN over channels (no affine, eps 1e-6).

  Args:
    weights: dict under release key names.
    prefix: e.g. "generator.patchify" (weights at `prefix.blocks.1.*`).
    latent: [N, C, H, W].
    patch: patch size.

  Returns:
    [N, (H/p) * (W/p), D] tokens, row-major over the token grid.
  """
  y = pixel_unshuffle(latent, patch)
  y = conv2d_nchw(y, weights[prefix + ".blocks.1.weight"], weights[prefix + ".blocks.1.bias"])
  n, d, gh, gw = y.shape
  tokens = y.reshape(n, d, gh * gw).transpose(0, 2, 1)
  return layer_norm(tokens, eps=1e-6)


def unpatchify(weights, prefix, tokens, grid_h, grid_w, patch=2):
  """LN (no affine, eps 1e-6) -> 1x1 conv -> pixel-shuffle.

  Args:
    weights: dict under release key names.
    prefix: e.g. "generator.unpatchify".
    tokens: [N, grid_h * grid_w, D].
    grid_h: token grid height.
    grid_w: token grid width.
    patch: patch size.

  Returns:
    [N, C, grid_h * p, grid_w * p].
  """
  y = layer_norm(tokens, eps=1e-6)
  n, _, d = y.shape
  y = y.transpose(0, 2, 1).reshape(n, d, grid_h, grid_w)
  y = conv2d_nchw(y, weights[prefix + ".blocks.1.weight"], weights[prefix + ".blocks.1.bias"])
  return pixel_shuffle(y, patch)


def ref_encoder(weights, ref_latent, prefix="ref_encoder"):
  """Reference encoder: its own patchify + its own position table.

  Args:
    weights: dict under release key names.
    ref_latent: [N, 4, h, w] clean reference latent.
    prefix: module prefix.

  Returns:
    [N, tokens, D].
  """
  tok = patchify(weights, prefix + ".patchify", ref_latent)
  return tok + _f64(weights[prefix + ".pos_embed"])


def cam_mlp(weights, pose16, prefix="cam_mlp"):
  """Camera MLP on the flattened 4x4 pose.

  LN(16, affine) -> in_proj -> + pos_embed -> LN (norm1) -> GEGLU -> Linear.
  No skip connection.

  Args:
    weights: dict under release key names.
    pose16: [..., 16].
    prefix: module prefix.

  Returns:
    [..., D].
  """
  x = layer_norm(
    pose16, weights[prefix + ".in_norm.weight"], weights[prefix + ".in_norm.bias"], eps=1e-5
  )
  x = _lin(weights, prefix + ".in_proj", x)
  x = x + _f64(weights[prefix + ".pos_embed"]).reshape(-1)
  x = layer_norm(
    x,
    weights[prefix + ".blocks.0.norm1.weight"],
    weights[prefix + ".blocks.0.norm1.bias"],
    eps=1e-5,
  )
  proj = _lin(weights, prefix + ".blocks.0.ff.net.0.proj", x)
  value, gate = np.split(proj, 2, axis=-1)
  x = value * gelu_exact(gate)
  return _lin(weights, prefix + ".blocks.0.ff.net.2", x)


# ---------------------------------------------------------------------------
# DiT block.
# ---------------------------------------------------------------------------


def attention(q, k, v, scale=None):
  """Softmax attention.

  Args:
    q, k, v: [B, T, H, hd].
    scale: logit scale; default 1/sqrt(hd).

  Returns:
    [B, T, H, hd].
  """
  q, k, v = _f64(q), _f64(k), _f64(v)
  if scale is None:
    scale = 1.0 / math.sqrt(q.shape[-1])
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
  logits = logits - logits.max(axis=-1, keepdims=True)
  p = np.exp(logits)
  p = p / p.sum(axis=-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", p, v)


def biased_attention_scale(tokens_per_view, total_views, train_views, head_dim, gamma=1.4):
  """Attention-biasing scale of the spec (more views than at training)."""
  n = tokens_per_view * total_views
  return math.sqrt(gamma * math.log(n) / math.log(tokens_per_view * train_views) / head_dim)


def dit_block(weights, prefix, x, c, control=None, num_heads=4, scale=None):
  """One Pippo DiT block (parallel attention + MLP, post-branch modulation).

  Args:
    weights: dict under release key names.
    prefix: e.g. "generator.blocks.0".
    x: [B, T_all, D], all views' tokens (reference view last).
    c: [B, D] time embedding.
    control: [B, T_c, D] or None; added to the MLP branch of the first T_c
      tokens.
    num_heads: number of attention heads.
    scale: attention logit scale; default 1/sqrt(head_dim).

  Returns:
    (new x [B, T_all, D], dict of intermediates named like the golden ones,
    without the prefix: "cond_adaln.out", "in_norm.out", "in_proj.out",
    "q_norm.out" and "k_norm.out" ([B, T, H, hd]), "attn_out_proj.in.0",
    "attn_out_proj.out", "mlp_act.out", "mlp_out_proj.out", "out", and the
    matching "*.in.0" inputs; "in.0", "in.cond", "in.control" are the block's
    own inputs in this function's layout).
  """
  x = _f64(x)
  b, t, d = x.shape
  hd = d // num_heads
  inter = {}

  inter["in.0"] = x
  inter["in.cond"] = _f64(c)
  inter["cond_adaln.in.0"] = _f64(c)
  ada = _lin(weights, prefix + ".cond_adaln.1", silu(c))  # [B, 6D]
  inter["cond_adaln.out"] = ada
  sh_a, sc_a, g_a, sh_m, sc_m, g_m = [a[:, None, :] for a in np.split(ada, 6, axis=-1)]

  inter["in_norm.in.0"] = x
  y = layer_norm(
    x, weights[prefix + ".in_norm.weight"], weights[prefix + ".in_norm.bias"], eps=1e-5
  )
  inter["in_norm.out"] = y
  inter["in_proj.in.0"] = y
  proj = _lin(weights, prefix + ".in_proj", y)
  inter["in_proj.out"] = proj
  mlp_hidden = proj.shape[-1] - 3 * d
  h = proj[..., :mlp_hidden]
  q, k, v = np.split(proj[..., mlp_hidden:], 3, axis=-1)
  q = q.reshape(b, t, num_heads, hd)
  k = k.reshape(b, t, num_heads, hd)
  v = v.reshape(b, t, num_heads, hd)
  inter["q_norm.in.0"] = q
  inter["k_norm.in.0"] = k
  q = layer_norm(q, weights[prefix + ".q_norm.weight"], weights[prefix + ".q_norm.bias"], eps=1e-5)
  k = layer_norm(k, weights[prefix + ".k_norm.weight"], weights[prefix + ".k_norm.bias"], eps=1e-5)
  inter["q_norm.out"] = q
  inter["k_norm.out"] = k

  a = attention(q, k, v, scale).reshape(b, t, d)
  inter["attn_out_proj.in.0"] = a
  a = _lin(weights, prefix + ".attn_out_proj", a)
  inter["attn_out_proj.out"] = a
  a = g_a * (a * (1.0 + sc_a) + sh_a)

  inter["mlp_act.in.0"] = h
  act = gelu_exact(h)
  inter["mlp_act.out"] = act
  inter["mlp_out_proj.in.0"] = act
  m = _lin(weights, prefix + ".mlp_out_proj", act)
  inter["mlp_out_proj.out"] = m
  if control is not None:
    control = _f64(control)
    inter["in.control"] = control
    tc = control.shape[1]
    m = m.copy()
    m[:, :tc] += control
  m = g_m * (m * (1.0 + sc_m) + sh_m)

  out = x + a + m
  inter["out"] = out
  return out, inter


# ---------------------------------------------------------------------------
# ControlMLP.
# ---------------------------------------------------------------------------


def siren(weights, prefix, x):
  """Per-point SIREN: Linear-sin(30x)-Linear-sin(x)-Linear (channels last).

  Args:
    weights: dict under release key names.
    prefix: e.g. "control_mlp.plucker_encoder.network".
    x: [..., 6].

  Returns:
    [..., 32].
  """
  h = np.sin(30.0 * _lin(weights, prefix + ".0", x))
  h = np.sin(_lin(weights, prefix + ".2", h))
  return _lin(weights, prefix + ".4", h)


def control_encoder(weights, prefix, x):
  """conv3x3 - SiLU - conv3x3/2 - SiLU - conv1x1 - LN over channels.

  Args:
    weights: dict under release key names.
    prefix: e.g. "control_mlp.control_encoder".
    x: [N, 40, h, w].

  Returns:
    [N, D, h/2, w/2] (NCHW, LayerNorm applied over channels, eps 1e-6).
  """
  p = prefix + ".conv_block"
  y = conv2d_nchw(x, weights[p + ".0.weight"], weights[p + ".0.bias"], stride=1, padding=1)
  y = silu(y)
  y = conv2d_nchw(y, weights[p + ".2.weight"], weights[p + ".2.bias"], stride=2, padding=1)
  y = silu(y)
  y = conv2d_nchw(y, weights[p + ".4.weight"], weights[p + ".4.bias"])
  y = layer_norm(
    y.transpose(0, 2, 3, 1), weights[p + ".5.weight"], weights[p + ".5.bias"], eps=1e-6
  )
  return y.transpose(0, 3, 1, 2)


def control_mlp(weights, t_views, anchor_latent, plucker, x_t_all, prefix="control_mlp"):
  """ControlMLP: per-view pixel-aligned controls, one output per DiT block.

  Args:
    weights: dict under release key names.
    t_views: [N] timestep per view (N = batch * views, flattened).
    anchor_latent: [N, 4, h, w] spatial-anchor latents.
    plucker: [N, 6, H, W] Plücker rays at pixel resolution.
    x_t_all: [N, 4, h, w] noisy latents (zeros for the reference view).
    prefix: module prefix.

  Returns:
    (list of depth arrays [N, tokens, D], dict of intermediates named like
    the golden ones without the prefix: "t_embedder.out",
    "plucker_encoder.in.0" [N, H, W, 6], "plucker_encoder.out" [N, H, W, 32],
    "control_encoder.in.0",
    "control_encoder.out", "out.<l>").
  """
  inter = {}
  anchor_latent = _f64(anchor_latent)
  x_t_all = _f64(x_t_all)
  n, _, h, w = anchor_latent.shape

  t_emb = timestep_embedder(weights, prefix + ".t_embedder", t_views)
  inter["t_embedder.out"] = t_emb

  pl = _f64(plucker).transpose(0, 2, 3, 1)  # channels last
  inter["plucker_encoder.in.0"] = pl
  pl = siren(weights, prefix + ".plucker_encoder.network", pl)
  inter["plucker_encoder.out"] = pl
  pl = bilinear_resize_align_corners(pl.transpose(0, 3, 1, 2), h, w)

  enc_in = np.concatenate([anchor_latent, pl, x_t_all], axis=1)
  inter["control_encoder.in.0"] = enc_in
  enc = control_encoder(weights, prefix + ".control_encoder", enc_in)
  inter["control_encoder.out"] = enc
  d = enc.shape[1]
  tokens = enc.reshape(n, d, -1).transpose(0, 2, 1)

  outs = []
  l = 0
  silu_t = silu(t_emb)
  while f"{prefix}.zero_blocks.{l}.zero_linear.weight" in weights:
    bp = f"{prefix}.zero_blocks.{l}"
    ada = _lin(weights, bp + ".zero_ada_ln.1", silu_t)
    shift, scale = np.split(ada, 2, axis=-1)
    mod = tokens * (1.0 + scale[:, None, :]) + shift[:, None, :]
    out = _lin(weights, bp + ".zero_linear", mod)
    inter[f"out.{l}"] = out
    outs.append(out)
    l += 1
  return outs, inter


# ---------------------------------------------------------------------------
# Full forward.
# ---------------------------------------------------------------------------


def _drop_time_axis(x):
  """[B, V, 1, ...] -> [B, V, ...]."""
  x = _f64(x)
  assert x.shape[2] == 1, x.shape
  return x[:, :, 0]


def pippo_forward(weights, inputs, depth, num_heads, attn_scale=None):
  """Pippo denoiser forward pass (P3: references, camera MLP, ControlMLP).

  Args:
    weights: dict under release key names.
    inputs: dict with the golden `inputs.npz` layout: x_t [B,NV,4,h,w],
      t [B], ref_latent [B,1,1,4,h,w], anchor [B,NV,1,4,h,w],
      ref_anchor [B,1,1,4,h,w], plucker [B,NV,1,6,H,W],
      ref_plucker [B,1,1,6,H,W], cam_pose [B,NV,1,16],
      ref_cam_pose [B,1,1,16].
    depth: number of DiT blocks.
    num_heads: attention heads.
    attn_scale: optional attention logit scale (attention biasing).

  Returns:
    (eps [B, NV, 4, h, w], intermediates dict keyed like the golden
    `intermediates.npz`, in the release's layouts).
  """
  inter = {}
  x_t = _f64(inputs["x_t"])
  b, nv, c, h, w = x_t.shape
  t = np.asarray(inputs["t"]).reshape(-1)
  ref_latent = _drop_time_axis(inputs["ref_latent"])  # [B, 1, 4, h, w]
  nr = ref_latent.shape[1]
  anchor = _drop_time_axis(inputs["anchor"])
  ref_anchor = _drop_time_axis(inputs["ref_anchor"])
  plucker = _drop_time_axis(inputs["plucker"])
  ref_plucker = _drop_time_axis(inputs["ref_plucker"])
  cam_pose = _drop_time_axis(inputs["cam_pose"])  # [B, NV, 16]
  ref_cam_pose = _drop_time_axis(inputs["ref_cam_pose"])  # [B, 1, 16]
  nviews = nv + nr

  # Reference view tokens: own patchify + own position table + camera MLP.
  ref_tok = ref_encoder(weights, ref_latent.reshape(b * nr, c, h, w))
  inter["ref_encoder.out"] = ref_tok
  ref_cam = cam_mlp(weights, ref_cam_pose.reshape(b * nr, 16))
  inter["cam_mlp.call0.out.0"] = ref_cam
  ref_tok = ref_tok + ref_cam[:, None, :]
  n_tok = ref_tok.shape[1]
  d = ref_tok.shape[2]
  inter["conds.cond_attn"] = ref_tok.reshape(b, nr, n_tok, d)

  # Target view tokens.
  x_tok = patchify(weights, "generator.patchify", x_t.reshape(b * nv, c, h, w))
  inter["generator.patchify.out"] = x_tok
  tgt_cam = cam_mlp(weights, cam_pose.reshape(b * nv, 16))
  inter["cam_mlp.call1.out.0"] = tgt_cam
  inter["conds.pos_enc_x"] = np.broadcast_to(tgt_cam.reshape(b, nv, 1, d), (b, nv, n_tok, d)).copy()
  x_tok = x_tok + _f64(weights["generator.pos_embed"]) + tgt_cam[:, None, :]

  # Time embedding, one t per sample.
  cvec = timestep_embedder(weights, "generator.t_embedder", t)
  inter["generator.t_embedder.out"] = cvec

  # ControlMLP over all views, targets then reference, batch-major.
  t_views = np.repeat(t, nviews)
  anchors_all = np.concatenate([anchor, ref_anchor], axis=1)
  plucker_all = np.concatenate([plucker, ref_plucker], axis=1)
  xt_all = np.concatenate([x_t, np.zeros_like(ref_latent)], axis=1)
  controls, cinter = control_mlp(
    weights,
    t_views,
    anchors_all.reshape(b * nviews, *anchors_all.shape[2:]),
    plucker_all.reshape(b * nviews, *plucker_all.shape[2:]),
    xt_all.reshape(b * nviews, *xt_all.shape[2:]),
  )
  for k, v in cinter.items():
    inter["control_mlp." + k] = v
  for l, ctl in enumerate(controls):
    inter[f"conds.controls.{l}"] = ctl

  # Joint blocks over all views: [B, (NV + 1) * tokens, D]. The release adds
  # each control to *every* view's tokens, the reference included (the spec
  # text says target tokens only; the golden block outputs settle it).
  xs = np.concatenate([x_tok.reshape(b, nv, n_tok, d), ref_tok.reshape(b, nr, n_tok, d)], axis=1)
  xs = xs.reshape(b, nviews * n_tok, d)
  for l in range(depth):
    pfx = f"generator.blocks.{l}"
    inter[pfx + ".in.0"] = xs.reshape(b * nviews, n_tok, d)
    ctl = None
    if l < len(controls):
      ctl = controls[l].reshape(b, nviews * n_tok, d)
    xs, binter = dit_block(weights, pfx, xs, cvec, ctl, num_heads=num_heads, scale=attn_scale)
    for k, v in binter.items():
      if k not in ("out", "in.0", "in.control"):
        inter[f"{pfx}.{k}"] = v
    if ctl is not None:
      inter[pfx + ".in.control"] = controls[l]
    inter[pfx + ".out"] = xs.reshape(b * nviews, n_tok, d)

  # Drop the reference tokens and unpatchify the targets.
  out_tok = xs.reshape(b, nviews, n_tok, d)[:, :nv].reshape(b * nv, n_tok, d)
  inter["generator.unpatchify.in.0"] = out_tok
  p = 2
  eps = unpatchify(weights, "generator.unpatchify", out_tok, h // p, w // p, patch=p)
  inter["generator.unpatchify.out"] = eps
  return eps.reshape(b, nv, c, h, w), inter
