"""pippo-convert: release checkpoints (.pth / .safetensors / .npz) <-> our orbax checkpoints."""

import functools
import importlib
import pathlib
import sys

import golden_io
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
from flax import traverse_util

from pippo_jax import checkpoints
from pippo_jax.cli import convert
from pippo_jax.interop.release_layout import params_to_release, release_to_params
from pippo_jax.models import params as params_lib
from pippo_jax.models.config import ModelConfig
from pippo_jax.models.pippo import Pippo, dummy_inputs

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"
# The golden model is the tiny P3 config at 64 px, narrowed to the release test model's size.
GOLDEN_ARGS = [
  "--config",
  f"{CONFIGS}/p3_posttrain.py:size=tiny,res=64",
  "--config.model.width=64",
  "--config.model.depth=2",
  "--config.model.num_heads=4",
  "--config.model.cam_mlp_hidden=128",
]


def run(*args) -> int:
  return convert.main([str(a) for a in args])


def stage_config(name: str):
  """configs/<stage>.py:<variant> as a resolved ConfigDict."""
  stage, variant = name.split(":")
  return importlib.import_module(f"pippo_jax.configs.{stage}").get_config(variant)


def random_params(cfg: ModelConfig, seed: int) -> dict:
  """Random (not zero-initialised) params of `Pippo(cfg)`, so that every weight shows in eps."""
  rng = np.random.default_rng(seed)
  return traverse_util.unflatten_dict(
    {
      path: rng.normal(0.0, 0.05, leaf.shape).astype(np.float32)
      for path, leaf in params_lib.flat(params_lib.abstract(cfg)).items()
    },
    sep="/",
  )


def torch_tensors(state_dict: dict) -> dict:
  return {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}


@functools.partial(jax.jit, static_argnums=1)
def loss_eps_grads(params, cfg, x_t, t, cond, noise):
  def loss(p):
    eps = Pippo(cfg).apply({"params": p}, x_t, t, cond)
    return jnp.mean((eps - noise) ** 2), eps

  (value, eps), grads = jax.value_and_grad(loss, has_aux=True)(params)
  return value, eps, grads


