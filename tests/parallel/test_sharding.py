"""Logical axis names on every parameter, and a sharded forward equal to the unsharded one."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from pippo_jax.errors import ConfigError
from pippo_jax.models.config import ModelConfig
from pippo_jax.models.pippo import Pippo, dummy_inputs
from pippo_jax.parallel import sharding

CFG = ModelConfig(
  width=64,
  depth=2,
  num_heads=4,
  latent_size=8,
  image_size=32,
  num_views=3,
  cam_mlp_hidden=32,
  remat_policy="none",
  attention_impl="xla",
)


def test_every_parameter_has_one_logical_name_per_axis():
  x_t, t, cond = dummy_inputs(CFG, 1)
  boxed = jax.eval_shape(Pippo(CFG).init, jax.random.key(0), x_t, t, cond)["params"]
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(l, nn.LogicallyPartitioned) for l in leaves)
  known = {name for name, _ in sharding.LOGICAL_RULES}
  for leaf in leaves:
    assert len(leaf.names) == leaf.value.ndim
    assert set(leaf.names) - {None} <= known, leaf.names


def test_fsdp_tensor_sharded_forward_matches_single_device():
  assert jax.device_count() == 8
  mesh = sharding.make_mesh(data=1, fsdp=4, tensor=2)
  model = Pippo(CFG)
  x_t, t, cond = dummy_inputs(CFG, 4)
  x_t = jax.random.normal(jax.random.key(1), x_t.shape)
  cond = jax.tree.map(lambda a: a + 0.5, cond)
  boxed = jax.eval_shape(model.init, jax.random.key(0), x_t, t, cond)["params"]
  shardings = sharding.param_shardings(boxed, mesh)
  init = jax.jit(lambda k: nn.unbox(model.init(k, x_t, t, cond)["params"]), out_shardings=shardings)
  params = jax.tree.map(lambda p: p + 0.02, init(jax.random.key(0)))  # live zero-init layers
  kernel = params["generator"]["blocks"]["in_proj"]["kernel"]  # [layers, embed, mlp]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  assert kernel.addressable_shards[0].data.shape == (2, 16, 448 // 2)

  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    sharded = jax.jit(lambda p: model.apply({"params": p}, x_t, t, cond))(params)
  single = jax.jit(lambda p: model.apply({"params": p}, x_t, t, cond))(jax.device_get(params))
  np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-5)


def test_mesh_size_mismatch_is_a_clear_error():
  try:
    sharding.make_mesh(data=3, fsdp=2)
  except ValueError as e:
    assert "does not match the 8 available devices" in str(e)
  else:
    raise AssertionError("expected ValueError")


def test_config_rules_and_mesh_drive_the_shardings():
  from pippo_jax.configs import p3_posttrain  # pylint: disable=g-import-not-at-top

  config = p3_posttrain.get_config("size=smoke")
  config.sharding.mesh.update(data=2, fsdp=2, tensor=-1)
  rules = dict(sharding.rules_from_config(config.sharding.rules))
  assert rules == dict(sharding.LOGICAL_RULES) and rules["act_batch"] == ("data", "fsdp")
  mesh = sharding.mesh_from_config(config.sharding.mesh)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "seq": 1, "tensor": 2}
  assert sharding.batch_sharding(mesh).spec == jax.sharding.PartitionSpec(("data", "fsdp"))
  # A rule changed in the config changes both the batch and the parameter shardings.
  config.sharding.rules = [[k, None if k in ("mlp", "act_batch") else v] for k, v in rules.items()]
  changed = sharding.rules_from_config(config.sharding.rules)
  assert sharding.batch_sharding(mesh, changed).spec == jax.sharding.PartitionSpec(None)
  x_t, t, cond = dummy_inputs(CFG, 1)
  boxed = jax.eval_shape(Pippo(CFG).init, jax.random.key(0), x_t, t, cond)["params"]
  kernel = lambda sh: sh["generator"]["blocks"]["in_proj"]["kernel"].spec
  assert kernel(sharding.param_shardings(boxed, mesh)) == jax.sharding.PartitionSpec(
    None, "fsdp", "tensor"
  )
  assert kernel(sharding.param_shardings(boxed, mesh, changed)) == jax.sharding.PartitionSpec(
    None, "fsdp", None
  )
  config.sharding.mesh.update(data=-1, fsdp=-1)
  with pytest.raises(ConfigError, match="only one axis may be -1"):
    sharding.mesh_from_config(config.sharding.mesh)
