"""pippo-inspect: parameter overview, token count and model FLOPs of a stage config.

  pippo-inspect --config configs/p3_posttrain.py:size=tiny,res=128 [--config.model.depth=4] [--full]

Shapes come from `jax.eval_shape`: nothing is allocated, so full-size configs are cheap to inspect.
"""

import importlib
import sys

from absl import flags

from pippo_jax.cli import common
from pippo_jax.models import flops
from pippo_jax.models import params as params_lib
from pippo_jax.models.config import ModelConfig

PROGRAM = "pippo-inspect"
STAGE_CONFIGS = ("p1_pretrain", "m2_midtrain", "p3_posttrain")


def human(n: float, unit: str = "") -> str:
  for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(n) >= scale:
      return f"{n / scale:.2f}{suffix}{unit}"
  return f"{n:.0f}{unit}"


def report(config, full: bool = False) -> str:
  """The text pippo-inspect prints for a resolved config."""
  cfg = ModelConfig.from_config(config.model)
  shapes = params_lib.abstract(cfg)
  total = params_lib.count(shapes)
  lines = [
    f"stage {config.stage}  variant {dict(config.variant)}",
    f"width {cfg.width}  depth {cfg.depth}  heads {cfg.num_heads}  image {cfg.image_size}px  "
    f"latent {cfg.latent_size}x{cfg.latent_size}x{cfg.latent_channels}  "
    f"views {cfg.num_views}+1",
    "",
    f"{'module':<16}{'params':>16}{'share':>9}",
  ]
  for name in sorted(shapes, key=lambda k: -params_lib.count(shapes[k])):
    c = params_lib.count(shapes[name])
    lines.append(f"{name:<16}{c:>16,}{100 * c / total:>8.2f}%")
  lines.append(f"{'total':<16}{total:>16,}  ({total / 1e6:.2f}M)")
  if full:
    lines.append("")
    for path, leaf in params_lib.flat(shapes).items():
      lines.append(f"  {path:<60} {str(tuple(leaf.shape)):>22}")
  b = config.batch_size
  fwd = flops.forward_flops(cfg, batch=b)
  lines += [
    "",
    f"tokens per step      {b * (cfg.num_views + 1) * cfg.tokens_per_view:,} "
    f"(batch {b} x {cfg.num_views + 1} views x {cfg.tokens_per_view} tokens)",
    f"FLOPs per forward    {human(fwd['total'])}  "
    f"(attention {100 * fwd['blocks.attention'] / fwd['total']:.1f}%)",
    f"FLOPs per train step {human(3 * fwd['total'])}  (3 x forward)",
  ]
  return "\n".join(lines)


def main(argv=None) -> int:
  argv = common.program_argv(PROGRAM, argv)
  fv = flags.FlagValues()
  common.define_config(fv, argv)
  flags.DEFINE_bool("full", False, "Also print every parameter's shape.", flag_values=fv)
  flags.DEFINE_bool(
    "all", False, "Inspect the default variant of every stage config.", flag_values=fv
  )
  rest = common.parse(PROGRAM, argv, fv, doc=__doc__)
  if rest:
    common.fail(PROGRAM, f"unexpected arguments {rest}", common.USAGE)
  if fv["all"].value:
    for name in STAGE_CONFIGS:
      print(f"=== configs/{name}.py")
      print(
        report(importlib.import_module(f"pippo_jax.configs.{name}").get_config(), fv["full"].value)
        + "\n"
      )
    return 0
  config = common.config_value(PROGRAM, fv["config"])
  if config is None:
    common.fail(
      PROGRAM,
      "--config is required (e.g. --config configs/p3_posttrain.py:size=tiny), or --all",
      common.USAGE,
    )
  print(report(config, fv["full"].value))
  return 0


if __name__ == "__main__":
  sys.exit(main())
