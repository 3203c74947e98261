"""Formats `capture-folder` (a user's own camera rig) and `image-folder` (photos for P1).

capture-folder::

  SRC/cameras.json                  the rig's calibration: our JSON layout
                                    (`geometry.orbits.cameras_to_json`: {"cameras": [{"name",
                                    "K", "E"}]}, OpenCV world->camera), or a KRT / NeRF file
  SRC/images/<camera>/<capture>.png one folder per camera, one image per capture (png, jpg, ...)
  SRC/masks/<camera>/<capture>.png  optional person masks (8-bit; missing: the image's alpha
                                    channel if it has one, else the whole view)
  SRC/captures.json                 optional {"<capture>": {"subject": "ann", "head_point":
                                    [x, y, z], "head_rotation": [[3x3 head->world]]}}
  SRC/landmarks/<capture>.json      optional {"<camera>": [[u, v] or null, ...]}: 2D facial
                                    landmarks, the same points in the same order in every view

A capture is every image named <capture> across the camera folders (at least two views). Its
head point is captures.json's, else the mean of its landmarks triangulated with the cameras
(`geometry.triangulate`); the report notes each capture's reprojection residual. The head
rotation is captures.json's, else the identity. The subject is captures.json's "subject", else
the capture name (then every capture is its own subject).

image-folder::

  SRC/**/<photo>.jpg                photos (png, jpg, ...) anywhere below SRC except masks/
  SRC/masks/<photo path>.png        optional person masks, same relative path, .png
  SRC/metadata.jsonl                optional lines {"file": "<photo path>", "subject": "ann",
                                    "person_box": [x, y, w, h], "detection_confidence": .9,
                                    "visibility": 1, "quality": .8, "face_box": [x, y, w, h]}

The person box is the metadata's, else the box of the mask, else of the photo's alpha channel,
else the whole photo; missing scores are 1 and there is no face box. The subject is the
metadata's, else the first folder of the photo's path (SRC/<subject>/...), else the photo.
Photos whose header does not read, or whose size lies outside `schemas.decode_image`'s limits,
are skipped (and listed in the report); a photo broken past its header stops the conversion
with its path (remove it and run the same command again: it resumes).
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
from PIL import Image

from pippo_jax.data_pipelines import imageops, schemas
from pippo_jax.data_pipelines.convert_base import (
  IMAGE_SUFFIXES,
  Format,
  Item,
  Listing,
  capture_record,
  decode,
  require,
)
from pippo_jax.errors import InputError
from pippo_jax.geometry import orbits, triangulate


# ----------------------------------------------------------------------------
# capture-folder
# ----------------------------------------------------------------------------
def _json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise InputError(f"{path}: not valid JSON ({e})") from e


def _stems(folder: str) -> dict[str, str]:
  """{name without suffix: file name} of the images in `folder`."""
  out = {}
  for name in sorted(os.listdir(folder)):
    stem, suffix = os.path.splitext(name)
    if suffix.lower() in IMAGE_SUFFIXES:
      out[stem] = name
  return out


def _list_capture_folder(src: str, options: dict) -> Listing:
  del options
  cams_path = require(os.path.join(src, "cameras.json"), "the rig's cameras")
  try:
    cams = orbits.cameras_from_json(cams_path)
  except (ValueError, KeyError) as e:
    raise InputError(f"{cams_path}: {e}") from e
  names = list(cams.names)
  images_dir = require(os.path.join(src, "images"), "one folder of images per camera")
  folders = {n for n in os.listdir(images_dir) if os.path.isdir(os.path.join(images_dir, n))}
  listing = Listing(items=[])
  unknown = sorted(folders - set(names))
  if unknown:
    listing.notes.append(f"camera folders not in {cams_path} ignored: {', '.join(unknown)}")
  present = [n for n in names if n in folders]
  if not present:
    raise FileNotFoundError(
      f"{os.path.join(images_dir, names[0])} not found (no image folder of any camera in "
      f"{cams_path})"
    )
  files = {n: _stems(os.path.join(images_dir, n)) for n in present}
  meta_path = os.path.join(src, "captures.json")
  meta = _json(meta_path) if os.path.exists(meta_path) else {}
  index = {n: i for i, n in enumerate(names)}
  for capture in sorted(set().union(*(f.keys() for f in files.values()))):
    views = [n for n in present if capture in files[n]]
    if len(views) < 2:
      listing.skipped.append((capture, f"only {len(views)} view(s); a capture needs two"))
      continue
    info = meta.get(capture, {})
    head = info.get("head_point")
    residual = None
    if head is None:
      lm_path = os.path.join(src, "landmarks", f"{capture}.json")
      if not os.path.exists(lm_path):
        listing.skipped.append(
          (capture, f"no head pose in {meta_path} and no landmarks in {lm_path}")
        )
        continue
      idx = [index[n] for n in views]
      head, residual = head_from_landmarks(_json(lm_path), views, cams.K[idx], cams.E[idx], lm_path)
      if head is None:
        listing.skipped.append((capture, f"{lm_path}: no landmark seen in two views"))
        continue
      listing.notes.append(
        f"{capture}: head point from {residual['landmarks']} landmarks in "
        f"{residual['views']} views, reprojection residual mean {residual['mean_px']:.3f} px, "
        f"max {residual['max_px']:.3f} px"
      )
    data = {
      "views": [
        {
          "camera": n,
          "image": os.path.join(images_dir, n, files[n][capture]),
          "mask": _mask_path(src, n, capture),
          "K": cams.K[index[n]].tolist(),
          "E": cams.E[index[n]].tolist(),
          "hw": None if cams.image_hw is None else cams.image_hw[index[n]].tolist(),
        }
        for n in views
      ],
      "head_point": [float(v) for v in head],
      "head_rotation": info.get("head_rotation", np.eye(3).tolist()),
      "residual": residual,
    }
    listing.items.append(Item(capture, str(info.get("subject", capture)), data))
  return listing


def _mask_path(src: str, camera: str, capture: str) -> str | None:
  path = os.path.join(src, "masks", camera, f"{capture}.png")
  return path if os.path.exists(path) else None


def head_from_landmarks(landmarks: dict, views, K, E, where: str):
  """The head point of per-view 2D landmarks ({camera: [[u, v] or None, ...]}).

  Returns (point [3] or None, residual summary): the mean of the landmarks seen in at least two
  views, triangulated with the cameras; the summary has the count of landmarks and views and
  the mean and max reprojection error in pixels.
  """
  lists = [landmarks.get(v) for v in views]
  n = max((len(pts) for pts in lists if pts), default=0)
  uv = np.full((len(views), n, 2), np.nan)
  for i, pts in enumerate(lists):
    for j, p in enumerate(pts or []):
      if p is not None:
        if len(p) != 2:
          raise InputError(f"{where}: camera {views[i]!r} landmark {j} is not [u, v]")
        uv[i, j] = p
  X, errors = triangulate.triangulate_observations(K, E, uv)
  ok = np.all(np.isfinite(X), axis=-1)
  if not ok.any():
    return None, None
  err = errors[:, ok]
  summary = {
    "landmarks": int(ok.sum()),
    "views": int(np.any(np.isfinite(err), axis=1).sum()),
    "mean_px": float(np.nanmean(err)),
    "max_px": float(np.nanmax(err)),
  }
  return X[ok].mean(0), summary


def _read_view(path: str, hw) -> tuple[bytes, np.ndarray | None]:
  """(the view's bytes, its alpha channel or None): the bytes as stored when an RGB PNG or
  JPEG (checked by decoding), else re-encoded as PNG. `hw`: the size cameras.json gives."""
  with open(path, "rb") as f:
    data = f.read()
  image = decode(data, path)
  if hw is not None and tuple(image.shape[:2]) != tuple(hw):
    raise InputError(
      f"{path}: {image.shape[0]}x{image.shape[1]} pixels but cameras.json gives {hw[0]}x{hw[1]}"
    )
  with Image.open(io.BytesIO(data)) as im:
    alpha = np.asarray(im.getchannel("A")) if im.mode in ("RGBA", "LA") else None
    if im.format in ("PNG", "JPEG") and im.mode == "RGB":
      return data, None
  return schemas.encode_image(image, "png"), alpha


def _load_capture_folder(item: Item, options: dict) -> dict:
  del options
  views = item.data["views"]
  images, masks = [], []
  for v in views:
    im, alpha = _read_view(v["image"], v["hw"])
    images.append(im)
    if v["mask"] is None:
      masks.append(alpha)
      continue
    with open(v["mask"], "rb") as f:
      mask = decode(f.read(), v["mask"], "L")
    shape = decode(im, v["image"]).shape[:2]
    if mask.shape != shape:
      raise InputError(f"{v['mask']}: mask of {mask.shape} for an image of {shape} pixels")
    masks.append(mask)
  return capture_record(
    [v["camera"] for v in views],
    images,
    masks,
    [np.array(v["K"]) for v in views],
    [np.array(v["E"]) for v in views],
    item.data["head_point"],
    item.data["head_rotation"],
    "png",
  )


CAPTURE_FOLDER = Format("capture", _list_capture_folder, _load_capture_folder, 8)


# ----------------------------------------------------------------------------
# image-folder
# ----------------------------------------------------------------------------
def read_metadata(folder: str) -> dict[str, dict]:
  """{photo path: entry} of FOLDER/metadata.jsonl ({} without one)."""
  path = os.path.join(folder, "metadata.jsonl")
  meta = {}
  if os.path.exists(path):
    with open(path) as f:
      for k, line in enumerate(f):
        if line.strip():
          try:
            entry = json.loads(line)
            meta[entry["file"]] = entry
          except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"{path} line {k + 1}: expected {{'file': ...}} ({e})") from e
  return meta


def photo_record(path: str, rel: str, split: str, meta: dict, mask_path: str | None = None):
  """An image record dict for the photo at `path` (id `rel`), filled from `meta` (see the
  module docstring for the fallbacks)."""
  with open(path, "rb") as f:
    data = f.read()
  image = schemas.decode_image(data, rel)  # full decode and size check
  height, width = image.shape[:2]
  box = meta.get("person_box")
  with Image.open(io.BytesIO(data)) as im:
    alpha = np.asarray(im.getchannel("A")) if im.mode in ("RGBA", "LA") else None
    if im.format not in ("JPEG", "PNG") or im.mode not in ("RGB", "L", "RGBA", "P"):
      data = schemas.encode_image(image, "png")  # e.g. 16-bit: stored as 8-bit
  if box is None and mask_path is not None:
    with open(mask_path, "rb") as f:
      mask = schemas.decode_image(f.read(), mask_path, "L")
    if mask.shape != (height, width):
      raise schemas.RecordError(f"{mask_path}: mask of {mask.shape} for a {height}x{width} photo")
    box = imageops.mask_box(mask)
  if box is None and alpha is not None:
    box = imageops.mask_box(alpha)
  if box is None:
    box = [0, 0, width, height]
  return {
    "image_id": rel,
    "subject_id": int(meta.get("subject_id", -1)),
    "split": split,
    "image": data,
    "height": height,
    "width": width,
    "person_box": [float(v) for v in box],
    "detection_confidence": meta.get("detection_confidence", 1.0),
    "visibility": meta.get("visibility", 1.0),
    "quality": meta.get("quality", 1.0),
    "face_box": meta.get("face_box", [0, 0, 0, 0]),
  }


def _list_image_folder(src: str, options: dict) -> Listing:
  del options
  meta = read_metadata(src)
  listing = Listing(items=[])
  for root, dirs, files in os.walk(src):
    dirs[:] = sorted(d for d in dirs if not (root == src and d == "masks"))
    for name in sorted(files):
      if os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES:
        continue
      path = os.path.join(root, name)
      rel = os.path.relpath(path, src)
      try:
        with Image.open(path) as im:
          schemas._check_size(*im.size, rel)  # pylint: disable=protected-access
      except Exception as e:  # pylint: disable=broad-except
        listing.skipped.append((rel, f"{type(e).__name__}: {e}"))
        continue
      entry = meta.get(rel, {})
      subject = entry.get("subject", entry.get("subject_id"))
      if subject is None:
        subject = rel.split(os.sep)[0] if os.sep in rel else rel
      mask = os.path.join(src, "masks", os.path.splitext(rel)[0] + ".png")
      data = {"path": path, "meta": entry, "mask": mask if os.path.exists(mask) else None}
      listing.items.append(Item(rel, str(subject), data))
  missing = sorted(set(meta) - {i.id for i in listing.items} - {s[0] for s in listing.skipped})
  if missing:
    listing.notes.append(f"metadata.jsonl names {len(missing)} missing photos, e.g. {missing[0]}")
  return listing


def _load_image_folder(item: Item, options: dict) -> dict:
  del options
  try:
    return photo_record(item.data["path"], item.id, "", item.data["meta"], item.data["mask"])
  except schemas.RecordError as e:
    raise InputError(str(e)) from e


IMAGE_FOLDER = Format("image", _list_image_folder, _load_image_folder, 256)
