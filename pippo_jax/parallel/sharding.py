"""Meshes and logical axis names -> mesh axes, both from the config's `sharding` section.

Mesh axes: `data` (pure data parallel), `fsdp` (parameters and optimizer state sharded; the batch
too), `tensor` (heads / MLP hidden). Parameters are annotated with the logical names on the left
(`nn.with_logical_partitioning`); activations use the `act_*` names (`nn.with_logical_constraint`).
`LOGICAL_RULES` is the default table (`config.sharding.rules`); the batch is sharded like the
`act_batch` activations.
"""

import contextlib
import logging
import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from pippo_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_RULES = (
  # Parameters.
  ("embed", "fsdp"),
  ("embed_out", "fsdp"),
  ("mlp", "tensor"),
  ("cam_hidden", "tensor"),
  ("layers", None),
  ("length", None),
  ("norm", None),
  ("head_dim", None),
  ("freq", None),
  ("patch_in", None),
  ("cam_in", None),
  ("conv_in", None),
  # Activations.
  ("act_batch", ("data", "fsdp")),
  ("act_length", None),
  ("act_embed", None),
  ("act_heads", "tensor"),
  ("act_mlp", "tensor"),
)


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh with Auto axis types (Explicit axes reject FSDP matmuls)."""
  devices = jax.devices() if devices is None else devices
  n = data * fsdp * tensor
  if n != len(devices):
    raise ValueError(
      f"mesh data={data} x fsdp={fsdp} x tensor={tensor} = {n} does not match "
      f"the {len(devices)} available devices"
    )
  return Mesh(
    np.asarray(devices).reshape(data, fsdp, tensor), MESH_AXES, axis_types=(AxisType.Auto,) * 3
  )


def mesh_from_config(mesh_cfg) -> Mesh:
  """The mesh of `config.sharding.mesh` ({data, fsdp, tensor} sizes; one may be -1: all the
  remaining devices)."""
  sizes = {k: int(mesh_cfg[k]) for k in MESH_AXES}
  free = [k for k, v in sizes.items() if v == -1]
  if len(free) > 1:
    raise ConfigError(f"sharding.mesh: only one axis may be -1, got {sizes}")
  known = math.prod(v for v in sizes.values() if v != -1)
  if free:
    if jax.device_count() % known:
      raise ConfigError(
        f"sharding.mesh {sizes}: {jax.device_count()} devices are not divisible by {known}"
      )
    sizes[free[0]] = jax.device_count() // known
  n = math.prod(sizes.values())
  if jax.process_count() == 1 and n < jax.device_count():
    logging.warning("sharding.mesh %s uses %d of %d devices", sizes, n, jax.device_count())
    return make_mesh(**sizes, devices=jax.devices()[:n])
  return make_mesh(**sizes)


def rules_from_config(rules_cfg) -> tuple:
  """`config.sharding.rules` (lists, as a config file or a checkpoint's JSON holds them) -> the
  tuple of (logical name, mesh axis | tuple of axes | None) pairs flax takes."""
  as_axes = lambda a: tuple(a) if isinstance(a, (list, tuple)) else a
  return tuple((str(name), as_axes(axes)) for name, axes in rules_cfg)


@contextlib.contextmanager
def activate(mesh: Mesh, rules=LOGICAL_RULES):
  """The mesh and logical-axis rules in force while tracing or running sharded functions."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def replicate(tree, mesh: Mesh):
  """Host values that every process holds alike -> global arrays replicated on `mesh` (works
  across processes, where `jax.device_put` only reaches this process's devices)."""
  rep = replicated(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(rep, np.asarray(x)), tree)


def batch_sharding(mesh: Mesh, rules=LOGICAL_RULES) -> NamedSharding:
  """Leading (batch) axis sharded as the `act_batch` activations; the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(*nn.logical_to_mesh_axes(("act_batch",), rules)))


def param_shardings(boxed_params, mesh: Mesh, rules=LOGICAL_RULES):
  """NamedShardings for a tree of `nn.LogicallyPartitioned` parameters (e.g. from eval_shape)."""
  specs = nn.get_partition_spec(boxed_params)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)
