"""tfds builders that write the pipelines' records as ArrayRecord.

Both builders store one serialised pippo record per example (feature
`record`, the same bytes `schemas` writes and the pipelines read) plus a few
plain fields for browsing. Build with `file_format="array_record"` and read
with `tfds.data_source` (no TensorFlow needed for either)::

  builder = PippoSyntheticStudio(config="captures", data_dir=D,
                                 file_format="array_record")
  builder.download_and_prepare()
  # then, in a data config:
  cfg.source, cfg.tfds_name, cfg.tfds_data_dir = (
      "tfds", "pippo_synthetic_studio/captures", D)

* `PippoSyntheticStudio`: configs "captures" and "images" (small defaults;
  pass `config=SyntheticStudioConfig(name=..., subjects=...)` for others).
* `PippoImageFolder`: image records from a folder of photos, one sub-folder
  per split (`DIR/train/*.jpg`, or photos directly in `DIR` for "train"),
  built with `config=image_folder_config(DIR)` (config named after DIR),
  with optional `metadata.jsonl` lines `{"file": "train/a.jpg",
  "person_box": [x, y, w, h], "detection_confidence": .9, "visibility": 1,
  "quality": .8, "face_box": [...]}` (the records of `folder_formats.photo_record`).
  Missing fields: the person box is the box of the photo's alpha channel or else the
  whole image, scores are 1 and there is no face box. Photos that do not
  decode or lie outside `schemas.decode_image`'s size limits are logged with
  their path and skipped; 16-bit photos are stored scaled to 8 bits.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from pippo_jax.data_pipelines import folder_formats, schemas, synthetic_studio

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class _ThisFile:
  """`code_path` of the builders: this file.

  tfds's default probes the package with `importlib_resources`, which is not
  installed (and not needed) here.
  """

  def __get__(self, obj, cls):
    return epath.Path(__file__)


def _features():
  return tfds.features.FeaturesDict(
    {
      "record": tfds.features.Tensor(shape=(), dtype=np.object_),
      "id": tfds.features.Text(),
      "subject_id": tfds.features.Scalar(dtype=np.int64),
    }
  )


@dataclasses.dataclass
class SyntheticStudioConfig(tfds.core.BuilderConfig):
  kind: str = "captures"  # or "images"
  seed: int = 0
  subjects: int = 8
  cameras: int = 32
  resolution: int = 128
  moments: int = 1
  images_per_subject: int = 16
  test_fraction: float = 0.125

  def settings(self) -> synthetic_studio.StudioSettings:
    return synthetic_studio.StudioSettings(
      seed=self.seed,
      subjects=self.subjects,
      cameras=self.cameras,
      resolution=self.resolution,
      moments=self.moments,
      images_per_subject=self.images_per_subject,
      test_fraction=self.test_fraction,
    )


class PippoSyntheticStudio(tfds.core.GeneratorBasedBuilder):
  """The synthetic studio as a tfds dataset."""

  VERSION = tfds.core.Version("1.0.0")
  code_path = _ThisFile()
  BUILDER_CONFIGS = [
    SyntheticStudioConfig(name="captures", kind="captures"),
    SyntheticStudioConfig(name="images", kind="images"),
  ]

  def _info(self):
    kind = "capture" if self.builder_config.kind == "captures" else "image"
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=_features(),
      metadata=tfds.core.MetadataDict(record_kind=kind),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    settings = self.builder_config.settings()
    return {
      split: self._generate_examples(split, subjects)
      for split, subjects in settings.split_subjects().items()
      if subjects
    }

  def _generate_examples(self, split, subjects):
    c = self.builder_config
    settings = c.settings()
    if c.kind == "captures":
      cams = synthetic_studio.dome_cameras(c.cameras, c.resolution, c.seed)
      for s in subjects:
        for m in range(c.moments):
          rec = synthetic_studio.make_capture(settings, s, m, split, cams)
          yield (
            rec["capture_id"],
            {"record": schemas.encode_capture(rec), "id": rec["capture_id"], "subject_id": s},
          )
    else:
      for s in subjects:
        for k in range(c.images_per_subject):
          rec = synthetic_studio.make_image(settings, s, k, split)
          yield (
            rec["image_id"],
            {"record": schemas.encode_image_record(rec), "id": rec["image_id"], "subject_id": s},
          )


@dataclasses.dataclass
class ImageFolderConfig(tfds.core.BuilderConfig):
  folder: str = ""


def image_folder_config(folder: str, name: str = "") -> ImageFolderConfig:
  """The config of `folder`, named `name` or else after the folder.

  The name is the tfds config name: read the result as
  `pippo_image_folder/<name>`; another folder of the same name needs another
  name (or data dir), tfds reuses a prepared one.
  """
  name = (
    name
    or re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(os.path.normpath(folder))).strip("_.")
    or "photos"
  )
  return ImageFolderConfig(name=name, folder=folder)


class PippoImageFolder(tfds.core.GeneratorBasedBuilder):
  """Image records from a folder of photos (see module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  code_path = _ThisFile()
  # No built-in config: every config names a folder (`image_folder_config`).

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=_features(),
      metadata=tfds.core.MetadataDict(record_kind="image"),
    )

  def _folder(self):
    folder = getattr(self.builder_config, "folder", "")
    if not folder:
      raise ValueError("PippoImageFolder needs config=image_folder_config(DIR)")
    if not os.path.isdir(folder):
      raise FileNotFoundError(f"image folder {folder!r} does not exist")
    return folder

  def _split_generators(self, dl_manager):
    del dl_manager
    folder = self._folder()
    subdirs = [d for d in sorted(os.listdir(folder)) if os.path.isdir(os.path.join(folder, d))]
    splits = {d: d for d in subdirs} or {"train": ""}
    return {name: self._generate_examples(folder, sub) for name, sub in splits.items()}

  def _generate_examples(self, folder, sub):
    meta = {}
    meta_path = os.path.join(folder, "metadata.jsonl")
    if os.path.exists(meta_path):
      with open(meta_path) as f:
        for line in f:
          if line.strip():
            entry = json.loads(line)
            meta[entry["file"]] = entry
    split = sub or "train"
    for name in sorted(os.listdir(os.path.join(folder, sub))):
      if not name.lower().endswith(_IMAGE_SUFFIXES):
        continue
      rel = os.path.join(sub, name) if sub else name
      try:
        rec = folder_formats.photo_record(os.path.join(folder, rel), rel, split, meta.get(rel, {}))
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("skipping photo %s: %s", os.path.join(folder, rel), e)
        continue
      yield (
        rel,
        {"record": schemas.encode_image_record(rec), "id": rel, "subject_id": rec["subject_id"]},
      )