def rel_err(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, (got.shape, want.shape)
  return float(np.abs(got - want).max() / np.abs(want).max())


def tree_equal(a, b) -> None:
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def golden(golden_dir):
  weights = golden_io.load("weights.npz")
  return dict(
    dir=golden_dir,
    weights=weights,
    cfg=golden_io.model_config(),
    inputs=golden_io.model_inputs(golden_io.load("inputs.npz")),
    outputs=golden_io.load("outputs.npz"),
    grads=golden_io.load("grads.npz"),
  )


@pytest.fixture(scope="module")
def golden_ckpt(golden, tmp_path_factory):
  out = tmp_path_factory.mktemp("golden") / "ckpt"
  weights = golden["dir"] / "weights.npz"
  assert run("--from", "pippo-torch", weights, *GOLDEN_ARGS, "--out", out) == 0
  return out


@pytest.mark.parametrize(
  "name",
  ["p1_pretrain:size=smoke", "m2_midtrain:size=smoke,views=2", "p3_posttrain:size=smoke,res=128"],
)
def test_round_trip_ours_release_ours_is_exact(name):
  cfg = ModelConfig.from_config(stage_config(name).model)
  params = random_params(cfg, seed=1)
  back, dropped = release_to_params(params_to_release(params, cfg), cfg)
  assert dropped == []
  tree_equal(back, params)


def _write(kind: str, weights: dict, path: pathlib.Path) -> pathlib.Path:
  if kind == "pth":
    torch.save(torch_tensors(weights), path.with_suffix(".pth"))
  elif kind == "pth_wrapped":  # DistributedDataParallel keys inside a Lightning-style dict
    torch.save(
      {"epoch": 3, "state_dict": {"module." + k: v for k, v in torch_tensors(weights).items()}},
      path.with_suffix(".pth"),
    )
  elif kind == "safetensors":
    safetensors.numpy.save_file(weights, path.with_suffix(".safetensors"))
  else:
    np.savez(path.with_suffix(".npz"), **weights)
  return next(path.parent.glob(path.name + ".*"))


@pytest.mark.parametrize("kind", ["pth", "pth_wrapped", "safetensors", "npz"])
def test_converted_release_checkpoint_reproduces_golden(kind, golden, tmp_path, capsys):
  ckpt = _write(kind, golden["weights"], tmp_path / "release")
  assert run("--from", "pippo-torch", ckpt, *GOLDEN_ARGS, "--out", tmp_path / "ours") == 0
  text = capsys.readouterr().out
  assert "dropped 21 release tensors" in text and "cond_attn_proj.{bias,weight} (4)" in text
  if kind.startswith("pth"):
    assert "weights_only=True" in text
  if kind == "pth_wrapped":
    assert "unwrapped 'state_dict' (ignored entries ['epoch'])" in text
    assert "stripped prefix 'module.'" in text

  params, saved = checkpoints.read_params(tmp_path / "ours")
  cfg = ModelConfig.from_config(saved["model"])
  assert cfg == golden["cfg"] and saved["stage"] == "p3"
  x_t, t, cond, noise = golden["inputs"]
  loss, eps, grads = loss_eps_grads(params, cfg, x_t, t, cond, noise)
  want = golden["outputs"]
  assert rel_err(eps, golden_io.nhwc(want["eps"])) < 1e-5
  assert abs(float(loss) - float(want["loss"])) / float(want["loss"]) < 1e-5
  ours, want = params_to_release(jax.device_get(grads), cfg), golden["grads"]
  zero = {k for k in want if np.abs(want[k]).max() < 1e-9}  # k_norm biases: analytically zero
  assert {k.split(".")[-2] for k in zero} <= {"k_norm"}
  assert all(np.abs(ours[k]).max() < 1e-9 for k in zero)
  errors = {k: rel_err(ours[k], want[k]) for k in set(want) - zero}
  worst = max(errors, key=errors.get)
  assert errors[worst] < 1e-4, (worst, errors[worst])


def test_other_size_in_release_trainer_format(tmp_path, capsys):
  """A random P3 smoke-size model (width 128, 4 blocks, 48 latent channels) as the release's
  trainer saves it: {"iteration", "model": torch.compile'd state_dict, "optimizer"}."""
  config = stage_config("p3_posttrain:size=smoke")
  cfg = ModelConfig.from_config(config.model)
  params = random_params(cfg, seed=2)
  release = {"_orig_mod." + k: v for k, v in torch_tensors(params_to_release(params, cfg)).items()}
  torch.save(
    {"iteration": 7, "model": release, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}},
    tmp_path / "007.pt",
  )
  assert (
    run(
      "--from",
      "pippo-torch",
      tmp_path / "007.pt",
      "--config",
      f"{CONFIGS}/p3_posttrain.py:size=smoke",
      "--out",
      tmp_path / "ours",
    )
    == 0
  )
  text = capsys.readouterr().out
  assert "unwrapped 'model' (ignored entries ['iteration', 'optimizer'])" in text
  assert "stripped prefix '_orig_mod.'" in text and "dropped" not in text

  loaded, saved = checkpoints.read_params(tmp_path / "ours", config)
  tree_equal(loaded, params)
  x_t, t, cond = dummy_inputs(cfg, batch=1)
  rng = np.random.default_rng(3)
  x_t, cond = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), (x_t, cond))
  t = np.array([500], np.int32)
  fwd = jax.jit(lambda p: Pippo(cfg).apply({"params": p}, x_t, t, cond))
  eps = np.asarray(fwd(loaded))
  assert np.abs(eps).max() > 0
  np.testing.assert_array_equal(eps, np.asarray(fwd(params)))


def test_unknown_and_missing_keys_refused_with_list(golden, tmp_path, capsys):
  weights = dict(golden["weights"])
  del weights["generator.blocks.1.in_proj.weight"]
  weights["generator.extra.weight"] = np.zeros(3, np.float32)
  np.savez(tmp_path / "bad.npz", **weights)
  assert (
    run("--from", "pippo-torch", tmp_path / "bad.npz", *GOLDEN_ARGS, "--out", tmp_path / "ours")
    == 1
  )
  err = capsys.readouterr().err
  assert "missing keys (1): ['generator.blocks.1.in_proj.weight']" in err
  assert "unknown keys (1): ['generator.extra.weight']" in err
  assert not (tmp_path / "ours").exists()


