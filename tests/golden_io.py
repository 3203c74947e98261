"""Loads the release's golden numbers (shared/golden/release_s0) in this package's layouts."""

import json
import pathlib

import numpy as np

from pippo_jax.models.config import ModelConfig

GOLDEN = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "golden" / "release_s0"


def load(name: str) -> dict[str, np.ndarray]:
  with np.load(GOLDEN / name) as f:
    return {k: f[k] for k in f.files}


def model_config(**overrides) -> ModelConfig:
  """Our ModelConfig for the golden model, read from its meta.json."""
  meta = json.loads((GOLDEN / "meta.json").read_text())["model_config"]
  gen, cam, ctl = meta["generator"], meta["cam_mlp"], meta["control_mlp"]
  kw = dict(
    width=gen["dim"],
    depth=gen["depth"],
    num_heads=gen["num_heads"],
    patch_size=gen["patch_size"],
    latent_channels=gen["in_channels"],
    latent_size=gen["img_size"],
    image_size=meta["img_size"],
    num_views=meta["num_views"],
    cam_mlp_hidden=cam["hidden_size"],
    siren_hidden=tuple(ctl["plucker_siren_config"]["layers"]),
    siren_out=ctl["plucker_siren_config"]["out_features"],
    remat_policy="none",
  )
  kw.update(overrides)
  return ModelConfig(**kw)


def nhwc(x: np.ndarray) -> np.ndarray:
  return np.moveaxis(x, -3, -1)


def model_inputs(inputs: dict[str, np.ndarray]):
  """Golden inputs (NCHW, with a time axis of length 1) -> (x_t, t, cond, noise) for `Pippo`."""
  cond = {
    "ref_latent": nhwc(inputs["ref_latent"][:, 0, 0]),
    "cam_pose": inputs["cam_pose"][:, :, 0],
    "ref_cam_pose": inputs["ref_cam_pose"][:, 0, 0],
    "anchor_latent": nhwc(inputs["anchor"][:, :, 0]),
    "ref_anchor_latent": nhwc(inputs["ref_anchor"][:, 0, 0]),
    "plucker": nhwc(inputs["plucker"][:, :, 0]),
    "ref_plucker": nhwc(inputs["ref_plucker"][:, 0, 0]),
  }
  return nhwc(inputs["x_t"]), inputs["t"].astype(np.int32), cond, nhwc(inputs["noise"])
