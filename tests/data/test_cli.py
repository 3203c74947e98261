"""pippo-data: synth (resumable), inspect, stats, preview, tfds-build; paths
and errors as a user meets them."""

import os
import subprocess
import sys

import numpy as np
import pytest
from data_helpers import write_images
from PIL import Image

from pippo_jax.cli import data as cli
from pippo_jax.data_pipelines import schemas, sources, writer


def _files(d):
  return {
    os.path.join(r, f): open(os.path.join(r, f), "rb").read()
    for r, _, fs in os.walk(d)
    for f in fs
    if f.endswith(".array_record")
  }


def test_synth_inspect_stats_preview(tmp_path, capsys):
  out = str(tmp_path / "studio")
  args = [
    "synth",
    "--out",
    out,
    "--subjects",
    "3",
    "--cameras",
    "6",
    "--resolution",
    "32",
    "--images-per-subject",
    "4",
    "--records-per-shard",
    "8",
  ]
  assert cli.main(args) == 0
  text = capsys.readouterr()
  assert "captures/train: 2 records" in text.out
  assert "images/train: 8/8 records (100%)" in text.err  # progress on stderr
  first = _files(out)
  assert cli.main(args) == 0  # resumed: nothing to do, same bytes
  assert _files(out) == first
  capsys.readouterr()

  cli.main(["inspect", f"{out}/captures"])
  text = capsys.readouterr().out
  assert "train: 2 records, 2 shards" in text and "K: float64 [6, 3, 3]" in text
  cli.main(["stats", f"{out}/images", "--all"])
  text = capsys.readouterr().out
  assert "read 8 of 8" in text and "corrupt: 0" in text
  assert "detection_confidence" in text

  png = str(tmp_path / "p3.png")
  cli.main(
    [
      "preview",
      f"{out}/captures",
      "--out",
      png,
      "--resolution",
      "32",
      "--num-views",
      "2",
      "--examples",
      "2",
    ]
  )
  # Two rows of reference + 2 targets, then the same with anchors drawn.
  assert np.asarray(Image.open(png)).shape == (64, 6 * 32, 3)


def test_tfds_build_prints_how_to_read(tmp_path, capsys):
  cli.main(
    [
      "tfds-build",
      "--builder",
      "synthetic_studio",
      "--config",
      "images",
      "--data-dir",
      str(tmp_path),
      "--subjects",
      "2",
      "--resolution",
      "32",
    ]
  )
  out = capsys.readouterr().out
  assert "train=16, test=16" in out
  assert "data.tfds_name='pippo_synthetic_studio/images_2x32_32px_seed0'" in out


def _fails(args, capsys, code):
  """Runs pippo-data `args`, expecting exit `code`; returns its stderr."""
  with pytest.raises(SystemExit) as e:
    cli.main(args)
  assert e.value.code == code
  return capsys.readouterr().err


def test_image_folder_without_config_is_named_after_the_folder(tmp_path, capsys):
  folder = tmp_path / "my photos"
  folder.mkdir()
  Image.fromarray(np.full((40, 30, 3), 90, np.uint8)).save(folder / "a.png")
  deep = (np.arange(40 * 30).reshape(40, 30) * 50).astype(np.uint16)
  Image.fromarray(deep).save(folder / "deep.png")  # 16-bit grey
  Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(folder / "dot.png")
  data_dir = str(tmp_path / "tfds")
  assert (
    cli.main(
      ["tfds-build", "--builder", "image_folder", "--folder", str(folder), "--data-dir", data_dir]
    )
    == 0
  )
  out = capsys.readouterr().out
  assert "built pippo_image_folder/my_photos/1.0.0" in out and "train=2" in out
  assert "data.tfds_name='pippo_image_folder/my_photos'" in out
  src = sources.TfdsSource("pippo_image_folder/my_photos", "train", data_dir)
  recs = {
    r["image_id"]: r
    for r in (schemas.decode_image_record(src[i]["bytes"]) for i in range(len(src)))
  }
  assert sorted(recs) == ["a.png", "deep.png"]  # dot.png: 1x1, skipped
  np.testing.assert_array_equal(
    schemas.decode_image(recs["deep.png"]["image"], mode="L"), (deep >> 8).astype(np.uint8)
  )
  err = _fails(["tfds-build", "--builder", "image_folder", "--data-dir", data_dir], capsys, 2)
  assert err.splitlines()[-1] == ("pippo-data: error: --builder image_folder needs --folder DIR")


