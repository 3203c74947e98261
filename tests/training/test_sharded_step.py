"""The sharded train step equals the single-device one; parameters and Adam moments are sharded;
runs that cannot work stop before training with a message saying why."""

import jax
import numpy as np
import pytest
import training_helpers as helpers

from pippo_jax.data_pipelines import pipelines
from pippo_jax.diffusion import schedule as schedule_lib
from pippo_jax.errors import ConfigError
from pippo_jax.models import codec as codec_lib
from pippo_jax.models import inputs
from pippo_jax.models import params as params_lib
from pippo_jax.models.config import ModelConfig
from pippo_jax.models.pippo import Pippo
from pippo_jax.parallel import sharding
from pippo_jax.training import loop
from pippo_jax.training import state as state_lib
from pippo_jax.training import step as step_lib

KERNEL = ("generator", "blocks", "in_proj", "kernel")  # [layers, embed, mlp]


def _keys(path) -> tuple:
  return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", None))) for k in path)


def adam_moments(opt_state, param_path: tuple) -> dict:
  """{"mu": leaf, "nu": leaf} of the parameter at `param_path` inside an optax state tree."""
  found = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(opt_state):
    keys = _keys(path)
    for name in ("mu", "nu"):
      if name in keys and keys[keys.index(name) + 1 :] == param_path:
        found[name] = leaf
  return found


def get(tree, path: tuple):
  for k in path:
    tree = tree[k]
  return tree


class Run:
  """One tiny P3 set-up: model, optimizer, an initial state and two global batches (host)."""

  def __init__(self, data_path):
    config = helpers.tiny_config(data_path)
    config.train.ema_decay = 0.5  # the EMA copy is sharded like the parameters
    config.optimizer.update(lr=1e-3, warmup_steps=0)  # steps that visibly move the parameters
    self.config = config
    self.cfg = ModelConfig.from_config(config.model)
    self.model = Pippo(self.cfg)
    self.tx = state_lib.make_optimizer(config.optimizer, params_lib.abstract(self.cfg))
    data = pipelines.make_iterator(config.data)
    keys = inputs.batch_keys(self.cfg, config.diffusion.loss_mask)
    self.batches = [{k: np.asarray(b[k]) for k in keys} for b in (next(data), next(data))]
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    state, _ = state_lib.init_train_state(
      self.model, self.tx, self.cfg, mesh, config.seed, use_ema=True
    )
    self.initial = jax.device_get(state)

  def two_steps(self, mesh):
    """(state after two steps on `mesh`, [metrics of step 1, step 2]) from `self.initial`."""
    c = self.config
    _, shardings = state_lib.state_shardings(self.model, self.tx, self.cfg, mesh, use_ema=True)
    state = jax.device_put(self.initial, shardings)
    step_fn = step_lib.compile_train_step(
      shardings,
      mesh,
      model=self.model,
      tx=self.tx,
      codec=codec_lib.make_codec(c.codec),
      cfg=self.cfg,
      schedule=schedule_lib.cosine_schedule(
        c.diffusion.num_timesteps, c.diffusion.cosine_s, c.diffusion.max_beta
      ),
      diffusion_cfg=c.diffusion,
      ema_decay=float(c.train.ema_decay),
    )
    metrics = []
    for host in self.batches:
      batch = loop.global_batch(host, host.keys(), sharding.batch_sharding(mesh))
      state, m = step_lib.run_step(step_fn, mesh, state, batch)
      metrics.append(jax.device_get(m))
    return state, metrics


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
  return helpers.write_studio(tmp_path_factory.mktemp("studio"))


@pytest.fixture(scope="module")
def run(studio):
  return Run(studio)


@pytest.fixture(scope="module")
def single(run):
  """The reference: two steps on one device."""
  assert jax.device_count() == 8
  state, metrics = run.two_steps(sharding.make_mesh(devices=jax.devices()[:1]))
  return jax.device_get(state), metrics


