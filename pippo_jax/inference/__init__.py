"""Sampling: trained checkpoints (`generator`, `sample`) and exported serving folders.

`load_exported` (from `exported`) is resolved on first use, so importing this package stays light
and pulls in neither Flax nor the model code.
"""

__all__ = ["load_exported"]


def __getattr__(name: str):
  if name == "load_exported":
    from pippo_jax.inference.exported import load_exported  # pylint: disable=g-import-not-at-top

    return load_exported
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
