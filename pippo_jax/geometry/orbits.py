"""Camera paths for sampling: turntables around the head, camera lists in JSON.

Turntable: cameras on circles around the head point, all looking at it, with
"up" the head's y axis (head frame convention in normalize.py). A camera at
azimuth a and elevation e sits at

  head_point + radius (cos e (cos a z_head + sin a x_head) + sin e y_head),

so azimuth 0 faces the subject (in front of the face) and positive azimuths turn
towards the subject's left (a right-handed turn about y_head). Views are ordered
elevation-major, azimuths evenly spaced by 360 / num_views degrees.

JSON: `cameras_to_json` writes {"convention": "opencv_world_to_camera",
"cameras": [{"name", "K", "E", "height", "width"}]} (row-major nested lists).
`cameras_from_json` reads that, the authors' KRT calibration files ({"KRT": ...})
and NeRF/Blender "transforms.json" files (OpenGL camera-to-world
"transform_matrix", intrinsics from fl_x/fl_y/cx/cy or camera_angle_x and w/h).
Every camera read is validated; errors name the camera.
"""

import json
import pathlib
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from pippo_jax.geometry import cameras


def look_at(eye, target, up) -> np.ndarray:
  """E (4x4, OpenCV) of a camera at eye looking at target, image-up along up."""
  eye, target, up = (np.asarray(v, np.float64) for v in (eye, target, up))
  forward = target - eye
  right = np.cross(forward, up)
  if np.linalg.norm(forward) < 1e-12 or np.linalg.norm(right) < 1e-9 * np.linalg.norm(forward):
    raise ValueError(
      f"look_at: eye {eye.tolist()} must differ from target and "
      f"the view direction must not be parallel to up."
    )
  z = forward / np.linalg.norm(forward)
  x = right / np.linalg.norm(right)
  R = np.stack([x, np.cross(z, x), z])  # rows: camera x (right), y (down), z
  return cameras.make_E(R, -R @ eye)


def turntable_cameras(
  num_views: int,
  radius: float,
  head_point=(0.0, 0.0, 0.0),
  head_rotation=None,
  *,
  elevations_deg: Sequence[float] = (0.0,),
  image_hw=(512, 512),
  fov_deg: float | None = 30.0,
  focal: float | None = None,
  start_azimuth_deg: float = 0.0,
):
  """A turntable of num_views cameras per elevation -> (K [M, 3, 3], E [M, 4, 4]).

  Args:
    num_views: cameras per circle.
    radius: distance from the head point (world units).
    head_point, head_rotation: the head frame (identity rotation: world y up,
      world z out of the face).
    elevations_deg: one circle per elevation, in (-90, 90).
    image_hw: image size (H, W); the principal point is its centre (W/2, H/2).
    fov_deg: vertical field of view, used when focal (pixels) is not given.
    start_azimuth_deg: azimuth of the first camera of each circle.
  """
  if num_views < 1 or not radius > 0:
    raise ValueError(f"need num_views >= 1 and radius > 0, got {num_views}, {radius}.")
  if any(abs(e) >= 90 for e in elevations_deg):
    raise ValueError(f"elevations must be in (-90, 90), got {elevations_deg}.")
  H = np.eye(3) if head_rotation is None else np.asarray(head_rotation, np.float64)
  center = np.asarray(head_point, np.float64).reshape(3)
  x_axis, y_axis, z_axis = H[:, 0], H[:, 1], H[:, 2]
  height, width = image_hw
  if focal is None:
    if fov_deg is None or not 0 < fov_deg < 180:
      raise ValueError(
        f"give focal (pixels) or fov_deg in (0, 180), got focal={focal}, fov_deg={fov_deg}."
      )
    focal = 0.5 * height / np.tan(np.radians(fov_deg) / 2)
  azimuths = np.radians(start_azimuth_deg + 360.0 * np.arange(num_views) / num_views)
  Es = []
  for elevation in np.radians(np.asarray(elevations_deg, np.float64)):
    for azimuth in azimuths:
      direction = (
        np.cos(elevation) * (np.cos(azimuth) * z_axis + np.sin(azimuth) * x_axis)
        + np.sin(elevation) * y_axis
      )
      Es.append(look_at(center + radius * direction, center, y_axis))
  E = np.stack(Es)
  K = np.broadcast_to(cameras.make_K(focal, focal, width / 2, height / 2), (len(Es), 3, 3)).copy()
  return K, E


