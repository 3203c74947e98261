"""pippo-convert: checkpoints between the authors' PyTorch release and this package.

  pippo-convert --from pippo-torch CKPT --config configs/<stage>.py:<variant> [--config.model.K=V]
                --out DIR
  pippo-convert --to pippo-torch --from-checkpoint DIR --out FILE.safetensors [--config ...]

--from: CKPT is the state_dict of the release's `Pippo` model as `.pt`/`.pth` (plain, or wrapped
as the release's trainer writes it, {"model": ...}, or under "state_dict"; "module." /
"_orig_mod." prefixes are stripped; `--key` picks another entry, e.g. an EMA copy),
`.safetensors` or `.npz`. A `.pt`/`.pth` file is a pickle: it is read only with
`torch.load(path, map_location="cpu", weights_only=True)`, which restores tensors and plain
containers and never runs code from the file (anything else is refused); it needs
`pip install 'pippo_jax[torch]'`. The release's unused cross-attention weights (`cond_attn_*`,
`k_cond_norm`) and noise-schedule buffers are dropped with a note; missing or unknown keys and
wrong shapes are refused with the list. DIR becomes a checkpoint root (DIR/checkpoints/0 with
params + config, see `pippo_jax.checkpoints`) that training and sampling start from.

--to: writes our checkpoint as a release-layout state_dict in safetensors, for the release's code:
`model.load_state_dict(safetensors.torch.load_file(FILE), strict=False)` (strict=False is its own
loader's default); the dropped tensors keep their initial values there, and its forward pass
never reads the cross-attention weights.
"""

import os
import sys

from absl import flags
from safetensors.numpy import save_file

from pippo_jax import checkpoints, paths
from pippo_jax.cli import common
from pippo_jax.interop import release_layout, torch_checkpoint
from pippo_jax.models import params as params_lib
from pippo_jax.models.config import ModelConfig

PROGRAM = "pippo-convert"
FORMATS = ("pippo-torch",)


def _define(fv: flags.FlagValues, argv: list[str]) -> None:
  flags.DEFINE_enum(
    "from",
    None,
    FORMATS,
    "Convert a checkpoint of this kind (positional CKPT) to ours.",
    flag_values=fv,
  )
  flags.DEFINE_enum(
    "to", None, FORMATS, "Convert our checkpoint (--from-checkpoint) to this.", flag_values=fv
  )
  flags.DEFINE_string(
    "from-checkpoint", None, "Our checkpoint directory (with --to).", flag_values=fv
  )
  flags.DEFINE_string(
    "out",
    None,
    "Output: checkpoint directory (--from) or .safetensors file (--to).",
    flag_values=fv,
  )
  flags.DEFINE_string(
    "key",
    None,
    "Dotted entry of a wrapped checkpoint to read (default: the "
    "state_dict found under 'state_dict', 'model', ...).",
    flag_values=fv,
  )
  common.define_config(
    fv,
    argv,
    "Stage config file[:variant] (required with "
    "--from; with --to, checked against the checkpoint's).",
  )


def from_torch(ckpt: str, config, out: str, key: str | None = None) -> None:
  """Release checkpoint file -> our orbax checkpoint directory `out`."""
  cfg = ModelConfig.from_config(config.model)
  if not cfg.scan_blocks:
    raise ValueError("checkpoints store scanned (stacked) blocks; use model.scan_blocks=True")
  state_dict, notes = torch_checkpoint.read_state_dict(ckpt, key)
  for note in notes:
    print(note)
  params, dropped = release_layout.release_to_params(state_dict, cfg)
  if dropped:
    print(
      f"dropped {len(dropped)} release tensors (cross-attention weights its forward pass "
      "never reads; noise-schedule buffers, recomputed from the config): "
      + torch_checkpoint.summarise_keys(dropped)
    )
  checkpoints.write_params(out, params, config)
  print(
    f"wrote {out}: {len(state_dict) - len(dropped)} tensors, "
    f"{params_lib.count(params):,} parameters "
    f"(stage {config.get('stage', '?')}, width {cfg.width}, depth {cfg.depth})"
  )


def to_torch(directory: str, out: str, config=None) -> None:
  """Our checkpoint directory -> release-layout state_dict in the safetensors file `out`."""
  params, saved = checkpoints.read_params(directory, config)
  cfg = ModelConfig.from_config(saved["model"])
  state_dict = release_layout.params_to_release(params, cfg)
  save_file(
    state_dict,
    out,
    metadata={
      "format": "pt",
      "producer": "pippo_jax",
      "layout": "release Pippo.state_dict()",
      "stage": str(saved.get("stage", "")),
      "load_with": "load_state_dict(strict=False)",
    },
  )
  print(
    f"wrote {out}: {len(state_dict)} tensors, {params_lib.count(params):,} parameters in the "
    "release "
    "layout (cond_attn_*, k_cond_norm, schedule.* not included)"
  )


def main(argv=None) -> int:
  """Runs the CLI on `argv` (the arguments after the program name; default sys.argv[1:])."""
  argv = common.program_argv(PROGRAM, argv)
  fv = flags.FlagValues()
  _define(fv, argv)
  rest = common.parse(PROGRAM, argv, fv, doc=__doc__)
  src, dst, out = fv["from"].value, fv["to"].value, fv["out"].value
  usage = None
  if (src is None) == (dst is None):
    usage = "give exactly one of --from pippo-torch CKPT and --to pippo-torch"
  elif not out:
    usage = "--out is required"
  elif src and (len(rest) != 1 or fv["config"].value is None):
    usage = "--from pippo-torch needs one checkpoint file (positional) and --config"
  elif dst and (rest or not fv["from-checkpoint"].value):
    usage = "--to pippo-torch needs --from-checkpoint DIR and no positional arguments"
  elif dst and not out.endswith(".safetensors"):
    usage = "--to pippo-torch writes a .safetensors file"
  if usage:
    print(f"{PROGRAM}: error: {usage} (see --help)", file=sys.stderr)
    return common.USAGE
  config = common.config_value(PROGRAM, fv["config"])
  out = paths.resolve(out)
  try:
    if os.path.isfile(out) or os.path.isdir(out) and os.listdir(out):
      raise FileExistsError(f"--out {out} exists; remove it or choose another path")
    paths.writable_dir(os.path.dirname(out), "the parent of --out")
    if src:
      from_torch(paths.resolve(rest[0]), config, out, fv["key"].value)
    else:
      to_torch(paths.resolve(fv["from-checkpoint"].value), out, config)
  except (ValueError, OSError, ImportError) as e:
    print(f"{PROGRAM}: error: {e}", file=sys.stderr)
    return common.FAILED
  return 0


if __name__ == "__main__":
  sys.exit(main())
