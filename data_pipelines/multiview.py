"""M2/P3 transform: a capture record -> reference + N target views.

1. Pick the reference camera with weight exp(ref_view_bias * cos a), a being
   the angle between the face direction and the direction to the camera
   (0: uniform; the default prefers frontal cameras, like a phone photo).
2. Pick `num_views` target cameras uniformly among the others (with
   replacement only if the capture has too few cameras).
3. Per view: decode image and mask, composite onto the background colour,
   crop a square around the person (or the centred square), resize, and move
   K with the same crop (`geometry.cameras.crop_and_resize_intrinsics`) so the
   projection of any world point lands on the same content.
4. Optionally normalise the scene on the head (`geometry.normalize`): a
   similarity, so images and K stay, E changes.
5. Camera conditioning: the flattened 4x4 pose (`camera_pose_16`), and with
   `with_controls` the Plücker rays and the Spatial Anchor image of every view.

Only the chosen views are decoded. With `data.latents` nothing is: step 3 reads
the crop's box, its cropped mask and its latents as `pippo-data encode-latents`
stored them (`crop_view` made the crops it encoded), and the example holds
`ref_latent` / `target_latents` instead of `ref_image` / `target_images`.
Output keys and shapes: see `schemas`.
"""

from __future__ import annotations

import numpy as np

from pippo_jax.data_pipelines import imageops, schemas, transforms
from pippo_jax.geometry import anchors, cameras, normalize, plucker


def frontal_cosines(E: np.ndarray, head_point: np.ndarray, head_rotation: np.ndarray) -> np.ndarray:
  """Cos of the angle between the face direction and each camera [C]."""
  to_cam = cameras.camera_centers(E) - head_point
  to_cam /= np.linalg.norm(to_cam, axis=-1, keepdims=True)
  return to_cam @ head_rotation[:, 2]


def choose_views(
  cosines: np.ndarray, num_views: int, bias: float, include_ref: bool, rng: np.random.Generator
):
  """(reference camera, target cameras [num_views])."""
  n = len(cosines)
  weights = np.exp(bias * (cosines - cosines.max()))
  ref = int(rng.choice(n, p=weights / weights.sum()))
  pool = np.arange(n) if include_ref else np.delete(np.arange(n), ref)
  if len(pool) == 0:
    pool = np.array([ref])
  targets = rng.choice(pool, num_views, replace=len(pool) < num_views)
  return ref, targets.astype(np.int64)


def decode_view(rec: dict, cam: int, where: str) -> tuple[np.ndarray, np.ndarray]:
  """(image [H, W, 3], mask [H, W]) of camera `cam` of a capture; RecordError if either does not
  decode or their sizes differ."""
  name = rec["camera_names"][cam]
  image = schemas.decode_image(rec["images"][cam], f"image {name} of {where}")
  mask = schemas.decode_image(rec["masks"][cam], f"mask {name} of {where}", "L")
  if mask.shape != image.shape[:2]:
    raise schemas.RecordError(
      f"{where}: camera {name} mask {mask.shape} vs image {image.shape[:2]}"
    )
  return image, mask


