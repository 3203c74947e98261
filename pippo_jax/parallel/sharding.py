"""Logical axis names -> mesh axes.

Mesh axes: `data` (pure data parallel), `fsdp` (parameters and optimizer state sharded; the batch
too), `tensor` (heads / MLP hidden). Parameters are annotated with the logical names on the left
(`nn.with_logical_partitioning`); activations use the `act_*` names (`nn.with_logical_constraint`).
"""
import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh

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
    raise ValueError(f"mesh data={data} x fsdp={fsdp} x tensor={tensor} = {n} does not match "
                     f"the {len(devices)} available devices")
  return Mesh(np.asarray(devices).reshape(data, fsdp, tensor), MESH_AXES,
              axis_types=(AxisType.Auto,) * 3)


def param_shardings(boxed_params, mesh: Mesh):
  """NamedShardings for a tree of `nn.LogicallyPartitioned` parameters (e.g. from eval_shape)."""
  specs = nn.get_partition_spec(boxed_params)
  return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_RULES)
