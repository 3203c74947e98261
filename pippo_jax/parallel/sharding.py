"""Meshes and logical axis names -> mesh axes, both from the config's `sharding` section.

Mesh axes: `data` (pure data parallel), `fsdp` (parameters and optimizer state sharded; the batch
too), `seq` (sequence or context parallel: the joint token sequence of all views, see
`models.attention.sharded_attention`), `tensor` (heads / MLP hidden). Parameters are
annotated with the logical names on the left (`nn.with_logical_partitioning`); activations use the
`act_*` names (`nn.with_logical_constraint`). `LOGICAL_RULES` is the default table
(`config.sharding.rules`); the batch is sharded like the `act_batch` activations, so devices that
differ only in `seq` or `tensor` hold the same examples.
"""

import contextlib
import logging
import math

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from pippo_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "seq", "tensor")

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
  ("act_length", "seq"),
  ("act_rows", "seq"),
  ("act_embed", None),
  ("act_heads", "tensor"),
  ("act_mlp", "tensor"),
)


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, seq: int = 1, devices=None) -> Mesh:
  """A (data, fsdp, seq, tensor) mesh with Auto axis types (Explicit axes reject FSDP matmuls).
  Devices are laid out in `jax.devices()` order, `tensor` fastest, so `seq` and `tensor` groups
  are neighbouring devices (one host's, where they fit)."""
  devices = jax.devices() if devices is None else devices
  n = data * fsdp * seq * tensor
  if n != len(devices):
    raise ValueError(
      f"mesh data={data} x fsdp={fsdp} x seq={seq} x tensor={tensor} = {n} does not match "
      f"the {len(devices)} available devices"
    )
  return Mesh(
    np.asarray(devices).reshape(data, fsdp, seq, tensor),
    MESH_AXES,
    axis_types=(AxisType.Auto,) * len(MESH_AXES),
  )


def mesh_from_config(mesh_cfg, devices=None, dcn_cfg=None) -> Mesh:
  """The mesh of `config.sharding.mesh` ({data, fsdp, seq, tensor} sizes; one may be -1: all the
  remaining devices; `seq` is 1 when absent, as in configs saved before it existed) over
  `devices` (default `jax.devices()`).

  TPU devices are laid out by `mesh_utils` along the chips' physical links. Devices of several
  slices (multi-slice: `slice_index`) form a hybrid mesh: `dcn_cfg` (`config.sharding.dcn`)
  says how many slices each axis spans (their product is the slice count; all 1: `data` spans
  them, or `fsdp` where `data` is not a multiple), the rest of each axis lies within a slice,
  over ICI.
  """
  given = devices is not None
  devices = list(devices) if given else jax.devices()
  sizes = {k: int(mesh_cfg.get(k, 1) if k == "seq" else mesh_cfg[k]) for k in MESH_AXES}
  free = [k for k, v in sizes.items() if v == -1]
  if len(free) > 1:
    raise ConfigError(f"sharding.mesh: only one axis may be -1, got {sizes}")
  known = math.prod(v for v in sizes.values() if v != -1)
  if free:
    if len(devices) % known:
      raise ConfigError(
        f"sharding.mesh {sizes}: {len(devices)} devices are not divisible by {known}"
      )
    sizes[free[0]] = len(devices) // known
  n = math.prod(sizes.values())
  if n < len(devices) and jax.process_count() == 1 and not given:
    logging.warning("sharding.mesh %s uses %d of %d devices", sizes, n, len(devices))
    devices = devices[:n]
  if n != len(devices):
    raise ConfigError(
      f"sharding.mesh {sizes} = {n} devices does not match the {len(devices)} devices"
    )
  slices = len({getattr(d, "slice_index", 0) for d in devices})
  shape = tuple(sizes[k] for k in MESH_AXES)
  if slices > 1:
    dcn = {k: int((dcn_cfg or {}).get(k, 1)) for k in MESH_AXES}
    if math.prod(dcn.values()) == 1:  # default: slices split `data`, else `fsdp`
      dcn["data" if sizes["data"] % slices == 0 else "fsdp"] = slices
    if math.prod(dcn.values()) != slices or any(sizes[k] % dcn[k] for k in MESH_AXES):
      raise ConfigError(
        f"sharding.dcn {dcn}: the slices each axis spans must multiply to the {slices} slices "
        f"and divide sharding.mesh {sizes}"
      )
    ici = tuple(sizes[k] // dcn[k] for k in MESH_AXES)
    grid = mesh_utils.create_hybrid_device_mesh(
      ici, tuple(dcn[k] for k in MESH_AXES), devices, allow_split_physical_axes=True
    )
  elif devices[0].platform == "tpu":
    grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  else:
    return make_mesh(**sizes, devices=devices)
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


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