def crop_view(
  image: np.ndarray, mask: np.ndarray, crop: transforms.CropSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """A camera view as examples show it: (image [res, res, 3], mask [res, res], box (x, y, w, h)).

  The image is composited on the background, then a square around the mask (crop "person", with
  `crop_margin`; the centred square when the mask is empty or crop is "full") is resized to the
  resolution. Deterministic: `pippo-data encode-latents` encodes these crops once.
  """
  image = imageops.composite(image, mask, crop.background)
  box = imageops.mask_box(mask) if crop.crop == "person" else None
  if box is None:
    box = imageops.centre_square(*image.shape[:2])
  else:
    box = imageops.square_box(box, crop.crop_margin)
  image = imageops.crop_resize(image, box, crop.out_hw, crop.background)
  mask = imageops.crop_resize(mask, box, crop.out_hw, 0)
  return image, mask, box


class MultiviewTransform:
  """Capture record -> multi-view example (see module docstring)."""

  def __init__(self, cfg):
    self.crop = transforms.CropSettings.from_config(cfg)
    self.res = self.crop.resolution
    self.latents = bool(cfg.get("latents", False))
    self.num_views = int(cfg.num_views)
    self.controls = bool(cfg.with_controls)
    self.bias = float(cfg.ref_view_bias)
    self.include_ref = bool(cfg.targets_include_ref)
    self.normalize = bool(cfg.normalize_scene)
    self.align_head = bool(cfg.align_head)
    self.distance = float(cfg.scene_distance)
    self.anchor = {k: float(v) for k, v in cfg.anchor.items()}

  def _view(self, rec, cam, where):
    """(image, or its stored latents; mask; K after the crop) of camera `cam`."""
    if self.latents:
      pixels, box = rec["latents"][cam], rec["crop_box"][cam]
      name = rec["camera_names"][cam]
      mask = schemas.decode_image(rec["crop_masks"][cam], f"cropped mask {name} of {where}", "L")
      if mask.shape != self.crop.out_hw:
        raise schemas.RecordError(
          f"{where}: camera {name}'s stored crop is {mask.shape[0]} px, data.resolution is "
          f"{self.res}"
        )
    else:
      pixels, mask, box = crop_view(*decode_view(rec, cam, where), self.crop)
    K = cameras.crop_and_resize_intrinsics(rec["K"][cam], box, self.crop.out_hw)
    return pixels, mask, K

  def _scene(self, rec, where):
    """Validated (K, E, head point, head rotation, scale), normalised if asked."""
    try:
      K, E = cameras.validate_cameras(rec["K"], rec["E"], rec["camera_names"])
      head_point, head_rot = rec["head_point"], rec["head_rotation"]
      scale = 1.0
      if self.normalize:
        E, scene = normalize.normalize_scene(
          E, head_point, head_rot, target_distance=self.distance, align_rotation=self.align_head
        )
        head_point, head_rot = scene.head_pose(head_point, head_rot)
        scale = scene.scale
    except ValueError as e:
      raise schemas.RecordError(f"{where}: bad calibration or head pose: {e}") from e
    return K, E, head_point, head_rot, scale

  def __call__(self, element: dict, rng: np.random.Generator) -> dict:
    try:
      rec = transforms.decode(element, "capture")
      if self.latents and "latents" not in rec:
        raise schemas.RecordError(schemas.no_latents_message(element["where"]))
      K, E, head_point, head_rot, scale = self._scene(rec, element["where"])
      cos = frontal_cosines(E, head_point, head_rot)
      ref, targets = choose_views(cos, self.num_views, self.bias, self.include_ref, rng)
      views = [self._view(rec, c, element["where"]) for c in [ref, *targets]]
    except schemas.RecordError as e:
      return transforms.skip("corrupt", element, str(e))
    images, masks, Ks = (np.stack(x) for x in zip(*views))
    chosen = [ref, *targets]
    pose = cameras.camera_pose_16(E[chosen])
    Ks32, Es32 = Ks.astype(np.float32), E[chosen].astype(np.float32)
    image_keys = (
      ("ref_latent", "target_latents") if self.latents else ("ref_image", "target_images")
    )
    out = {
      image_keys[0]: images[0],
      image_keys[1]: images[1:],
      "ref_mask": masks[0],
      "target_masks": masks[1:],
      "ref_cam_pose": pose[0],
      "target_cam_pose": pose[1:],
      "ref_K": Ks32[0],
      "target_K": Ks32[1:],
      "ref_E": Es32[0],
      "target_E": Es32[1:],
      "ref_camera": np.int64(ref),
      "target_cameras": targets,
    }
    if self.controls:
      rays = plucker.plucker_rays(Ks, E[chosen], self.res, self.res, dtype=np.float32)
      sizes = {k: v * scale for k, v in self.anchor.items()}
      marks = anchors.render_spatial_anchors(
        Ks, E[chosen], head_point, head_rot, self.res, self.res, **sizes
      )
      out.update(
        ref_plucker=rays[0], target_plucker=rays[1:], ref_anchor=marks[0], target_anchor=marks[1:]
      )
    return out