class CameraList(NamedTuple):
  """Cameras read from a file: K [N, 3, 3], E [N, 4, 4], names, image_hw [N, 2]."""

  K: np.ndarray
  E: np.ndarray
  names: list[str]
  image_hw: np.ndarray | None


def cameras_to_json(
  path, K, E, names: Sequence[str] | None = None, image_hw=None, extra: dict | None = None
) -> None:
  """Writes cameras in this module's JSON layout (see the top); `extra` adds top-level keys."""
  K, E = cameras.validate_cameras(K, E, names)
  K, E = K.reshape(-1, 3, 3), E.reshape(-1, 4, 4)
  names = [str(n) for n in names] if names is not None else [str(i) for i in range(len(K))]
  hw = None if image_hw is None else np.broadcast_to(np.asarray(image_hw, int), (len(K), 2))
  entries = []
  for i, (name, k, e) in enumerate(zip(names, K, E)):
    entry = {"name": name, "K": k.tolist(), "E": e.tolist()}
    if hw is not None:
      entry["height"], entry["width"] = int(hw[i, 0]), int(hw[i, 1])
    entries.append(entry)
  data = {"convention": "opencv_world_to_camera", **(extra or {}), "cameras": entries}
  text = json.dumps(data, indent=1)
  pathlib.Path(path).write_text(text)


def cameras_from_json(path) -> CameraList:
  """Reads our JSON layout, a KRT calibration, or a NeRF transforms.json."""
  data = json.loads(pathlib.Path(path).read_text())
  if isinstance(data, dict) and "KRT" in data:
    K, E, names = cameras.krt_to_KE(data)
    return CameraList(K, E, names, None)
  if isinstance(data, dict) and "frames" in data:
    return _from_nerf(data)
  if not (isinstance(data, dict) and "cameras" in data):
    raise ValueError(f"{path}: expected a JSON object with 'cameras', 'KRT' or 'frames'.")
  convention = data.get("convention", "opencv_world_to_camera")
  if convention != "opencv_world_to_camera":
    raise ValueError(f"{path}: unsupported convention {convention!r}.")
  entries = data["cameras"]
  names = [str(c.get("name", i)) for i, c in enumerate(entries)]
  for name, c in zip(names, entries):
    if "K" not in c or "E" not in c:
      raise ValueError(f"{path}: camera {name!r} needs both 'K' and 'E'.")
  K = np.array([c["K"] for c in entries], np.float64)
  E = cameras.as_E44(np.array([c["E"] for c in entries], np.float64))
  cameras.validate_cameras(K, E, names)
  hw = None
  if all("height" in c and "width" in c for c in entries):
    hw = np.array([[c["height"], c["width"]] for c in entries], int)
  return CameraList(K, E, names, hw)


def _from_nerf(data) -> CameraList:
  """NeRF/Blender transforms.json: OpenGL camera-to-world + shared intrinsics."""
  Ks, Es, names, hws = [], [], [], []
  for i, frame in enumerate(data["frames"]):
    get = lambda key: frame.get(key, data.get(key))
    name = str(frame.get("file_path", i))
    w, h = get("w"), get("h")
    if w is None or h is None:
      raise ValueError(f"camera {name!r}: transforms.json needs 'w' and 'h'.")
    fx, fy = get("fl_x"), get("fl_y")
    if fx is None:
      if get("camera_angle_x") is None:
        raise ValueError(f"camera {name!r}: needs 'fl_x' or 'camera_angle_x'.")
      fx = 0.5 * w / np.tan(0.5 * get("camera_angle_x"))
    fy = fx if fy is None else fy
    cx = get("cx") if get("cx") is not None else w / 2
    cy = get("cy") if get("cy") is not None else h / 2
    Ks.append(cameras.make_K(fx, fy, cx, cy))
    Es.append(cameras.opengl_c2w_to_opencv_E(np.asarray(frame["transform_matrix"], np.float64)))
    names.append(name)
    hws.append((int(h), int(w)))
  K, E = np.stack(Ks), np.stack(Es)
  cameras.validate_cameras(K, E, names)
  return CameraList(K, E, names, np.array(hws, int))
