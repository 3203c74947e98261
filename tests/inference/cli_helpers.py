"""What the CLI tests of pippo-sample and pippo-eval share: a user's shell and folder."""

import io
import os

import flax.linen as nn
import jax
import numpy as np
import skimage.data
from PIL import Image

from pippo_jax import checkpoints
from pippo_jax.configs import p3_posttrain
from pippo_jax.data_pipelines import synthetic_studio
from pippo_jax.models import pippo
from pippo_jax.models.config import ModelConfig

STUDIO = synthetic_studio.StudioSettings(
  seed=0, subjects=2, cameras=6, moments=1, resolution=64, images_per_subject=1
)


def user_env() -> dict:
  """A user's shell: one CPU device (no fake-device flags from the test suite)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return dict(env, JAX_PLATFORMS="cpu")


def make_user_dir(root):
  """Fills `root` with `ckpt` (tiny P3 model, random non-zero weights, data.path = the studio
  there), `studio/`, `astronaut.jpg` and `cutout.png`."""
  synthetic_studio.write_studio(
    str(root / "studio"), STUDIO, ("captures",), progress_stream=io.StringIO()
  )
  config = p3_posttrain.get_config("size=smoke,views=2")
  config.model.update(width=32, depth=2, num_heads=2, cam_mlp_hidden=16)
  config.data.path = str(root / "studio" / "captures")
  cfg = ModelConfig.from_config(config.model)
  params = nn.unbox(pippo.Pippo(cfg).init(jax.random.key(0), *pippo.dummy_inputs(cfg))["params"])
  # Zero-initialised output layers would make every sample the same grey: perturb everything.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  leaves = [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
  checkpoints.write_params(str(root / "ckpt"), jax.tree.unflatten(tree, leaves), config)
  Image.fromarray(skimage.data.astronaut()).save(root / "astronaut.jpg", quality=90)
  yy, xx = np.mgrid[:200, :120]
  alpha = (((yy - 30) ** 2 + (xx - 60) ** 2 < 20**2) | ((yy > 45) & (abs(xx - 60) < 25))) * 255
  rgba = np.dstack([np.full((200, 120, 3), (200, 80, 60)), alpha]).astype(np.uint8)
  Image.fromarray(rgba).save(root / "cutout.png")
  return root
