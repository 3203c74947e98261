"""User-given paths, resolved once where they enter.

orbax, tensorstore and Grain need absolute paths (orbax's background save thread fails on a
relative one), so every path a user gives a CLI or `training.loop.train` goes through `resolve`
first: `~` expanded, made absolute against the current directory.
"""

import os
import tempfile


def resolve(path: str) -> str:
  """`path` with `~` expanded, absolute and normalised ('' stays '')."""
  if not path:
    return path
  return os.path.abspath(os.path.expanduser(os.fspath(path)))


def writable_dir(path: str, what: str = "directory") -> str:
  """Create `path` (absolute) if needed and check that a file can be written there; raise
  PermissionError / NotADirectoryError naming it otherwise. Returns the resolved path."""
  path = resolve(path)
  if os.path.exists(path) and not os.path.isdir(path):
    raise NotADirectoryError(f"{what} {path} exists and is not a directory")
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test"):
      pass
  except OSError as e:
    raise PermissionError(f"{what} {path} is not writable: {e.strerror or e}") from e
  return path
