"""Packaging: configs/ and data_pipelines/ install under pippo_jax (no generic top-level names), and
a stage config named as in the README is found from any directory."""

import pathlib
import shutil
import subprocess
import sys
import tomllib
import zipfile

from pippo_jax.cli import common

ROOT = pathlib.Path(__file__).resolve().parents[1]
FOLDERS = {
  "pippo_jax": "pippo_jax",
  "configs": "pippo_jax.configs",
  "data_pipelines": "pippo_jax.data_pipelines",
}


def test_every_package_folder_is_listed_in_pyproject():
  listed = set(
    tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
  )
  found = set()
  for folder, name in FOLDERS.items():
    for init in (ROOT / folder).rglob("__init__.py"):
      rel = init.parent.relative_to(ROOT / folder).parts
      found.add(".".join((name, *rel)))
  assert found == listed


def test_wheel_holds_only_the_pippo_jax_package(tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(ROOT / name, src / name)
  for name in FOLDERS:
    shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
  subprocess.run(
    [
      sys.executable,
      "-m",
      "pip",
      "wheel",
      "-q",
      "--no-deps",
      "--no-build-isolation",
      "-w",
      str(tmp_path / "dist"),
      str(src),
    ],
    check=True,
    capture_output=True,
  )
  (wheel,) = (tmp_path / "dist").glob("*.whl")
  names = zipfile.ZipFile(wheel).namelist()
  assert {n.split("/")[0] for n in names} == {"pippo_jax", "pippo_jax-0.1.0.dist-info"}
  for module in (
    "configs/p3_posttrain.py",
    "configs/p1_pretrain.py",
    "configs/m2_midtrain.py",
    "data_pipelines/pipelines.py",
    "data_pipelines/schemas.py",
  ):
    assert f"pippo_jax/{module}" in names


def test_readme_config_names_resolve_outside_the_repository(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  installed = str(ROOT / "configs" / "p3_posttrain.py")  # the package's copy (editable install)
  assert common.packaged_config("configs/p3_posttrain.py:size=smoke") == installed + ":size=smoke"
  assert common.program_argv("p", ["--config=configs/p3_posttrain.py", "--x"]) == [
    "p",
    f"--config={installed}",
    "--x",
  ]
  assert common.program_argv("p", ["--config", "configs/p3_posttrain.py:res=128"]) == [
    "p",
    "--config",
    installed + ":res=128",
  ]
  assert common.packaged_config("configs/nope.py") == "configs/nope.py"  # left for the error
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "p3_posttrain.py").write_text("")  # a local file wins
  assert common.packaged_config("configs/p3_posttrain.py") == "configs/p3_posttrain.py"
  out = subprocess.run(
    ["pippo-inspect", "--config", "configs/m2_midtrain.py:size=smoke"],
    capture_output=True,
    text=True,
    check=True,
    cwd=tmp_path.parent,
  )
  assert "stage m2" in out.stdout and "total" in out.stdout
