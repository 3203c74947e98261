"""Small source folders in each `pippo-data convert` layout, made from the synthetic studio or
random data: what the tests convert and `benchmarks/convert.py` times, and a way to see a layout.

Every builder returns the ground truth it put there (images, masks, cameras, head points), so a
test compares converted records with values computed here, independently of the converter.
"""

import io
import json
import os
import zipfile

import numpy as np
from PIL import Image

from pippo_jax.data_pipelines import schemas, sources, synthetic_studio
from pippo_jax.geometry import cameras, orbits


def png(array) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")
  return buf.getvalue()


def studio_captures(studio_dir, split="train"):
  """Decoded capture records of the session studio."""
  src = sources.ArrayRecordSource(str(studio_dir / "captures"), split)
  return [schemas.decode_capture(src[i]["bytes"]) for i in range(len(src))]


def face_landmarks(rec, rng, noise_px=0.5, size=0.06):
  """{camera: [[u, v] or None] * 6}: six points around the head point (their mean), projected
  into every view with `noise_px` of noise; view c misses point c % 6."""
  offsets = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]]) * size
  points = rec["head_point"] + offsets @ rec["head_rotation"].T
  per_camera = {}
  for c, name in enumerate(rec["camera_names"]):
    uv, _ = cameras.project_points(rec["K"][c], rec["E"][c], points)
    uv = uv + rng.normal(0, noise_px, uv.shape)
    per_camera[name] = [None if j == c % 6 else p for j, p in enumerate(uv.tolist())]
  return per_camera


def capture_folder(root, captures, *, head=True, landmarks=None, subjects=None):
  """SRC of format capture-folder from capture records (all with the same cameras)."""
  root.mkdir(parents=True, exist_ok=True)
  first = captures[0]
  orbits.cameras_to_json(root / "cameras.json", first["K"], first["E"], first["camera_names"])
  meta = {}
  for rec in captures:
    cid = rec["capture_id"]
    for name, image, mask in zip(rec["camera_names"], rec["images"], rec["masks"]):
      for kind, data in (("images", image), ("masks", mask)):
        (root / kind / name).mkdir(parents=True, exist_ok=True)
        (root / kind / name / f"{cid}.png").write_bytes(data)
    entry = {"subject": str(rec["subject_id"] if subjects is None else subjects[cid])}
    if head:
      entry.update(
        head_point=rec["head_point"].tolist(), head_rotation=rec["head_rotation"].tolist()
      )
    meta[cid] = entry
  (root / "captures.json").write_text(json.dumps(meta))
  if landmarks is not None:
    (root / "landmarks").mkdir(exist_ok=True)
    for cid, per_camera in landmarks.items():
      (root / "landmarks" / f"{cid}.json").write_text(json.dumps(per_camera))
  return root


def release_samples(root, num=2, views=3, side=64, seed=0):
  """SRC of format pippo-samples: pickled dicts as the release's loader reads them, cameras of
  the 4096 x 2668 frame aimed at a head point. Returns (root, truth per file stem)."""
  rng = np.random.default_rng(seed)
  root.mkdir(parents=True, exist_ok=True)
  truth = {}
  for n in range(num):
    head = rng.normal(0, 50, 3) + [0, 0, 1000]  # millimetres, like Ava-256
    Ks, Es = [], []
    for v in range(views):
      az = np.deg2rad(-40 + 40 * v + rng.normal(0, 3))
      eye = head + 1100 * np.array([np.sin(az), rng.normal(0, 0.1), -np.cos(az)])
      E = orbits.look_at(eye, head, (0.0, -1.0, 0.0))
      Es.append(E)
      Ks.append(
        cameras.make_K(*rng.uniform(9000, 11000, 2), *rng.uniform([1200, 1900], [1450, 2150]))
      )
    video = rng.integers(0, 256, (views, 1, 3, side, side)).astype(np.float32)
    sample = {
      "video": video,
      "ref_image": video[:1],
      "cam_intrin": np.concatenate([np.stack(Ks), np.zeros((views, 3, 1))], -1),  # 3x4 as saved
      "cam_extrin": np.stack(Es),
      "cam_pose": np.stack(Es).reshape(views, 16),
      "cams": np.array([f"40{n}{v:03d}" for v in range(views)]),
    }
    np.save(root / f"sample_{n}.npy", np.array(sample, dtype=object), allow_pickle=True)
    truth[f"sample_{n}"] = {
      "K_frame": np.stack(Ks),
      "E": np.stack(Es),
      "head": head,
      "video": video,
    }
  return root, truth


def _zip(path, members: dict):
  path.parent.mkdir(parents=True, exist_ok=True)
  with zipfile.ZipFile(path, "w") as z:
    for name, data in members.items():
      z.writestr(name, data)


def avif(array) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="AVIF", quality=90)
  return buf.getvalue()


