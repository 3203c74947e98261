"""What the `pippo-data convert` formats share: items, listings, views and head poses.

A format module defines a `Format` (see `convert`) from two functions: `list(src, options)`
finds the items and checks the layout (raising FileNotFoundError naming a missing required
file), `load(item, options)` makes one record dict (`schemas`; the converter adds split,
subject_id and the id).
"""

from __future__ import annotations

import dataclasses
import io
import os
import zipfile
from collections.abc import Callable

import numpy as np

from pippo_jax.data_pipelines import imageops, schemas
from pippo_jax.errors import InputError
from pippo_jax.geometry import cameras

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".avif", ".webp")


@dataclasses.dataclass(frozen=True)
class Item:
  """One unit to convert: `id` unique in the source, `subject` the identity key, `data` what
  the format's loader needs (plain data: it travels to worker processes)."""

  id: str
  subject: str
  data: dict


@dataclasses.dataclass
class Listing:
  """What a format found: the items to convert, what it skipped (item, reason) and notes."""

  items: list[Item]
  skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Format:
  """A source layout: `list(src, options) -> Listing`, `load(item, options) -> record dict`."""

  kind: str  # "capture" or "image"
  list: Callable[[str, dict], Listing]
  load: Callable[[Item, dict], dict]
  records_per_shard: int


def require(path: str, what: str) -> str:
  """`path` if it exists, else FileNotFoundError naming it and what it should hold."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found ({what})")
  return path


def decode(data: bytes, where: str, mode: str = "RGB") -> np.ndarray:
  """`schemas.decode_image`, its RecordError as an InputError (the job stops, naming it)."""
  try:
    return schemas.decode_image(data, where, mode)
  except schemas.RecordError as e:
    raise InputError(str(e)) from e


def read_zip_member(path: str, member: str) -> bytes:
  """The bytes of `member` of the zip file `path`; FileNotFoundError naming both if absent."""
  with zipfile.ZipFile(require(path, "a zip of the capture"), "r") as z:
    try:
      return z.read(member)
    except KeyError as e:
      raise FileNotFoundError(f"{path}: no member {member}") from e


def zip_names(path: str) -> set[str]:
  with zipfile.ZipFile(path, "r") as z:
    return set(z.namelist())


def head_pose_matrix(matrix, where: str) -> tuple[np.ndarray, np.ndarray]:
  """A head->world transform (3x4 or 4x4; text: 3 or 4 rows of 4 numbers) -> (head point,
  rotation)."""
  try:
    if isinstance(matrix, str):
      m = np.loadtxt(io.StringIO(matrix), dtype=np.float64, ndmin=2)
    else:
      m = np.asarray(matrix, np.float64)
  except ValueError as e:
    raise InputError(f"{where}: not a 3x4 or 4x4 matrix ({e})") from e
  if m.shape not in ((3, 4), (4, 4)):
    raise InputError(f"{where}: head pose has shape {m.shape}, expected 3x4 or 4x4")
  R = m[:3, :3]
  if np.abs(R @ R.T - np.eye(3)).max() > 1e-3:
    raise InputError(f"{where}: the head pose's rotation is not orthonormal")
  return m[:3, 3].copy(), R.copy()


def square_view(image, mask, K, frame_hw, side: int):
  """A view of a studio frame cropped to its centred square and resized to side x side.

  Args:
    image: uint8 [h, w, 3] as stored (maybe downscaled from the calibration's frame).
    mask: uint8 [h', w'] or None (resized to the image first when its size differs).
    K: the calibration's intrinsics for a frame of `frame_hw` (rows, columns).
    frame_hw: the calibrated frame size; the stored image must have its aspect ratio.
    side: output side.

  Returns:
    (image, mask or None, K) at side x side.
  """
  h, w = image.shape[:2]
  if abs(h / w - frame_hw[0] / frame_hw[1]) > 0.01:
    raise InputError(
      f"image of {h}x{w} pixels does not have the aspect ratio of the calibrated "
      f"{frame_hw[0]}x{frame_hw[1]} frame (see --frame-size)"
    )
  K = cameras.resize_intrinsics(K, frame_hw, (h, w))
  K = cameras.frame_to_square_intrinsics(K, (h, w), side)
  box = imageops.centre_square(h, w)
  out = imageops.crop_resize(image, box, (side, side))
  if mask is not None:
    if mask.shape != (h, w):
      mask = imageops.crop_resize(mask, (0, 0, mask.shape[1], mask.shape[0]), (h, w))
    mask = imageops.crop_resize(mask, box, (side, side))
  return out, mask, K


def capture_record(names, images, masks, K, E, head_point, head_rotation, image_format: str):
  """A capture record dict (without ids and split) from decoded views; `masks` entries may be
  None (the whole view is the person)."""
  enc_images, enc_masks = [], []
  for image, mask in zip(images, masks):
    enc_images.append(
      image if isinstance(image, bytes) else schemas.encode_image(image, image_format)
    )
    if mask is None:
      mask = np.full(decode_shape(image)[:2], 255, np.uint8)
    enc_masks.append(mask if isinstance(mask, bytes) else schemas.encode_image(mask, "png"))
  K, E = cameras.validate_cameras(np.stack(K), np.stack(E), list(names))
  return {
    "camera_names": list(names),
    "images": enc_images,
    "masks": enc_masks,
    "K": K,
    "E": E,
    "head_point": np.asarray(head_point, np.float64),
    "head_rotation": np.asarray(head_rotation, np.float64),
  }


def decode_shape(image) -> tuple[int, ...]:
  """Shape of a decoded view (an array, or encoded bytes: read from the header)."""
  if not isinstance(image, bytes):
    return image.shape
  from PIL import Image  # pylint: disable=g-import-not-at-top

  with Image.open(io.BytesIO(image)) as im:
    return (im.size[1], im.size[0])
