"""pippo-export as a user runs it: the exported sampler, loaded in a fresh process with jax, numpy
and safetensors only, gives the in-process sampler's images; the SavedModel's denoiser step gives
`model.apply`'s output; wrong inputs and bad flags are refused with one-line messages; a failed
export leaves nothing behind."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import safetensors.numpy
from flax import traverse_util

from pippo_jax import checkpoints
from pippo_jax.cli import export as export_cli
from pippo_jax.configs import p3_posttrain
from pippo_jax.diffusion import schedule as schedule_lib
from pippo_jax.inference import export, generator
from pippo_jax.inference.exported import TensorSpec, load_exported
from pippo_jax.models import autoencoder
from pippo_jax.models import codec as codec_lib
from pippo_jax.models import params as params_lib
from pippo_jax.models.config import ModelConfig
from pippo_jax.models.pippo import Pippo

PIPPO_EXPORT = str(pathlib.Path(sys.executable).parent / "pippo-export")
# The smoke P3 model (64 px, 2 views, space-to-depth codec) narrowed to a fraction of a second per
# denoiser call on 2 CPU cores.
SMALL_MODEL = dict(width=64, depth=2, num_heads=2, cam_mlp_hidden=32)
STEPS, SEED, BATCH = 2, 3, 2
# Exported vs in-process uint8 views: at most one level apart, on at most this fraction of values.
MAX_OFF_BY_ONE = 1e-3


def user_env() -> dict:
  """A user's shell: one CPU device (no fake-device flags from the test suite)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return dict(env, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


def small_config():
  config = p3_posttrain.get_config("size=smoke")
  config.model.update(SMALL_MODEL)
  return config


def random_params(cfg: ModelConfig, seed: int):
  """Random (not zero-initialised) params of `Pippo(cfg)`, so that every weight shows; drawn
  from the abstract shapes (compiling the model's init would cost seconds)."""
  rng = np.random.default_rng(seed)
  return traverse_util.unflatten_dict(
    {
      path: rng.normal(0.0, 0.1, leaf.shape).astype(np.float32)
      for path, leaf in params_lib.flat(params_lib.abstract(cfg)).items()
    },
    sep="/",
  )


