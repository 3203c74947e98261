"""Checkpoints: a run saved on one mesh restores into another and keeps training there; a
checkpoint from another model config and a run without a dataset are refused with clear messages."""

import importlib
import shutil

import jax
import numpy as np
import pytest
import training_helpers as helpers

from pippo_jax import checkpoints, config_lib
from pippo_jax.data_pipelines import pipelines
from pippo_jax.training import loop

STAGE = "m2_midtrain"  # camera-conditioned; compiles faster than P3 (no control branch)


def checkpoint_steps(workdir) -> set[int]:
  return {int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()}


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
  return helpers.write_studio(tmp_path_factory.mktemp("studio"))


@pytest.fixture(scope="module")
def first_run(studio, tmp_path_factory):
  """Four steps on a pure data-parallel mesh (data 8), checkpoints at steps 2 and 4."""
  workdir = tmp_path_factory.mktemp("run")
  config = helpers.tiny_config(studio, stage=STAGE, data=8)
  last = loop.train(config, str(workdir))
  return workdir, config, last


def test_first_run_logs_and_checkpoints(first_run):
  workdir, config, last = first_run
  logged = helpers.read_metrics(workdir)
  assert [m["step"] for m in logged] == [2, 4]
  assert all(np.isfinite(m["loss"]) and m["skipped"] == 0 for m in logged)
  assert last["loss"] == logged[-1]["loss"]
  steps = checkpoint_steps(workdir)
  assert {2, 4} <= steps and max(steps) == 4  # (orbax also keeps the run's first step)


