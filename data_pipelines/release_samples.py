"""Format `pippo-samples`: the sample captures the authors' release trains on.

The release ships a few Ava-256 captures as `.npy` files (`sample_data/ava_samples/*.npy`),
each a pickled dict that its loader (`latent_diffusion/data.py`) reads with
`np.load(..., allow_pickle=True).item()`. Keys we read (V views, T frames):

  ==============  =========================  ===========================================
  key             shape                      meaning
  ==============  =========================  ===========================================
  video / image   [V, T, 3, H, W] or         the views, RGB 0..255 (we take frame 0)
                  [V, 3, H, W]
  cam_intrin      [V, 3, 3] or [V, 3, 4]     K of the full 4096 x 2668 calibration frame
                                             (option sample_intrinsics="frame", default;
                                             the views are its centred square, resized, as
                                             the release's reprojection script assumes) or of
                                             the stored views ("image"); a principal point
                                             outside the views stops the conversion
  cam_extrin      [V, 4, 4] or [V, 3, 4]     world -> camera [R | t]
  cams            [V]                        camera names (optional)
  mask / masks    [V, (T,) (1,) H, W]        person masks (optional; else the whole view)
  head_point      [3]                        (optional) head centre, world
  head_pose       [3, 4] or [4, 4]           (optional) head -> world transform
  ==============  =========================  ===========================================

`ref_image`, `kpts` (spatial anchor images), `plucker` and `cam_pose` are derived data that our
pipelines recompute from the cameras and head pose; they are not stored. The release's samples
carry no head pose: then the head point is the point nearest every camera's optical axis (the
head dome's cameras aim at the head; `triangulate.nearest_point_to_axes`), which the report
notes. The subject is the sample's "subject" / "sid" / "subject_id" entry, else the file name.

Unpickling runs code: the files are read only with the option allow_pickle (`--allow-pickle`),
with a warning; without it the conversion stops naming the first file.
"""

from __future__ import annotations

import glob
import os
import sys

import numpy as np

from pippo_jax.data_pipelines.convert_base import (
  Format,
  Item,
  Listing,
  capture_record,
  head_pose_matrix,
)
from pippo_jax.errors import InputError
from pippo_jax.geometry import cameras, triangulate

SUBJECT_KEYS = ("subject", "sid", "subject_id")


def _files(src: str) -> list[str]:
  return sorted(glob.glob(os.path.join(src, "*.npy")) + glob.glob(os.path.join(src, "*", "*.npy")))


def read_sample(path: str, allow_pickle: bool) -> dict:
  """The dict of one sample file; refuses to unpickle without `allow_pickle`."""
  if not allow_pickle:
    raise InputError(
      f"{path}: the release's samples are pickled Python objects and unpickling can run "
      "arbitrary code; refusing to read them without --allow-pickle (pass it only for files "
      "you trust)"
    )
  try:
    value = np.load(path, allow_pickle=True)
  except ModuleNotFoundError as e:
    raise InputError(f"{path}: its pickle needs the module {e.name!r} (pip install it)") from e
  except (OSError, ValueError, EOFError) as e:
    raise InputError(f"{path}: not a readable .npy file ({e})") from e
  if value.shape != () or not isinstance(value.item(), dict):
    raise InputError(f"{path}: expected a pickled dict, found {value.dtype} {value.shape}")
  return value.item()


def _array(sample: dict, keys, path: str, required: bool = True):
  for key in keys:
    if key in sample:
      return np.asarray(sample[key])
  if required:
    raise InputError(f"{path}: no {' or '.join(repr(k) for k in keys)} entry")
  return None


