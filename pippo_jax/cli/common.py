"""What every pippo CLI does the same way: flag parsing, --help, errors and exit codes.

  0    success (also --help)
  1    the job failed: a missing or unreadable file, a busy workdir, a diverged run, ...
  2    usage: an unknown flag or config key, a bad value, an invalid config combination
  130  interrupted (Ctrl-C) before anything could be saved

Errors print one line, `PROGRAM: error: MESSAGE`, to stderr; no traceback for a user's mistake.
"""

import logging as std_logging
import os
import re
import sys
import types

from absl import app, flags, logging
from ml_collections import config_flags

from pippo_jax import errors

USAGE, FAILED, INTERRUPTED = 2, 1, 130
HELP_FLAGS = ("-h", "--help", "-help", "--helpshort")
# Errors that are the user's to fix (a file, a path, a busy workdir, bad data, a diverged run):
# one line, exit 1.
USER_ERRORS = (
  OSError,
  ImportError,
  FloatingPointError,
  errors.CheckpointError,
  errors.CorruptDataError,
  errors.InputError,
  errors.WorkdirBusyError,
)


CONFIG_HELP = "Stage config file[:variant]; override keys with --config.KEY=VALUE."


def program_argv(program: str, argv=None) -> list[str]:
  """[program, *args] (default sys.argv[1:]), with a `--config configs/NAME.py[:variant]` that is
  not found from here read from the installed package (`pippo_jax.configs`): a user who installed
  pippo_jax without the repository still names the stage configs as the README does."""
  args = list(sys.argv[1:] if argv is None else argv)
  for i, arg in enumerate(args):
    if arg in ("--config", "-config") and i + 1 < len(args):
      args[i + 1] = packaged_config(args[i + 1])
    elif arg.startswith(("--config=", "-config=")):
      name, value = arg.split("=", 1)
      args[i] = f"{name}={packaged_config(value)}"
  return [program, *args]


def packaged_config(spec: str) -> str:
  """`configs/NAME.py[:variant]` -> the installed copy of NAME.py when no such file is here."""
  path, colon, variant = spec.partition(":")
  if os.path.exists(path) or os.path.dirname(os.path.normpath(path)) != "configs":
    return spec
  from pippo_jax import configs  # pylint: disable=g-import-not-at-top

  installed = os.path.join(os.path.dirname(configs.__file__), os.path.basename(path))
  return installed + colon + variant if os.path.exists(installed) else spec


def _override_arg(argv, key: str) -> str:
  """The `--config.a.b=v` argument of `argv` whose path holds `key` (else the key itself)."""
  for arg in argv:
    name = arg.lstrip("-").split("=", 1)[0]
    if name.startswith("config") and key in name.split("."):
      return name
  return key


def usage_message(error: BaseException, argv) -> str:
  """One line for a flag or config error raised while parsing `argv`."""
  text = str(error)
  if isinstance(error, AttributeError):  # ml_collections: unknown key in a --config.* override
    key = re.search(r"'([^'\\]+)", text)
    hint = re.search(r'Did you mean "([^"]+)"', text)
    name = _override_arg(argv, key.group(1) if key else text)
    return f"unknown config key {name}" + (f' (did you mean "{hint.group(1)}"?)' if hint else "")
  if isinstance(error, KeyError):
    path = re.search(r"Attempting to lookup: (\S+?)[\"']?$", text)
    return f"unknown config key config.{path.group(1)}" if path else f"unknown config key {text}"
  if "Error whilst parsing config file" in text:  # the config file raised: keep its last line
    flag = text.split(":", 1)[0].removeprefix("flag ")
    last = [line for line in text.splitlines() if line.strip()][-1]
    return f"{flag}: {re.sub(r'^[A-Za-z_.]*Error: ', '', last)}"
  return text.splitlines()[0] if text else type(error).__name__


