"""A folder of posed views -> images, person masks and cameras for the lift.

The folder holds a cameras JSON (`cameras.json`, any layout `geometry.orbits.cameras_from_json`
reads: ours, KRT, NeRF) and images. Which image belongs to which camera:

1. a camera entry with an "image" key names its file (relative to the folder);
2. else a `pippo-sample` folder (it has view_NNN.png): its target cameras, in the JSON's order,
   are view_000.png, view_001.png, ...; the camera named "reference" (the photo's, whose
   calibration is a guess) is left out;
3. else every image file (PNG, JPEG, WebP; sorted by name) in the JSON's camera order.

Intrinsics given for another image size (the JSON's "height"/"width") are rescaled to the image.
Masks: RGBA images use their alpha; otherwise the background is the median colour of the views'
border rings, and the person every pixel more than BACKGROUND_TOL away from it (the generated
views are composited on a plain colour, white by default).

Every failure raises `LiftInputError` naming the file: no cameras JSON, a camera without its
image, more images than cameras (or fewer), an unreadable image, images of different sizes, a
view with nothing in front of the background.
"""

import dataclasses
import json
import os
import re

import numpy as np
from PIL import Image, UnidentifiedImageError

from pippo_jax import errors
from pippo_jax.geometry import cameras, orbits

CAMERAS_FILE = "cameras.json"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
BACKGROUND_TOL = 30.0  # RGB distance (0..441) from the background colour
BORDER = 2  # pixels of the border ring that show the background
REFERENCE = "reference"


class LiftInputError(errors.InputError):
  """A views folder that cannot be lifted; the message names the file."""


@dataclasses.dataclass
class Views:
  images: np.ndarray  # uint8 [V, H, W, 3]
  masks: np.ndarray  # bool [V, H, W]
  K: np.ndarray  # [V, 3, 3], for the images' size
  E: np.ndarray  # [V, 4, 4]
  names: list[str]
  files: list[str]
  background: np.ndarray  # uint8 [3]


def read_image(path: str) -> tuple[np.ndarray, np.ndarray | None]:
  """uint8 RGB [H, W, 3] and alpha [H, W] (None when absent or opaque)."""
  try:
    with Image.open(path) as im:
      im.load()
      alpha = np.asarray(im.getchannel("A")) if im.mode in ("RGBA", "LA") else None
      rgb = np.asarray(im.convert("RGB"))
  except FileNotFoundError:
    raise LiftInputError(f"image {path}: no such file") from None
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise LiftInputError(f"image {path}: not a readable image ({type(e).__name__}: {e})") from e
  return rgb, (None if alpha is None or alpha.min() == 255 else alpha)


def _image_files(folder: str, cams, json_path: str) -> tuple[list[int], list[str]]:
  """(indices of the cameras used, their image paths) by the rules of the module docstring."""
  entries = json.loads(open(json_path).read()).get("cameras", [])
  if entries and all(isinstance(c, dict) and "image" in c for c in entries):
    return list(range(len(entries))), [os.path.join(folder, c["image"]) for c in entries]
  names = sorted(os.listdir(folder))
  views = [n for n in names if re.fullmatch(r"view_\d{3,}\.png", n)]
  if views:
    used = [i for i, n in enumerate(cams.names) if n != REFERENCE]
    found = f"{len(views)} view_NNN.png files"
  else:
    used = list(range(len(cams.names)))
    views = [n for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
    found = f"{len(views)} images"
  if len(views) != len(used):
    besides = " besides the reference" if len(used) < len(cams.names) else ""
    raise LiftInputError(
      f"{json_path}: {len(used)} cameras{besides} but {found} in {folder}: give one image per "
      'camera (or an "image" key per camera)'
    )
  return used, [os.path.join(folder, n) for n in views]


def background_colour(images: np.ndarray) -> np.ndarray:
  """The median colour of the views' border rings (uint8 [3])."""
  b = BORDER
  ring = np.concatenate(
    [images[:, :b].reshape(-1, 3), images[:, -b:].reshape(-1, 3)]
    + [images[:, :, :b].reshape(-1, 3), images[:, :, -b:].reshape(-1, 3)]
  )
  return np.median(ring, axis=0).astype(np.uint8)


def read_views(folder: str) -> Views:
  """The folder's views, masks and cameras (see the module docstring)."""
  if not os.path.isdir(folder):
    raise LiftInputError(f"--views {folder}: no such folder")
  json_path = os.path.join(folder, CAMERAS_FILE)
  if not os.path.isfile(json_path):
    raise LiftInputError(
      f"{json_path}: no such file; a views folder needs its cameras (a pippo-sample output, or "
      "images with a cameras.json in our convention)"
    )
  try:
    cams = orbits.cameras_from_json(json_path)
  except (ValueError, KeyError, TypeError) as e:
    raise LiftInputError(f"{json_path}: {e}") from e
  used, files = _image_files(folder, cams, json_path)
  rgbs, alphas = zip(*(read_image(f) for f in files))
  for f, rgb in zip(files, rgbs):
    if rgb.shape != rgbs[0].shape:
      raise LiftInputError(
        f"image {f}: {rgb.shape[1]}x{rgb.shape[0]} pixels, but {files[0]} is "
        f"{rgbs[0].shape[1]}x{rgbs[0].shape[0]}: the views must share one size"
      )
  images = np.stack(rgbs)
  height, width = images.shape[1:3]
  K = cams.K[used].copy()
  if cams.image_hw is not None:
    for j, i in enumerate(used):
      K[j] = cameras.resize_intrinsics(K[j], tuple(cams.image_hw[i]), (height, width))
  background = background_colour(images)
  distance = np.linalg.norm(images.astype(np.float64) - background, axis=-1)
  masks = distance > BACKGROUND_TOL
  for j, alpha in enumerate(alphas):
    if alpha is not None:
      masks[j] = alpha > 127
  for f, m in zip(files, masks):
    if not m.any():
      raise LiftInputError(f"image {f}: nothing differs from the background colour")
  names = [cams.names[i] for i in used]
  return Views(images, masks, K, cams.E[used], names, files, background)


def write_views(folder: str, images, K, E, names) -> None:
  """A views folder `read_views` reads back: view_NNN.png and cameras.json (with image sizes)."""
  os.makedirs(folder, exist_ok=True)
  for i, image in enumerate(images):
    Image.fromarray(np.asarray(image, np.uint8)).save(os.path.join(folder, f"view_{i:03d}.png"))
  hw = np.asarray(images).shape[1:3]
  orbits.cameras_to_json(os.path.join(folder, CAMERAS_FILE), K, E, names, image_hw=hw)
