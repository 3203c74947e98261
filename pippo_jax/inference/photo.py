"""A user's photo -> the reference image a checkpoint was trained on.

`load_photo` reads JPEG, PNG or WebP (RGB, RGBA, greyscale, palette, 16-bit), applies the EXIF
orientation and finds the person:

1. `--mask FILE` (8-bit, person > 127; same size as the photo) when given;
2. else the alpha channel, when the photo has one that is not fully opaque (a cut-out);
3. else the background, when it is plain: the border ring of the photo (3% of the short side) is
   the background colour (its median) if 90% of the ring lies within BACKGROUND_TOL of it; the
   person is every pixel further from it, opened by 3x3 to drop specks;
4. else no mask: the whole photo is kept (centre square), background included, with a warning.

`prepare_reference` then does what the training transforms do to a camera view (`data_pipelines
.multiview`): composite onto the config's background colour, crop a square around the person
with the config's margin, resize to the model's resolution. It also returns the person's box and
head position in the crop, which place the reference camera (`scene.photo_cameras`).

Every failure raises `PhotoError` naming the file: missing, empty, not an image, smaller than
MIN_SIDE, a mask of another size, or no person found.
"""

import dataclasses
import os

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from pippo_jax import errors
from pippo_jax.data_pipelines import imageops, schemas

MIN_SIDE = 32  # pixels; smaller photos carry too little to condition on
MIN_PERSON_FRACTION = 0.005  # of the photo's pixels
BACKGROUND_TOL = 40.0  # RGB distance (0..441) from the background colour
BORDER = 0.03  # border ring width, fraction of the short side
PLAIN_FRACTION = 0.9


class PhotoError(errors.InputError):
  """A photo (or its mask) that cannot be used; the message names the file."""


def _open(path: str, what: str) -> Image.Image:
  if not os.path.isfile(path):
    raise PhotoError(f"{what} {path}: no such file")
  if os.path.getsize(path) == 0:
    raise PhotoError(f"{what} {path}: the file is empty (0 bytes)")
  try:
    with Image.open(path) as im:
      im.load()
      im = ImageOps.exif_transpose(im)
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise PhotoError(f"{what} {path}: not a readable image ({type(e).__name__}: {e})") from e
  if min(im.size) < MIN_SIDE:
    raise PhotoError(
      f"{what} {path}: {im.size[0]}x{im.size[1]} pixels is too small (need at least "
      f"{MIN_SIDE} on each side)"
    )
  return im


def read_rgba(path: str) -> tuple[np.ndarray, np.ndarray | None]:
  """uint8 RGB [H, W, 3] and the alpha [H, W] (None when absent or fully opaque)."""
  im = schemas._to_8bit(_open(path, "photo"))  # pylint: disable=protected-access
  if im.mode == "P":
    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
  alpha = None
  if im.mode in ("RGBA", "LA", "PA"):
    alpha = np.asarray(im.getchannel("A"))
    if alpha.min() == 255:
      alpha = None
  return np.asarray(im.convert("RGB")), alpha


def read_mask(path: str, shape: tuple[int, int]) -> np.ndarray:
  mask = np.asarray(schemas._to_8bit(_open(path, "mask")).convert("L"))  # pylint: disable=protected-access
  if mask.shape != shape:
    raise PhotoError(
      f"mask {path}: {mask.shape[1]}x{mask.shape[0]} pixels, but the photo is {shape[1]}x{shape[0]}"
    )
  return mask


def plain_background_mask(rgb: np.ndarray) -> np.ndarray | None:
  """Person mask (uint8 0/255) against a plain background, or None if the background is not
  plain (see the module docstring)."""
  h, w = rgb.shape[:2]
  b = max(1, round(BORDER * min(h, w)))
  ring = np.concatenate(
    [rgb[:b].reshape(-1, 3), rgb[-b:].reshape(-1, 3), rgb[:, :b].reshape(-1, 3)]
    + [rgb[:, -b:].reshape(-1, 3)]
  ).astype(np.float64)
  colour = np.median(ring, axis=0)
  if np.mean(np.linalg.norm(ring - colour, axis=1) <= BACKGROUND_TOL) < PLAIN_FRACTION:
    return None
  far = np.linalg.norm(rgb.astype(np.float64) - colour, axis=-1) > BACKGROUND_TOL
  mask = Image.fromarray((far * 255).astype(np.uint8))
  mask = mask.filter(ImageFilter.MinFilter(3)).filter(ImageFilter.MaxFilter(3))
  return np.asarray(mask)


@dataclasses.dataclass
class Reference:
  """The prepared reference and where the person is in it."""

  image: np.ndarray  # uint8 [res, res, 3], composited and cropped like a training view
  mask: np.ndarray | None  # uint8 [res, res] (None: no person mask was found)
  person_box: np.ndarray | None  # (x, y, w, h) in the crop's pixels
  source: str  # how the person was found: "mask", "alpha", "plain background" or "none"


def prepare_reference(
  path: str, resolution: int, *, background, margin: float, mask_path: str | None = None
) -> Reference:
  """Photo file -> `Reference` at `resolution` (see the module docstring)."""
  rgb, alpha = read_rgba(path)
  if mask_path:
    mask, source = read_mask(mask_path, rgb.shape[:2]), "mask"
  elif alpha is not None:
    mask, source = alpha, "alpha"
  else:
    mask, source = plain_background_mask(rgb), "plain background"
  if mask is None:
    box = imageops.centre_square(*rgb.shape[:2])
    image = imageops.crop_resize(rgb, box, (resolution, resolution), background)
    return Reference(image, None, None, "none")
  if np.mean(mask > 127) < MIN_PERSON_FRACTION:
    raise PhotoError(
      f"photo {path}: no person found ({source} covers "
      f"{100 * np.mean(mask > 127):.2f}% of the image); pass --mask FILE with the person in white"
    )
  composite = imageops.composite(rgb, mask, background)
  box = imageops.square_box(imageops.mask_box(mask), margin)
  out_hw = (resolution, resolution)
  image = imageops.crop_resize(composite, box, out_hw, background)
  crop_mask = imageops.crop_resize(mask, box, out_hw, 0)
  return Reference(image, crop_mask, imageops.mask_box(crop_mask), source)
