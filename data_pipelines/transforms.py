"""Per-example transforms shared by the pipelines, and the P1 image transform.

A transform is called with a source element (see `sources`) and a NumPy
`Generator` seeded from the example's global position, and returns either an
example (a dict of arrays, keys in `schemas`) or a *skip marker*::

  {"_skip": "corrupt" | "filtered", "_where": ..., "_message": ...}

Skip markers travel through the (possibly multi-process) pipeline to the main
process, where `pipelines` counts, logs and drops them; a worker process never
raises for a bad record.

The deterministic crops (`CropSettings`, `crop_image` here, `multiview.crop_view`)
are also what `pippo-data encode-latents` encodes: with `data.latents` the
transforms read those stored latents instead of decoding and cropping images.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from pippo_jax.data_pipelines import imageops, schemas


def skip(reason: str, element: dict, message: str) -> dict:
  return {
    "_skip": reason,
    "_where": element.get("where", "?"),
    "_message": message,
    "record_index": element.get("record_index", -1),
  }


def decode(element: dict, kind: str) -> dict:
  """Element -> record dict; raises RecordError naming the record."""
  where = element.get("where", "?")
  if "error" in element:
    raise schemas.RecordError(f"{where}: unreadable record ({element['error']})")
  if kind == "image":
    return schemas.decode_image_record(element["bytes"], where)
  return schemas.decode_capture(element["bytes"], where)


@dataclasses.dataclass(frozen=True)
class CropSettings:
  """The deterministic crop of a view or photo (the `data` keys of the same names).

  Attributes:
    resolution: output side in pixels.
    crop: "person" (square around the person) or "full" (largest centred square).
    crop_margin: extra side, as a fraction of the person box's long side.
    background: RGB fill outside the person mask and outside the image.
  """

  resolution: int
  crop: str
  crop_margin: float
  background: tuple[int, int, int]

  @classmethod
  def from_config(cls, cfg) -> CropSettings:
    return cls(
      int(cfg.resolution),
      str(cfg.crop),
      float(cfg.crop_margin),
      tuple(int(c) for c in cfg.background),
    )

  @property
  def out_hw(self) -> tuple[int, int]:
    return (self.resolution, self.resolution)

  def to_json(self) -> dict[str, Any]:
    return dict(dataclasses.asdict(self), background=list(self.background))


def filter_reason(record: dict[str, Any], filters) -> str | None:
  """Why an image record fails the P1 metadata filters (None: it passes)."""
  height = max(float(record["height"]), 1.0)
  checks = (
    ("detection_confidence", record["detection_confidence"], filters.min_detection_confidence),
    ("person_size", float(record["person_box"][3]) / height, filters.min_person_size),
    ("visibility", record["visibility"], filters.min_visibility),
    ("quality", record["quality"], filters.min_quality),
  )
  for name, value, threshold in checks:
    if value < threshold:
      return f"{name} {value:.3f} < {threshold}"
  if filters.require_face and float(record["face_box"][2]) <= 0:
    return "no face box"
  return None


def decode_photo(rec: dict[str, Any], where: str) -> np.ndarray:
  """The decoded image of an image record; RecordError if it does not decode or has another size
  than the record says."""
  image = schemas.decode_image(rec["image"], f"image of {where}")
  if image.shape[:2] != (rec["height"], rec["width"]):
    raise schemas.RecordError(
      f"{where}: image is {image.shape[:2]}, record says {(rec['height'], rec['width'])}"
    )
  return image


def crop_image(
  image: np.ndarray, rec: dict[str, Any], crop: CropSettings
) -> tuple[np.ndarray, np.ndarray]:
  """P1's target crop of a photo: (image [res, res, 3], box (x, y, w, h)).

  A square around the record's person box with `crop_margin` (crop "person" and a person box),
  else the largest centred square; deterministic, so `pippo-data encode-latents` can encode it
  once.
  """
  if crop.crop == "person" and rec["person_box"][2] > 0:
    box = imageops.square_box(rec["person_box"], crop.crop_margin)
  else:
    box = imageops.centre_square(*image.shape[:2])
  return imageops.crop_resize(image, box, crop.out_hw, crop.background), box


class ImageTransform:
  """P1: filter, decode, crop around the person, reference and face crops.

  With `data.latents` the record's stored latents of the target crop (`schemas`, written by
  `pippo-data encode-latents`) replace the images: the example holds `target_latents` and
  `ref_latent` (the same crop: `config_lib.validate` asks for `ref_jitter` 0) and no face crop,
  and no image is decoded.
  """

  def __init__(self, cfg):
    self.crop = CropSettings.from_config(cfg)
    self.filters = cfg.filters
    self.jitter = float(cfg.ref_jitter)
    self.face_res = int(cfg.face_resolution)
    self.face_margin = float(cfg.face_margin)
    self.latents = bool(cfg.get("latents", False))

  def __call__(self, element: dict, rng: np.random.Generator) -> dict:
    try:
      rec = decode(element, "image")
    except schemas.RecordError as e:
      return skip("corrupt", element, str(e))
    reason = filter_reason(rec, self.filters)
    if reason is not None:
      return skip("filtered", element, reason)
    if self.latents:
      if "latents" not in rec:
        return skip("corrupt", element, schemas.no_latents_message(element["where"]))
      return {"target_latents": rec["latents"], "ref_latent": rec["latents"][0]}
    try:
      image = decode_photo(rec, element["where"])
    except schemas.RecordError as e:
      return skip("corrupt", element, str(e))
    target, box = crop_image(image, rec, self.crop)
    out_hw, background = self.crop.out_hw, self.crop.background
    ref = target
    if self.jitter > 0:
      scale = np.exp(rng.uniform(-self.jitter, self.jitter))
      shift = rng.uniform(-self.jitter / 2, self.jitter / 2, 2)
      ref_box = imageops.square_box(box, 0.0, scale, shift)
      ref = imageops.crop_resize(image, ref_box, out_hw, background)
    face_box = rec["face_box"]
    has_face = bool(face_box[2] > 0 and face_box[3] > 0)
    if has_face:
      face = imageops.crop_resize(
        image,
        imageops.square_box(face_box, self.face_margin),
        (self.face_res, self.face_res),
        background,
      )
    else:
      face = np.zeros((self.face_res, self.face_res, 3), np.uint8)
    return {
      "target_images": target[None],
      "ref_image": ref,
      "ref_face": face,
      "ref_face_valid": np.bool_(has_face),
    }