def test_wrong_shapes_refused_with_list(golden, capsys, tmp_path):
  args = GOLDEN_ARGS[:-1] + ["--config.model.cam_mlp_hidden=256"]
  assert (
    run("--from", "pippo-torch", golden["dir"] / "weights.npz", *args, "--out", tmp_path / "ours")
    == 1
  )
  err = capsys.readouterr().err
  assert "wrong shape (8)" in err
  assert "cam_mlp/in_proj/kernel: (16, 128) (config wants (16, 256))" in err


def test_reverse_conversion_writes_release_layout(golden, golden_ckpt, tmp_path, capsys):
  out = tmp_path / "pippo.safetensors"
  assert run("--to", "pippo-torch", "--from-checkpoint", golden_ckpt, "--out", out) == 0
  assert "80 tensors" in capsys.readouterr().out
  params, saved = checkpoints.read_params(golden_ckpt)
  want = params_to_release(params, ModelConfig.from_config(saved["model"]))
  got = safetensors.numpy.load_file(out)
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    np.testing.assert_array_equal(got[k], golden["weights"][k], err_msg=k)  # the release's own
  with safetensors.safe_open(out, "pt") as f:
    assert f.metadata()["format"] == "pt"
  assert run("--to", "pippo-torch", "--from-checkpoint", golden_ckpt, "--out", out) == 1
  assert "exists" in capsys.readouterr().err


def test_mismatching_config_names_the_keys(golden_ckpt, tmp_path, capsys):
  _, saved = checkpoints.read_params(golden_ckpt)
  other = dict(saved, model=dict(saved["model"], width=128, depth=3, dtype="bfloat16"))
  with pytest.raises(
    ValueError,
    match=r"model\.depth \(checkpoint 2, given 3\), model\.width "
    r"\(checkpoint 64, given 128\)$",
  ):
    checkpoints.read_params(golden_ckpt, other)
  runtime_only = dict(
    saved, model=dict(saved["model"], dtype="bfloat16", remat_policy="dots_saveable")
  )
  checkpoints.read_params(golden_ckpt, runtime_only)  # compute settings may differ
  assert (
    run(
      "--to",
      "pippo-torch",
      "--from-checkpoint",
      golden_ckpt,
      "--config",
      f"{CONFIGS}/p3_posttrain.py:size=tiny,res=64",
      "--out",
      tmp_path / "x.safetensors",
    )
    == 1
  )
  err = capsys.readouterr().err
  assert "mismatching keys" in err and "model.width (checkpoint 64, given 768)" in err


class NotWeights:
  pass


def test_pickles_load_weights_only_and_torch_is_optional(golden, tmp_path, capsys, monkeypatch):
  pth = tmp_path / "a.pth"
  torch.save({"model": torch_tensors(golden["weights"]), "hook": NotWeights()}, pth)
  assert run("--from", "pippo-torch", pth, *GOLDEN_ARGS, "--out", tmp_path / "o") == 1
  assert "refused to unpickle" in capsys.readouterr().err
  monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
  assert run("--from", "pippo-torch", pth, *GOLDEN_ARGS, "--out", tmp_path / "o") == 1
  assert "pip install 'pippo_jax[torch]'" in capsys.readouterr().err


def test_usage(capsys):
  with pytest.raises(SystemExit) as exit_info:
    run("--help")
  assert exit_info.value.code == 0
  help_text = capsys.readouterr().out
  assert "weights_only=True" in help_text and "--from-checkpoint" in help_text
  with pytest.raises(SystemExit) as exit_info:
    run("--bogus")
  assert exit_info.value.code == 2
  assert (
    capsys.readouterr().err.strip() == "pippo-convert: error: Unknown command line flag 'bogus'"
  )
  assert run("--out", "x") == 2
  assert run("--from", "pippo-torch", "a.pth", "--out", "x") == 2  # no --config
  assert "--config" in capsys.readouterr().err
