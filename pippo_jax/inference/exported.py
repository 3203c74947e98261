"""Runs a `pippo-export` folder with jax, numpy and safetensors alone.

This module imports no Flax and none of this package's model or training code, so a serving
process needs only `pip install jax safetensors numpy` (and a jax at least as new as the one that
exported, see metadata.json's `versions`):

  from pippo_jax.inference.exported import load_exported

  sampler = load_exported("export_dir")
  views = sampler({"ref_image": ..., "target_cam_pose": ..., ...}, seed=0)  # uint8 [B, V, H, W, 3]

The inputs are checked against `sampler.input_spec` (names, shapes, dtypes) before anything runs.
"""

import dataclasses
import json
import os

import jax
import numpy as np
from safetensors.numpy import load_file

METADATA_FILE = "metadata.json"
FORMAT = "pippo-export"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class TensorSpec:
  """One input or output: shape (an int per axis, or a name such as "b" for the batch)."""

  name: str
  shape: tuple
  dtype: str
  description: str = ""

  def __str__(self) -> str:
    return f"{_shape_str(self.shape)} {self.dtype}"


def _shape_str(shape) -> str:
  return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _specs(entries) -> dict[str, TensorSpec]:
  return {
    e["name"]: TensorSpec(e["name"], tuple(e["shape"]), e["dtype"], e.get("description", ""))
    for e in entries
  }


class ExportedSampler:
  """A loaded `pippo-export` sampler: `sampler(inputs, seed=0) -> uint8 [B, V, H, W, 3]`.

  Attributes:
    metadata: metadata.json as a dict (config, sampler settings, versions, ...).
    input_spec: {name: TensorSpec} of the inputs `run` takes.
    output_spec: {name: TensorSpec} of what it returns.
    directory: the folder it was loaded from.
  """

  def __init__(self, directory: str):
    self.directory = os.path.abspath(os.path.expanduser(os.fspath(directory)))
    path = os.path.join(self.directory, METADATA_FILE)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{self.directory} is not a pippo-export folder: no {METADATA_FILE}")
    with open(path) as f:
      self.metadata = json.load(f)
    if self.metadata.get("format") != FORMAT:
      raise ValueError(f"{path} is not a {FORMAT} metadata file")
    if self.metadata.get("format_version", 0) > FORMAT_VERSION:
      raise ValueError(
        f"{path} has format version {self.metadata['format_version']}; this loader reads "
        f"version {FORMAT_VERSION} or older: update pippo_jax"
      )
    files = self.metadata["files"]
    self.input_spec = _specs(self.metadata["inputs"])
    self.output_spec = _specs(self.metadata["outputs"])
    self._seed = self.metadata["seed"]
    with open(os.path.join(self.directory, files["sampler"]), "rb") as f:
      self.exported = jax.export.deserialize(bytearray(f.read()))
    (want_weights, want_inputs, _), _ = jax.tree_util.tree_unflatten(
      self.exported.in_tree, self.exported.in_avals
    )
    if set(want_inputs) != set(self.input_spec):
      raise ValueError(
        f"{files['sampler']} takes inputs {sorted(want_inputs)} but {METADATA_FILE} lists "
        f"{sorted(self.input_spec)}"
      )
    weights = load_file(os.path.join(self.directory, files["weights"]))
    _check_weights(weights, want_weights, files["weights"])
    self._weights = jax.device_put(weights)
    self._call = jax.jit(self.exported.call)

  @property
  def batch_size(self) -> int | None:
    """The fixed batch size, or None where the batch dimension is symbolic."""
    batch = self.metadata["batch"]
    return None if batch["symbolic"] else int(batch["size"])

  def check_inputs(self, inputs: dict) -> dict[str, np.ndarray]:
    """The inputs as NumPy arrays, or a ValueError naming the first that does not fit the spec."""
    if not isinstance(inputs, dict):
      raise ValueError(f"inputs must be a dict of arrays, got {type(inputs).__name__}")
    missing = [k for k in self.input_spec if k not in inputs]
    if missing:
      spec = self.input_spec[missing[0]]
      raise ValueError(
        f"missing input {missing[0]!r}: expected {spec}; this export takes "
        f"{sorted(self.input_spec)}"
      )
    extra = sorted(k for k in inputs if k not in self.input_spec)
    if extra:
      raise ValueError(
        f"unexpected input {extra[0]!r}: this export takes only {sorted(self.input_spec)}"
      )
    arrays, sizes = {}, {}
    for name, spec in self.input_spec.items():
      x = np.asarray(inputs[name])
      got = f"{_shape_str(x.shape)} {x.dtype}"
      if x.dtype != np.dtype(spec.dtype):
        raise ValueError(
          f"input {name!r}: expected dtype {spec.dtype} (shape {_shape_str(spec.shape)}), "
          f"got {got}; convert it with .astype(np.{spec.dtype})"
        )
      ok, context = len(x.shape) == len(spec.shape), ""
      for got_dim, want in zip(x.shape, spec.shape) if ok else ():
        if isinstance(want, str):  # a symbolic dimension: the same size in every input
          size, source = sizes.setdefault(want, (got_dim, name))
          if got_dim < 1 or got_dim != size:
            ok = False
            context = f" with {want} = {size} (from {source!r})" if source != name else ""
        elif got_dim != want:
          ok = False
      if not ok:
        raise ValueError(f"input {name!r}: expected shape {spec}{context}, got {got}")
      arrays[name] = x
    return arrays

  def __call__(self, inputs: dict, seed: int = 0) -> np.ndarray:
    """Samples the target views: uint8 [B, V, H, W, 3]. Deterministic in (inputs, seed): the
    same as the in-process sampler called with `jax.random.key(seed)`."""
    arrays = self.check_inputs(inputs)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
      raise ValueError(f"seed must be an int, got {type(seed).__name__}")
    key = jax.random.key(int(seed), impl=self._seed["key_impl"])
    out = self._call(self._weights, arrays, jax.random.key_data(key))
    return np.asarray(out)

  run = __call__

  def __repr__(self) -> str:
    inputs = ", ".join(f"{k}: {v}" for k, v in self.input_spec.items())
    return f"ExportedSampler({self.directory!r}; inputs {inputs})"


def _check_weights(weights: dict, want: dict, filename: str) -> None:
  missing = sorted(set(want) - set(weights))
  extra = sorted(set(weights) - set(want))
  wrong = sorted(
    f"{k}: {_shape_str(weights[k].shape)} {weights[k].dtype} (wants {_shape_str(a.shape)} "
    f"{a.dtype})"
    for k, a in want.items()
    if k in weights and (tuple(weights[k].shape) != tuple(a.shape) or weights[k].dtype != a.dtype)
  )
  if missing or extra or wrong:
    raise ValueError(
      f"{filename} does not fit the exported sampler:"
      + (f" missing {missing[:5]}{' ...' if len(missing) > 5 else ''};" if missing else "")
      + (f" unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''};" if extra else "")
      + (f" wrong {wrong[:5]}{' ...' if len(wrong) > 5 else ''}" if wrong else "")
    )


def load_exported(directory: str) -> ExportedSampler:
  """Loads a `pippo-export` folder: a callable `sampler(inputs, seed=0) -> uint8 views` with
  `.metadata` and `.input_spec` (see `ExportedSampler`)."""
  return ExportedSampler(directory)