def random_inputs(spec: dict, batch: int, seed: int = 0) -> dict:
  """Inputs fitting `ExportedSampler.input_spec` with the batch dimension `batch`."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, s in spec.items():
    shape = [batch if isinstance(d, str) else d for d in s.shape]
    if s.dtype == "uint8":
      out[name] = rng.integers(0, 256, shape, dtype=np.uint8)
    else:
      out[name] = rng.normal(0.0, 1.0, shape).astype(s.dtype)
  return out


def assert_views_close(got, want) -> float:
  """Equal uint8 views, or one level apart on a tiny fraction; returns that fraction."""
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape and got.dtype == want.dtype == np.uint8
  assert want.std() > 1.0  # images, not a constant: the comparison means something
  diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
  assert diff.max() <= 1, diff.max()
  off = float((diff > 0).mean())
  assert off <= MAX_OFF_BY_ONE, off
  return off


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """A folder holding `ckpt` (random smoke-model weights) and `export` (pippo-export's output,
  run from this folder with relative paths)."""
  base = tmp_path_factory.mktemp("export")
  config = small_config()
  checkpoints.write_params(
    str(base / "ckpt"), random_params(ModelConfig.from_config(config.model), 0), config
  )
  run = subprocess.run(
    [PIPPO_EXPORT, "--checkpoint", "ckpt", "--out", "export", "--steps", str(STEPS)],
    cwd=base,
    env=user_env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  (base / "cli_stdout.txt").write_text(run.stdout)
  return base


@pytest.fixture(scope="module")
def gen(base):
  return generator.load_generator(str(base / "ckpt"))


def test_cli_writes_sampler_weights_metadata_and_saved_model(base, gen):
  out = base / "export"
  assert sorted(os.listdir(out)) == [
    "metadata.json",
    "params.safetensors",
    "sampler.jax_export",
    "saved_model",
  ]
  assert not [p for p in os.listdir(base) if ".partial-" in p]
  meta = json.loads((out / "metadata.json").read_text())
  assert meta["batch"] == {"symbolic": True, "dim": "b"}
  assert meta["sampler"]["num_steps"] == STEPS and meta["sampler"]["num_views"] == 2
  assert meta["sampler"]["guidance"] == {} and meta["sampler"]["eta"] == 0.1
  assert meta["config"]["model"]["width"] == SMALL_MODEL["width"]
  assert {"jax", "jaxlib", "pippo_jax", "orbax-export"} <= set(meta["versions"])
  shapes = {i["name"]: (i["shape"], i["dtype"]) for i in meta["inputs"]}
  assert shapes == {
    "ref_image": (["b", 64, 64, 3], "uint8"),
    "ref_cam_pose": (["b", 16], "float32"),
    "target_cam_pose": (["b", 2, 16], "float32"),
    "ref_plucker": (["b", 64, 64, 6], "float32"),
    "target_plucker": (["b", 2, 64, 64, 6], "float32"),
    "ref_anchor": (["b", 64, 64, 3], "uint8"),
    "target_anchor": (["b", 2, 64, 64, 3], "uint8"),
  }
  assert all(i["description"] for i in meta["inputs"])
  assert meta["outputs"][0]["shape"] == ["b", 2, 64, 64, 3]
  # The weights: every model parameter under "model/", the same values; no codec parameters.
  weights = safetensors.numpy.load_file(out / "params.safetensors")
  want = params_lib.flat(gen.params)
  assert set(weights) == {f"model/{k}" for k in want}
  for k, v in want.items():
    np.testing.assert_array_equal(weights[f"model/{k}"], v)
  assert meta["weights"]["codec_parameters"] == 0
  stdout = (base / "cli_stdout.txt").read_text()
  assert "symbolic (b: any size)" in stdout and "load_exported" in stdout


LOADER_SCRIPT = textwrap.dedent(
  """
  import json, sys
  import numpy as np
  from pippo_jax.inference.exported import load_exported

  sampler = load_exported("export")
  inputs = dict(np.load("inputs.npz"))
  views = sampler(inputs, seed=SEED)
  again = sampler(inputs, seed=SEED)
  other = sampler(inputs, seed=SEED + 1)
  np.save("views.npy", views)
  heavy = sorted(
    m for m in sys.modules
    if m.split(".")[0] in ("flax", "tensorflow", "orbax", "optax")
    or m.startswith(("pippo_jax.models", "pippo_jax.training", "pippo_jax.diffusion"))
  )
  print(json.dumps(dict(
    heavy=heavy, same_seed_equal=bool((views == again).all()),
    other_seed_differs=bool((views != other).any()), shape=list(views.shape),
    dtype=str(views.dtype))))
  """
)


def test_fresh_process_runs_the_export_like_the_in_process_sampler(base, gen):
  meta = json.loads((base / "export" / "metadata.json").read_text())
  spec = {i["name"]: TensorSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in meta["inputs"]}
  inputs = random_inputs(spec, BATCH, seed=1)
  np.savez(base / "inputs.npz", **inputs)
  with subprocess.Popen(
    [sys.executable, "-c", LOADER_SCRIPT.replace("SEED", str(SEED))],
    cwd=base,
    env=user_env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  ) as proc:
    # The in-process sampler, while the fresh process loads and runs the export.
    want = gen.sampler(num_steps=STEPS)(gen.params, gen.codec, inputs, jax.random.key(SEED))
    want = np.asarray(want)
    stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr[-3000:]
  report = json.loads(stdout.strip().splitlines()[-1])
  assert report["heavy"] == []  # no flax, TensorFlow, orbax, nor the model or training code
  assert report["same_seed_equal"] and report["other_seed_differs"]
  assert report["shape"] == [BATCH, 2, 64, 64, 3] and report["dtype"] == "uint8"
  assert_views_close(np.load(base / "views.npy"), want)


def test_the_loader_imports_no_flax_and_no_model_code(tmp_path):
  code = (
    "import sys, pippo_jax.inference, pippo_jax.inference.exported\n"
    "assert callable(pippo_jax.inference.load_exported)\n"
    "print(sorted(m for m in sys.modules if m.split('.')[0] == 'flax' "
    "or m.startswith('pippo_jax.models')))"
  )
  run = subprocess.run(
    [sys.executable, "-c", code], cwd=tmp_path, env=user_env(), capture_output=True, text=True
  )
  assert run.returncode == 0, run.stderr[-2000:]
  assert run.stdout.strip().splitlines()[-1] == "[]"


def test_wrong_inputs_are_refused_naming_the_input_and_both_shapes(base):
  sampler = load_exported(str(base / "export"))
  assert sampler.batch_size is None
  assert str(sampler.input_spec["ref_image"]) == "(b, 64, 64, 3) uint8"
  good = random_inputs(sampler.input_spec, 1)
  with pytest.raises(ValueError, match=r"missing input 'ref_plucker': expected \(b, 64, 64, 6\)"):
    sampler({k: v for k, v in good.items() if k != "ref_plucker"})
  with pytest.raises(ValueError, match=r"unexpected input 'target_images'"):
    sampler(dict(good, target_images=np.zeros((1, 2, 64, 64, 3), np.uint8)))
  with pytest.raises(
    ValueError, match=r"input 'ref_image': expected dtype uint8 .* got \(1, 64, 64, 3\) float32"
  ):
    sampler(dict(good, ref_image=good["ref_image"].astype(np.float32)))
  with pytest.raises(
    ValueError,
    match=r"input 'target_plucker': expected shape \(b, 2, 64, 64, 6\) float32, "
    r"got \(1, 3, 64, 64, 6\) float32",
  ):
    sampler(dict(good, target_plucker=np.zeros((1, 3, 64, 64, 6), np.float32)))
  with pytest.raises(
    ValueError,
    match=r"input 'ref_cam_pose': expected shape \(b, 16\) float32 with b = 1 \(from "
    r"'ref_image'\), got \(2, 16\)",
  ):
    sampler(dict(good, ref_cam_pose=np.zeros((2, 16), np.float32)))
  with pytest.raises(ValueError, match="seed must be an int"):
    sampler(good, seed=0.5)


def test_saved_model_reproduces_one_denoiser_step(base, gen):
  tf = pytest.importorskip("tensorflow")
  meta = json.loads((base / "export" / "metadata.json").read_text())["saved_model"]
  assert meta["batch"]["symbolic"] and set(meta["signatures"]) == {"serving_default", "with_drops"}
  loaded = tf.saved_model.load(str(base / "export" / "saved_model"))
  rng = np.random.default_rng(2)
  inputs = {}
  for s in meta["signatures"]["with_drops"]["inputs"]:
    shape = [3 if d == "b" else d for d in s["shape"]]
    if s["dtype"] == "bool":
      inputs[s["name"]] = rng.random(shape) < 0.5
    elif s["dtype"] == "int32":
      inputs[s["name"]] = rng.integers(0, 1000, shape).astype(np.int32)
    else:
      inputs[s["name"]] = rng.normal(0.0, 1.0, shape).astype(np.float32)
  plain = {k: v for k, v in inputs.items() if not k.startswith("drop_")}
  cond = {k: v for k, v in plain.items() if k not in ("x_t", "t")}
  drops = {k.removeprefix("drop_"): v for k, v in inputs.items() if k.startswith("drop_")}
  assert set(drops) == {"ref", "cam", "control"}
  apply = jax.jit(
    lambda x_t, t, cond, drop: gen.model.apply({"params": gen.params}, x_t, t, cond, drop)
  )
  keep = {g: np.zeros(3, bool) for g in drops}
  for signature, feed, drop in (("serving_default", plain, keep), ("with_drops", inputs, drops)):
    want = np.asarray(apply(inputs["x_t"], inputs["t"], cond, drop))
    got = loaded.signatures[signature](**feed)["model_output"].numpy()
    assert got.shape == want.shape == (3, 2, 16, 16, 48)
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max(), rtol=0)


def test_guided_export_matches_and_records_its_batch(base, gen, tmp_path, capsys):
  out = tmp_path / "guided"
  args = ["--checkpoint", base / "ckpt", "--out", out, "--steps", STEPS, "--views", 1]
  assert cli(*args, "--guidance", "ref=2", "--batch", 2, "--no-saved-model") == 0
  stdout = capsys.readouterr().out
  meta = json.loads((out / "metadata.json").read_text())
  assert meta["sampler"]["guidance"] == {"ref": 2.0} and meta["files"]["saved_model"] is None
  assert "saved_model" not in meta and not (out / "saved_model").exists()
  assert meta["source"]["ema"] is True and meta["source"]["checkpoint"] == str(base / "ckpt")
  # Guidance's nested passes keep the batch symbolic.
  assert meta["batch"]["symbolic"] and "symbolic (b: any size)" in stdout
  sampler = load_exported(str(out))
  assert sampler.batch_size is None
  inputs = random_inputs(sampler.input_spec, 2, seed=4)
  want = gen.sampler(num_steps=STEPS, scales={"ref": 2.0})(
    gen.params, gen.codec, inputs, jax.random.key(SEED)
  )
  assert_views_close(sampler(inputs, seed=SEED), want)


def tiny_vae_generator() -> generator.Generator:
  """A P3 generator on a tiny random SDXL-VAE codec (x4, 4 channels): a codec with weights."""
  config = small_config()
  vae_cfg = autoencoder.VAEConfig(
    block_out_channels=(8, 8, 8), layers_per_block=1, norm_num_groups=4
  )
  config.codec.update(kind="sdxl_vae", latent_channels=4)
  config.model.latent_channels = 4
  cfg = ModelConfig.from_config(config.model)
  rng = np.random.default_rng(5)
  vae_params = jax.tree.map(
    lambda s: rng.normal(0.0, 0.1, s.shape).astype(np.float32), autoencoder.abstract_params(vae_cfg)
  )
  return generator.Generator(
    model=Pippo(cfg),
    params=random_params(cfg, 6),
    codec=codec_lib.SDXLVAECodec(vae_params, vae_cfg, scale_factor=0.5),
    cfg=cfg,
    config=config,
    schedule=schedule_lib.cosine_schedule(1000, 0.008, 0.999),
  )


@pytest.mark.slow
def test_codec_weights_are_exported_and_used(tmp_path):
  gen = tiny_vae_generator()
  meta = export.export_generator(
    gen, str(tmp_path / "vae"), num_views=1, num_steps=STEPS, saved_model=False
  )
  weights = safetensors.numpy.load_file(tmp_path / "vae" / "params.safetensors")
  codec_keys = sorted(k for k in weights if k.startswith("codec/"))
  assert codec_keys and meta["weights"]["codec_parameters"] > 0
  assert meta["sampler"]["codec"] == "sdxl_vae" and meta["sampler"]["num_views"] == 1
  sampler = load_exported(str(tmp_path / "vae"))
  inputs = random_inputs(sampler.input_spec, 1, seed=7)
  want = gen.sampler(num_steps=STEPS)(gen.params, gen.codec, inputs, jax.random.key(SEED))
  assert_views_close(sampler(inputs, seed=SEED), want)


def test_a_failed_export_leaves_nothing(gen, tmp_path, monkeypatch):
  def broken(*args, **kwargs):
    raise RuntimeError("the SavedModel could not be written")

  monkeypatch.setattr(export, "export_denoiser", broken)
  with pytest.raises(RuntimeError, match="could not be written"):
    export.export_generator(
      gen, str(tmp_path / "out"), num_views=2, num_steps=STEPS, symbolic_batch=False
    )
  assert os.listdir(tmp_path) == []  # neither OUT nor its temporary sibling


def cli(*args) -> int:
  try:
    return export_cli.main([str(a) for a in args])
  except SystemExit as e:
    return e.code


@pytest.mark.parametrize(
  "args, code, message",
  [
    ((), 2, "--checkpoint is required"),
    (("--checkpoint", "c"), 2, "--out is required"),
    (("--checkpoint", "c", "--out", "o", "--guidance", "ref=two"), 2, "must be a number"),
    (("--checkpoint", "c", "--out", "o", "--guidance", "face=2"), 2, "GROUP one of ref"),
    (("--checkpoint", "c", "--out", "o", "--views", "0"), 2, "--views=0 must be >= 1"),
    (("--checkpoint", "c", "--out", "o", "--platforms", "gpu"), 2, "unknown gpu; choose"),
    (("--checkpoint", "c", "--out", "o", "--bogus"), 2, "bogus"),
    (("--checkpoint", "missing", "--out", "o"), 1, "holds no checkpoints"),
  ],
)
def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys, args, code, message):
  monkeypatch.chdir(tmp_path)
  assert cli(*args) == code
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("pippo-export: error: ") and message in err[0]
  assert not os.path.exists(tmp_path / "o")


def test_cli_refuses_an_existing_output_and_bad_settings(base, tmp_path, capsys):
  (tmp_path / "taken").mkdir()
  (tmp_path / "taken" / "file").write_text("x")
  assert cli("--checkpoint", base / "ckpt", "--out", tmp_path / "taken") == 1
  assert "exists" in capsys.readouterr().err
  bad = ("--checkpoint", base / "ckpt", "--out", tmp_path / "o", "--no-saved-model")
  assert cli(*bad, "--steps", "1000") == 1
  assert "num_steps=1000 must be in [1, 1000)" in capsys.readouterr().err
  (tmp_path / "o").mkdir()  # an empty folder is taken
  args = ("--checkpoint", base / "ckpt", "--out", tmp_path / "o", "--steps", "2", "--views", "1")
  assert cli(*args, "--fixed-batch", "--batch", "3", "--platforms", "cpu,cuda") == 0
  assert "fixed at 3: asked for a fixed batch" in capsys.readouterr().out
  assert sorted(os.listdir(tmp_path)) == ["o", "taken"]
  sampler = load_exported(str(tmp_path / "o"))
  assert sampler.batch_size == 3 and sampler.exported.platforms == ("cpu", "cuda")
  meta = sampler.metadata["saved_model"]
  assert meta["batch"] == {"symbolic": False, "size": 3, "reason": "asked for a fixed batch"}
  assert meta["platforms"] == ["cpu", "cuda"]
  x_t = meta["signatures"]["serving_default"]["inputs"][0]
  assert x_t["name"] == "x_t" and x_t["shape"] == [3, 1, 16, 16, 48]
