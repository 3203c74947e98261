"""Shared pieces of the training tests: tiny stage configs, a tiny studio, checkpoint reading."""

import importlib
import io
import json
import os

from absl import flags

from pippo_jax import checkpoints
from pippo_jax.data_pipelines import pipelines, synthetic_studio
from pippo_jax.models import params as params_lib
from pippo_jax.models.config import ModelConfig
from pippo_jax.models.pippo import Pippo
from pippo_jax.parallel import sharding
from pippo_jax.training import state as state_lib

flags.FLAGS.mark_as_parsed()  # Grain reads absl flags.

STUDIO = synthetic_studio.StudioSettings(
  seed=0, subjects=3, cameras=6, moments=1, resolution=64, images_per_subject=2
)
TINY_MODEL = dict(width=32, depth=2, num_heads=2, cam_mlp_hidden=16)


def write_studio(out_dir) -> str:
  """Writes the tiny studio's captures under `out_dir`; returns the `data.path` to train on."""
  synthetic_studio.write_studio(str(out_dir), STUDIO, ("captures",), progress_stream=io.StringIO())
  return os.path.join(str(out_dir), "captures")


def session_studio(tmp_path_factory):
  """A 2-subject studio in the session's temp dir, shared by the CLI-driven test modules (writing
  it again is a no-op); returns the captures path."""
  out = tmp_path_factory.getbasetemp() / "studio"
  synthetic_studio.write_studio(
    str(out),
    synthetic_studio.StudioSettings(
      seed=0, subjects=2, cameras=6, moments=1, resolution=64, images_per_subject=2
    ),
    ("captures",),
    progress_stream=io.StringIO(),
  )
  return out / "captures"


def tiny_config(data_path: str, *, batch_size: int = 8, stage: str = "p3_posttrain", **mesh):
  """A P3 smoke config shrunk to seconds per step: width 32, depth 2, two target views at 64 px.

  `mesh` overrides `sharding.mesh` (unnamed axes are 1). Logging, checkpoints and samples are left
  to the caller; the MFU peak is fixed.
  """
  config = importlib.import_module(f"pippo_jax.configs.{stage}").get_config("size=smoke,views=2")
  config.model.update(TINY_MODEL)
  config.batch_size = batch_size
  config.data.path = data_path
  config.train.update(num_steps=4, log_every=2, checkpoint_every=2, sample_every=0, peak_flops=1e12)
  if mesh:
    config.sharding.mesh.update({**dict(data=1, fsdp=1, seq=1, tensor=1), **mesh})
  return config


def train_cli_args(
  *, batch_size: int, num_steps: int, checkpoint_every: int, sample_every: int = 0
) -> list[str]:
  """pippo-train flags for the tiny P3 model of `tiny_config` on a (data 2, tensor 2) mesh,
  logging every step, sample grids (4 DDIM steps) every `sample_every` steps (0: none)."""
  return [
    "--config=configs/p3_posttrain.py:size=smoke,views=2",
    f"--config.batch_size={batch_size}",
    *(f"--config.model.{k}={v}" for k, v in TINY_MODEL.items()),
    "--config.sharding.mesh.data=2",
    "--config.sharding.mesh.tensor=2",
    f"--config.train.num_steps={num_steps}",
    f"--config.train.checkpoint_every={checkpoint_every}",
    "--config.train.log_every=1",
    f"--config.train.sample_every={sample_every}",
    "--config.train.sample_steps=4",
    "--config.train.peak_flops=1e12",  # skip the matmul benchmark
    "--config.optimizer.warmup_steps=0",  # full-size updates: a mismatch shows in the parameters
  ]


def restore(workdir, config, **mesh_axes):
  """(state, step, shardings, data iterator) of WORKDIR's newest checkpoint, read straight into
  the shardings of a (data, fsdp, tensor) mesh with `mesh_axes` (unnamed axes are 1)."""
  cfg = ModelConfig.from_config(config.model)
  model = Pippo(cfg)
  tx = state_lib.make_optimizer(config.optimizer, params_lib.abstract(cfg))
  mesh = sharding.make_mesh(**mesh_axes)
  abstract, shardings = state_lib.state_shardings(
    model, tx, cfg, mesh, use_ema=config.train.ema_decay > 0
  )
  data = pipelines.make_iterator(config.data)
  manager = checkpoints.make_manager(
    str(workdir), config.train.keep_checkpoints, config.train.checkpoint_every
  )
  try:
    state, step = checkpoints.restore_latest(manager, abstract, shardings, data, config)
  finally:
    manager.close()
  return state, step, shardings, data


def read_metrics(workdir) -> list[dict]:
  """The lines of WORKDIR/metrics.jsonl."""
  with open(os.path.join(str(workdir), "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]
