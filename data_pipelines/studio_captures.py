"""Formats `ava256` and `goliath`: the studio captures of the paper's benchmarks.

Both datasets store one folder per capture (SRC itself, SRC/decoder, or every subfolder of SRC
holding one), read here as their own loaders read them (facebookresearch/ava-256
`data/ava_dataset.py`, `download.py`, DATASHEET.md; facebookresearch/goliath
`ca_code/utils/dataloader.py`, DATASHEET.md)::

  ava256 (<mcd>--<mct>--<sid>/decoder/)   goliath (m--<mcd>--<mct>--<sid>--...--Body|Head/)
  camera_calibration.json                 camera_calibration.json
  frame_list.csv (seg_id,frame_id)        frame_splits_list.csv (frame,split)
  head_pose/head_pose.zip                 head_pose/head_pose.zip (heads) or
    <frame:06d>.txt (3x4 head->world)       keypoints_3d/keypoints_3d.zip <frame:06d>.json
  image/cam<camera>.zip                   image/cam<camera>.zip
    cam<camera>/<frame:06d>.avif            cam<camera>/<frame:06d>.avif
  segmentation_parts/cam<camera>.zip      segmentation_fgbg/ or segmentation_parts/cam<camera>.zip
    cam<camera>/<frame:06d>.png (0: bg)     cam<camera>/<frame:06d>.png (0: background)

Cameras: `camera_calibration.json` is the KRT layout (`geometry.cameras.krt_to_KE`: K and the
world->camera matrix stored transposed) for full frames of `frame_size` (4096 rows x 2668
columns); stored images may be smaller (same aspect ratio) and K is scaled to them. Goliath's
loader treats pixel centres as integers when it rescales K (c' = (c + 0.5) / s - 0.5), Ava-256's
does not; we follow each. Every view is cut to its centred square and resized to `resolution`
(`cameras.frame_to_square_intrinsics`), what the release does to Ava-256 frames.

Head pose: the head_pose file is the head->world transform (its translation the head point; its
rotation stored as given, in the dataset's head frame). Goliath body captures have no head pose:
the head point is the mean of the 3D keypoints named by `head_keypoints` (default: indices 0-4,
nose, eyes and ears in COCO order; the JSON may be a list of [x, y, z, ...] rows, a
{"keypoints": rows} object or a {name: [x, y, z]} object, then names containing nose/eye/ear).
Masks: label != 0 of the segmentation (missing segmentation zips: the whole view, noted).

Options: frames_per_capture (evenly spaced frames of each capture's frame list; 0: all),
resolution, frame_size ("4096x2668"), image_format ("png" or "jpeg"), head_keypoints. Items are
(capture folder, frame); the subject is the folder name's subject id.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np

from pippo_jax.data_pipelines.convert_base import (
  Format,
  Item,
  Listing,
  capture_record,
  decode,
  head_pose_matrix,
  read_zip_member,
  require,
  square_view,
  zip_names,
)
from pippo_jax.errors import InputError
from pippo_jax.geometry import cameras

CALIBRATION = "camera_calibration.json"
DEFAULTS = {
  "frames_per_capture": 1,
  "resolution": 1024,
  "frame_size": "4096x2668",
  "image_format": "png",
  "head_keypoints": "",
}


def _options(options: dict) -> dict:
  return {**DEFAULTS, **{k: v for k, v in options.items() if k in DEFAULTS}}


def capture_dirs(src: str) -> list[str]:
  """The capture folders of SRC (SRC, SRC/decoder, or subfolders holding a calibration)."""
  for d in (src, os.path.join(src, "decoder")):
    if os.path.exists(os.path.join(d, CALIBRATION)):
      return [d]
  found = []
  for name in sorted(os.listdir(src)):
    for d in (os.path.join(src, name), os.path.join(src, name, "decoder")):
      if os.path.exists(os.path.join(d, CALIBRATION)):
        found.append(d)
        break
  if not found:
    raise FileNotFoundError(
      f"{os.path.join(src, CALIBRATION)} not found (nor in SRC/decoder or any subfolder): "
      "not a capture folder"
    )
  return found


def subject_of(capture_dir: str) -> str:
  """The subject id of a capture folder name: <mcd>--<mct>--<sid>, m--<mcd>--<mct>--<sid>--..."""
  name = os.path.basename(os.path.normpath(capture_dir))
  if name == "decoder":
    name = os.path.basename(os.path.dirname(os.path.normpath(capture_dir)))
  parts = name.split("--")
  if parts[0] == "m" and len(parts) >= 4:
    return parts[3].lower()
  return parts[2].lower() if len(parts) >= 3 else name


def _read_csv(path: str, column: str, what: str) -> list[int]:
  with open(require(path, what), newline="") as f:
    rows = list(csv.DictReader(f))
  if not rows or column not in rows[0]:
    raise InputError(f"{path}: expected a CSV with a {column!r} column ({what})")
  try:
    return [int(r[column]) for r in rows]
  except ValueError as e:
    raise InputError(f"{path}: column {column!r} holds a non-integer frame ({e})") from e


def _pick(frames: list[int], count: int) -> list[int]:
  frames = sorted(set(frames))
  if count <= 0 or count >= len(frames):
    return frames
  return [frames[int(i)] for i in np.linspace(0, len(frames) - 1, count).round()]


def _frame_size(text: str) -> tuple[int, int]:
  try:
    h, w = (int(v) for v in str(text).lower().split("x"))
  except ValueError as e:
    raise ValueError(f"frame_size must be ROWSxCOLUMNS, e.g. 4096x2668, got {text!r}") from e
  return h, w


def _list(src: str, options: dict, dataset: str) -> Listing:
  opts = _options(options)
  _frame_size(opts["frame_size"])
  listing = Listing(items=[])
  for d in capture_dirs(src):
    calib = os.path.join(d, CALIBRATION)
    try:
      with open(calib) as f:
        K, E, names = cameras.krt_to_KE(json.load(f), integer_pixel_centers=dataset == "goliath")
    except (ValueError, KeyError, TypeError) as e:
      raise InputError(f"{calib}: not a KRT calibration ({type(e).__name__}: {e})") from e
    if dataset == "ava256":
      frames = _read_csv(os.path.join(d, "frame_list.csv"), "frame_id", "the frame list")
    else:
      frames = _read_csv(os.path.join(d, "frame_splits_list.csv"), "frame", "the frame list")
    head = _head_source(d, dataset)
    head_members = zip_names(head["zip"])
    zips = {n: os.path.join(d, "image", f"cam{n}.zip") for n in names}
    present = [n for n in names if os.path.exists(zips[n])]
    if not present:
      raise FileNotFoundError(f"{zips[names[0]]} not found (no image zip of any calibrated camera)")
    if len(present) < len(names):
      listing.notes.append(f"{d}: {len(names) - len(present)} calibrated cameras have no image zip")
    members = {n: zip_names(zips[n]) for n in present}
    masks = {n: _mask_zip(d, n, dataset) for n in present}
    if any(m is None for m in masks.values()):
      listing.notes.append(f"{d}: views without a segmentation zip get whole-view masks")
    index = {n: i for i, n in enumerate(names)}
    subject = subject_of(d)
    for frame in _pick(frames, int(opts["frames_per_capture"])):
      item_id = f"{os.path.relpath(d, src) if d != src else os.path.basename(d)}/{frame:06d}"
      member = head["member"].format(frame=frame)
      if member not in head_members:
        listing.skipped.append((item_id, f"{head['zip']} has no {member}"))
        continue
      views = [n for n in present if f"cam{n}/{frame:06d}.avif" in members[n]]
      if len(views) < 2:
        listing.skipped.append((item_id, f"only {len(views)} camera image(s) of this frame"))
        continue
      data = {
        "frame": frame,
        "head": {**head, "member": member},
        "views": [
          {
            "camera": n,
            "zip": zips[n],
            "mask": masks[n],
            "K": K[index[n]].tolist(),
            "E": E[index[n]].tolist(),
          }
          for n in views
        ],
      }
      listing.items.append(Item(item_id, subject, data))
  return listing


def _head_source(d: str, dataset: str) -> dict:
  pose = os.path.join(d, "head_pose", "head_pose.zip")
  if dataset == "ava256" or os.path.exists(pose):
    return {
      "kind": "pose",
      "zip": require(pose, "the per-frame head pose"),
      "member": "{frame:06d}.txt",
    }
  kpts = os.path.join(d, "keypoints_3d", "keypoints_3d.zip")
  if not os.path.exists(kpts):
    raise FileNotFoundError(
      f"{pose} not found, nor {kpts} (a capture needs a head pose or 3D keypoints)"
    )
  return {"kind": "keypoints", "zip": kpts, "member": "{frame:06d}.json"}


def _mask_zip(d: str, camera: str, dataset: str) -> str | None:
  kinds = (
    ("segmentation_parts",) if dataset == "ava256" else ("segmentation_fgbg", "segmentation_parts")
  )
  for kind in kinds:
    path = os.path.join(d, kind, f"cam{camera}.zip")
    if os.path.exists(path):
      return path
  return None


def head_from_keypoints(data, spec: str, where: str) -> np.ndarray:
  """The mean of the named 3D keypoints of a keypoints JSON (see the module docstring)."""
  if isinstance(data, dict) and "keypoints" in data:
    data = data["keypoints"]
  if isinstance(data, dict):
    names = list(data)
    wanted = [s.strip() for s in spec.split(",") if s.strip()] or [
      n for n in names if any(k in n.lower() for k in ("nose", "eye", "ear"))
    ]
    missing = [w for w in wanted if w not in data]
    if missing or not wanted:
      raise InputError(f"{where}: no keypoints named {missing or 'nose/eye/ear'}")
    rows = [data[w] for w in wanted]
  else:
    indices = [int(s) for s in (spec or "0,1,2,3,4").split(",") if s.strip()]
    if not isinstance(data, list) or max(indices) >= len(data):
      raise InputError(f"{where}: expected at least {max(indices) + 1} keypoint rows")
    rows = [data[i] for i in indices]
  try:
    points = np.array([r[:3] for r in rows], np.float64)
  except (TypeError, ValueError) as e:
    raise InputError(f"{where}: keypoints are not [x, y, z, ...] rows ({e})") from e
  return points.mean(0)


def _load(item: Item, options: dict) -> dict:
  opts = _options(options)
  frame_hw, side = _frame_size(opts["frame_size"]), int(opts["resolution"])
  frame, head = item.data["frame"], item.data["head"]
  raw = read_zip_member(head["zip"], head["member"]).decode()
  where = f"{head['zip']}:{head['member']}"
  if head["kind"] == "pose":
    point, R = head_pose_matrix(raw, where)
  else:
    try:
      kp = json.loads(raw)
    except ValueError as e:
      raise InputError(f"{where}: not valid JSON ({e})") from e
    point, R = head_from_keypoints(kp, opts["head_keypoints"], where), np.eye(3)
  names, images, masks, Ks, Es = [], [], [], [], []
  for v in item.data["views"]:
    member = f"cam{v['camera']}/{frame:06d}"
    image = decode(read_zip_member(v["zip"], member + ".avif"), f"{v['zip']}:{member}.avif")
    mask = None
    if v["mask"] is not None:
      labels = decode(read_zip_member(v["mask"], member + ".png"), f"{v['mask']}:{member}.png", "L")
      mask = np.where(labels > 0, 255, 0).astype(np.uint8)
    image, mask, K = square_view(image, mask, np.array(v["K"]), frame_hw, side)
    names.append(v["camera"])
    images.append(image)
    masks.append(mask)
    Ks.append(K)
    Es.append(np.array(v["E"]))
  return capture_record(names, images, masks, Ks, Es, point, R, opts["image_format"])


AVA256 = Format("capture", lambda src, o: _list(src, o, "ava256"), _load, 8)
GOLIATH = Format("capture", lambda src, o: _list(src, o, "goliath"), _load, 8)
