"""Record schemas and host-batch keys: the one place that documents both.

Records
=======
Every record is one `bytes` value in an ArrayRecord shard (our writer, or a
tfds builder that wraps the same bytes). A record is a small self-describing
container::

  b"PPR1" | uint32 little-endian header length | JSON header | payload

The JSON header holds scalar fields and a table of payload slices; a slice is
either opaque bytes (an encoded PNG/JPEG) or a NumPy array stored raw
(little-endian, exact: float64 camera matrices round-trip bit for bit).

Capture record (`kind == "capture"`): one subject at one moment, C cameras.

  =================  ===================  ====================================
  field              type                 meaning
  =================  ===================  ====================================
  capture_id         str                  unique id, e.g. "s000012_m01"
  subject_id         int                  identity (splits never share one)
  split              str                  "train" / "test" / ...
  camera_names       list[str] (C)        calibrated camera names
  images             list[bytes] (C)      encoded RGB images (PNG or JPEG)
  masks              list[bytes] (C)      encoded 8-bit person masks (PNG)
  K                  float64 [C, 3, 3]    intrinsics in pixels
  E                  float64 [C, 4, 4]    world -> camera extrinsics
  head_point         float64 [3]          head centre, world coordinates
  head_rotation      float64 [3, 3]       head-to-world rotation; columns are
                                          the head axes in world coordinates:
                                          x to the subject's left, y up, z out
                                          of the face (geometry.normalize)
  =================  ===================  ====================================

Cameras follow `pippo_jax.geometry.cameras`: OpenCV axes (x right, y down,
z forward), P = K [I|0] E, pixel (row i, column j) centred at
(u, v) = (j + 0.5, i + 0.5); boxes (x, y, w, h) are in the same continuous
frame, (0, 0, W, H) being the whole image.

Image record (`kind == "image"`): one in-the-wild style photo for P1.

  =====================  ===============  =================================
  field                  type             meaning
  =====================  ===============  =================================
  image_id               str              unique id
  subject_id             int              identity (-1 when unknown)
  split                  str              split name
  image                  bytes            encoded RGB image (PNG or JPEG)
  height, width          int              decoded size in pixels
  person_box             float32 [4]      x, y, w, h in pixels
  detection_confidence   float            person detector score in [0, 1]
  visibility             float            visible fraction of the body
  quality                float            image quality score in [0, 1]
  face_box               float32 [4]      x, y, w, h; w == h == 0: no face
  =====================  ===============  =================================

Stored latents (`pippo-data encode-latents`, see `data_pipelines.latents`):
a capture or image record may also hold the codec's latents of the crops the
transforms make at one resolution (N = C cameras, or 1 for an image record):

  =================  ===================  ====================================
  blob               type                 meaning
  =================  ===================  ====================================
  latents            float16 or float32   per view, the unscaled latents of
                     [N, h, w, K]         the crop (exact codecs: K = latent
                                          channels) or the VAE posterior's
                                          mean then log-variance (K = 2 x
                                          latent channels)
  crop_box           float64 [N, 4]       the crop's box (x, y, w, h) in the
                                          view's pixels
  crop_mask/i        bytes (captures)     the cropped person mask (PNG)
  =================  ===================  ====================================

The codec, resolution and crop settings that made them are in the dataset's
`index.json` (the split's settings meta, key "latents"). Readers that do not
ask for latents ignore these blobs: the record reads as before.

Every encoded image (photos, camera views, masks) decodes through
`decode_image`, which refuses sides under MIN_IMAGE_SIDE (16 px) and more than
MAX_IMAGE_PIXELS (64 megapixels) from the header, before decoding, and scales
16-bit images to 8 bits; a record it refuses counts as corrupt.

Host batches
============
Pipelines (`data_pipelines.pipelines`) yield dicts of NumPy arrays. B is the
per-process batch, NV the number of target views, H = W = resolution,
F = face resolution.

  =================  ========  ==================  =======================
  key                dtype     shape               stages
  =================  ========  ==================  =======================
  target_images      uint8     [B, NV, H, W, 3]    all (P1: NV = 1)
  ref_image          uint8     [B, H, W, 3]        all
  target_latents     float16   [B, NV, h, w, K]    with data.latents, instead
  ref_latent         float16   [B, h, w, K]        of the two above (stored
                                                   dtype; see "Stored latents")
  ref_face           uint8     [B, F, F, 3]        P1 (zeros if no face; not
                                                   with data.latents)
  ref_face_valid     bool      [B]                 P1 (not with data.latents)
  target_masks       uint8     [B, NV, H, W]       M2, P3 (0..255)
  ref_mask           uint8     [B, H, W]           M2, P3
  target_cam_pose    float32   [B, NV, 16]         M2, P3 (flattened E)
  ref_cam_pose       float32   [B, 16]             M2, P3
  target_K           float32   [B, NV, 3, 3]       M2, P3 (after crop)
  target_E           float32   [B, NV, 4, 4]       M2, P3 (normalised scene)
  ref_K, ref_E       float32   [B, 3, 3], [B,4,4]  M2, P3
  ref_camera         int64     [B]                 M2, P3: camera index in
  target_cameras     int64     [B, NV]             the capture record
  target_plucker     float32   [B, NV, H, W, 6]    with_controls (P3)
  ref_plucker        float32   [B, H, W, 6]        with_controls (P3)
  target_anchor      uint8     [B, NV, H, W, 3]    with_controls (P3)
  ref_anchor         uint8     [B, H, W, 3]        with_controls (P3)
  record_index       int64     [B]                 all: index in the source
  epoch              int64     [B]                 all: epoch of the example
  =================  ========  ==================  =======================

Multi-view examples live in a normalised scene (`data.normalize_scene`, on by
default): the similarity of `geometry.normalize.head_normalization` puts the
head at the origin, its axes on the world axes (`data.align_head`) and the
mean camera distance at `data.scene_distance`. Images and K do not change;
E, camera poses, Plücker maps and anchors are all computed in that frame.
"""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import numpy as np
from PIL import Image