def absl_logging(quiet: bool = False) -> None:
  """Absl logging through its own handler, absl flags marked parsed (Grain reads them): what
  `absl.app.run` would set up. INFO and up, without orbax's INFO lines (a dozen per checkpoint
  read or written); `quiet`, for programs that print their own progress: warnings and up, without
  orbax's warnings about restoring read-only."""
  flags.FLAGS.mark_as_parsed()
  logging.use_absl_handler()
  logging.set_verbosity(logging.WARNING if quiet else logging.INFO)
  orbax_level = std_logging.ERROR if quiet else std_logging.WARNING
  logging.get_absl_handler().addFilter(
    lambda record: "orbax" not in record.pathname or record.levelno >= orbax_level
  )


def fail(program: str, message: str, code: int) -> None:
  print(f"{program}: error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def parse(program: str, argv, fv: flags.FlagValues, doc: str = "") -> list[str]:
  """Parse `argv` into the program's own FlagValues `fv`; returns the positional arguments.

  --help prints `doc` and the flags of `fv`, exit 0; a usage error exits 2 with one line.
  """
  if any(a in HELP_FLAGS for a in argv[1:]):
    print(f"{doc.rstrip()}\n\nflags:\n{fv.get_help()}")
    sys.exit(0)
  try:
    return fv(argv)[1:]
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    fail(program, usage_message(e, argv), USAGE)


def guarded(program: str, body, *args):
  """`body(*args)`, its errors as one line and an exit code (see the module docstring)."""
  try:
    return body(*args)
  except (app.UsageError, errors.ConfigError) as e:
    fail(program, str(e), USAGE)
  except KeyboardInterrupt as e:
    print(f"{program}: interrupted" + (f": {e}" if str(e) else ""), file=sys.stderr, flush=True)
    sys.exit(INTERRUPTED)
  except USER_ERRORS as e:
    logging.debug("%s failed", program, exc_info=True)
    fail(program, str(e) or type(e).__name__, FAILED)


def run_program(program: str, argv, define, doc: str, usage, body) -> int:
  """A CLI whose flags `define(fv)` adds: parse `argv`, pass the values (dashes in flag names
  become underscores) to `usage(args)` (a message for a usage error, else None), then run
  `body(args)` under `guarded`."""
  argv = program_argv(program, argv)
  fv = flags.FlagValues()
  define(fv)
  parse(program, argv, fv, doc=doc)
  args = types.SimpleNamespace(**{name.replace("-", "_"): fv[name].value for name in fv})
  try:
    problem = usage(args)
  except ValueError as e:
    problem = str(e)
  if problem:
    fail(program, f"{problem} (see --help)", USAGE)
  absl_logging(quiet=True)
  guarded(program, body, args)
  return 0


def define_config(fv: flags.FlagValues, argv, help_text: str = CONFIG_HELP) -> None:
  """The `--config FILE[:variant]` flag (ml_collections; `--config.KEY=VALUE` overrides)."""
  config_flags.DEFINE_config_file(
    "config", None, help_text, flag_values=fv, lock_config=False, sys_argv=argv
  )


def config_value(program: str, config_flag):
  """A config flag's value, validated; a config file that cannot be loaded is a usage error."""
  from pippo_jax import config_lib  # pylint: disable=g-import-not-at-top

  try:  # ml_collections loads the file lazily: a missing one raises OSError on first use
    return None if config_flag.value is None else config_lib.validate(config_flag.value)
  except OSError as e:
    fail(program, " ".join(str(e).split()), USAGE)
  except errors.ConfigError as e:
    fail(program, str(e), USAGE)


def parse_guidance(text: str | None) -> dict[str, float] | None:
  """'ref=2,cam=1.5' -> {"ref": 2.0, "cam": 1.5}; 'none' or '' -> {}; None -> None."""
  from pippo_jax.diffusion.guidance import CONDITION_GROUPS  # pylint: disable=g-import-not-at-top

  if text is None:
    return None
  if text.strip().lower() in ("", "none"):
    return {}
  scales = {}
  for item in text.split(","):
    group, eq, value = (s.strip() for s in item.partition("="))
    if not eq or group not in CONDITION_GROUPS:
      raise ValueError(
        f"--guidance item {item!r}: write GROUP=SCALE with GROUP one of "
        + ", ".join(CONDITION_GROUPS)
      )
    try:
      scales[group] = float(value)
    except ValueError:
      raise ValueError(f"--guidance {group}={value!r}: the scale must be a number") from None
  return scales
