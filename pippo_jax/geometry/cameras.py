"""Cameras: the one convention used everywhere in pippo_jax.

Camera frame (OpenCV): x right, y down, z forward (the optical axis, into the scene).

Extrinsics E (4x4, world -> camera): X_cam = R X_world + t, E = [[R, t], [0, 0, 0, 1]],
R a rotation (orthonormal, det +1). The camera centre is o = -R^T t; the rows of R are
the camera's x, y, z axes expressed in world coordinates.

Intrinsics K (3x3, pixels): [[fx, s, cx], [0, fy, cy], [0, 0, 1]], fx, fy > 0.

Pixels: continuous coordinates (u, v), u along columns (right), v along rows (down).
The image's top-left corner is (0, 0); the pixel in row i, column j covers
[j, j+1) x [i, i+1) and its centre is (j + 0.5, i + 0.5) (the COLMAP convention).
An H x W image spans [0, W] x [0, H]; its exact centre is (W/2, H/2).

Projection: P = K [I | 0] E = K [R | t] (3x4); (u w, v w, w) = P (X, 1) with depth
w = z_cam > 0 in front of the camera.

camera_pose_16: the 16-d camera pose fed to Pippo's cam_mlp is a 4x4 matrix flattened
row-major (C order; torch `.flatten()` / `.reshape(16)` order). The authors' release
does not say which matrix: its `latent_diffusion/data.py` only loads precomputed
`cam_pose` arrays from its sample .npy files (next to `cam_intrin` and `cam_extrin`,
the latter the world->camera [R|t] that `scripts/pippo/reprojection_error.py`
multiplies as K @ E), and its configs name the transform
"flatten__per_camera__no_ref". We flatten E itself (world->camera) by default;
`kind="camera_to_world"` flattens E^-1 instead. Translations are in world units, so
normalise the scene (`normalize.py`) before feeding either to the model.

Arrays are float64 NumPy, batched over leading axes: K [..., 3, 3], E [..., 4, 4]
(most functions also accept E as [..., 3, 4]). Converters at the edges:
  * OpenGL / Blender / NeRF camera-to-world (x right, y up, z backward),
  * COLMAP (Hamilton quaternion qw qx qy qz + t, world -> camera, OpenCV axes),
  * the KRT JSON layout of the authors' captures (Goliath / Ava-256
    `camera_calibration.json`): {"KRT": [{"cameraId", "K": K^T, "T": E^T}, ...]},
    i.e. K stored transposed and "T" the transposed 4x4 world->camera matrix; their frames
    are MUGSY_FRAME_HW (4096 rows x 2668 columns, portrait), and `frame_to_square_intrinsics`
    gives K for such a frame cropped to its centred square and resized (what the authors'
    release does to Ava-256 views).
"""

from collections.abc import Sequence

import numpy as np

_OPENGL_FLIP = np.diag([1.0, -1.0, -1.0])


def as_E44(E) -> np.ndarray:
  """E as float64 [..., 4, 4]; a [..., 3, 4] [R|t] gets the row (0, 0, 0, 1)."""
  E = np.asarray(E, np.float64)
  if E.shape[-2:] == (4, 4):
    return E
  if E.shape[-2:] != (3, 4):
    raise ValueError(f"E must have shape [..., 4, 4] or [..., 3, 4], got {E.shape}.")
  bottom = np.broadcast_to([0.0, 0.0, 0.0, 1.0], E.shape[:-2] + (1, 4))
  return np.concatenate([E, bottom], axis=-2)


def make_E(R, t) -> np.ndarray:
  """E [..., 4, 4] from a rotation R [..., 3, 3] and translation t [..., 3]."""
  R, t = np.asarray(R, np.float64), np.asarray(t, np.float64)
  return as_E44(np.concatenate([R, t[..., None]], axis=-1))


def make_K(fx, fy, cx, cy, skew=0.0) -> np.ndarray:
  """K [..., 3, 3] from focal lengths and principal point (pixels)."""
  fx, fy, cx, cy, skew = np.broadcast_arrays(
    *(np.asarray(v, np.float64) for v in (fx, fy, cx, cy, skew))
  )
  zero, one = np.zeros_like(fx), np.ones_like(fx)
  return np.stack(
    [np.stack([fx, skew, cx], -1), np.stack([zero, fy, cy], -1), np.stack([zero, zero, one], -1)],
    -2,
  )


def rigid_inverse(T) -> np.ndarray:
  """Inverse of rigid 4x4 transforms [..., 4, 4] (R^T, -R^T t)."""
  T = as_E44(T)
  R, t = T[..., :3, :3], T[..., :3, 3]
  Rt = np.swapaxes(R, -1, -2)
  return make_E(Rt, -np.einsum("...ij,...j->...i", Rt, t))


