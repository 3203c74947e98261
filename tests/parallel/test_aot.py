"""Ahead-of-time compilation (`parallel.aot`, `pippo-compile`): TPU topologies described by
libtpu without a TPU, hybrid multi-slice meshes, the collectives and FLOPs read from compiled
programs, and the CLI as the README runs it."""

import importlib
import importlib.util
import json
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from pippo_jax.errors import ConfigError
from pippo_jax.models import flops
from pippo_jax.models.config import ModelConfig
from pippo_jax.parallel import aot, sharding

REPO = pathlib.Path(__file__).resolve().parents[2]
PIPPO_COMPILE = str(pathlib.Path(sys.executable).parent / "pippo-compile")
needs_libtpu = pytest.mark.skipif(
  importlib.util.find_spec("libtpu") is None, reason="libtpu (pippo_jax[tpu]) is not installed"
)


def test_collectives_are_counted_once_per_operation():
  hlo = """
  %all-reduce.157 = (f32[1,768]{1,0:T(1,128)}, /*index=5*/f32[1,512]{1,0}) all-reduce(%a, %b)
  %get-tuple-element.1 = f32[1,768]{1,0} get-tuple-element(%all-reduce.157), index=0
  %all-gather-start.2 = (bf16[8]{0}, bf16[64]{0}) all-gather-start(%c), dimensions={0}
  %all-gather-done.2 = bf16[64]{0} all-gather-done(%all-gather-start.2)
  ROOT %reduce-scatter.3 = f32[4]{0} reduce-scatter(%d), dimensions={0}
  %fusion.4 = f32[4]{0} fusion(%all-gather-done.2), kind=kLoop, calls=%all-reduce-fusion
  %collective-permute-start.5 = (f32[4]{0}, f32[4]{0}) collective-permute-start(%e)
  %collective-permute-done.5 = f32[4]{0} collective-permute-done(%collective-permute-start.5)
  """
  assert aot.collectives(hlo) == {
    "all-gather": 1,
    "all-reduce": 1,
    "collective-permute": 1,
    "reduce-scatter": 1,
  }


@needs_libtpu
def test_topologies_and_multi_slice_meshes():
  devices, chip = aot.topology("v5p-64")  # 64 TensorCores = 32 chips
  assert len(devices) == 32 and chip.name == "TPU v5p"
  assert devices[0].platform == "tpu"
  devices, _ = aot.topology("v5p:2x2x1", slices=2)
  assert len(devices) == 8
  assert sorted({d.slice_index for d in devices}) == [0, 1]
  # Default: `data` spans the slices; every data row is one slice's chips.
  mesh = sharding.mesh_from_config(dict(data=2, fsdp=4, seq=1, tensor=1), devices)
  for i in range(2):
    assert {d.slice_index for d in mesh.devices[i].flat} == {i}
  # Pure FSDP: `fsdp` spans them (half its groups on each slice).
  mesh = sharding.mesh_from_config(dict(data=1, fsdp=8, seq=1, tensor=1), devices)
  slice_of = np.vectorize(lambda d: d.slice_index)(mesh.devices.reshape(8))
  assert sorted(slice_of.tolist()) == [0] * 4 + [1] * 4
  with pytest.raises(ConfigError, match="must multiply to the 2 slices"):
    sharding.mesh_from_config(dict(data=2, fsdp=4, seq=1, tensor=1), devices, dict(tensor=2))
  with pytest.raises(ConfigError, match="slice name, one of"):
    aot.topology("v9z:2x2")


