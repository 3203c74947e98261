"""What a sampling run writes: per-view PNGs, a contact sheet, a turntable GIF (and MP4), and an
output folder that appears whole or not at all."""

import contextlib
import math
import os
import shutil
import tempfile

import numpy as np
from PIL import Image, ImageDraw

from pippo_jax.inference import sample as sample_lib

GAP = 4
MIN_CELL = 128  # pixels


def _label(image: np.ndarray, text: str) -> np.ndarray:
  """`text` in the top-left corner on a dark strip (PIL's built-in font)."""
  im = Image.fromarray(image)
  draw = ImageDraw.Draw(im)
  box = draw.textbbox((2, 1), text)
  draw.rectangle((0, 0, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
  draw.text((2, 1), text, fill=(255, 255, 255))
  return np.asarray(im)


def contact_sheet(
  reference: np.ndarray, views: np.ndarray, names=None, truth=None, max_columns: int = 8
) -> np.ndarray:
  """Reference first, then the views, in rows of equal length up to `max_columns`; with `truth`,
  each row of views is followed by the row of ground-truth views. Views under MIN_CELL pixels are
  enlarged (nearest neighbour, an integer factor) so that the labels fit."""
  factor = math.ceil(MIN_CELL / reference.shape[0])
  grow = lambda x: np.repeat(np.repeat(np.asarray(x), factor, -3), factor, -2)
  reference, views = grow(reference), grow(views)
  truth = None if truth is None else grow(truth)
  columns = math.ceil((len(views) + 1) / math.ceil((len(views) + 1) / max_columns))
  side = views.shape[1]
  names = names or [""] * len(views)
  cells = [_label(reference, "reference")]
  cells += [_label(v, n) if n else v for v, n in zip(views, names)]
  rows = []
  blank = np.full_like(views[0], 255)
  for start in range(0, len(cells), columns):
    row = cells[start : start + columns]
    rows.append(row + [blank] * (columns - len(row)))
    if truth is not None:
      truth_cells = [blank] if start == 0 else []
      first = max(0, start - 1)
      truth_cells += [_label(t, "truth") for t in truth[first : start + columns - 1]]
      rows.append(truth_cells + [blank] * (columns - len(truth_cells)))
  gap = np.full((side, GAP, 3), 255, np.uint8)
  lines = [np.concatenate([x for c in row for x in (c, gap)][:-1], 1) for row in rows]
  sep = np.full((GAP, lines[0].shape[1], 3), 255, np.uint8)
  return np.concatenate([x for line in lines for x in (line, sep)][:-1], 0)


def write_gif(path: str, frames: np.ndarray, fps: float = 8.0) -> None:
  images = [Image.fromarray(f) for f in np.asarray(frames)]
  images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)


def write_mp4(path: str, frames: np.ndarray, fps: float = 8.0) -> bool:
  """MP4 through imageio's ffmpeg plugin; False (nothing written) when it is not installed."""
  try:
    import imageio.v2 as imageio  # pylint: disable=g-import-not-at-top
    import imageio_ffmpeg  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  side = frames.shape[1]
  pad = (-side) % 16  # codecs want sides divisible by 16 (macro blocks)
  frames = np.pad(np.asarray(frames), ((0, 0), (0, pad), (0, pad), (0, 0)), constant_values=255)
  imageio.mimwrite(path, list(frames), fps=fps, macro_block_size=1)
  return True


@contextlib.contextmanager
def staged_folder(out: str, overwrite: bool = False):
  """Yields a temporary sibling of `out` to write into; on success it becomes `out`, on any error
  it is removed, so `out` is either complete or untouched."""
  out = os.path.abspath(out)
  if os.path.isfile(out):
    raise FileExistsError(f"--out {out} is a file")
  if os.path.isdir(out) and os.listdir(out) and not overwrite:
    raise FileExistsError(f"--out {out} exists and is not empty; remove it or pass --overwrite")
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", suffix=".partial", dir=parent)
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if os.path.isdir(out):
    shutil.rmtree(out)
  os.rename(tmp, out)


def write_views(folder: str, reference, views, names, truth=None, fps: float = 8.0) -> list[str]:
  """reference.png, view_NNN.png (and truth_NNN.png), contact_sheet.png, turntable.gif (and
  turntable.mp4) in `folder`; returns the file names written."""
  written = []

  def png(name, image):
    sample_lib.save_png(image, os.path.join(folder, name))
    written.append(name)

  png("reference.png", reference)
  for i, view in enumerate(views):
    png(f"view_{i:03d}.png", view)
  if truth is not None:
    for i, view in enumerate(truth):
      png(f"truth_{i:03d}.png", view)
  png("contact_sheet.png", contact_sheet(reference, views, names, truth))
  write_gif(os.path.join(folder, "turntable.gif"), views, fps)
  written.append("turntable.gif")
  if write_mp4(os.path.join(folder, "turntable.mp4"), views, fps):
    written.append("turntable.mp4")
  return written
