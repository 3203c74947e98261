"""Reading the authors' PyTorch checkpoints as a flat release-layout state_dict of NumPy arrays.

Files, by extension:
  .pt / .pth / .ckpt / .bin   a torch pickle. Read ONLY with
                              `torch.load(path, map_location="cpu", weights_only=True)`, which
                              rebuilds tensors and plain containers and never runs code stored in
                              the file; a file that needs more is refused. Needs PyTorch
                              (`pip install 'pippo_jax[torch]'`), imported only here.
  .safetensors                `safetensors.numpy.load_file` (no torch needed).
  .npz                        a NumPy archive of name -> array.

A state_dict may be wrapped: the release's `save_checkpoint` writes {"iteration", "model": ...,
"optimizer": ...}; others use "state_dict" etc. (`WRAPPER_KEYS`, or an explicit dotted `key`).
Keys may carry "module." (DistributedDataParallel), "_orig_mod." (torch.compile) or "model."
prefixes, which are stripped. Every such step is reported in the returned notes.
"""

import os
import re
from collections.abc import Mapping

import numpy as np
from safetensors.numpy import load_file

TORCH_EXTENSIONS = (".pt", ".pth", ".ckpt", ".bin")
# Entries that hold the model's state_dict in wrapped checkpoints, tried in this order.
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")
PREFIXES = ("module.", "_orig_mod.", "model.")


def import_torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
      "reading a .pt/.pth checkpoint needs PyTorch: pip install 'pippo_jax[torch]' "
      "(or convert it to .safetensors where torch is installed)"
    ) from e
  return torch


def _torch_load(path: str):
  torch = import_torch()
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises pickle.UnpicklingError (and others) for refused objects
    if "weights_only" not in str(e) and "Weights only" not in str(e):
      raise
    raise ValueError(
      f"{path}: refused to unpickle objects other than tensors and plain containers "
      "(torch.load with weights_only=True failed). Re-save the model's state_dict "
      f"from code you trust, e.g. as .safetensors.\n  torch said: {e}"
    ) from e


def _is_array(x) -> bool:
  return hasattr(x, "shape") and hasattr(x, "dtype")


def _describe(obj: Mapping) -> str:
  items = list(obj.items())
  shown = [f"{k!r}: {'tensor' if _is_array(v) else type(v).__name__}" for k, v in items[:8]]
  return "{" + ", ".join(shown) + (", ..." if len(items) > 8 else "") + "}"


def unwrap(obj, key: str | None = None) -> tuple[dict, list[str]]:
  """The state_dict (name -> tensor) inside a loaded checkpoint object, and notes on what was done.

  `key`: dotted path of the entry to read ("ema", "model"); default: follow `WRAPPER_KEYS`.
  """
  notes = []
  for part in key.split(".") if key else ():
    if not isinstance(obj, Mapping) or part not in obj:
      found = _describe(obj) if isinstance(obj, Mapping) else type(obj).__name__
      raise ValueError(f"checkpoint has no entry {key!r} (at {part!r}: {found})")
    others = sorted(str(k) for k in obj if k != part)
    notes.append(f"unwrapped {part!r}" + (f" (ignored entries {others})" if others else ""))
    obj = obj[part]
  while True:
    if not isinstance(obj, Mapping):
      raise ValueError(f"expected a state_dict (names -> tensors), found {type(obj).__name__}")
    if obj and all(_is_array(v) for v in obj.values()):
      return dict(obj), notes
    hits = [k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
    if not hits:
      raise ValueError(
        f"no state_dict found in {_describe(obj)}: expected names -> tensors or an "
        f"entry among {list(WRAPPER_KEYS)} (or pass the entry's key)"
      )
    others = sorted(str(k) for k in obj if k != hits[0])
    notes.append(f"unwrapped {hits[0]!r}" + (f" (ignored entries {others})" if others else ""))
    obj = obj[hits[0]]


def strip_prefixes(state_dict: dict) -> tuple[dict, list[str]]:
  """Remove wrapper prefixes shared by every key (and torch.compile's "_orig_mod." anywhere)."""
  notes = []
  stripped = True
  while stripped and state_dict:
    stripped = False
    for p in PREFIXES:
      if all(k.startswith(p) for k in state_dict):
        state_dict = {k[len(p) :]: v for k, v in state_dict.items()}
        notes.append(f"stripped prefix {p!r} from all {len(state_dict)} keys")
        stripped = True
  inner = [k for k in state_dict if "._orig_mod." in k]
  if inner:
    state_dict = {k.replace("._orig_mod.", "."): v for k, v in state_dict.items()}
    notes.append(f"removed '_orig_mod.' inside {len(inner)} keys")
  return state_dict, notes


def to_numpy(x) -> np.ndarray:
  """A torch tensor or array-like as a NumPy array (bfloat16/float16 tensors become float32)."""
  if hasattr(x, "detach"):
    x = x.detach().cpu()
    if x.is_floating_point() and x.dtype.itemsize < 4:
      x = x.float()
    return x.numpy()
  return np.asarray(x)


def read_state_dict(path: str, key: str | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
  """A release checkpoint file -> (flat state_dict of NumPy arrays, notes on what was unwrapped)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no checkpoint file {path}")
  ext = os.path.splitext(path)[1].lower()
  if ext in TORCH_EXTENSIONS:
    obj = _torch_load(path)
    notes = [f"read {path} with torch.load(map_location='cpu', weights_only=True)"]
  elif ext == ".safetensors":
    obj, notes = load_file(path), [f"read {path} (safetensors)"]
  elif ext == ".npz":
    with np.load(path, allow_pickle=False) as f:
      obj = {k: f[k] for k in f.files}
    notes = [f"read {path} (npz)"]
  else:
    raise ValueError(
      f"{path}: unknown checkpoint type {ext!r}; expected one of "
      f"{list(TORCH_EXTENSIONS) + ['.safetensors', '.npz']}"
    )
  state_dict, more = unwrap(obj, key)
  notes += more
  state_dict, more = strip_prefixes(state_dict)
  notes += more
  dtypes = sorted({str(v.dtype).replace("torch.", "") for v in state_dict.values()})
  if dtypes != ["float32"]:
    notes.append(f"tensor dtypes {dtypes}; parameters are stored as float32")
  return {k: to_numpy(v) for k, v in state_dict.items()}, notes


def summarise_keys(keys: list[str]) -> str:
  """Compact summary: 'generator.blocks.*.cond_attn_proj.{bias,weight} (4), schedule.* (9)'."""
  groups: dict[str, tuple[set, list]] = {}
  for k in keys:
    module, _, leaf = re.sub(r"\.\d+\.", ".*.", k).rpartition(".")
    if k.startswith("schedule.") or not module:
      module, leaf = ("schedule.*" if module else leaf), ""
    leaves, count = groups.setdefault(module, (set(), [0]))
    leaves.add(leaf)
    count[0] += 1
  parts = []
  for module, (leaves, count) in sorted(groups.items()):
    leaves = sorted(x for x in leaves if x)
    tail = (
      "" if not leaves else "." + (leaves[0] if len(leaves) == 1 else "{" + ",".join(leaves) + "}")
    )
    parts.append(f"{module}{tail} ({count[0]})")
  return ", ".join(parts)
