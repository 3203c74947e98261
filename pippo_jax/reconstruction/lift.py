"""Views -> a textured 3D person: fit the field, extract the mesh, write files and pictures.

`lift` fits `field` to the views (grid box from the masks' visual hull, `resolution` samples
along its longest side), extracts the mesh (`mesh.extract_mesh`) and renders the fit and the
mesh from the input cameras. `write_outputs` writes, in a folder:

  mesh.glb, mesh.ply   the mesh with vertex colours (trimesh)
  renders.png          rows: input views | the field re-rendered | the mesh, from the input cameras
  turntable.gif        the mesh turning about the cameras' up axis, lit from the camera
                       (turntable.png: 8 frames)
  lift.json            settings, box, counts, timings, PSNR of the re-renders at the input cameras
"""

import dataclasses
import json
import os
import time

import numpy as np

from pippo_jax.evaluation import metrics
from pippo_jax.geometry import cameras, orbits
from pippo_jax.inference import outputs
from pippo_jax.reconstruction import field
from pippo_jax.reconstruction import mesh as mesh_lib
from pippo_jax.reconstruction import views as views_lib

TURNTABLE_FRAMES = 24
SHADE = 0.3  # the turntable's light at the camera, to show the shape (renders.png: none)
MIN_SIDE = 128  # pictures of smaller views are drawn at this size


@dataclasses.dataclass(frozen=True)
class LiftSettings:
  steps: int = 250
  resolution: int = 64  # grid samples along the box's longest side
  rays: int = 4096
  learning_rate: float | None = None  # None: the representation's default
  representation: str = "voxel"  # or "hash" (`field`)
  seed: int = 0

  def fit_settings(self) -> field.FitSettings:
    return field.FitSettings(
      steps=self.steps,
      rays=self.rays,
      learning_rate=self.learning_rate,
      representation=self.representation,
      seed=self.seed,
    )


@dataclasses.dataclass
class Lifted:
  params: dict
  box: field.Box
  mesh: object  # trimesh.Trimesh
  renders: np.ndarray  # uint8 [V, H, W, 3], the field from the input cameras
  losses: np.ndarray
  seconds: dict


def lift(views: views_lib.Views, settings: LiftSettings, progress=None) -> Lifted:
  """Fits the views and extracts the mesh."""
  seconds = {}
  start = time.time()
  # The box allows a generated view to disagree with the others (one view in 8 may miss a
  # part); the starting density is the strict hull, which the fit may grow within the box.
  misses = len(views.K) // 8
  box = field.hull_box(views.K, views.E, views.masks, settings.resolution, misses=misses)
  hull = field.visual_hull(box, views.K, views.E, views.masks)
  params, losses = field.fit(
    views.images,
    views.masks,
    views.K,
    views.E,
    box,
    views.background,
    settings.fit_settings(),
    hull=hull,
    progress=progress,
  )
  seconds["fit"] = time.time() - start
  start = time.time()
  density, color = field.volumes(params, box)
  mesh = mesh_lib.extract_mesh(density, color, box.lo, box.voxel)
  seconds["mesh"] = time.time() - start
  height, width = views.images.shape[1:3]
  renders, _ = field.render_views(params, box, views.K, views.E, height, width, views.background)
  return Lifted(params, box, mesh, renders, losses, seconds)


