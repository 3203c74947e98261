"""The space-to-depth codec is exactly invertible and matches its definition."""

import ml_collections
import numpy as np
import pytest

from pippo_jax.models import codec as codec_lib


def test_space_to_depth_round_trip_and_layout():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(2, 3, 16, 24, 3), dtype=np.uint8)
  codec = codec_lib.SpaceToDepthCodec(downsample=4, scale_factor=0.5)
  z = np.asarray(codec.encode(images))
  assert z.shape == (2, 3, 4, 6, 48)
  # Channel c*16 + i*4 + j of latent cell (y, x) is pixel (4y + i, 4x + j), channel c.
  unit = (images.astype(np.float64) - 127.5) / 127.5
  y, x, c, i, j = 1, 2, 2, 3, 1
  assert np.isclose(z[0, 0, y, x, c * 16 + i * 4 + j], 0.5 * unit[0, 0, 4 * y + i, 4 * x + j, c])
  np.testing.assert_array_equal(codec_lib.to_uint8(codec.decode(z)), images)


def test_codec_config_errors():
  bad = ml_collections.ConfigDict(
    dict(
      kind="space_to_depth", downsample=4, latent_channels=12, scale_factor=1.0, shift_factor=0.0
    )
  )
  with pytest.raises(ValueError, match="makes 48"):
    codec_lib.make_codec(bad)
  bad.kind = "sdxl_vae"
  with pytest.raises(ValueError, match="space_to_depth"):
    codec_lib.make_codec(bad)


def test_latent_mask_marks_cells_with_any_person_pixel():
  from pippo_jax.models import inputs  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  mask = (rng.random((2, 3, 32, 32)) > 0.97).astype(np.uint8) * 255
  got = np.asarray(inputs.latent_mask(mask, 8))
  want = np.zeros((2, 3, 4, 4, 1), bool)
  for i in range(4):
    for j in range(4):
      want[..., i, j, 0] = mask[..., 8 * i : 8 * i + 8, 8 * j : 8 * j + 8].any(axis=(-2, -1))
  np.testing.assert_array_equal(got, want)
  assert want.any() and not want.all()
  # For space-to-depth it is what the codec's own encoding of the mask marks.
  codec = codec_lib.SpaceToDepthCodec(downsample=8)
  via_codec = np.asarray(codec.encode(np.repeat(mask[..., None], 3, -1)) > -1).any(-1)
  np.testing.assert_array_equal(got[..., 0], via_codec)
