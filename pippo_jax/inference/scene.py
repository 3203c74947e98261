"""The cameras of a sampling run, and the batch the sampler reads.

Frame: the training data's normalised head frame (`data.normalize_scene` with `align_head`, which
every stage config uses): the head at the origin, x to the subject's left, y up, z out of the
face, and the mean camera-to-head distance `data.scene_distance`. Spatial Anchors are drawn
there, with the config's marker sizes times `anchor_scale` (normalised units per metre, as the
training transform does).

A photo comes with no calibration, so `photo_scene` assumes a standing person photographed like a
studio capture: a camera CAMERA_DISTANCE_M metres away at the head's height (or `elevation_deg`
above it), in front of the face, and a person PERSON_HEIGHT_M tall. The focal length makes that
height fill the person's box in the prepared reference, and the principal point is the head's
pixel (the head centre HEAD_BELOW_TOP of the person's height below the top of the box, in the
middle of the top rows of the mask), so the camera looks at the head as the orbit cameras do.
The target cameras circle the head at the same distance with the same intrinsics (a turntable,
`geometry.orbits`), or come from a cameras JSON in the head frame.

Cameras JSON (`write_cameras` / `read_cameras`): `geometry.orbits`' layout, plus a camera named
"reference" for the reference view (optional when reading: without it the photo's camera is
used) and an optional "anchor_scale".
"""

import dataclasses
import json
import pathlib

import numpy as np

from pippo_jax import errors
from pippo_jax.geometry import anchors, cameras, orbits, plucker

CAMERA_DISTANCE_M = 3.0  # the synthetic studio's dome radius; typical of capture domes
PERSON_HEIGHT_M = 1.7
HEAD_BELOW_TOP = 0.07  # head centre below the top of the person, fraction of the height
REFERENCE = "reference"


@dataclasses.dataclass
class Scene:
  """Reference and target cameras in the head frame, for images of `resolution` pixels."""

  ref_K: np.ndarray  # [3, 3]
  ref_E: np.ndarray  # [4, 4]
  K: np.ndarray  # [V, 3, 3]
  E: np.ndarray  # [V, 4, 4]
  names: list[str]
  resolution: int
  anchor_scale: float  # normalised units per metre (multiplies the anchor marker sizes)

  @property
  def num_views(self) -> int:
    return len(self.K)


def photo_camera(person_box, resolution: int, mask, *, distance: float, elevation_deg: float = 0):
  """(K, E, anchor_scale) of the camera that took a prepared photo (module docstring)."""
  scale = distance / CAMERA_DISTANCE_M
  if person_box is None:  # no mask: the person is assumed to fill the crop, centred
    height = resolution / 1.2
    top, column = (resolution - height) / 2, resolution / 2
  else:
    x, top, w, height = (float(v) for v in person_box)
    rows = mask[int(top) : int(top + max(1.0, 2 * HEAD_BELOW_TOP * height))] > 127
    cols = np.flatnonzero(rows.any(0))
    column = (cols.mean() + 0.5) if len(cols) else x + w / 2
  focal = height * distance / (PERSON_HEIGHT_M * scale)
  _, E = orbits.turntable_cameras(
    1, distance, elevations_deg=(elevation_deg,), focal=focal, image_hw=(resolution, resolution)
  )
  K = cameras.make_K(focal, focal, column, top + HEAD_BELOW_TOP * height)
  return K, E[0], scale


def photo_scene(
  ref_K,
  ref_E,
  anchor_scale: float,
  resolution: int,
  *,
  num_views: int,
  distance: float,
  elevations_deg=(0.0,),
  start_azimuth_deg: float = 0.0,
) -> Scene:
  """A turntable around the head with the reference camera's intrinsics."""
  _, E = orbits.turntable_cameras(
    num_views,
    distance,
    elevations_deg=tuple(elevations_deg),
    focal=float(ref_K[0, 0]),
    image_hw=(resolution, resolution),
    start_azimuth_deg=start_azimuth_deg,
  )
  K = np.broadcast_to(ref_K, (len(E), 3, 3)).copy()
  names = [
    f"el{e:+03.0f}_az{start_azimuth_deg + 360 * i / num_views:05.1f}"
    for e in elevations_deg
    for i in range(num_views)
  ]
  return Scene(ref_K, ref_E, K, E, names, resolution, anchor_scale)