def test_inspect_checks_every_listed_shard(tmp_path, capsys):
  entry = write_images(tmp_path)
  assert cli.main(["inspect", str(tmp_path)]) == 0
  size = sum(s["bytes"] for s in entry["shards"]) / 2**20
  head = f"  train: 6 records, 3 shards, {size:.1f} MiB, "
  assert capsys.readouterr().out.splitlines()[1] == head + "complete"
  missing, cut = (str(tmp_path / s["file"]) for s in entry["shards"][1:])
  listed = entry["shards"][2]["bytes"]
  os.remove(missing)
  with open(cut, "r+b") as f:
    f.truncate(100)
  assert cli.main(["inspect", str(tmp_path)]) == 1
  lines = capsys.readouterr().out.splitlines()
  assert lines[1] == head + (
    f"DAMAGED: 2 of 3 shards missing or of the wrong size; {writer.REWRITE_HINT}"
  )
  assert lines[2:4] == [
    f"    {missing}: missing (listed in index.json)",
    f"    {cut}: truncated, 100 bytes on disk but index.json lists {listed}",
  ]


def test_a_damaged_dataset_is_one_line_and_exit_1(tmp_path, capsys):
  index = tmp_path / "index.json"
  index.write_text("{not json")
  for command in ("inspect", "stats"):
    err = _fails([command, str(tmp_path)], capsys, 1)
    assert len(err.splitlines()) == 1
    assert err.startswith(f"pippo-data: error: {index} is damaged (JSONDecodeError")
    assert "delete it and re-run the command that wrote the dataset" in err
  err = _fails(["inspect", str(tmp_path / "nope")], capsys, 1)
  assert err == (
    f"pippo-data: error: {tmp_path}/nope/index.json not found: not a "
    "pippo dataset directory (write one with `pippo-data synth --out "
    "DIR` or a tfds builder)\n"
  )


@pytest.mark.parametrize(
  "args, problem",
  [
    ([], "no command given; commands: synth, inspect, stats, preview, tfds-build"),
    (["bogus"], "unknown command 'bogus'; commands: synth, inspect"),
    (["inspect"], "inspect takes one DIR argument besides flags, got 0"),
    (["inspect", "d", "--bogus"], "Unknown command line flag 'bogus'"),
    (["synth"], "Flag --out must have a value other than None"),
    (["synth", "--out"], "Missing value for flag --out"),
    (["synth", "--out", "d", "extra"], "synth takes no arguments besides flags, got 1"),
    (["stats", "d", "--sample", "many"], "flag --sample=many: invalid literal for int()"),
    (
      ["preview", "d", "--out", "p.png", "--stage", "p9"],
      "flag --stage=p9: value should be one of <p1|m2|p3>",
    ),
  ],
)
def test_usage_errors_exit_2_naming_the_problem(args, problem, capsys):
  err = _fails(args, capsys, 2)
  assert len(err.splitlines()) == 1 and err.startswith("pippo-data: error: ")
  assert problem in err


def test_help_lists_the_commands_and_each_commands_flags(capsys):
  assert cli.main(["--help"]) == 0
  out = capsys.readouterr().out
  for command in cli.COMMANDS:
    assert f"pippo-data {command} " in out
  with pytest.raises(SystemExit) as e:
    cli.main(["synth", "--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith("pippo-data synth [FLAGS]\n")
  for flag in (
    "--out",
    "--images-per-subject",
    "--test-fraction",
    "--records-per-shard",
    "--format: <png|jpeg>",
  ):
    assert flag in out
  assert "--split" not in out  # only synth's own flags
  with pytest.raises(SystemExit) as e:
    cli.main(["inspect", "-h"])
  assert e.value.code == 0
  assert "--split: Split whose first record is shown" in capsys.readouterr().out


def test_relative_and_home_paths_become_absolute(tmp_path, monkeypatch, capsys):
  tiny = [
    "--subjects",
    "2",
    "--cameras",
    "2",
    "--resolution",
    "16",
    "--images-per-subject",
    "1",
    "--kinds",
    "images",
  ]
  run = subprocess.run(
    [sys.executable, "-m", "pippo_jax.cli.data", "synth", "--out", "data/studio", *tiny],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert run.returncode == 0, run.stderr
  assert run.stdout.startswith(f"{tmp_path}/data/studio/images/train: 1 records")
  monkeypatch.setenv("HOME", str(tmp_path))
  monkeypatch.chdir(tmp_path / "data")
  assert cli.main(["inspect", "~/data/studio/images"]) == 0
  assert capsys.readouterr().out.startswith(f"{tmp_path}/data/studio/images: image records")
  # An output that cannot be written: one line, before any work.
  (tmp_path / "data" / "afile").write_text("")
  err = _fails(["synth", "--out", "afile/studio", *tiny], capsys, 1)
  assert err == (
    f"pippo-data: error: --out {tmp_path}/data/afile/studio is not writable: Not a directory\n"
  )
  assert sorted(os.listdir(tmp_path / "data")) == ["afile", "studio"]