def _camera_names(names, count: int):
  if names is None:
    return [str(i) for i in range(count)]
  names = [str(n) for n in names]
  if len(names) != count:
    raise ValueError(f"got {len(names)} camera names for {count} cameras.")
  return names


def validate_cameras(K, E, names: Sequence[str] | None = None, *, atol: float = 1e-4):
  """Checks intrinsics and extrinsics; returns (K, E) as float64, E [..., 4, 4].

  Raises ValueError naming the first bad camera (by `names`, else by flat index)
  when K or E holds NaN/inf, K is not an invertible upper-triangular pixel
  intrinsic matrix with positive focal lengths, or E is not rigid (R orthonormal
  with det +1 within atol, bottom row (0, 0, 0, 1)).
  """
  K, E = np.asarray(K, np.float64), as_E44(E)
  if K.shape[-2:] != (3, 3):
    raise ValueError(f"K must have shape [..., 3, 3], got {K.shape}.")
  batch = np.broadcast_shapes(K.shape[:-2], E.shape[:-2])
  Kf = np.broadcast_to(K, batch + (3, 3)).reshape(-1, 3, 3)
  Ef = np.broadcast_to(E, batch + (4, 4)).reshape(-1, 4, 4)
  names = _camera_names(names, Kf.shape[0])
  checks = _camera_checks(Kf, Ef, atol)
  failed = np.stack([bad for bad, _ in checks])  # [check, camera], all cameras at once
  if failed.any():
    cam = int(np.argmax(failed.any(0)))  # the first bad camera and its first failed check
    raise ValueError(f"camera {names[cam]!r}: {checks[int(np.argmax(failed[:, cam]))][1](cam)}")
  return K, E


def _camera_checks(Kf, Ef, atol):
  """[(which of the cameras Kf [N, 3, 3], Ef [N, 4, 4] fail, camera index -> message)], in the
  order the problems are reported."""
  with np.errstate(invalid="ignore"):  # non-finite cameras fail the first checks
    finite_K = np.isfinite(Kf).all((-2, -1))
    finite_E = np.isfinite(Ef).all((-2, -1))
    R = Ef[:, :3, :3]
    deviation = np.abs(R @ np.swapaxes(R, -1, -2) - np.eye(3)).max((-2, -1), initial=0.0)
    det = np.linalg.det(R)
    upper = (np.abs(Kf[:, 1, 0]) <= 1e-9 * np.abs(Kf).max((-2, -1))) & np.all(
      np.abs(Kf[:, 2] - [0, 0, 1]) <= 1e-9, -1
    )
    return [
      (~finite_K, lambda i: f"K contains NaN or inf: {Kf[i].tolist()}."),
      (
        finite_K & ~upper,
        lambda i: (
          f"K must be [[fx, s, cx], [0, fy, cy], [0, 0, 1]], got {Kf[i].tolist()} "
          "(a transposed K from a KRT file? use krt_to_KE)."
        ),
      ),
      (
        finite_K & upper & ~((Kf[:, 0, 0] > 0) & (Kf[:, 1, 1] > 0)),
        lambda i: (
          f"K is not invertible or has non-positive focal lengths (fx={Kf[i, 0, 0]:g}, "
          f"fy={Kf[i, 1, 1]:g}); check the calibration or the crop that produced it."
        ),
      ),
      (~finite_E, lambda i: f"E contains NaN or inf: {Ef[i].tolist()}."),
      (
        finite_E & ~np.all(np.abs(Ef[:, 3] - [0, 0, 0, 1]) <= 1e-9, -1),
        lambda i: f"E's bottom row must be (0, 0, 0, 1), got {Ef[i, 3].tolist()}.",
      ),
      (
        finite_E & (deviation > atol),
        lambda i: (
          f"E is not rigid: |R R^T - I| = {deviation[i]:.3g} > {atol:g} (scaled or sheared "
          "rotation); E must map world to camera as [R | t]."
        ),
      ),
      (
        finite_E & (det < 0),
        lambda i: (
          "E's rotation has det -1 (a reflection): the camera is left-handed; "
          "convert OpenGL/Blender cameras with opengl_c2w_to_opencv_E."
        ),
      ),
    ]


def projection_matrix(K, E) -> np.ndarray:
  """P = K [I | 0] E, [..., 3, 4]."""
  return np.asarray(K, np.float64) @ as_E44(E)[..., :3, :]


def camera_centers(E) -> np.ndarray:
  """Camera centres o = -R^T t in world coordinates, [..., 3]."""
  return rigid_inverse(E)[..., :3, 3]


def world_to_camera(E, X) -> np.ndarray:
  """Points X [..., N, 3] in camera coordinates, R X + t."""
  E = as_E44(E)
  return (
    np.einsum("...ij,...nj->...ni", E[..., :3, :3], np.asarray(X, np.float64)) + E[..., None, :3, 3]
  )