@pytest.mark.parametrize(
  "axes",
  [dict(data=2, fsdp=4), dict(fsdp=4, tensor=2), dict(fsdp=2, seq=4)],
  ids=["data2_fsdp4", "fsdp4_tensor2", "fsdp2_seq4"],
)
def test_sharded_step_matches_single_device(run, single, axes):
  ref_state, ref_metrics = single
  mesh = sharding.make_mesh(**axes)
  state, metrics = run.two_steps(mesh)

  for got, want in zip(metrics, ref_metrics):
    assert want["finite"] == got["finite"] == 1.0
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
    np.testing.assert_allclose(got["grad_norm"], want["grad_norm"], rtol=1e-4)
  assert int(state.step) == 2 and int(state.nonfinite) == 0
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), ref_state.params, run.initial.params)
  assert max(jax.tree.leaves(moved)) > 1e-3  # the comparison below is not vacuous
  host = jax.device_get(state)
  for name in ("params", "ema_params", "opt_state"):
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6),
      getattr(host, name),
      getattr(ref_state, name),
    )
  np.testing.assert_array_equal(host.rng, ref_state.rng)

  # Parameters, their EMA and both Adam moments live in shards over fsdp (embed) and tensor (mlp).
  fsdp, tensor = mesh.shape["fsdp"], mesh.shape["tensor"]
  spec = jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  layers, embed, hidden = run.initial.params["generator"]["blocks"]["in_proj"]["kernel"].shape
  moments = adam_moments(state.opt_state, KERNEL)
  assert sorted(moments) == ["mu", "nu"]
  for leaf in (get(state.params, KERNEL), get(state.ema_params, KERNEL), *moments.values()):
    assert leaf.sharding.mesh.shape == mesh.shape
    assert leaf.sharding.spec == spec
    assert leaf.addressable_shards[0].data.shape == (layers, embed // fsdp, hidden // tensor)
    assert len(leaf.addressable_shards) == 8
  # Every moment follows its parameter's sharding (none replicated by `tx.init`).
  for path, param in jax.tree_util.tree_leaves_with_path(state.params):
    found = adam_moments(state.opt_state, _keys(path))
    assert sorted(found) == ["mu", "nu"], _keys(path)
    for moment in found.values():
      assert moment.sharding.spec == param.sharding.spec, _keys(path)


def test_batch_not_divisible_by_data_axes_fails_before_training(tmp_path):
  config = helpers.tiny_config(str(tmp_path / "never_read"), batch_size=6, data=4, fsdp=2)
  with pytest.raises(
    ValueError,
    match="batch_size=6 is not divisible by the data-parallel mesh "
    r"axes data x fsdp = 8",
  ):
    loop.train(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_seq_and_tensor_groups_must_lie_within_a_process(tmp_path, monkeypatch):
  # Devices that differ only in `seq` or `tensor` share examples; a process loads its own.
  config = helpers.tiny_config(str(tmp_path / "never_read"), batch_size=2, data=2, seq=2, tensor=2)
  monkeypatch.setattr(jax, "local_device_count", lambda: 2)  # as if 4 processes of 2 devices
  with pytest.raises(ValueError, match="seq x tensor = 4 devices share each example"):
    loop.train(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists()


class NaNPoses:
  """A data iterator whose camera poses are NaN (the loss and gradients are then NaN)."""

  def __init__(self, iterator):
    self.iterator = iterator

  def __iter__(self):
    return self

  def __next__(self):
    batch = dict(next(self.iterator))
    batch["target_cam_pose"] = np.full_like(batch["target_cam_pose"], np.nan)
    return batch

  def get_state(self):
    return self.iterator.get_state()


def test_non_finite_steps_stop_the_run_and_keep_finite_parameters(studio, tmp_path, monkeypatch):
  """Batches with NaN camera poses: non-finite loss and gradients. Such steps are skipped (state
  untouched) and the run stops after `train.max_nonfinite`."""
  config = helpers.tiny_config(studio, stage="m2_midtrain", fsdp=4, tensor=2)
  config.train.update(max_nonfinite=2, num_steps=6, checkpoint_every=1, log_every=1)
  make_iterator = pipelines.make_iterator
  monkeypatch.setattr(pipelines, "make_iterator", lambda cfg: NaNPoses(make_iterator(cfg)))
  workdir = tmp_path / "run"
  with pytest.raises(FloatingPointError, match="2 non-finite steps in a row at step 2 "):
    loop.train(config, str(workdir))
  monkeypatch.undo()
  logged = helpers.read_metrics(workdir)
  assert [m["step"] for m in logged] == [1]
  assert logged[0]["skipped"] == 1.0
  assert not np.isfinite(logged[0]["loss"])
  # The checkpoint of the skipped step 1 holds the initial, finite parameters; Adam never ran.
  state, step, _, _ = helpers.restore(workdir, config, fsdp=4, tensor=2)
  assert step == 1 and int(state.step) == 1 and int(state.nonfinite) == 1
  assert all(np.isfinite(p).all() for p in jax.tree.leaves(jax.device_get(state.params)))
  moments = adam_moments(state.opt_state, KERNEL)
  assert sorted(moments) == ["mu", "nu"]
  assert all(not np.asarray(m).any() for m in moments.values())


def test_step_follows_examples_not_rows(run, single):
  """Noise, timesteps and drops are keyed by (epoch, record index): the same global batch in
  another row order (as another process count assembles it) gives the same step."""
  ref_state, ref_metrics = single
  perm = np.array([1, 0, 3, 2, 5, 4, 7, 6])[::-1]
  original = run.batches
  run.batches = [{k: v[perm] for k, v in b.items()} for b in original]
  try:
    state, metrics = run.two_steps(sharding.make_mesh(devices=jax.devices()[:1]))
  finally:
    run.batches = original
  for got, want in zip(metrics, ref_metrics):
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(ref_state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize("key, value", [("lr", float("nan")), ("eps", float("inf")), ("b2", -1.0)])
def test_non_finite_optimizer_settings_are_refused_before_training(tmp_path, key, value):
  config = helpers.tiny_config(str(tmp_path / "never_read"))
  config.optimizer[key] = value
  with pytest.raises(ConfigError, match=rf"optimizer\.{key}=.* must be finite and >= 0"):
    loop.train(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists()
