"""Parameter mapping between the authors' PyTorch release (`Pippo.state_dict()`) and ours.

Layouts: release Linear weights are [out, in] (ours [in, out]); 1x1 convs [out, in, 1, 1] become
Dense kernels [in, out]; 3x3 convs [out, in, kh, kw] become [kh, kw, in, out]; LayerNorm
weight/bias become scale/bias; per-block tensors `...blocks.{i}...` are stacked on a leading
block axis (our blocks run under `nn.scan`). The release's `cond_attn_*` / `k_cond_norm` weights in
every DiT block are never used by its forward pass and are dropped; `schedule.*` buffers are the
noise schedule, recomputed from the config.
"""

import re
from collections.abc import Iterator

import numpy as np

from pippo_jax.models.config import ModelConfig

# Release keys that carry no model parameters we keep.
UNUSED_PATTERNS = (
  r"generator\.blocks\.\d+\.(cond_attn_norm|cond_attn_proj|k_cond_norm)\.",
  r"schedule\.",
)
_UNUSED = re.compile("|".join(f"(?:{p})" for p in UNUSED_PATTERNS))

# (release module prefix, our path, kind) for modules outside the block stacks.
_SINGLE = [
  ("generator.patchify.blocks.1", ("generator", "patchify", "proj"), "conv1x1"),
  ("generator.unpatchify.blocks.1", ("generator", "unpatchify", "proj"), "conv1x1"),
  ("generator.pos_embed", ("generator", "pos_embed"), "param"),
  ("generator.t_embedder.mlp.0", ("generator", "t_embedder", "fc1"), "linear"),
  ("generator.t_embedder.mlp.2", ("generator", "t_embedder", "fc2"), "linear"),
  ("ref_encoder.pos_embed", ("ref_encoder", "pos_embed"), "param"),
  ("ref_encoder.patchify.blocks.1", ("ref_encoder", "patchify", "proj"), "conv1x1"),
  ("null_conds.ref", ("null_ref",), "param"),
]
_CAM = [
  ("cam_mlp.pos_embed", ("cam_mlp", "pos_embed"), "param"),
  ("cam_mlp.in_norm", ("cam_mlp", "in_norm"), "norm"),
  ("cam_mlp.in_proj", ("cam_mlp", "in_proj"), "linear"),
  ("cam_mlp.blocks.0.norm1", ("cam_mlp", "norm"), "norm"),
  ("cam_mlp.blocks.0.ff.net.0.proj", ("cam_mlp", "geglu"), "linear"),
  ("cam_mlp.blocks.0.ff.net.2", ("cam_mlp", "out"), "linear"),
  ("null_conds.cam_pose", ("null_cam",), "param"),
]
_CONTROL = [
  ("control_mlp.control_encoder.conv_block.0", ("control_mlp", "encoder", "conv0"), "conv"),
  ("control_mlp.control_encoder.conv_block.2", ("control_mlp", "encoder", "conv1"), "conv"),
  ("control_mlp.control_encoder.conv_block.4", ("control_mlp", "encoder", "conv2"), "conv"),
  ("control_mlp.control_encoder.conv_block.5", ("control_mlp", "encoder", "norm"), "norm"),
  ("control_mlp.t_embedder.mlp.0", ("control_mlp", "t_embedder", "fc1"), "linear"),
  ("control_mlp.t_embedder.mlp.2", ("control_mlp", "t_embedder", "fc2"), "linear"),
  ("control_mlp.control_zero_token", ("control_mlp", "zero_token"), "param"),
]
# Per-block modules: (release suffix, our name) for generator.blocks.{i} -> generator/blocks/<name>.
_BLOCK = [
  ("in_norm", "in_norm", "norm"),
  ("in_proj", "in_proj", "linear"),
  ("q_norm", "q_norm", "norm"),
  ("k_norm", "k_norm", "norm"),
  ("attn_out_proj", "attn_out", "linear"),
  ("cond_adaln.1", "adaln", "linear"),
  ("mlp_out_proj", "mlp_out", "linear"),
]
# ControlMLP zero blocks are stored as flat stacked arrays.
_ZERO_BLOCK = [("zero_ada_ln.1", "adaln"), ("zero_linear", "linear")]


def _tensors(kind: str) -> list[tuple[str, str]]:
  """(release tensor suffix, our leaf name) pairs for a module kind."""
  return {
    "linear": [("weight", "kernel"), ("bias", "bias")],
    "conv": [("weight", "kernel"), ("bias", "bias")],
    "conv1x1": [("weight", "kernel"), ("bias", "bias")],
    "norm": [("weight", "scale"), ("bias", "bias")],
    "param": [("", "")],
  }[kind]