def project_points(K, E, X):
  """Projects world points X [..., N, 3]; returns (uv [..., N, 2], depth [..., N]).

  depth is z_cam; points with depth <= 0 are behind the camera and their uv is
  meaningless (check depth). Pixel coordinates follow the module convention.
  """
  Xc = world_to_camera(E, X)
  x = np.einsum("...ij,...nj->...ni", np.asarray(K, np.float64), Xc)
  with np.errstate(divide="ignore", invalid="ignore"):
    uv = x[..., :2] / x[..., 2:3]
  return uv, Xc[..., 2]


def crop_and_resize_intrinsics(K, box_xywh, out_hw) -> np.ndarray:
  """K for the image cropped to box (x0, y0, w, h) and resized to out_hw (H, W).

  Exact for any resampler that maps the box's edges onto the output's edges
  (PIL, jax.image.resize, cv2.resize(INTER_AREA/LINEAR)): u' = (u - x0) W / w.
  The box may extend past the image (padding) and may have any aspect ratio.
  """
  K = np.asarray(K, np.float64)
  box = np.asarray(box_xywh, np.float64)
  batch = np.broadcast_shapes(K.shape[:-2], box.shape[:-1])
  x0, y0, w, h = np.moveaxis(np.broadcast_to(box, batch + (4,)), -1, 0)
  if np.any(w <= 0) or np.any(h <= 0):
    raise ValueError(f"crop box must have positive width and height, got {box_xywh}.")
  K = np.broadcast_to(K, batch + (3, 3)).copy()
  K[..., 0, 2] -= x0
  K[..., 1, 2] -= y0
  K[..., 0, :] *= (out_hw[1] / w)[..., None]
  K[..., 1, :] *= (out_hw[0] / h)[..., None]
  return K


def resize_intrinsics(K, in_hw, out_hw) -> np.ndarray:
  """K for a whole image of size in_hw resized to out_hw."""
  return crop_and_resize_intrinsics(K, (0.0, 0.0, in_hw[1], in_hw[0]), out_hw)


def camera_pose_16(E, kind: str = "world_to_camera") -> np.ndarray:
  """The flattened 4x4 camera pose [..., 16], float32, row-major (see the top)."""
  if kind not in ("world_to_camera", "camera_to_world"):
    raise ValueError(f"kind must be 'world_to_camera' or 'camera_to_world', got {kind!r}.")
  M = as_E44(E) if kind == "world_to_camera" else rigid_inverse(E)
  return M.reshape(M.shape[:-2] + (16,)).astype(np.float32)


# --- OpenGL / Blender / NeRF --------------------------------------------------


def opengl_c2w_to_opencv_E(c2w) -> np.ndarray:
  """OpenGL/Blender camera-to-world (x right, y up, z back) -> OpenCV E."""
  c2w = as_E44(c2w).copy()
  c2w[..., :3, :3] = c2w[..., :3, :3] @ _OPENGL_FLIP
  return rigid_inverse(c2w)


def opencv_E_to_opengl_c2w(E) -> np.ndarray:
  """OpenCV E -> OpenGL/Blender camera-to-world."""
  c2w = rigid_inverse(E)
  c2w[..., :3, :3] = c2w[..., :3, :3] @ _OPENGL_FLIP
  return c2w


# --- COLMAP -------------------------------------------------------------------


def quaternion_to_rotation(q) -> np.ndarray:
  """Hamilton unit quaternions (w, x, y, z) [..., 4] -> rotations [..., 3, 3]."""
  q = np.asarray(q, np.float64)
  q = q / np.linalg.norm(q, axis=-1, keepdims=True)
  w, x, y, z = np.moveaxis(q, -1, 0)
  return np.stack(
    [
      np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
      np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
      np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ],
    -2,
  )


def rotation_to_quaternion(R) -> np.ndarray:
  """Rotations [..., 3, 3] -> Hamilton quaternions (w, x, y, z), w >= 0.

  Takes the eigenvector of the largest eigenvalue of Bar-Itzhack's symmetric
  4x4 matrix, which is robust for every rotation (also near 180 degrees).
  """
  R = np.asarray(R, np.float64)
  r = lambda i, j: R[..., i, j]
  trace = r(0, 0) + r(1, 1) + r(2, 2)
  sym = lambda i, j: r(i, j) + r(j, i)
  skew = [r(2, 1) - r(1, 2), r(0, 2) - r(2, 0), r(1, 0) - r(0, 1)]
  m = (
    np.stack(
      [
        np.stack([2 * r(0, 0) - trace, sym(0, 1), sym(0, 2), skew[0]], -1),
        np.stack([sym(0, 1), 2 * r(1, 1) - trace, sym(1, 2), skew[1]], -1),
        np.stack([sym(0, 2), sym(1, 2), 2 * r(2, 2) - trace, skew[2]], -1),
        np.stack([skew[0], skew[1], skew[2], trace], -1),
      ],
      -2,
    )
    / 3.0
  )
  _, vectors = np.linalg.eigh(m)
  xyzw = vectors[..., :, -1]
  q = np.concatenate([xyzw[..., 3:], xyzw[..., :3]], axis=-1)
  return q * np.where(q[..., :1] < 0, -1.0, 1.0)