MAGIC = b"PPR1"
VERSION = 1
_LEN = struct.Struct("<I")

CAPTURE_ARRAYS = {"K": (3, 3), "E": (4, 4)}
IMAGE_SCORES = ("detection_confidence", "visibility", "quality")
LATENT_DTYPES = ("float16", "float32")


class RecordError(ValueError):
  """A record that cannot be parsed or validated (the message says where)."""


# ----------------------------------------------------------------------------
# Container
# ----------------------------------------------------------------------------
def _pack(kind: str, fields: dict[str, Any], blobs: dict[str, Any]) -> bytes:
  """Packs JSON-able fields and bytes/ndarray blobs into one record."""
  table, chunks, offset = {}, [], 0
  for name, value in blobs.items():
    if isinstance(value, (bytes, bytearray, memoryview)):
      data, entry = bytes(value), {"type": "bytes"}
    else:
      arr = np.asarray(value)
      data = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
      entry = {"type": "array", "dtype": arr.dtype.newbyteorder("<").str, "shape": list(arr.shape)}
    entry.update(offset=offset, size=len(data))
    table[name] = entry
    chunks.append(data)
    offset += len(data)
  header = json.dumps(
    {"kind": kind, "version": VERSION, "fields": fields, "blobs": table}, separators=(",", ":")
  ).encode()
  return b"".join([MAGIC, _LEN.pack(len(header)), header, *chunks])


def _unpack(record: bytes, where: str) -> tuple[str, dict, dict]:
  """Inverse of `_pack`; raises RecordError naming `where` on any damage."""
  if not isinstance(record, (bytes, bytearray, memoryview)):
    raise RecordError(f"{where}: expected bytes, got {type(record).__name__}")
  record = bytes(record)
  if record[:4] != MAGIC:
    raise RecordError(f"{where}: not a pippo record (magic {record[:4]!r})")
  if len(record) < 8:
    raise RecordError(f"{where}: truncated record ({len(record)} bytes)")
  (hlen,) = _LEN.unpack_from(record, 4)
  try:
    header = json.loads(record[8 : 8 + hlen])
  except ValueError as e:
    raise RecordError(f"{where}: unreadable header ({e})") from e
  if header.get("version") != VERSION:
    raise RecordError(
      f"{where}: record version {header.get('version')} (this code reads version {VERSION})"
    )
  payload = memoryview(record)[8 + hlen :]
  blobs = {}
  for name, e in header["blobs"].items():
    if e["offset"] + e["size"] > len(payload):
      raise RecordError(f"{where}: blob {name!r} runs past the record end")
    chunk = payload[e["offset"] : e["offset"] + e["size"]]
    if e["type"] == "bytes":
      blobs[name] = bytes(chunk)
    else:
      arr = np.frombuffer(chunk, dtype=np.dtype(e["dtype"]))
      blobs[name] = arr.reshape(e["shape"]).astype(arr.dtype.newbyteorder("="))
  return header["kind"], header["fields"], blobs


def record_kind(record: bytes, where: str = "record") -> str:
  return _unpack(record, where)[0]