def _views(sample: dict, path: str) -> np.ndarray:
  """uint8 [V, H, W, 3] of frame 0."""
  video = _array(sample, ("video", "image"), path)
  if video.ndim == 5:
    video = video[:, 0]
  if video.ndim != 4 or video.shape[1] != 3:
    raise InputError(f"{path}: views of shape {video.shape}, expected [V, T, 3, H, W]")
  return np.clip(np.round(video.astype(np.float64)), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def _cameras(sample: dict, path: str, views: np.ndarray, intrinsics: str):
  K = _array(sample, ("cam_intrin",), path)[..., :3, :3].astype(np.float64)
  E = cameras.as_E44(_array(sample, ("cam_extrin",), path)[..., :3, :4].astype(np.float64))
  if len(K) != len(views) or len(E) != len(views):
    raise InputError(f"{path}: {len(views)} views but {len(K)} cam_intrin, {len(E)} cam_extrin")
  if intrinsics == "frame":
    if views.shape[1] != views.shape[2]:
      raise InputError(f"{path}: frame intrinsics need square views, got {views.shape[1:3]}")
    K = cameras.frame_to_square_intrinsics(K, cameras.MUGSY_FRAME_HW, views.shape[1])
  elif intrinsics != "image":
    raise ValueError(f"sample_intrinsics must be 'frame' or 'image', got {intrinsics!r}")
  h, w = views.shape[1:3]
  c = K[:, :2, 2]
  if np.any((c < 0) | (c > [w, h])):
    other = "image" if intrinsics == "frame" else "frame"
    raise InputError(
      f"{path}: with --sample-intrinsics {intrinsics} a principal point lands at "
      f"{c[np.any((c < 0) | (c > [w, h]), 1)][0].round(1).tolist()}, outside the {w}x{h} views; "
      f"are the intrinsics for the {'views' if other == 'image' else 'full frame'} "
      f"(--sample-intrinsics {other})?"
    )
  names = sample.get("cams")
  names = [str(n) for n in np.ravel(names)] if names is not None else []
  if len(names) != len(views):
    names = [f"view{i:02d}" for i in range(len(views))]
  cameras.validate_cameras(K, E, names)
  return K, E, names


def _head(sample: dict, E, path: str):
  """(point, rotation, from the sample?)."""
  if "head_pose" in sample:
    point, R = head_pose_matrix(sample["head_pose"], path)
    return point, R, True
  if "head_point" in sample:
    return np.asarray(sample["head_point"], np.float64).reshape(3), np.eye(3), True
  return triangulate.nearest_point_to_axes(E), np.eye(3), False


def _list(src: str, options: dict) -> Listing:
  files = _files(src)
  if not files:
    raise FileNotFoundError(f"{src}/*.npy not found (the release's sample files)")
  allow = bool(options.get("allow_pickle"))
  if allow:
    print(
      f"warning: --allow-pickle: unpickling {len(files)} files from {src}; this runs any code "
      "they hold, use it only for files you trust",
      file=sys.stderr,
    )
  listing = Listing(items=[])
  estimated = 0
  for path in files:
    sample = read_sample(path, allow)
    views = _views(sample, path)
    _, E, _ = _cameras(sample, path, views, options.get("sample_intrinsics", "frame"))
    estimated += not _head(sample, E, path)[2]
    subject = next((sample[k] for k in SUBJECT_KEYS if k in sample), None)
    stem = os.path.splitext(os.path.relpath(path, src))[0]
    subject = stem if subject is None else str(np.asarray(subject).item())
    listing.items.append(Item(stem, subject, {"path": path}))
  if estimated:
    listing.notes.append(
      f"{estimated} samples carry no head pose: head point = the point nearest every "
      "camera's optical axis"
    )
  return listing


def _load(item: Item, options: dict) -> dict:
  path = item.data["path"]
  sample = read_sample(path, bool(options.get("allow_pickle")))
  views = _views(sample, path)
  K, E, names = _cameras(sample, path, views, options.get("sample_intrinsics", "frame"))
  masks = _array(sample, ("masks", "mask"), path, required=False)
  if masks is not None:
    masks = masks.reshape((len(views), -1) + views.shape[1:3])[:, 0]
    scale = 255.0 if masks.max() <= 1 else 1.0
    masks = list(np.clip(np.round(masks * scale), 0, 255).astype(np.uint8))
  point, R, _ = _head(sample, E, path)
  return capture_record(
    names, list(views), masks or [None] * len(views), list(K), list(E), point, R, "png"
  )


FORMAT = Format("capture", _list, _load, 8)
