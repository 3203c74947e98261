"""Record schemas: exact round trips and errors that say where."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pippo_jax.data_pipelines import schemas


def _capture(c=3):
  rng = np.random.default_rng(0)
  return {
    "capture_id": "s1_m0",
    "subject_id": 1,
    "split": "train",
    "camera_names": [f"cam{i}" for i in range(c)],
    "images": [schemas.encode_image(rng.integers(0, 255, (20, 16, 3), np.uint8)) for _ in range(c)],
    "masks": [schemas.encode_image(rng.integers(0, 255, (20, 16), np.uint8)) for _ in range(c)],
    "K": rng.normal(size=(c, 3, 3)),
    "E": rng.normal(size=(c, 4, 4)),
    "head_point": np.array([0.1, 1 / 3, 1.7]),
    "head_rotation": rng.normal(size=(3, 3)),
  }


def _image_record():
  img = (np.arange(16 * 18 * 3) % 256).astype(np.uint8).reshape(16, 18, 3)
  return {
    "image_id": "a",
    "subject_id": 4,
    "split": "test",
    "image": schemas.encode_image(img),
    "height": 16,
    "width": 18,
    "person_box": [1, 2, 3, 4],
    "detection_confidence": 0.25,
    "visibility": 0.5,
    "quality": 0.75,
    "face_box": [0, 0, 0, 0],
  }


def test_capture_round_trip_is_exact():
  cap = _capture()
  out = schemas.decode_capture(schemas.encode_capture(cap))
  for key in ("capture_id", "subject_id", "split", "camera_names", "images", "masks"):
    assert out[key] == cap[key]
  for key in ("K", "E", "head_point", "head_rotation"):
    assert out[key].dtype == np.float64
    np.testing.assert_array_equal(out[key], cap[key])  # bit-exact float64
  decoded = schemas.decode_image(out["images"][1])
  np.testing.assert_array_equal(decoded, schemas.decode_image(cap["images"][1]))
  assert schemas.decode_image(out["masks"][0], mode="L").shape == (20, 16)


def test_image_record_round_trip():
  rec = _image_record()
  out = schemas.decode_image_record(schemas.encode_image_record(rec))
  assert {k: out[k] for k in ("image_id", "subject_id", "split", "height", "width")} == {
    "image_id": "a",
    "subject_id": 4,
    "split": "test",
    "height": 16,
    "width": 18,
  }
  assert (out["detection_confidence"], out["visibility"], out["quality"]) == (0.25, 0.5, 0.75)
  np.testing.assert_array_equal(out["person_box"], [1, 2, 3, 4])
  assert out["person_box"].dtype == np.float32
  img = schemas.decode_image(out["image"])
  np.testing.assert_array_equal(img, (np.arange(864) % 256).astype(np.uint8).reshape(16, 18, 3))


def test_jpeg_encoding_is_lossy_but_close():
  img = np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (32, 1, 3))
  out = schemas.decode_image(schemas.encode_image(img, "jpeg", quality=95))
  assert np.abs(out.astype(int) - img).max() <= 8


@pytest.mark.parametrize(
  "damage, message",
  [
    (lambda b: b"XXXX" + b[4:], "not a pippo record"),
    (lambda b: b[:40], "unreadable header"),
    (lambda b: b[:-10], "runs past the record end"),
  ],
)
def test_damaged_records_raise_with_location(damage, message):
  record = damage(schemas.encode_capture(_capture()))
  with pytest.raises(schemas.RecordError, match=message) as e:
    schemas.decode_capture(record, where="shard-3#17")
  assert "shard-3#17" in str(e.value)


def test_kind_mismatch_and_shape_errors():
  with pytest.raises(schemas.RecordError, match="expected a capture record"):
    schemas.decode_capture(schemas.encode_image_record(_image_record()))
  cap = _capture()
  cap["K"] = cap["K"][:2]
  with pytest.raises(schemas.RecordError, match="K has shape"):
    schemas.encode_capture(cap)
  cap = _capture()
  cap["masks"] = cap["masks"][:1]
  with pytest.raises(schemas.RecordError, match="3 images but 1 masks"):
    schemas.encode_capture(cap)


def test_broken_image_names_the_record():
  with pytest.raises(schemas.RecordError, match=r"cannot decode image cam7 of x#3"):
    schemas.decode_image(b"\x89PNG\r\n\x1a\nbroken", "image cam7 of x#3")


def _encoded(array, fmt):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format=fmt)
  return buf.getvalue()


@pytest.mark.parametrize(
  "dtype, fmt, mode",
  [
    (np.uint16, "PNG", "I;16"),  # a 16-bit PNG
    (np.int32, "TIFF", "I"),  # 32-bit integers holding 16-bit values
  ],
)
def test_16bit_images_are_scaled_not_clipped(dtype, fmt, mode):
  values = (np.arange(24 * 20).reshape(24, 20) * 137 % 65536).astype(dtype)
  data = _encoded(values, fmt)
  assert Image.open(io.BytesIO(data)).mode == mode
  expected = (values.astype(np.int64) >> 8).astype(np.uint8)
  np.testing.assert_array_equal(schemas.decode_image(data, mode="L"), expected)
  np.testing.assert_array_equal(schemas.decode_image(data), np.repeat(expected[..., None], 3, -1))
  # PIL's own convert("RGB") would make almost every pixel 255.
  assert (schemas.decode_image(data) == 255).mean() < 0.01


def _png_header_only(width, height):
  """A PNG whose header says width x height, followed by garbage pixels."""

  def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

  return (
    b"\x89PNG\r\n\x1a\n"
    + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    + chunk(b"IDAT", b"not zlib data")
    + chunk(b"IEND", b"")
  )


def test_image_size_limits_are_checked_before_decoding():
  tiny = schemas.encode_image(np.zeros((1, 1, 3), np.uint8))
  with pytest.raises(schemas.RecordError) as e:
    schemas.decode_image(tiny, "image of shard-1#4")
  assert str(e.value) == (
    "image of shard-1#4: 1x1 pixels, too small (both sides must be at least "
    "schemas.MIN_IMAGE_SIDE=16 px)"
  )
  schemas.decode_image(schemas.encode_image(np.zeros((16, 16), np.uint8)))
  # 9000 x 8000 = 72 megapixels: refused from the header, the (broken) pixels
  # are never decoded.
  with pytest.raises(schemas.RecordError) as e:
    schemas.decode_image(_png_header_only(9000, 8000), "photos/big.png")
  assert str(e.value) == (
    "photos/big.png: 9000x8000 pixels (72.0 megapixels), too large (at most "
    "schemas.MAX_IMAGE_PIXELS=64 megapixels); downscale it"
  )
  with pytest.raises(schemas.RecordError, match="cannot decode photos/ok.png"):
    schemas.decode_image(_png_header_only(800, 600), "photos/ok.png")