def colmap_to_E(qvec, tvec) -> np.ndarray:
  """COLMAP image pose (QW QX QY QZ, TX TY TZ; world -> camera) -> E."""
  return make_E(quaternion_to_rotation(qvec), tvec)


def E_to_colmap(E):
  """E -> (qvec (w, x, y, z) with w >= 0, tvec) as in COLMAP's images.txt."""
  E = as_E44(E)
  return rotation_to_quaternion(E[..., :3, :3]), E[..., :3, 3].copy()


def colmap_camera_to_K(model: str, params) -> np.ndarray:
  """K from a COLMAP camera (cameras.txt): SIMPLE_PINHOLE or PINHOLE.

  COLMAP uses the same pixel-centre convention as this module. Distortion models
  (SIMPLE_RADIAL, OPENCV, ...) are accepted only with all-zero distortion.
  """
  p = np.asarray(params, np.float64)
  simple = {"SIMPLE_PINHOLE": 3, "SIMPLE_RADIAL": 4, "RADIAL": 5}
  full = {"PINHOLE": 4, "OPENCV": 8, "FULL_OPENCV": 12}
  if model in simple and p.size == simple[model] and not np.any(p[3:]):
    return make_K(p[0], p[0], p[1], p[2])
  if model in full and p.size == full[model] and not np.any(p[4:]):
    return make_K(p[0], p[1], p[2], p[3])
  raise ValueError(
    f"unsupported COLMAP camera {model} with params {p.tolist()}: "
    f"only pinhole cameras (or zero distortion) can be converted; "
    f"undistort the images first (colmap image_undistorter)."
  )


# --- KRT (the authors' capture calibration) -----------------------------------


def krt_to_KE(krt, integer_pixel_centers: bool = False):
  """Reads KRT camera entries -> (K [N, 3, 3], E [N, 4, 4], names).

  Args:
    krt: the parsed `camera_calibration.json` ({"KRT": [...]}), a list of its
      entries, or one entry; entry["K"] is K^T, entry["T"] is E^T (4x4, or
      [R|t]^T as 4x3).
    integer_pixel_centers: the captures' own tools rescale K with
      c' = (c + 0.5) / s - 0.5, i.e. treat pixel centres as integers; True adds
      0.5 to (cx, cy) to move to this module's convention. The Pippo release uses
      K as stored, hence the default False.
  """
  entries = krt["KRT"] if isinstance(krt, dict) and "KRT" in krt else krt
  entries = [entries] if isinstance(entries, dict) else list(entries)
  names = [str(e.get("cameraId", i)) for i, e in enumerate(entries)]
  K = np.stack([np.asarray(e["K"], np.float64).T for e in entries])
  E = np.stack([as_E44(np.asarray(e["T"], np.float64).T[:3, :4]) for e in entries])
  if integer_pixel_centers:
    K[:, :2, 2] += 0.5
  validate_cameras(K, E, names)
  return K, E, names


def KE_to_krt(
  K, E, names: Sequence[str] | None = None, integer_pixel_centers: bool = False
) -> dict:
  """(K [N, 3, 3], E [N, 4, 4]) -> {"KRT": [{"cameraId", "K": K^T, "T": E^T}]}."""
  K, E = validate_cameras(K, E, names)
  K = np.array(K.reshape(-1, 3, 3))
  E = E.reshape(-1, 4, 4)
  if integer_pixel_centers:
    K[:, :2, 2] -= 0.5
  names = _camera_names(names, K.shape[0])
  return {
    "KRT": [{"cameraId": n, "K": k.T.tolist(), "T": e.T.tolist()} for n, k, e in zip(names, K, E)]
  }


# Full-resolution frames of the authors' head/body capture domes (Ava-256 and Goliath
# `camera_calibration.json` intrinsics refer to this size: rows, columns).
MUGSY_FRAME_HW = (4096, 2668)


def frame_to_square_intrinsics(K, frame_hw, side: int) -> np.ndarray:
  """K for a frame of frame_hw (H, W) cropped to its centred square and resized to side x side.

  The square is min(H, W) wide, centred: for a portrait 4096 x 2668 frame it keeps rows
  714..3382, so the principal point moves up by 714 px before the scale side / 2668.
  """
  h, w = (float(v) for v in frame_hw)
  s = min(h, w)
  return crop_and_resize_intrinsics(K, ((w - s) / 2, (h - s) / 2, s, s), (side, side))
