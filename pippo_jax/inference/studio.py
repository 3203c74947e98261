"""Held-out (or training) studio captures as sampling inputs with their ground truth.

`capture_views` turns capture N of a split into what `pippo-sample --capture` and `pippo-eval`
sample from: the capture's most frontal camera is the reference (the one a phone photo would be),
and `views` of its other cameras, evenly spread in azimuth about the head's up axis starting from
the reference's, are the targets. Views are cropped and resized by the training transform
(`data_pipelines.multiview`), so inputs and ground truth are exactly what training saw.
"""

import dataclasses

import numpy as np

from pippo_jax import errors
from pippo_jax.data_pipelines import multiview, schemas, sources
from pippo_jax.geometry import cameras
from pippo_jax.inference import scene as scene_lib


@dataclasses.dataclass
class CaptureViews:
  reference: np.ndarray  # uint8 [H, W, 3]
  scene: scene_lib.Scene
  truth: np.ndarray  # uint8 [V, H, W, 3]
  masks: np.ndarray  # uint8 [V, H, W], the person in each target view
  where: str  # the record's name, for messages


def open_split(data_cfg, split: str) -> sources.ArrayRecordSource:
  return sources.ArrayRecordSource(data_cfg.path, split)


def capture_views(data_cfg, source, index: int, views: int) -> CaptureViews:
  """Capture `index` of `source` -> reference, scene and ground truth (module docstring)."""
  if not 0 <= index < len(source):
    raise errors.InputError(
      f"capture {index}: the {source.split} split of {source.directory} has {len(source)} captures"
    )
  if not (data_cfg.normalize_scene and data_cfg.align_head):
    raise errors.InputError(
      "captures are sampled in the head frame: the config needs "
      "data.normalize_scene and data.align_head"
    )
  element = source[index]
  where = element["where"]
  rec = schemas.decode_capture(element["bytes"], where)
  transform = multiview.MultiviewTransform(data_cfg)
  K, E, head_point, head_rot, scale = transform._scene(rec, where)  # pylint: disable=protected-access
  ref = int(np.argmax(multiview.frontal_cosines(E, head_point, head_rot)))
  to_cam = (cameras.camera_centers(E) - head_point) @ head_rot
  azimuth = np.degrees(np.arctan2(to_cam[:, 0], to_cam[:, 2]))
  order = [int(c) for c in np.argsort((azimuth - azimuth[ref]) % 360) if c != ref]
  pick = np.linspace(0, len(order), min(views, len(order)), endpoint=False).astype(int)
  chosen = [ref] + [order[i] for i in pick]
  images, masks, Ks = (
    np.stack(x)
    for x in zip(*[transform._view(rec, c, where) for c in chosen])  # pylint: disable=protected-access
  )
  names = [str(rec["camera_names"][c]) for c in chosen]
  res = images.shape[1]
  sc = scene_lib.Scene(Ks[0], E[ref], Ks[1:], E[chosen[1:]], names[1:], res, scale)
  return CaptureViews(images[0], sc, images[1:], masks[1:], where)
