"""The synthetic studio: procedural figures seen by a calibrated camera dome.

Everything is a pure function of `(seed, index)`, so any record can be
regenerated alone (which is what makes the writer resumable):

* `dome_cameras` places C cameras all around the subject on a sphere section
  (elevations from -10 to 55 degrees, radius ~3 m, all looking at the body),
  with per-camera jitter of distance, aim, roll, focal length and principal
  point. One studio (seed) has one dome, like a real capture rig.
* `make_capture` renders one subject in one pose from every dome camera and
  returns a capture record dict (images, exact masks, K, E, head pose).
* `make_image` renders one subject from a random hand-held style camera (near,
  far, cut off by the frame, degraded) and fills the P1 metadata: person box,
  detection confidence, visibility, quality and face box.
* `write_studio` writes both kinds as ArrayRecord datasets:
  `OUT/captures/{train,test}-*.array_record` and `OUT/images/...`. Test
  subjects are the last `ceil(test_fraction * subjects)` identities. Capture
  shards hold records_per_shard / 8 records (a capture is C images).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys

import numpy as np

from pippo_jax.data_pipelines import figures, imageops, raycast, schemas, writer
from pippo_jax.geometry import cameras, orbits

_STUDIO, _IDENTITY, _POSE, _IMAGE = range(4)


@dataclasses.dataclass(frozen=True)
class StudioSettings:
  """Knobs of `pippo-data synth` (stored in each dataset's index)."""

  seed: int = 0
  subjects: int = 8
  cameras: int = 32
  resolution: int = 128
  moments: int = 1  # captures (poses) per subject
  images_per_subject: int = 16  # P1 image records per subject
  test_fraction: float = 0.125
  image_format: str = "png"
  records_per_shard: int = 64

  def split_subjects(self) -> dict[str, list[int]]:
    n_test = min(self.subjects - 1, math.ceil(self.test_fraction * self.subjects))
    n_test = max(0, n_test)
    cut = self.subjects - n_test
    return {"train": list(range(cut)), "test": list(range(cut, self.subjects))}


def look_at(eye, target, roll=0.0) -> np.ndarray:
  """World->camera E for a camera at `eye` aimed at `target` (world z up),
  rolled by `roll` radians about its optical axis."""
  E = orbits.look_at(eye, target, (0.0, 0.0, 1.0))
  E[:3] = figures.rot_z(roll) @ E[:3]
  return E


def dome_cameras(num_cameras: int, resolution: int, seed: int):
  """K [C, 3, 3], E [C, 4, 4], names of the studio's camera dome."""
  rng = np.random.default_rng([seed, _STUDIO])
  k = np.arange(num_cameras)
  azimuth = k * np.pi * (3 - np.sqrt(5)) + rng.uniform(0, 2 * np.pi)
  lo, hi = np.sin(np.deg2rad(-10)), np.sin(np.deg2rad(55))
  elevation = np.arcsin(lo + (hi - lo) * (k + 0.5) / num_cameras)
  Ks, Es = [], []
  for a, e in zip(azimuth, elevation):
    radius = 3.0 * rng.uniform(0.92, 1.08)
    eye = radius * np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)]) + np.array(
      [0, 0, 0.9]
    )
    target = np.array([0, 0, 0.95]) + rng.normal(0, 0.05, 3)
    Es.append(look_at(eye, target, roll=rng.normal(0, np.deg2rad(2))))
    f = resolution * radius / 2.25 * rng.uniform(0.95, 1.05)
    c = resolution / 2 + rng.normal(0, resolution * 0.01, 2)
    Ks.append(np.array([[f, 0, c[0]], [0, f, c[1]], [0, 0, 1]]))
  names = [f"cam{i:03d}" for i in range(num_cameras)]
  return np.stack(Ks), np.stack(Es), names


def _lights(rng):
  key = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0.5, 1.5)])
  fill = np.array([-key[0], -key[1], 0.3])
  warm = rng.uniform(0.9, 1.1, 3)
  return {
    "ambient": np.full(3, 0.25),
    "sky": np.full(3, 0.25) * warm,
    "directions": np.stack([key / np.linalg.norm(key), fill / np.linalg.norm(fill)]),
    "powers": np.stack([0.65 * warm, 0.25 * warm]),
  }


