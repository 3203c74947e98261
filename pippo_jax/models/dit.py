"""The multi-view DiT: parallel attention + MLP blocks with post-branch modulation.

One block, for tokens x [B, L, D] of all views of a sample (reference view last) and the time
embedding c [B, D]:

    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = Linear_zero(SiLU(c))
    y = LayerNorm(x)                                  # affine, float32
    h, q, k, v = split(Linear(y), [4D, D, D, D])      # fused MLP-in and QKV projection
    q, k = LayerNorm_head(q), LayerNorm_head(k)       # QK-norm over the head dim
    a = gate_a * (W_o(attention(q, k, v)) * (1 + scale_a) + shift_a)
    m = W_2(GELU(h)) (+ ControlMLP residual of this block)
    m = gate_m * (m * (1 + scale_m) + shift_m)
    x = x + a + m

Blocks run under `nn.scan` (stacked parameters, flat compile time in depth) wrapped in `nn.remat`
with a named `jax.checkpoint_policies` policy, or unrolled for debugging.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pippo_jax.models import attention, embeddings, layers
from pippo_jax.models.config import ModelConfig


@layers.unit_batch_squeezed
def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  return x * (1 + scale) + shift


@layers.unit_batch_squeezed
def gated_modulate(x: jax.Array, shift: jax.Array, scale: jax.Array, gate: jax.Array) -> jax.Array:
  return gate * modulate(x, shift, scale)


def apply_control_block(ctrl: dict, params: dict, compute_dtype: Any) -> jax.Array:
  """ControlMLP zero block: Linear_zero(modulate(h, shift, scale)).

  (shift, scale) = Linear(SiLU(t)).

  ctrl: {"h": encoder tokens [B, L, D], "temb": ControlMLP time embedding [B, D],
         "drop": bool [B] (use the zero token instead), "zero_token": [D]}.
  params: this block's {"adaln": {"kernel", "bias"}, "linear": {"kernel", "bias"}}.
  """
  mod = layers.matmul(nn.silu(ctrl["temb"]), params["adaln"]["kernel"], compute_dtype)
  shift, scale = jnp.split(mod + params["adaln"]["bias"], 2, axis=-1)
  h = modulate(ctrl["h"], shift[:, None], scale[:, None])
  out = layers.matmul(h, params["linear"]["kernel"], compute_dtype) + params["linear"]["bias"]
  return jnp.where(ctrl["drop"][:, None, None], ctrl["zero_token"], out)


class DiTBlock(nn.Module):
  """One Pippo DiT block (see the module docstring). Returns (x, None) to suit `nn.scan`."""

  cfg: ModelConfig
  attn_scale: float

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array, ctrl: dict | None, ctrl_params: dict | None):
    cfg = self.cfg
    cd = cfg.compute_dtype
    b, length, d = x.shape
    x = layers.constrain(x, ("act_batch", "act_length", "act_embed"))

    mod = layers.Dense(
      6 * d, ("embed", "mlp"), kernel_init=layers.zeros, compute_dtype=cd, name="adaln"
    )(nn.silu(c))
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(mod[:, None, :], 6, axis=-1)

    y = layers.LayerNorm(cfg.block_norm_eps, name="in_norm")(x)
    y = layers.Dense(cfg.mlp_hidden + 3 * d, ("embed", "mlp"), compute_dtype=cd, name="in_proj")(y)
    h, q, k, v = jnp.split(y, [cfg.mlp_hidden, cfg.mlp_hidden + d, cfg.mlp_hidden + 2 * d], axis=-1)

    heads = (b, length, cfg.num_heads, cfg.head_dim)
    q = layers.LayerNorm(cfg.block_norm_eps, axis_name="head_dim", name="q_norm")(q.reshape(heads))
    k = layers.LayerNorm(cfg.block_norm_eps, axis_name="head_dim", name="k_norm")(k.reshape(heads))
    v = v.reshape(heads)
    q, k, v = (
      layers.constrain(z, ("act_batch", "act_length", "act_heads", None)) for z in (q, k, v)
    )
    attend = attention.dot_product_attention
    seq_axis = layers.sharded_mesh_axis("act_length")
    splash = attention.resolve_implementation(cfg.attention_impl) == "splash"
    if seq_axis is not None or (splash and not jax.sharding.get_abstract_mesh().empty):
      # Tokens sharded over `seq` (sequence parallel), or a kernel XLA cannot partition: attend
      # per device.
      attend = functools.partial(
        attention.sharded_attention,
        batch_axis=layers.sharded_mesh_axis("act_batch"),
        seq_axis=seq_axis,
        head_axis=layers.sharded_mesh_axis("act_heads"),
      )
    a = attend(
      q.astype(cd),
      k.astype(cd),
      v.astype(cd),
      scale=self.attn_scale,
      implementation=cfg.attention_impl,
      block_q=cfg.attention_block_q,
      block_kv=cfg.attention_block_kv,
    )
    a = layers.Dense(d, ("mlp", "embed"), compute_dtype=cd, name="attn_out")(
      a.reshape(b, length, d).astype(jnp.float32)
    )
    a = gated_modulate(a, shift_a, scale_a, gate_a)

    h = layers.constrain(h, ("act_batch", "act_length", "act_mlp"))
    m = layers.Dense(d, ("mlp", "embed"), compute_dtype=cd, name="mlp_out")(
      nn.gelu(h, approximate=False)
    )
    if ctrl is not None:
      control = apply_control_block(ctrl, ctrl_params, cd)
      m = m.at[:, : control.shape[1]].add(control)
    m = gated_modulate(m, shift_m, scale_m, gate_m)
    return x + a + m, None


def run_blocks(
  cfg: ModelConfig,
  attn_scale: float,
  x: jax.Array,
  c: jax.Array,
  ctrl: dict | None,
  ctrl_params: dict | None,
) -> jax.Array:
  """Apply `cfg.depth` blocks (scanned or unrolled, optionally rematerialised). Call inside a
  compact method: the blocks' parameters are `blocks` (stacked on a leading `layers` axis) when
  scanned, `blocks_0 ... blocks_{depth-1}` when unrolled."""
  block_cls = DiTBlock
  if cfg.remat_policy != "none":
    policy = getattr(jax.checkpoint_policies, cfg.remat_policy)
    block_cls = nn.remat(DiTBlock, policy=policy, prevent_cse=not cfg.scan_blocks)
  if cfg.scan_blocks:
    scanned = nn.scan(
      block_cls,
      variable_axes={"params": 0},
      split_rngs={"params": True},
      in_axes=(nn.broadcast, nn.broadcast, 0),
      length=cfg.depth,
      metadata_params={nn.PARTITION_NAME: "layers"},
    )
    x, _ = scanned(cfg, attn_scale, name="blocks")(x, c, ctrl, ctrl_params)
    return x
  for i in range(cfg.depth):
    params_i = None if ctrl_params is None else jax.tree.map(lambda p, i=i: p[i], ctrl_params)
    x, _ = block_cls(cfg, attn_scale, name=f"blocks_{i}")(x, c, ctrl, params_i)
  return x


class DiT(nn.Module):
  """Patchify + position table, joint blocks over targets and reference, unpatchify of targets."""

  cfg: ModelConfig
  attn_scale: float

  @nn.compact
  def __call__(
    self,
    x_t: jax.Array,
    t: jax.Array,
    view_embed: jax.Array | None,
    ref_tokens: jax.Array,
    ctrl: dict | None,
    ctrl_params: dict | None,
  ) -> jax.Array:
    """x_t [B, V, h, w, C]; view_embed [B, V, D] (camera encoding) or None; ref_tokens [B, N, D]."""
    cfg = self.cfg
    b, v, h, w, c = x_t.shape
    d, n = cfg.width, cfg.tokens_per_view
    x = embeddings.Patchify(
      d, cfg.patch_size, cfg.patch_norm_eps, cfg.compute_dtype, name="patchify"
    )(x_t.reshape(b * v, h, w, c))
    x = (x + embeddings.sincos_param(self, "pos_embed", cfg)).reshape(b, v, n, d)
    if view_embed is not None:
      x = x + view_embed[:, :, None, :]
    x = jnp.concatenate([x, ref_tokens[:, None]], axis=1).reshape(b, (v + 1) * n, d)
    temb = embeddings.TimestepEmbedder(
      d, cfg.freq_dim, cfg.max_period, cfg.compute_dtype, name="t_embedder"
    )(t)
    x = run_blocks(cfg, self.attn_scale, x, temb, ctrl, ctrl_params)
    x = x[:, : v * n].reshape(b * v, n, d)
    eps = embeddings.Unpatchify(
      c, cfg.grid, cfg.patch_size, cfg.patch_norm_eps, cfg.compute_dtype, name="unpatchify"
    )(x)
    return eps.reshape(b, v, h, w, c)
