"""Stage configs: variants, parameter totals against the release, validation errors, inspect."""

import importlib

import jax
import pytest

from pippo_jax import config_lib
from pippo_jax.cli import inspect
from pippo_jax.models import flops
from pippo_jax.models import params as params_lib
from pippo_jax.models.config import ModelConfig
from pippo_jax.models.pippo import Pippo, dummy_inputs


def get(stage, arg=None):
  return importlib.import_module(f"pippo_jax.configs.{stage}").get_config(arg)


# The release's measured totals minus its unused cross-attention weights (3 null tokens of
# width D are ours in addition: null reference, null camera, zero control).
@pytest.mark.parametrize(
  "arg, millions",
  [
    ("res=128", 1445.36),
    ("res=512", 1448.31),
    ("res=1024", 1457.75),
    ("size=tiny,res=128", 165.53),
  ],
)
def test_p3_parameter_totals_match_release(arg, millions):
  cfg = ModelConfig.from_config(get("p3_posttrain", arg).model)
  total = params_lib.count(params_lib.abstract(cfg))
  assert abs(total / 1e6 - millions) / millions < 1e-3, total


def test_stage_defaults_and_conditioning():
  p1, m2, p3 = get("p1_pretrain"), get("m2_midtrain"), get("p3_posttrain")
  assert (p1.model.use_cam_mlp, p1.model.use_control_mlp, p1.model.num_views) == (False, False, 1)
  assert (m2.model.use_cam_mlp, m2.model.use_control_mlp, m2.model.image_size) == (True, False, 128)
  assert (p3.model.use_cam_mlp, p3.model.use_control_mlp, p3.model.image_size) == (True, True, 512)
  assert (p3.model.width, p3.model.depth, p3.model.num_heads) == (1536, 28, 24)
  tiny = get("p3_posttrain", "size=tiny,res=128,views=8")
  assert (tiny.model.width, tiny.model.depth, tiny.model.latent_size, tiny.model.num_views) == (
    768,
    12,
    16,
    8,
  )
  assert (
    p3.model.attention_train_views == 12
    and get("p3_posttrain", "res=1024").model.attention_train_views == 2
  )
  assert (p3.optimizer.lr, p3.optimizer.b2, p3.optimizer.eps) == (1e-4, 0.98, 1e-6)
  assert p3.diffusion.sampler.num_steps == 30 and p3.codec.scale_factor == 0.13025
  assert (p1.data.kind, p3.data.kind, p3.data.with_controls, m2.data.with_controls) == (
    "image",
    "multiview",
    True,
    False,
  )
  assert (p3.data.resolution, p3.data.num_views, m2.data.num_views) == (512, 4, 24)
  batch8 = get("m2_midtrain", "batch=8")
  assert batch8.data.batch_size == 8
  batch8.batch_size = 16  # one global batch size: the data section follows
  assert batch8.data.batch_size == 16


def test_p1_and_m2_models_build():
  for stage in ("p1_pretrain", "m2_midtrain"):
    cfg = ModelConfig.from_config(get(stage, "size=smoke").model)
    x_t, t, cond = dummy_inputs(cfg, 1)
    assert ("cam_pose" in cond) == cfg.use_cam_mlp
    out = jax.eval_shape(lambda: Pippo(cfg).init_with_output(jax.random.key(0), x_t, t, cond)[0])
    assert out.shape == x_t.shape


@pytest.mark.parametrize(
  "stage, arg, override, message",
  [
    (
      "p3_posttrain",
      "size=tiny",
      ("num_heads", 7),
      "model.num_heads=7 does not divide model.width=768",
    ),
    ("p3_posttrain", "size=tiny", ("image_size", 520), "model.image_size=520 is not divisible"),
    ("p3_posttrain", "size=tiny", ("patch_size", 4), "needs model.patch_size=2"),
    ("m2_midtrain", None, ("remat_policy", "sometimes"), "model.remat_policy='sometimes'"),
    ("m2_midtrain", None, ("attention_impl", "magic"), "model.attention_impl='magic'"),
    ("m2_midtrain", None, ("num_views", 8), "data.num_views=24 != model.num_views=8"),
  ],
)
def test_bad_model_values_fail_at_config_time_naming_the_key(stage, arg, override, message):
  config = get(stage, arg)
  config.model[override[0]] = override[1]
  with pytest.raises(ValueError, match=message.replace("(", r"\(")):
    config_lib.validate(config)


@pytest.mark.parametrize(
  "arg, message",
  [
    ("res=100", "res=100 is not one of"),
    ("depth=3", "unknown config variant key 'depth'"),
    ("size", "is not key=value"),
    ("size=huge", "unknown size 'huge'"),
  ],
)
def test_bad_variants_fail_with_the_key(arg, message):
  with pytest.raises(ValueError, match=message):
    get("p3_posttrain", arg)


def test_inspect_report_lists_modules_total_tokens_and_flops():
  text = inspect.report(get("p3_posttrain", "size=tiny,res=128"))
  lines = {l.split()[0]: l for l in text.splitlines() if l.strip()}
  for module in ("generator", "control_mlp", "cam_mlp", "ref_encoder"):
    assert module in lines
  assert "165,522,656" in lines["total"]
  assert "320 (batch 1 x 5 views x 64 tokens)" in text
  assert "FLOPs per train step" in text


def test_analytic_flops_match_xla_cost_analysis():
  """Matmul FLOPs by formula vs XLA's count for the whole compiled forward (which also counts
  elementwise work, so it is a few percent higher)."""
  cfg = ModelConfig(
    width=128,
    depth=2,
    num_heads=4,
    latent_size=16,
    image_size=128,
    cam_mlp_hidden=128,
    remat_policy="none",
    attention_impl="xla",
    scan_blocks=False,
  )  # XLA's cost analysis counts a scanned loop body once
  x_t, t, cond = dummy_inputs(cfg, 1)
  params = jax.eval_shape(Pippo(cfg).init, jax.random.key(0), x_t, t, cond)
  xla = jax.jit(Pippo(cfg).apply).lower(params, x_t, t, cond).compile().cost_analysis()["flops"]
  ours = flops.forward_flops(cfg)["total"]
  assert 0.95 < ours / xla <= 1.0