def _backdrop(rng, height, width, clutter=False):
  top, bottom = rng.uniform(0.25, 0.95, 3), rng.uniform(0.15, 0.85, 3)
  ramp = np.linspace(0, 1, height)[:, None, None]
  img = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (height, width, 3))
  if clutter:  # a few coloured blocks, like an indoor scene
    img = img.copy()
    for _ in range(rng.integers(2, 6)):
      y0, x0 = rng.integers(0, height), rng.integers(0, width)
      img[
        y0 : y0 + rng.integers(height // 8, height // 2),
        x0 : x0 + rng.integers(width // 8, width // 2),
      ] = rng.uniform(0, 1, 3)
  return np.round(img * 255).astype(np.uint8)


def subject_figure(seed: int, subject: int, moment: int, placement=True):
  """The posed figure of `subject` at `moment` (deterministic)."""
  identity = figures.sample_identity(np.random.default_rng([seed, _IDENTITY, subject]))
  rng = np.random.default_rng([seed, _POSE, subject, moment])
  pose = figures.sample_pose(rng)
  yaw = rng.uniform(0, 2 * np.pi)
  position = rng.uniform(-0.15, 0.15, 2) if placement else (0.0, 0.0)
  return figures.build_figure(identity, pose, yaw, position), rng


def render_capture_views(seed, subject, moment, K, E, resolution):
  """Renders one capture from every camera (dict of raycast.render)."""
  figure, rng = subject_figure(seed, subject, moment)
  backdrop = _backdrop(rng, resolution, resolution)
  out = raycast.render(figure["prims"], K, E, resolution, resolution, _lights(rng), backdrop)
  return figure, out


def make_capture(
  settings: StudioSettings, subject: int, moment: int, split: str, cameras=None
) -> dict:
  """A capture record dict (see `schemas`) for one subject and moment."""
  res = settings.resolution
  K, E, names = cameras or dome_cameras(settings.cameras, res, settings.seed)
  figure, out = render_capture_views(settings.seed, subject, moment, K, E, res)
  return {
    "capture_id": f"s{subject:06d}_m{moment:02d}",
    "subject_id": subject,
    "split": split,
    "camera_names": names,
    "K": K,
    "E": E,
    "images": [schemas.encode_image(im, settings.image_format) for im in out["image"]],
    "masks": [schemas.encode_image(m, "png") for m in out["mask"]],
    "head_point": figure["head_point"],
    "head_rotation": figure["head_rotation"],
  }


def _box(mask):
  """Tight (x, y, w, h) box in the `imageops` frame; zeros when empty."""
  box = imageops.mask_box(mask)
  return np.zeros(4, np.float32) if box is None else box.astype(np.float32)


def make_image(settings: StudioSettings, subject: int, k: int, split: str) -> dict:
  """An image record dict with P1 metadata, for the k-th photo of `subject`."""
  seed = settings.seed
  figure, _ = subject_figure(seed, subject, 1000 + k, placement=False)
  rng = np.random.default_rng([seed, _IMAGE, subject, k])
  width = settings.resolution
  height = int(round(width * rng.choice([1.0, 1.25])))
  azimuth, elevation = rng.uniform(0, 2 * np.pi), np.deg2rad(rng.uniform(-10, 40))
  dist = rng.uniform(2.0, 6.0)
  aim = np.array([0, 0, rng.uniform(0.3, 1.5)]) + rng.normal(0, 0.15, 3)
  eye = aim + dist * np.array(
    [np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)]
  )
  E = look_at(eye, aim, roll=rng.normal(0, np.deg2rad(4)))
  f = height * dist / rng.uniform(1.2, 3.2)
  K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]])
  out = raycast.render(
    figure["prims"],
    K[None],
    E[None],
    height,
    width,
    _lights(rng),
    _backdrop(rng, height, width, clutter=True),
  )
  image, mask, part = out["image"][0], out["mask"][0], out["part"][0]

  quality = rng.uniform(0, 1)
  if quality < 0.5:  # blur by down/up-sampling, then noise
    step = 1 + int((0.5 - quality) * 8)
    small = image[::step, ::step]
    image = np.repeat(np.repeat(small, step, 0), step, 1)[:height, :width]
    noise = rng.normal(0, (0.5 - quality) * 30, image.shape)
    image = np.clip(image + noise, 0, 255).astype(np.uint8)

  uv, depth = cameras.project_points(K, E, figure["keypoints"])
  inside = (
    (depth > 0) & (uv[:, 0] >= 0) & (uv[:, 0] <= width) & (uv[:, 1] >= 0) & (uv[:, 1] <= height)
  )
  visibility = float(inside.mean())
  box = _box(mask)
  size = min(1.0, box[3] / (0.3 * height))
  confidence = (
    0.0
    if box[3] == 0
    else float(
      np.clip(0.15 + 0.8 * visibility * size * (0.6 + 0.4 * quality) + rng.normal(0, 0.05), 0, 1)
    )
  )
  to_cam = cameras.camera_centers(E) - figure["head_point"]
  facing = figure["head_rotation"][:, 2] @ (to_cam / np.linalg.norm(to_cam))
  face_box = (
    _box(np.isin(part, figures.HEAD_PARTS) * 255) if facing > 0.3 else (np.zeros(4, np.float32))
  )
  return {
    "image_id": f"s{subject:06d}_i{k:04d}",
    "subject_id": subject,
    "split": split,
    "image": schemas.encode_image(image, settings.image_format),
    "height": height,
    "width": width,
    "person_box": box,
    "detection_confidence": confidence,
    "visibility": visibility,
    "quality": float(quality),
    "face_box": face_box,
  }


def write_studio(
  out_dir: str, settings: StudioSettings, kinds=("captures", "images"), progress_stream=None
) -> dict:
  """Writes the studio's capture and image datasets; returns their entries."""
  stream = progress_stream or sys.stderr
  meta = dataclasses.asdict(settings)
  cameras = dome_cameras(settings.cameras, settings.resolution, settings.seed)
  result = {}
  for split, subjects in settings.split_subjects().items():
    if not subjects:
      continue
    if "captures" in kinds:
      n = len(subjects) * settings.moments

      def capture(i, subjects=subjects, split=split):
        s, m = divmod(i, settings.moments)
        return schemas.encode_capture(make_capture(settings, subjects[s], m, split, cameras))

      result[f"captures/{split}"] = writer.write_split(
        os.path.join(out_dir, "captures"),
        split,
        "capture",
        n,
        capture,
        max(1, settings.records_per_shard // 8),
        meta,
        writer.Progress(f"captures/{split}", n, stream=stream),
      )
    if "images" in kinds:
      n = len(subjects) * settings.images_per_subject

      def image(i, subjects=subjects, split=split):
        s, k = divmod(i, settings.images_per_subject)
        return schemas.encode_image_record(make_image(settings, subjects[s], k, split))

      result[f"images/{split}"] = writer.write_split(
        os.path.join(out_dir, "images"),
        split,
        "image",
        n,
        image,
        settings.records_per_shard,
        meta,
        writer.Progress(f"images/{split}", n, stream=stream),
      )
  return result