# ----------------------------------------------------------------------------
# Capture records
# ----------------------------------------------------------------------------
def encode_capture(capture: dict[str, Any]) -> bytes:
  """Serialises a capture dict (fields in the module docstring)."""
  c = len(capture["images"])
  where = f"capture {capture.get('capture_id', '?')}"
  if len(capture["masks"]) != c or len(capture["camera_names"]) != c:
    raise RecordError(
      f"{where}: {c} images but {len(capture['masks'])} masks "
      f"and {len(capture['camera_names'])} camera names"
    )
  for name, shape in CAPTURE_ARRAYS.items():
    if np.shape(capture[name]) != (c,) + shape:
      raise RecordError(
        f"{where}: {name} has shape {np.shape(capture[name])}, expected {(c,) + shape}"
      )
  if np.shape(capture["head_point"]) != (3,):
    raise RecordError(f"{where}: head_point must have shape (3,)")
  if np.shape(capture["head_rotation"]) != (3, 3):
    raise RecordError(f"{where}: head_rotation must have shape (3, 3)")
  fields = {
    "capture_id": str(capture["capture_id"]),
    "subject_id": int(capture["subject_id"]),
    "split": str(capture["split"]),
    "camera_names": [str(n) for n in capture["camera_names"]],
  }
  blobs = {
    "K": np.asarray(capture["K"], np.float64),
    "E": np.asarray(capture["E"], np.float64),
    "head_point": np.asarray(capture["head_point"], np.float64),
    "head_rotation": np.asarray(capture["head_rotation"], np.float64),
  }
  for i in range(c):
    blobs[f"image/{i}"] = capture["images"][i]
    blobs[f"mask/{i}"] = capture["masks"][i]
  return _pack("capture", fields, blobs)


def decode_capture(record: bytes, where: str = "record") -> dict[str, Any]:
  """Parses a capture record; images and masks stay encoded (lazy)."""
  kind, fields, blobs = _unpack(record, where)
  if kind != "capture":
    raise RecordError(f"{where}: expected a capture record, found {kind!r}")
  c = len(fields["camera_names"])
  try:
    out = dict(fields)
    out["images"] = [blobs[f"image/{i}"] for i in range(c)]
    out["masks"] = [blobs[f"mask/{i}"] for i in range(c)]
    for name in ("K", "E", "head_point", "head_rotation"):
      out[name] = blobs[name]
  except KeyError as e:
    raise RecordError(f"{where}: capture record lacks blob {e}") from e
  out.update(_latent_blobs(blobs, c, True, where))
  return out


# ----------------------------------------------------------------------------
# Image records
# ----------------------------------------------------------------------------
def encode_image_record(rec: dict[str, Any]) -> bytes:
  """Serialises an image record dict (fields in the module docstring)."""
  where = f"image {rec.get('image_id', '?')}"
  for name in ("person_box", "face_box"):
    if np.shape(rec[name]) != (4,):
      raise RecordError(f"{where}: {name} must be [x, y, w, h]")
  fields = {
    "image_id": str(rec["image_id"]),
    "subject_id": int(rec.get("subject_id", -1)),
    "split": str(rec["split"]),
    "height": int(rec["height"]),
    "width": int(rec["width"]),
  }
  for name in IMAGE_SCORES:
    fields[name] = float(rec[name])
  blobs = {
    "image": rec["image"],
    "person_box": np.asarray(rec["person_box"], np.float32),
    "face_box": np.asarray(rec["face_box"], np.float32),
  }
  return _pack("image", fields, blobs)


def decode_image_record(record: bytes, where: str = "record") -> dict[str, Any]:
  """Parses an image record; the image stays encoded (lazy)."""
  kind, fields, blobs = _unpack(record, where)
  if kind != "image":
    raise RecordError(f"{where}: expected an image record, found {kind!r}")
  out = dict(fields)
  try:
    out.update(image=blobs["image"], person_box=blobs["person_box"], face_box=blobs["face_box"])
  except KeyError as e:
    raise RecordError(f"{where}: image record lacks blob {e}") from e
  out.update(_latent_blobs(blobs, 1, False, where))
  return out


# ----------------------------------------------------------------------------
# Stored latents
# ----------------------------------------------------------------------------
def _check_latents(latents, boxes, masks, views: int, capture: bool, where: str) -> None:
  """RecordError naming `where` unless the latent blobs fit a record of `views` views."""
  if latents.dtype.name not in LATENT_DTYPES or latents.ndim != 4 or len(latents) != views:
    raise RecordError(
      f"{where}: latents are {latents.dtype.name} {list(latents.shape)}, expected "
      f"{' or '.join(LATENT_DTYPES)} [{views}, h, w, K]"
    )
  if np.shape(boxes) != (views, 4):
    raise RecordError(f"{where}: crop_box has shape {np.shape(boxes)}, expected {(views, 4)}")
  if capture and (masks is None or len(masks) != views):
    got = 0 if masks is None else len(masks)
    raise RecordError(f"{where}: {got} cropped masks for {views} views")


