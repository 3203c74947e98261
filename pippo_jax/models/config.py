"""The model's hyper-parameters: a frozen dataclass built from a stage config's `model` section."""

import dataclasses
from typing import Any

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Every architectural value of the Pippo denoiser (defaults: the release's full model)."""

  width: int = 1536
  depth: int = 28
  num_heads: int = 24
  mlp_ratio: float = 4.0
  patch_size: int = 2
  latent_channels: int = 4
  latent_size: int = 16  # latent side (image side / codec downsampling)
  image_size: int = 128  # pixel side (Plücker maps live at this resolution)
  num_views: int = 4  # target views per sample (the reference is one more)
  # Timestep embedding.
  freq_dim: int = 256
  max_period: float = 1e4
  # Normalisation epsilons.
  block_norm_eps: float = 1e-5  # in_norm and QK-norm
  patch_norm_eps: float = 1e-6  # patchify / unpatchify LayerNorm (no affine)
  # Camera MLP (M2, P3).
  use_cam_mlp: bool = True
  cam_pose_dim: int = 16
  cam_mlp_hidden: int = 1024
  cam_norm_eps: float = 1e-5
  # ControlMLP (P3).
  use_control_mlp: bool = True
  siren_hidden: tuple[int, ...] = (16, 32)
  siren_out: int = 32
  siren_w0_first: float = 30.0
  siren_w0: float = 1.0
  plucker_dim: int = 6
  control_norm_eps: float = 1e-6
  # Attention.
  attention_impl: str = "auto"
  attention_block_q: int = 512
  attention_block_kv: int = 512
  attention_gamma: float = 1.4  # attention biasing strength when sampling more views than trained
  attention_train_views: int = 24  # total views per sequence seen in training (biasing reference)
  # Compute.
  dtype: str = "float32"  # matmul input dtype; params, norms and softmax stay float32
  scan_blocks: bool = True
  remat_policy: str = "nothing_saveable"  # a jax.checkpoint_policies name, or "none"

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  @property
  def mlp_hidden(self) -> int:
    return int(self.mlp_ratio * self.width)

  @property
  def grid(self) -> tuple[int, int]:
    g = self.latent_size // self.patch_size
    return (g, g)

  @property
  def tokens_per_view(self) -> int:
    return self.grid[0] * self.grid[1]

  @property
  def control_in_channels(self) -> int:
    return 2 * self.latent_channels + self.siren_out

  @property
  def compute_dtype(self) -> Any:
    return jnp.dtype(self.dtype)

  @classmethod
  def from_config(cls, model_cfg: Any) -> "ModelConfig":
    """Build from a ConfigDict / mapping; unknown keys are an error naming the key."""
    d = dict(model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else model_cfg)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"unknown model config keys {unknown}; valid keys: {sorted(names)}")
    for k in ("siren_hidden",):
      if k in d:
        d[k] = tuple(d[k])
    return cls(**d)