def studio_capture(
  root,
  dataset,
  *,
  frame_hw=(96, 64),
  calib_hw=None,
  frames=(100, 200),
  views=4,
  seed=0,
  subject="AAN112",
):
  """One capture folder in the Ava-256 or Goliath layout (KRT calibration, AVIF images in
  per-camera zips, part segmentations, head pose or 3D keypoints). Images are frame_hw; the
  calibration is for frames of calib_hw (default: frame_hw). Returns (folder, truth); truth["K"]
  is for the stored images."""
  rng = np.random.default_rng(seed)
  h, w = frame_hw
  if dataset == "ava256":
    folder = root / f"20230405--1635--{subject}" / "decoder"
  else:
    folder = root / f"m--20230714--0903--{subject}--pilot--ProjectGoliath--Body"
  folder.mkdir(parents=True, exist_ok=True)
  head = np.array([0.0, -100.0, 1000.0])
  names = [f"4009{v:02d}" for v in range(views)]
  Ks, Es = [], []
  for v in range(views):
    az = np.deg2rad(-30 + 20 * v)
    eye = head + 1200 * np.array([np.sin(az), 0.1, -np.cos(az)])
    Es.append(orbits.look_at(eye, head + rng.normal(0, 20, 3), (0.0, -1.0, 0.0)))
    Ks.append(
      cameras.make_K(150 + 5 * v, 150 + 5 * v, w / 2 + rng.normal(0, 2), h / 2 + rng.normal(0, 2))
    )
  Ks, Es = np.stack(Ks), np.stack(Es)
  # Goliath's tools treat pixel centres as integers: its files hold c - 0.5.
  stored = Ks.copy() if calib_hw is None else cameras.resize_intrinsics(Ks, frame_hw, calib_hw)
  if dataset == "goliath":
    stored[:, :2, 2] -= 0.5
  krt = cameras.KE_to_krt(stored, Es, names)
  (folder / "camera_calibration.json").write_text(json.dumps(krt))
  if dataset == "ava256":
    rows = "seg_id,frame_id\n" + "".join(f"EXP_neutral_peak,{f}\n" for f in frames)
    (folder / "frame_list.csv").write_text(rows)
  else:
    (folder / "frame_splits_list.csv").write_text(
      "frame,split\n" + "".join(f"{f},train\n" for f in frames)
    )
  truth = {"K": Ks, "E": Es, "names": names, "images": {}, "labels": {}, "head": {}}
  heads, kpts = {}, {}
  for f in frames:
    R = orbits.look_at(np.zeros(3), rng.normal(0, 1, 3), (0.0, 1.0, 0.0))[:3, :3]
    point = head + rng.normal(0, 10, 3)
    truth["head"][f] = point
    heads[f"{f:06d}.txt"] = "\n".join(
      " ".join(repr(float(x)) for x in row) for row in np.c_[R, point]
    )
    around = point + rng.normal(0, 30, (5, 3))
    around += point - around.mean(0)  # the mean of keypoints 0-4 is the head point
    rows = np.c_[np.r_[around, rng.normal(0, 300, (12, 3)) + head], np.ones(17)]
    kpts[f"{f:06d}.json"] = json.dumps(rows.tolist())
  if dataset == "ava256":
    _zip(folder / "head_pose" / "head_pose.zip", heads)
  else:
    _zip(folder / "keypoints_3d" / "keypoints_3d.zip", kpts)
  for name in names:
    images, labels = {}, {}
    for f in frames:
      yy, xx = np.mgrid[:h, :w]
      image = np.stack([(xx * 4) % 256, (yy * 3) % 256, np.full_like(xx, 60 + f % 100)], -1)
      image = np.clip(image + rng.integers(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
      label = np.zeros((h, w), np.uint8)
      label[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = rng.integers(1, 5)
      images[f"cam{name}/{f:06d}.avif"] = avif(image)
      labels[f"cam{name}/{f:06d}.png"] = png(label)
      truth["labels"][name, f] = label
    _zip(folder / "image" / f"cam{name}.zip", images)
    _zip(folder / "segmentation_parts" / f"cam{name}.zip", labels)
  return folder, truth


def photo_folder(root, studio_settings=None):
  """SRC of format image-folder: photos in subject folders, one with an alpha channel, one with
  a mask, one with metadata, one broken. Returns (root, {rel: (image, person box)})."""
  settings = studio_settings or synthetic_studio.StudioSettings(seed=2, resolution=48)
  truth = {}
  meta = []
  for s in range(2):
    for k in range(2):
      rec = synthetic_studio.make_image(settings, s, k, "train")
      image = schemas.decode_image(rec["image"])
      rel = os.path.join(f"person{s}", f"photo{k}.png")
      (root / f"person{s}").mkdir(parents=True, exist_ok=True)
      h, w = image.shape[:2]
      mask = np.zeros((h, w), np.uint8)
      mask[5 + s : h - 7, 3 + k : w - 4] = 255
      box = [3.0 + k, 5.0 + s, w - 7.0 - k, h - 12.0 - s]
      if (s, k) == (0, 0):  # alpha channel
        (root / rel).write_bytes(png(np.dstack([image, mask])))
      elif (s, k) == (0, 1):  # a mask file
        (root / rel).write_bytes(png(image))
        (root / "masks" / f"person{s}").mkdir(parents=True, exist_ok=True)
        (root / "masks" / f"person{s}" / f"photo{k}.png").write_bytes(png(mask))
      elif (s, k) == (1, 0):  # metadata
        (root / rel).write_bytes(png(image))
        box = [1.0, 2.0, 30.0, 40.0]
        meta.append({"file": rel, "person_box": box, "quality": 0.5})
      else:  # nothing: the whole photo
        (root / rel).write_bytes(png(image))
        box = [0.0, 0.0, float(w), float(h)]
      truth[rel] = (image, box)
  (root / "broken.jpg").write_bytes(b"\xff\xd8 not a photo")
  (root / "metadata.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
  return root, truth