def test_restore_into_another_mesh(first_run):
  workdir, config, _ = first_run
  saved, step, saved_sh, _ = helpers.restore(workdir, config, data=8)
  moved, step2, moved_sh, data = helpers.restore(workdir, config, fsdp=4, tensor=2)
  assert step == step2 == 4 and int(moved.step) == 4

  # Every leaf has the same value and lands in the new mesh's sharding.
  flat_saved, tree = jax.tree.flatten(saved)
  flat_moved, tree2 = jax.tree.flatten(moved)
  assert tree == tree2 and len(flat_saved) > 100
  for a, b, old_sh, new_sh in zip(
    flat_saved, flat_moved, jax.tree.leaves(saved_sh), jax.tree.leaves(moved_sh)
  ):
    np.testing.assert_array_equal(jax.device_get(a), jax.device_get(b))
    assert a.sharding == old_sh and b.sharding == new_sh
  kernel = moved.params["generator"]["blocks"]["in_proj"]["kernel"]
  layers, embed, hidden = kernel.shape
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  assert kernel.addressable_shards[0].data.shape == (layers, embed // 4, hidden // 2)
  assert saved.params["generator"]["blocks"]["in_proj"]["kernel"].sharding.is_fully_replicated

  # The data iterator continues where the run stopped: its fifth batch comes next.
  fresh = pipelines.make_iterator(config.data)
  for _ in range(4):
    next(fresh)
  want, got = next(fresh), next(data)
  for key in ("target_images", "record_index", "epoch"):
    np.testing.assert_array_equal(got[key], want[key])


def test_resume_on_another_mesh_continues_training(first_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(first_run[0], workdir)
  config = helpers.tiny_config(first_run[1].data.path, stage=STAGE, fsdp=4, tensor=2)
  config.train.num_steps = 6
  last = loop.train(config, str(workdir))
  logged = helpers.read_metrics(workdir)
  assert [m["step"] for m in logged] == [2, 4, 6]  # steps 1-4 were not run again
  assert np.isfinite(last["loss"]) and last["skipped"] == 0
  state, step, _, _ = helpers.restore(workdir, config, fsdp=4, tensor=2)
  assert step == 6 and int(state.step) == 6
  at_4, _, _, _ = helpers.restore(first_run[0], config, fsdp=4, tensor=2)
  kernel = lambda s: np.asarray(
    jax.device_get(s.params["generator"]["blocks"]["in_proj"]["kernel"])
  )
  assert not np.array_equal(kernel(state), kernel(at_4))  # steps 5-6 trained on the new mesh


def test_checkpoint_of_another_model_config_is_refused(first_run):
  workdir, _, _ = first_run
  config = helpers.tiny_config(first_run[1].data.path, stage=STAGE, data=8)
  config.model.width = 48
  before = checkpoint_steps(workdir), helpers.read_metrics(workdir)
  with pytest.raises(
    config_lib.ConfigError,
    match=r"different model config; mismatching keys: "
    r"model\.width \(checkpoint 32, given 48\)",
  ):
    loop.train(config, str(workdir))
  assert (checkpoint_steps(workdir), helpers.read_metrics(workdir)) == before


def test_missing_dataset_is_refused_for_real_sizes(tmp_path):
  config = importlib.import_module("pippo_jax.configs.p3_posttrain").get_config(
    "size=tiny,res=128,views=2,batch=8"
  )
  assert config.data.path == ""
  with pytest.raises(ValueError, match=r"data\.path is empty"):
    loop.train(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "cache").exists()


def test_a_damaged_newest_step_falls_back_to_the_newest_intact_one(studio, tmp_path, caplog):
  """The newest step loses its `params` item: the run says so, resumes from the step before, sets
  the damaged one aside (nothing deleted) and trains on; metrics.jsonl holds each step once."""
  config = helpers.tiny_config(studio, stage=STAGE, data=8)
  config.train.update(num_steps=4, log_every=1)
  loop.train(config, str(tmp_path))
  shutil.rmtree(tmp_path / "checkpoints" / "4" / "params")
  config.train.num_steps = 6
  with caplog.at_level("WARNING"):
    loop.train(config, str(tmp_path))
  warnings = "\n".join(r.getMessage() for r in caplog.records)
  assert "checkpoint step 4 in" in warnings and "cannot be restored" in warnings
  assert "resuming from step 2, the newest intact checkpoint" in warnings
  assert (tmp_path / "checkpoints_damaged" / "4" / "data").is_dir()  # set aside, not deleted
  assert checkpoint_steps(tmp_path) >= {2, 4, 6} and max(checkpoint_steps(tmp_path)) == 6
  assert [m["step"] for m in helpers.read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]


def test_no_restorable_step_is_an_error_and_moves_nothing(studio, tmp_path):
  config = helpers.tiny_config(studio, stage=STAGE, data=8)
  config.train.num_steps = 2
  loop.train(config, str(tmp_path))
  for step in checkpoint_steps(tmp_path):
    shutil.rmtree(tmp_path / "checkpoints" / str(step) / "params")
  config.train.num_steps = 4
  with pytest.raises(checkpoints.CheckpointError, match="no checkpoint in .* can be restored"):
    loop.train(config, str(tmp_path))
  assert not (tmp_path / "checkpoints_damaged").exists()


def test_ema_can_be_turned_on_for_a_running_workdir_but_not_silently_off(studio, tmp_path):
  config = helpers.tiny_config(studio, stage=STAGE, data=8)
  config.train.num_steps = 2
  loop.train(config, str(tmp_path))
  config.train.update(num_steps=4, ema_decay=0.5)
  loop.train(config, str(tmp_path))
  state, step, _, _ = helpers.restore(tmp_path, config, data=8)
  assert step == 4 and state.ema_params is not None
  ema = jax.tree.leaves(state.ema_params)
  assert any(not np.array_equal(e, p) for e, p in zip(ema, jax.tree.leaves(state.params)))
  config.train.update(num_steps=6, ema_decay=0.0)
  with pytest.raises(
    config_lib.ConfigError,
    match=r"train\.ema_decay=0, but the checkpoint at "
    r"step 4 .* keeps EMA parameters \(train\.ema_decay=0\.5\): pass "
    r"--config\.train\.ema_decay=0\.5",
  ):
    loop.train(config, str(tmp_path))
