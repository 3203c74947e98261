"""tfds builders write ArrayRecord that feeds the same pipelines."""

import io
import logging

import numpy as np
from data_helpers import data_config
from PIL import Image

from pippo_jax.data_pipelines import pipelines, schemas, sources, synthetic_studio, tfds_builders

SMALL = dict(seed=4, subjects=3, cameras=6, resolution=32, images_per_subject=3, test_fraction=0.3)


def test_synthetic_studio_builder_matches_the_writer(tmp_path):
  data_dir = str(tmp_path / "tfds")
  builder = tfds_builders.PippoSyntheticStudio(
    config=tfds_builders.SyntheticStudioConfig(name="tiny", kind="captures", **SMALL),
    data_dir=data_dir,
    file_format="array_record",
  )
  builder.download_and_prepare()
  settings = synthetic_studio.StudioSettings(**SMALL)
  synthetic_studio.write_studio(
    str(tmp_path / "own"), settings, ("captures",), progress_stream=io.StringIO()
  )
  via_tfds = sources.TfdsSource("pippo_synthetic_studio/tiny", "train", data_dir)
  via_writer = sources.ArrayRecordSource(str(tmp_path / "own" / "captures"))
  assert via_tfds.kind == "capture" and len(via_tfds) == len(via_writer) == 2
  # The same records (tfds orders them by key hash).
  assert {via_tfds[i]["bytes"] for i in range(2)} == {via_writer[i]["bytes"] for i in range(2)}
  cfg = data_config(
    "p3",
    "",
    resolution=32,
    num_views=2,
    source="tfds",
    tfds_name="pippo_synthetic_studio/tiny",
    tfds_data_dir=data_dir,
  )
  batch = next(pipelines.make_iterator(cfg, process_index=0, process_count=1))
  assert batch["target_plucker"].shape == (2, 2, 32, 32, 6)
  assert batch["ref_anchor"].shape == (2, 32, 32, 3)


def test_image_folder_builder_skips_and_names_broken_photos(tmp_path, caplog):
  folder = tmp_path / "photos"
  (folder / "train").mkdir(parents=True)
  for i in range(3):
    Image.fromarray(np.full((40, 30, 3), 60 * i, np.uint8)).save(folder / "train" / f"p{i}.png")
  (folder / "train" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
  (folder / "metadata.jsonl").write_text(
    '{"file": "train/p1.png", "person_box": [5, 5, 10, 30], "quality": 0.2}\n'
  )
  data_dir = str(tmp_path / "tfds")
  with caplog.at_level(logging.WARNING):
    builder = tfds_builders.PippoImageFolder(
      config=tfds_builders.ImageFolderConfig(name="mine", folder=str(folder)),
      data_dir=data_dir,
      file_format="array_record",
    )
    builder.download_and_prepare()
  assert "broken.jpg" in caplog.text
  src = sources.TfdsSource("pippo_image_folder/mine", "train", data_dir)
  recs = {
    r["image_id"]: r
    for r in (schemas.decode_image_record(src[i]["bytes"]) for i in range(len(src)))
  }
  assert sorted(recs) == ["train/p0.png", "train/p1.png", "train/p2.png"]
  np.testing.assert_array_equal(recs["train/p1.png"]["person_box"], [5, 5, 10, 30])
  assert recs["train/p1.png"]["quality"] == 0.2
  np.testing.assert_array_equal(recs["train/p0.png"]["person_box"], [0, 0, 30, 40])
  cfg = data_config(
    "p1", "", source="tfds", tfds_name="pippo_image_folder/mine", tfds_data_dir=data_dir
  )
  it = pipelines.make_iterator(cfg, process_index=0, process_count=1, batch=False)
  got = {int(next(it)["record_index"]) for _ in range(4)}
  assert len(got) == 2  # p1 is dropped by the quality filter
  assert pipelines.skip_counts(it)["filtered"] >= 1