def turntable_cameras(K, E, center, frames: int, side: int):
  """(K, E) of `frames` cameras circling `center` about the input cameras' up axis, at
  their mean distance and elevation, for square images of `side` pixels (same field of view as
  the first input camera's)."""
  E = cameras.as_E44(E)
  # Cameras of a dome or a turntable keep their x axis (image right) level: up is the direction
  # most nearly perpendicular to all of them, signed like the cameras' mean image-up (-y).
  right = E[:, 0, :3]
  up = np.linalg.eigh(right.T @ right)[1][:, 0]
  up *= np.sign(up @ -E[:, 1, :3].mean(0)) or 1.0
  offsets = cameras.camera_centers(E) - center
  radius = np.linalg.norm(offsets, axis=-1).mean()
  height = np.clip((offsets @ up).mean() / radius, -0.9, 0.9)
  first = offsets[0] - (offsets[0] @ up) * up
  first /= np.linalg.norm(first)
  side_axis = np.cross(up, first)
  Es = []
  for a in 2 * np.pi * np.arange(frames) / frames:
    ring = np.cos(a) * first + np.sin(a) * side_axis
    direction = np.sqrt(1 - height**2) * ring + height * up
    Es.append(orbits.look_at(center + radius * direction, center, up))
  focal = K[0, 0, 0] / (2 * K[0, 0, 2]) * side  # keep the first camera's field of view
  K_out = np.broadcast_to(cameras.make_K(focal, focal, side / 2, side / 2), (frames, 3, 3))
  return K_out.copy(), np.stack(Es)


def _grow(images: np.ndarray) -> np.ndarray:
  factor = max(1, -(-MIN_SIDE // images.shape[1]))
  return np.repeat(np.repeat(images, factor, -3), factor, -2)


def _grid(rows) -> np.ndarray:
  """Rows of equal-size images, 4-pixel white gaps."""
  gap = outputs.GAP
  lines = []
  for row in rows:
    cells = [np.pad(x, ((0, 0), (0, gap), (0, 0)), constant_values=255) for x in row]
    lines.append(
      np.pad(np.concatenate(cells, 1)[:, :-gap], ((0, gap), (0, 0), (0, 0)), constant_values=255)
    )
  return np.concatenate(lines, 0)[:-gap]


def write_outputs(folder: str, views: views_lib.Views, lifted: Lifted, settings: LiftSettings):
  """The files of the module docstring in `folder`; returns their names and the record."""
  from pippo_jax.inference import sample  # pylint: disable=g-import-not-at-top

  start = time.time()
  mesh = lifted.mesh
  mesh_lib.write_mesh(mesh, os.path.join(folder, "mesh.glb"))
  mesh_lib.write_mesh(mesh, os.path.join(folder, "mesh.ply"))
  height, width = views.images.shape[1:3]
  mesh_views = mesh_lib.render_mesh(mesh, views.K, views.E, height, width, views.background)
  sample.save_png(
    _grid([list(_grow(x)) for x in (views.images, lifted.renders, mesh_views)]),
    os.path.join(folder, "renders.png"),
  )
  side = max(MIN_SIDE, height)
  center = 0.5 * (mesh.bounds[0] + mesh.bounds[1])
  tK, tE = turntable_cameras(views.K, views.E, center, TURNTABLE_FRAMES, side)
  frames = mesh_lib.render_mesh(mesh, tK, tE, side, side, views.background, shade=SHADE)
  outputs.write_gif(os.path.join(folder, "turntable.gif"), frames)
  sample.save_png(
    _grid([list(frames[:: TURNTABLE_FRAMES // 8])]), os.path.join(folder, "turntable.png")
  )
  lifted.seconds["pictures"] = time.time() - start
  psnr = np.asarray(metrics.psnr(lifted.renders, views.images))
  record = dict(
    settings=dataclasses.asdict(settings),
    views=len(views.images),
    image_size=[int(height), int(width)],
    files=[os.path.basename(f) for f in views.files],
    background=views.background.tolist(),
    grid=dict(lo=lifted.box.lo.tolist(), voxel=lifted.box.voxel, shape=list(lifted.box.shape)),
    mesh=dict(vertices=len(mesh.vertices), faces=len(mesh.faces), bounds=mesh.bounds.tolist()),
    final_loss=float(lifted.losses[-1]),
    psnr_input_views=float(psnr.mean()),
    seconds={k: round(v, 2) for k, v in lifted.seconds.items()},
  )
  with open(os.path.join(folder, "lift.json"), "w") as f:
    json.dump(record, f, indent=1)
  names = ["mesh.glb", "mesh.ply", "renders.png", "turntable.gif", "turntable.png", "lift.json"]
  return names, record