def _latent_blobs(blobs: dict, views: int, capture: bool, where: str) -> dict[str, Any]:
  """{latents, crop_box[, crop_masks]} of a record's blobs, validated; {} when it has none."""
  if "latents" not in blobs:
    return {}
  masks = None
  try:
    if capture:
      masks = [blobs[f"crop_mask/{i}"] for i in range(views)]
    out = {"latents": blobs["latents"], "crop_box": blobs["crop_box"]}
  except KeyError as e:
    raise RecordError(f"{where}: record has latents but lacks blob {e}") from e
  _check_latents(out["latents"], out["crop_box"], masks, views, capture, where)
  if capture:
    out["crop_masks"] = masks
  return out


def add_latents(
  record: bytes,
  latents: np.ndarray,
  boxes: np.ndarray,
  masks: list[bytes] | None = None,
  where: str = "record",
) -> bytes:
  """`record` with stored latents added (blobs in the module docstring); its other bytes as
  they were.

  Args:
    record: a capture or image record (without latents).
    latents: float16 or float32 [N, h, w, K], one per camera (image records: N = 1).
    boxes: the crops' boxes [N, 4].
    masks: capture records: the cropped masks, encoded (PNG).
    where: names the record in errors.
  """
  kind, fields, blobs = _unpack(record, where)
  if "latents" in blobs:
    raise RecordError(f"{where}: the record already holds latents")
  capture = kind == "capture"
  views = len(fields["camera_names"]) if capture else 1
  latents, boxes = np.asarray(latents), np.asarray(boxes, np.float64)
  _check_latents(latents, boxes, masks, views, capture, where)
  blobs = dict(blobs, latents=latents, crop_box=boxes)
  for i, mask in enumerate(masks if capture else ()):
    blobs[f"crop_mask/{i}"] = mask
  return _pack(kind, fields, blobs)


def no_latents_message(where: str) -> str:
  """Why a record without latents is corrupt to a `data.latents` pipeline."""
  return (
    f"{where}: no stored latents (`pippo-data encode-latents` found the record corrupt and "
    "copied it without them)"
  )


# ----------------------------------------------------------------------------
# Image codecs
# ----------------------------------------------------------------------------
def encode_image(array: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
  """Encodes uint8 HxW or HxWx3 as PNG or JPEG."""
  array = np.asarray(array)
  if array.dtype != np.uint8:
    raise ValueError(f"images are stored as uint8, got {array.dtype}")
  buf = io.BytesIO()
  fmt = fmt.lower()
  if fmt == "png":
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
  elif fmt in ("jpeg", "jpg"):
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
  else:
    raise ValueError(f"unknown image format {fmt!r} (use 'png' or 'jpeg')")
  return buf.getvalue()


# Size limits of a decoded image, checked from its header before any pixel is
# decoded: a 1x1 "photo" is no training example, and a 144-megapixel one needs
# gigabytes to decode. Records outside them count as corrupt.
MIN_IMAGE_SIDE = 16  # pixels, both sides
MAX_IMAGE_PIXELS = 64 * 10**6  # height * width
_16BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


def _to_8bit(im: Image.Image) -> Image.Image:
  """16-bit grey images scaled to 8 bits (value >> 8); others unchanged.

  PIL's `convert` clips them instead, turning most pixels white. Mode "I"
  (32-bit integers, how some readers hand over 16-bit data) is clipped to
  [0, 65535] first.
  """
  if im.mode not in _16BIT_MODES:
    return im
  values = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
  return Image.fromarray((values >> 8).astype(np.uint8), "L")


def _check_size(width: int, height: int, where: str = "image") -> None:
  """Raises RecordError naming `where` unless the size is within the limits."""
  if min(width, height) < MIN_IMAGE_SIDE:
    raise RecordError(
      f"{where}: {width}x{height} pixels, too small (both "
      f"sides must be at least schemas.MIN_IMAGE_SIDE="
      f"{MIN_IMAGE_SIDE} px)"
    )
  if width * height > MAX_IMAGE_PIXELS:
    raise RecordError(
      f"{where}: {width}x{height} pixels "
      f"({width * height / 1e6:.1f} megapixels), too large "
      f"(at most schemas.MAX_IMAGE_PIXELS="
      f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels); downscale it"
    )


def decode_image(data: bytes, where: str = "image", mode: str = "RGB") -> np.ndarray:
  """Decodes PNG/JPEG bytes to uint8 (mode "RGB": HxWx3, "L": HxW).

  The one place images are decoded. Raises RecordError naming `where` for
  broken data and for sizes outside MIN_IMAGE_SIDE / MAX_IMAGE_PIXELS (read
  from the header, before decoding); 16-bit images are scaled to 8 bits.
  """
  try:
    with Image.open(io.BytesIO(data)) as im:  # reads the header only
      _check_size(*im.size, where)
      return np.asarray(_to_8bit(im).convert(mode))
  except RecordError:
    raise
  except Exception as e:  # PIL raises several types for broken data.
    raise RecordError(f"cannot decode {where}: {type(e).__name__}: {e}") from e
