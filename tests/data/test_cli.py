"""pippo-data: synth (resumable), inspect, stats, preview."""
import os

import numpy as np
from PIL import Image

from pippo_jax.cli import data as cli


def _files(d):
  return {os.path.join(r, f): open(os.path.join(r, f), "rb").read()
          for r, _, fs in os.walk(d) for f in fs if f.endswith(".array_record")}


def test_synth_inspect_stats_preview(tmp_path, capsys):
  out = str(tmp_path / "studio")
  args = ["synth", "--out", out, "--subjects", "3", "--cameras", "6",
          "--resolution", "32", "--images-per-subject", "4",
          "--records-per-shard", "8"]
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
  cli.main(["preview", f"{out}/captures", "--out", png, "--resolution", "32",
            "--num-views", "2", "--examples", "2"])
  # Two rows of reference + 2 targets, then the same with anchors drawn.
  assert np.asarray(Image.open(png)).shape == (64, 6 * 32, 3)


def test_tfds_build_prints_how_to_read(tmp_path, capsys):
  cli.main(["tfds-build", "--builder", "synthetic_studio", "--config", "images",
            "--data-dir", str(tmp_path), "--subjects", "2", "--resolution", "32"])
  out = capsys.readouterr().out
  assert "train=16, test=16" in out
  assert "data.tfds_name='pippo_synthetic_studio/images_2x32_32px_seed0'" in out
