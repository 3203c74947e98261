"""Per-example transforms shared by the pipelines, and the P1 image transform.

A transform is called with a source element (see `sources`) and a NumPy
`Generator` seeded from the example's global position, and returns either an
example (a dict of arrays, keys in `schemas`) or a *skip marker*::

  {"_skip": "corrupt" | "filtered", "_where": ..., "_message": ...}

Skip markers travel through the (possibly multi-process) pipeline to the main
process, where `pipelines` counts, logs and drops them; a worker process never
raises for a bad record.
"""

from __future__ import annotations

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


class ImageTransform:
  """P1: filter, decode, crop around the person, reference and face crops."""

  def __init__(self, cfg):
    self.res = int(cfg.resolution)
    self.filters = cfg.filters
    self.background = tuple(int(c) for c in cfg.background)
    self.crop = cfg.crop
    self.margin = float(cfg.crop_margin)
    self.jitter = float(cfg.ref_jitter)
    self.face_res = int(cfg.face_resolution)
    self.face_margin = float(cfg.face_margin)

  def __call__(self, element: dict, rng: np.random.Generator) -> dict:
    try:
      rec = decode(element, "image")
    except schemas.RecordError as e:
      return skip("corrupt", element, str(e))
    reason = filter_reason(rec, self.filters)
    if reason is not None:
      return skip("filtered", element, reason)
    try:
      image = schemas.decode_image(rec["image"], f"image of {element['where']}")
    except schemas.RecordError as e:
      return skip("corrupt", element, str(e))
    if image.shape[:2] != (rec["height"], rec["width"]):
      return skip(
        "corrupt",
        element,
        f"{element['where']}: image is "
        f"{image.shape[:2]}, record says {(rec['height'], rec['width'])}",
      )
    if self.crop == "person" and rec["person_box"][2] > 0:
      box = imageops.square_box(rec["person_box"], self.margin)
    else:
      box = imageops.centre_square(*image.shape[:2])
    out_hw = (self.res, self.res)
    target = imageops.crop_resize(image, box, out_hw, self.background)
    ref = target
    if self.jitter > 0:
      scale = np.exp(rng.uniform(-self.jitter, self.jitter))
      shift = rng.uniform(-self.jitter / 2, self.jitter / 2, 2)
      ref_box = imageops.square_box(box, 0.0, scale, shift)
      ref = imageops.crop_resize(image, ref_box, out_hw, self.background)
    face_box = rec["face_box"]
    has_face = bool(face_box[2] > 0 and face_box[3] > 0)
    if has_face:
      face = imageops.crop_resize(
        image,
        imageops.square_box(face_box, self.face_margin),
        (self.face_res, self.face_res),
        self.background,
      )
    else:
      face = np.zeros((self.face_res, self.face_res, 3), np.uint8)
    return {
      "target_images": target[None],
      "ref_image": ref,
      "ref_face": face,
      "ref_face_valid": np.bool_(has_face),
    }