def _to_ours(x: np.ndarray, kind: str, leaf: str) -> np.ndarray:
  if leaf == "kernel":
    if kind == "linear":
      return x.T
    if kind == "conv1x1":
      return x[:, :, 0, 0].T
    return np.transpose(x, (2, 3, 1, 0))  # [out, in, kh, kw] -> [kh, kw, in, out]
  if kind == "param":
    return x.reshape(x.shape[-2:] if x.ndim >= 3 and x.shape[-2] > 1 else x.shape[-1:])
  return x


def _to_release(x: np.ndarray, kind: str, leaf: str, shape: tuple[int, ...]) -> np.ndarray:
  if leaf == "kernel":
    if kind == "linear":
      return x.T
    if kind == "conv1x1":
      return x.T[:, :, None, None]
    return np.transpose(x, (3, 2, 0, 1))
  return x.reshape(shape)


def _param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  """Release shapes of the `param`-kind tensors (leading singleton axes)."""
  d, n = cfg.width, cfg.tokens_per_view
  return {
    "generator.pos_embed": (1, n, d),
    "ref_encoder.pos_embed": (1, n, d),
    "null_conds.ref": (1, 1, 1, d),
    "cam_mlp.pos_embed": (1, 1, cfg.cam_mlp_hidden),
    "null_conds.cam_pose": (1, 1, d),
    "control_mlp.control_zero_token": (1, 1, d),
  }


def _entries(cfg: ModelConfig) -> Iterator[tuple[str, tuple, str, str, int | None]]:
  """Every (release key, our path, kind, our leaf, block index) of a model with this config."""
  modules = list(_SINGLE)
  if cfg.use_cam_mlp:
    modules += _CAM
  if cfg.use_control_mlp:
    modules += _CONTROL
    names = [f"fc{i}" for i in range(len(cfg.siren_hidden) + 1)]
    modules += [
      (f"control_mlp.plucker_encoder.network.{2 * i}", ("control_mlp", "siren", nm), "linear")
      for i, nm in enumerate(names)
    ]
  for prefix, path, kind in modules:
    for suffix, leaf in _tensors(kind):
      key = f"{prefix}.{suffix}" if suffix else prefix
      yield key, path + ((leaf,) if leaf else ()), kind, leaf, None
  for i in range(cfg.depth):
    for rel, ours, kind in _BLOCK:
      for suffix, leaf in _tensors(kind):
        yield (
          f"generator.blocks.{i}.{rel}.{suffix}",
          ("generator", "blocks", ours, leaf),
          kind,
          leaf,
          i,
        )
    if cfg.use_control_mlp:
      for rel, ours in _ZERO_BLOCK:
        for suffix, leaf in _tensors("linear"):
          yield (
            f"control_mlp.zero_blocks.{i}.{rel}.{suffix}",
            ("control_mlp", f"{ours}_{leaf}"),
            "linear",
            leaf,
            i,
          )


def _set(tree: dict, path: tuple, value) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def _get(tree: dict, path: tuple):
  for p in path:
    tree = tree[p]
  return tree


def release_to_params(state_dict: dict, cfg: ModelConfig) -> tuple[dict, list[str]]:
  """Release state_dict (name -> array) -> (our params tree of float32 NumPy arrays, dropped keys).

  Raises ValueError listing every missing or unrecognised key.
  """
  sd = {k: np.asarray(v) for k, v in state_dict.items()}
  entries = list(_entries(cfg))
  expected = {e[0] for e in entries}
  dropped = sorted(k for k in sd if _UNUSED.match(k))
  missing = sorted(expected - set(sd))
  unknown = sorted(set(sd) - expected - set(dropped))
  if missing or unknown:
    raise ValueError(
      "release checkpoint does not match the config:"
      + (f"\n  missing keys ({len(missing)}): {missing}" if missing else "")
      + (f"\n  unknown keys ({len(unknown)}): {unknown}" if unknown else "")
    )
  params, stacks = {}, {}
  for key, path, kind, leaf, block in entries:
    value = _to_ours(sd[key], kind, leaf).astype(np.float32)
    if block is None:
      _set(params, path, value)
    else:
      stacks.setdefault(path, [None] * cfg.depth)[block] = value
  for path, values in stacks.items():
    _set(params, path, np.stack(values))
  return params, dropped


def params_to_release(params: dict, cfg: ModelConfig) -> dict[str, np.ndarray]:
  """Our params tree (scanned blocks) -> a release-layout state_dict (without unused weights)."""
  shapes = _param_shapes(cfg)
  out = {}
  for key, path, kind, leaf, block in _entries(cfg):
    value = np.asarray(_get(params, path), np.float32)
    if block is not None:
      value = value[block]
    out[key] = np.ascontiguousarray(_to_release(value, kind, leaf, shapes.get(key, value.shape)))
  return out