def test_missing_libtpu_is_named(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(
    importlib.util, "find_spec", lambda name, *a: None if name == "libtpu" else real(name, *a)
  )
  with pytest.raises(ImportError, match=r"needs libtpu: pip install 'pippo_jax\[tpu\]'"):
    aot.topology("v5p:2x2x1")


def test_compiled_flops_match_the_analytic_count():
  """On this CPU: the compiled step's matmul FLOPs, loops counted as often as they run
  (`aot.matmul_flops`), are the same for scanned and unrolled blocks and agree with
  `pippo-inspect`'s analytic count (`models.flops`) within 15%; XLA's cost analysis counts the
  scanned loop's body once."""
  config = importlib.import_module("pippo_jax.configs.p3_posttrain").get_config("size=smoke")
  config = aot.with_overrides(config, mesh=dict(data=1))
  mesh = sharding.mesh_from_config(config.sharding.mesh, jax.devices()[:1])
  rules = sharding.rules_from_config(config.sharding.rules)
  model_flops = aot.step_model_flops(config, "train", config.batch_size)
  r = {}
  for scan in (False, True):
    config.model.scan_blocks = scan
    compiled = aot.compile_train(config, mesh, rules, platform="cpu")
    r[scan] = aot.analyse(compiled, None, model_flops, 1)
  # The same matmuls but one: the scanned backward computes the attention scores again (from
  # the saved q and k), 1.5% of the step here.
  assert r[True]["matmul_flops"] == pytest.approx(r[False]["matmul_flops"], rel=0.03)
  assert 0.85 < r[True]["matmul_vs_model"] < 1.15, r[True]["matmul_vs_model"]
  assert 0.85 < r[False]["flops_vs_model"] < 1.15, r[False]["flops_vs_model"]
  # depth 4: three block bodies uncounted by the cost analysis
  assert r[True]["flops_vs_model"] < 0.8 * r[False]["flops_vs_model"]


def test_convolution_flops_count_only_taps_inside_the_input():
  """Padding, strides and dilations: the multiply-adds counted by brute force in NumPy."""
  x = np.ones((2, 3, 9), np.float32)  # batch, features, width
  w = np.ones((4, 3, 3), np.float32)  # out, in, taps
  pad, stride, lhs_dil, rhs_dil = (3, 1), 2, 2, 2
  conv = lambda x, w: jax.lax.conv_general_dilated(
    x, w, (stride,), [pad], lhs_dilation=(lhs_dil,), rhs_dilation=(rhs_dil,)
  )
  compiled = jax.jit(conv).lower(x, w).compile()
  out_width = compiled.out_info.shape[-1]
  dilated = (x.shape[-1] - 1) * lhs_dil + 1
  macs = 0
  for o in range(out_width):
    for k in range(w.shape[-1]):
      p = o * stride + k * rhs_dil - pad[0]
      macs += 0 <= p < dilated and p % lhs_dil == 0
  expected = 2 * x.shape[0] * w.shape[0] * w.shape[1] * macs
  assert aot.matmul_flops(compiled.as_text()) == expected


@needs_libtpu
def test_pippo_compile_as_the_readme_runs_it(tmp_path):
  out = tmp_path / "smoke.json"
  args = [
    "--config",
    "configs/p3_posttrain.py:size=smoke",
    "--config.model.dtype=bfloat16",
    "--topology",
    "v5p:2x2x1",
    "--mesh",
    "fsdp=2,seq=2",
    "--what",
    "sample",
    "--nocheck-flops",
    "--json",
    str(out),
  ]
  run = subprocess.run([PIPPO_COMPILE, *args], cwd=REPO, capture_output=True, text=True)
  assert run.returncode == 0, run.stderr
  assert "4 x TPU v5p (v5p:2x2x1; 95 GiB HBM" in run.stdout
  row = [line for line in run.stdout.splitlines() if line.startswith("| sample |")]
  assert len(row) == 1 and "fsdp=2 seq=2" in row[0], run.stdout
  assert run.stderr == "", run.stderr  # libtpu's start-up warnings are silenced
  (result,) = json.loads(out.read_text())
  assert result["fits"] and result["batch"] == 2
  assert result["mesh"] == dict(data=1, fsdp=2, seq=2, tensor=1)
  assert 0 < result["total_bytes"] < result["hbm_bytes"]
  # Sequence parallelism: keys and values all-gathered over `seq`.
  assert result["collectives"].get("all-gather", 0) > 0

  bad = subprocess.run(
    [PIPPO_COMPILE, *args[:3], "--topology", "v9z:2x2"], cwd=REPO, capture_output=True, text=True
  )
  assert bad.returncode == 2
  assert bad.stderr.startswith("pippo-compile: error: --topology 'v9z:2x2': use GENERATION")


@needs_libtpu
def test_search_tries_every_mesh_and_picks_the_highest_mfu(tmp_path):
  out = tmp_path / "search.json"
  args = ["--config", "configs/p3_posttrain.py:size=smoke", "--config.model.dtype=bfloat16"]
  args += ["--topology", "v5p:2x2x1", "--search", "--what", "sample"]
  args += ["--remat", "nothing_saveable", "--nocheck-flops", "--json", str(out)]
  run = subprocess.run([PIPPO_COMPILE, *args], cwd=REPO, capture_output=True, text=True)
  assert run.returncode == 0, run.stderr
  results = json.loads(out.read_text())
  tried = [r["mesh"] for r in results]
  expected = [dict(dict.fromkeys(sharding.MESH_AXES, 1), **m) for m in aot.mesh_candidates(4)]
  assert sorted(map(sorted, map(dict.items, tried))) == sorted(
    map(sorted, map(dict.items, expected))
  )
  # One example per data-parallel group: the batches differ, so the step times do not compare.
  assert len({r["batch"] for r in results}) > 1
  best = max(results, key=lambda r: r["mfu"])
  mesh = ",".join(f"{k}={v}" for k, v in best["mesh"].items())
  assert f"sample: best that fits: --mesh {mesh} --remat nothing_saveable" in run.stdout


@needs_libtpu
def test_collective_matmul_loops_are_counted_as_often_as_they_run():
  """FSDP over 32 chips: the partitioner turns the blocks' weight all-gather + matmul into
  windowed loops (convolutions over padded pairs of shards), inside the scanned blocks. The
  loop-aware count equals the analytic forward, its dots and convolutions the forward without
  attention (a splash kernel, counted apart); XLA's cost analysis, one body per loop, misses
  most of it."""
  config = importlib.import_module("pippo_jax.configs.p1_pretrain").get_config("res=512")
  config = aot.with_overrides(config, mesh=dict(fsdp=32))
  config.model.dtype = "bfloat16"
  devices, chip = aot.topology("v5p-64")
  mesh = sharding.mesh_from_config(config.sharding.mesh, devices)
  rules = sharding.rules_from_config(config.sharding.rules)
  compiled = aot.compile_sample(config, mesh, rules, 32)
  text = compiled.as_text()
  assert "windowed_dot_general" in text
  cfg = ModelConfig.from_config(config.model)
  passes = len(aot.sample_settings(config, cfg.num_views)["scales"]) + 1
  parts = flops.forward_flops(cfg, batch=32 * passes)
  without_attention = (parts["total"] - parts["blocks.attention"]) / 32
  r = aot.analyse(compiled, chip, parts["total"], 32)
  assert r["matmul_flops"] - r["splash_flops"] == pytest.approx(without_attention, rel=0.02)
  assert r["matmul_flops"] == pytest.approx(parts["total"] / 32, rel=0.02)
  assert r["flops"] < 0.2 * r["matmul_flops"]


@needs_libtpu
@pytest.mark.parametrize("what", ["sample", "train"])
def test_splash_kernels_count_the_matmuls_xla_attention_does(what):
  """The same attention as splash kernels and as XLA dots (256 tokens: no tile padding). The
  sampler's forward counts the same; the training step's splash backward does 3 more matmuls
  per query-key pair than autodiff of the dots (its dq and dkv kernels each recompute the
  scores and the probabilities' gradient): 1.5 x the attention forward."""
  devices, _ = aot.topology("v5p:2x2x1")
  counts = {}
  for impl in ("splash", "xla"):
    config = importlib.import_module("pippo_jax.configs.p3_posttrain").get_config(
      "size=smoke,views=3"
    )
    config = aot.with_overrides(config, mesh=dict(fsdp=4), remat="nothing_saveable")
    config.model.attention_impl = impl
    mesh = sharding.mesh_from_config(config.sharding.mesh, devices)
    rules = sharding.rules_from_config(config.sharding.rules)
    if what == "train":
      compiled = aot.compile_train(config, mesh, rules)
    else:
      compiled = aot.compile_sample(config, mesh, rules, 4)
    counts[impl] = aot.matmul_flops(compiled.as_text())
  cfg = ModelConfig.from_config(config.model)
  assert (cfg.num_views + 1) * cfg.tokens_per_view == 256
  # the training step's share per chip: 4 examples over 4 chips
  attention = flops.forward_flops(cfg, batch=1)["blocks.attention"]
  if what == "sample":
    assert counts["splash"] == pytest.approx(counts["xla"], rel=1e-6)
  else:
    assert counts["splash"] - counts["xla"] == pytest.approx(1.5 * attention, rel=1e-6)


@needs_libtpu
def test_check_flops_cross_checks_the_loop_aware_count():
  args = ["--config", "configs/p3_posttrain.py:size=smoke", "--config.model.dtype=bfloat16"]
  args += ["--topology", "v5p:2x2x1", "--mesh", "fsdp=2,seq=2", "--what", "sample", "--check-flops"]
  run = subprocess.run([PIPPO_COMPILE, *args], cwd=REPO, capture_output=True, text=True)
  assert run.returncode == 0, run.stderr
  (line,) = [ln for ln in run.stdout.splitlines() if ln.startswith("FLOPs check:")]
  unrolled, compiled = (float(x) for x in re.findall(r"(\d+\.\d+)", line))
  assert compiled > 0 and compiled == pytest.approx(unrolled, rel=0.03), line