def write_cameras(path, scene: Scene) -> None:
  """The scene as a cameras JSON (reference first)."""
  K = np.concatenate([scene.ref_K[None], scene.K])
  E = np.concatenate([scene.ref_E[None], scene.E])
  orbits.cameras_to_json(
    path,
    K,
    E,
    [REFERENCE, *scene.names],
    image_hw=(scene.resolution, scene.resolution),
    extra={"anchor_scale": scene.anchor_scale, "frame": "head"},
  )


def read_cameras(path, resolution: int, photo_camera_=None) -> Scene:
  """A cameras JSON (any `orbits.cameras_from_json` format) -> Scene at `resolution`.

  Intrinsics are rescaled from each camera's image size (when the file gives one) to the square
  `resolution`. Without a camera named "reference", `photo_camera_` = (K, E, anchor_scale) gives
  the reference.
  """
  try:
    return _read_cameras(path, resolution, photo_camera_)
  except (ValueError, KeyError, TypeError) as e:  # JSON and validation errors name the camera
    raise errors.InputError(f"cameras {path}: {e}") from e


def _read_cameras(path, resolution: int, photo_camera_) -> Scene:
  cams = orbits.cameras_from_json(path)
  K = cams.K.copy()
  if cams.image_hw is not None:
    for i, (h, w) in enumerate(cams.image_hw):
      if h != w:
        raise ValueError(
          f"{path}: camera {cams.names[i]!r} is {w}x{h}; the model makes square views "
          "(crop the cameras to squares first)"
        )
      K[i] = cameras.resize_intrinsics(K[i], (h, w), (resolution, resolution))
  data = json.loads(pathlib.Path(path).read_text())
  names = list(cams.names)
  scale = data.get("anchor_scale") if isinstance(data, dict) else None
  if REFERENCE in names:
    i = names.index(REFERENCE)
    ref_K, ref_E = K[i], cams.E[i]
    keep = [j for j in range(len(names)) if j != i]
  elif photo_camera_ is not None:
    ref_K, ref_E, photo_scale = photo_camera_
    scale = photo_scale if scale is None else scale
    keep = list(range(len(names)))
  else:
    raise ValueError(f"{path}: no camera named {REFERENCE!r}")
  if not keep:
    raise ValueError(f"{path}: no target cameras besides the reference")
  scale = 1.0 / CAMERA_DISTANCE_M if scale is None else float(scale)
  return Scene(ref_K, ref_E, K[keep], cams.E[keep], [names[j] for j in keep], resolution, scale)


def scene_batch(ref_image: np.ndarray, scene: Scene, data_cfg, *, controls: bool) -> dict:
  """The sampler's batch (one example; keys as in `data_pipelines.schemas`)."""
  res = scene.resolution
  K = np.concatenate([scene.ref_K[None], scene.K])
  E = np.concatenate([scene.ref_E[None], scene.E])
  pose = cameras.camera_pose_16(E).astype(np.float32)
  batch = {"ref_image": ref_image, "ref_cam_pose": pose[0], "target_cam_pose": pose[1:]}
  if controls:
    rays = plucker.plucker_rays(K, E, res, res, dtype=np.float32)
    sizes = {k: float(v) * scene.anchor_scale for k, v in data_cfg.anchor.items()}
    marks = anchors.render_spatial_anchors(
      K, E, np.zeros(3), np.eye(3), res, res, names=[REFERENCE, *scene.names], **sizes
    )
    batch.update(
      ref_plucker=rays[0], target_plucker=rays[1:], ref_anchor=marks[0], target_anchor=marks[1:]
    )
  return {k: np.asarray(v)[None] for k, v in batch.items()}
