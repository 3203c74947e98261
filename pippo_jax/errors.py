"""The errors that are the user's to fix. Each message names what is wrong and what to do; the
CLIs print it as one line (`pippo_jax.cli.common`): ConfigError exits 2, the others exit 1.
This module imports nothing, so catching these costs a CLI no start-up time."""


class ConfigError(ValueError):
  """A config key has a bad value, or keys do not fit together; the message names them."""


class CheckpointError(RuntimeError):
  """No checkpoint of a workdir can be restored into this run."""


class WorkdirBusyError(RuntimeError):
  """Another live run holds the workdir."""


class CorruptDataError(RuntimeError):
  """Too many corrupt records (or nothing left after filtering)."""


class InputError(ValueError):
  """An input file (a photo, a mask, a cameras file) that cannot be used; the message names it."""
