"""Procedural humanoid figures built from ellipsoids (for the synthetic studio).

A figure is an *identity* (proportions, skin, hair and clothing) in a *pose*
(joint angles), placed in the world with a yaw and a ground position. The
world frame is z up, figures stand on z = 0; a figure at yaw 0 faces +y and its
right hand points to +x. `build_figure` returns the primitives for
`raycast.render` together with the ground truth the records store: the head
point (head ellipsoid centre), the head rotation (head-to-world; columns are
the head axes in the `pippo_jax.geometry.normalize` convention: x to the
subject's left, y up, z out of the face) and 14 body keypoints.

The face (eyes, brows, mouth on the front of the head, hair on the back and
top, a protruding nose) makes front and back views distinguishable. The head
ellipsoid's local frame is the head frame, so its texture is drawn in it.
"""

from __future__ import annotations

import numpy as np

from pippo_jax.data_pipelines import raycast

PART_NAMES = (
  "head",
  "hair",
  "nose",
  "neck",
  "torso",
  "pelvis",
  "upper_arm_r",
  "upper_arm_l",
  "forearm_r",
  "forearm_l",
  "hand_r",
  "hand_l",
  "thigh_r",
  "thigh_l",
  "shin_r",
  "shin_l",
  "foot_r",
  "foot_l",
)
PART = {name: i for i, name in enumerate(PART_NAMES)}
HEAD_PARTS = (PART["head"], PART["hair"], PART["nose"])
KEYPOINT_NAMES = (
  "head",
  "neck",
  "shoulder_r",
  "shoulder_l",
  "elbow_r",
  "elbow_l",
  "wrist_r",
  "wrist_l",
  "hip_r",
  "hip_l",
  "knee_r",
  "knee_l",
  "ankle_r",
  "ankle_l",
)

_SKIN = np.array(
  [
    [0.98, 0.84, 0.72],
    [0.92, 0.73, 0.58],
    [0.80, 0.60, 0.45],
    [0.62, 0.43, 0.30],
    [0.45, 0.30, 0.20],
    [0.30, 0.20, 0.14],
  ]
)
_HAIR = np.array(
  [
    [0.08, 0.06, 0.05],
    [0.30, 0.18, 0.10],
    [0.75, 0.60, 0.35],
    [0.55, 0.22, 0.10],
    [0.65, 0.65, 0.65],
  ]
)
_DOWN = np.array([0.0, 0.0, -1.0])


def rot_x(a):
  c, s = np.cos(a), np.sin(a)
  return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def rot_y(a):
  c, s = np.cos(a), np.sin(a)
  return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def rot_z(a):
  c, s = np.cos(a), np.sin(a)
  return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _frame_along(axis):
  """Rotation whose local z is `axis` (unit)."""
  z = axis / np.linalg.norm(axis)
  helper = np.array([1.0, 0, 0]) if abs(z[0]) < 0.9 else np.array([0, 1.0, 0])
  x = np.cross(helper, z)
  x /= np.linalg.norm(x)
  return np.stack([x, np.cross(z, x), z], 1)


def _colour(rng, lo=0.1, hi=0.95):
  return rng.uniform(lo, hi, 3)


def sample_identity(rng: np.random.Generator) -> dict:
  """Proportions and appearance of one subject."""
  skin = _SKIN[rng.integers(len(_SKIN))] * rng.uniform(0.93, 1.05, 3)
  return {
    "height": rng.uniform(1.5, 1.95),
    "head": rng.uniform(0.9, 1.12),
    "shoulders": rng.uniform(0.85, 1.2),
    "hips": rng.uniform(0.85, 1.2),
    "girth": rng.uniform(0.8, 1.35),
    "limbs": rng.uniform(0.75, 1.25),
    "arm_length": rng.uniform(0.93, 1.07),
    "skin": np.clip(skin, 0, 1),
    "hair": _HAIR[rng.integers(len(_HAIR))],
    "hair_style": int(rng.integers(3)),  # bald, short, long
    "shirt": _colour(rng),
    "shirt_second": _colour(rng),
    "shirt_texture": int(
      rng.choice([raycast.PLAIN, raycast.STRIPES, raycast.CHECKER, raycast.DOTS])
    ),
    "shirt_period": rng.uniform(0.04, 0.12),
    "long_sleeves": bool(rng.random() < 0.5),
    "pants": _colour(rng, 0.05, 0.7),
    "pants_second": _colour(rng),
    "pants_texture": int(
      rng.choice([raycast.PLAIN, raycast.PLAIN, raycast.STRIPES, raycast.CHECKER])
    ),
    "pants_period": rng.uniform(0.05, 0.15),
    "long_pants": bool(rng.random() < 0.7),
    "shoes": _colour(rng, 0.02, 0.5),
  }


def sample_pose(rng: np.random.Generator) -> dict:
  """Joint angles (radians) of one moment; sides are (right, left)."""
  d = np.deg2rad
  return {
    "arm_abduction": rng.uniform(d(5), d(85), 2),
    "arm_flexion": rng.uniform(d(-30), d(70), 2),
    "elbow": rng.uniform(0, d(110), 2),
    "hip_flexion": rng.uniform(d(-20), d(35), 2),
    "hip_abduction": rng.uniform(0, d(15), 2),
    "knee": rng.uniform(0, d(50), 2),
    "lean": rng.uniform(d(-8), d(12)),
    "head_yaw": rng.uniform(d(-45), d(45)),
    "head_pitch": rng.uniform(d(-20), d(20)),
    "head_roll": rng.uniform(d(-10), d(10)),
  }


class _Prims:
  """Accumulates ellipsoids and their materials."""

  def __init__(self):
    self.rows = []

  def add(
    self, part, center, rotation, radii, color, texture=raycast.PLAIN, second=(0, 0, 0), period=0.1
  ):
    self.rows.append(
      (
        PART[part],
        np.asarray(center, float),
        np.asarray(rotation, float),
        np.asarray(radii, float),
        np.asarray(color, float),
        texture,
        np.r_[np.asarray(second, float), period],
      )
    )

  def segment(self, part, a, b, radius, color, **kw):
    length = np.linalg.norm(b - a)
    self.add(
      part,
      (a + b) / 2,
      _frame_along(b - a),
      (radius, radius, length / 2 + 0.4 * radius),
      color,
      **kw,
    )

  def arrays(self):
    cols = list(zip(*self.rows))
    return {
      "part": np.array(cols[0], np.int16),
      "center": np.stack(cols[1]),
      "rotation": np.stack(cols[2]),
      "radii": np.stack(cols[3]),
      "color": np.stack(cols[4]),
      "texture": np.array(cols[5], np.int8),
      "second": np.stack(cols[6]),
    }


def build_figure(identity: dict, pose: dict, yaw: float = 0.0, position=(0.0, 0.0)) -> dict:
  """Primitives and ground truth of a posed figure in world coordinates."""
  h, ident = identity["height"], identity
  lean = rot_x(pose["lean"])
  pelvis = np.array([0, 0, 0.52 * h])
  neck_base = pelvis + lean @ np.array([0, 0, 0.31 * h])
  shoulder_w = 0.115 * h * ident["shoulders"]
  hip_w = 0.07 * h * ident["hips"]
  limb_r = 0.028 * h * ident["limbs"]
  shirt = dict(
    texture=ident["shirt_texture"], second=ident["shirt_second"], period=ident["shirt_period"]
  )
  pants = dict(
    texture=ident["pants_texture"], second=ident["pants_second"], period=ident["pants_period"]
  )
  p = _Prims()
  keypoints = {"neck": neck_base}

  # Torso and pelvis.
  p.add(
    "torso",
    pelvis + lean @ np.array([0, 0, 0.19 * h]),
    lean,
    (shoulder_w * 0.85, 0.062 * h * ident["girth"], 0.16 * h),
    ident["shirt"],
    **shirt,
  )
  p.add(
    "pelvis",
    pelvis,
    np.eye(3),
    (hip_w + 0.035 * h, 0.058 * h * ident["girth"], 0.075 * h),
    ident["pants"],
    **pants,
  )

  # Arms: abduction turns the arm outwards, flexion forwards, the elbow bends
  # the forearm further forwards.
  for k, side, sign in ((0, "r", 1.0), (1, "l", -1.0)):
    shoulder = neck_base + lean @ np.array([sign * shoulder_w, 0, -0.03 * h])
    turn = rot_y(-sign * pose["arm_abduction"][k])
    upper = turn @ rot_x(pose["arm_flexion"][k]) @ _DOWN
    lower = turn @ rot_x(pose["arm_flexion"][k] + pose["elbow"][k]) @ _DOWN
    elbow = shoulder + 0.175 * h * ident["arm_length"] * upper
    wrist = elbow + 0.15 * h * ident["arm_length"] * lower
    hand = wrist + 0.045 * h * lower
    sleeve = (ident["shirt"], shirt) if ident["long_sleeves"] else (ident["skin"], {})
    p.segment(f"upper_arm_{side}", shoulder, elbow, limb_r * 1.1, ident["shirt"], **shirt)
    p.segment(f"forearm_{side}", elbow, wrist, limb_r * 0.9, sleeve[0], **sleeve[1])
    p.add(
      f"hand_{side}", hand, _frame_along(lower), (0.022 * h, 0.012 * h, 0.04 * h), ident["skin"]
    )
    keypoints.update({f"shoulder_{side}": shoulder, f"elbow_{side}": elbow, f"wrist_{side}": wrist})

  # Legs: flexion forwards, abduction outwards, the knee bends backwards.
  for k, side, sign in ((0, "r", 1.0), (1, "l", -1.0)):
    hip = pelvis + np.array([sign * hip_w, 0, -0.02 * h])
    turn = rot_y(-sign * pose["hip_abduction"][k])
    thigh = turn @ rot_x(pose["hip_flexion"][k]) @ _DOWN
    shin = turn @ rot_x(pose["hip_flexion"][k] - pose["knee"][k]) @ _DOWN
    knee = hip + 0.245 * h * thigh
    ankle = knee + 0.235 * h * shin
    low = (ident["pants"], pants) if ident["long_pants"] else (ident["skin"], {})
    p.segment(f"thigh_{side}", hip, knee, limb_r * 1.45, ident["pants"], **pants)
    p.segment(f"shin_{side}", knee, ankle, limb_r * 1.1, low[0], **low[1])
    p.add(
      f"foot_{side}",
      ankle + np.array([0, 0.035 * h, -0.015 * h]),
      np.eye(3),
      (0.03 * h, 0.065 * h, 0.022 * h),
      ident["shoes"],
    )
    keypoints.update({f"hip_{side}": hip, f"knee_{side}": knee, f"ankle_{side}": ankle})

  # Neck and head. Neutral head frame: x to the left (-x body), y up, z forward.
  neutral = np.stack([[-1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]], 1)
  head_rot = (
    lean @ rot_z(pose["head_yaw"]) @ neutral @ rot_x(pose["head_pitch"]) @ rot_z(pose["head_roll"])
  )
  radii = np.array([0.052, 0.066, 0.06]) * h * ident["head"]
  neck_top = neck_base + lean @ np.array([0, 0, 0.045 * h])
  head = neck_top + head_rot[:, 1] * radii[1] * 0.8
  p.segment("neck", neck_base, neck_top, 0.03 * h, ident["skin"])
  p.add("head", head, head_rot, radii, ident["skin"], texture=raycast.FACE, second=ident["hair"])
  p.add(
    "nose",
    head + head_rot @ (radii * [0, -0.12, 0.93]),
    head_rot,
    radii * [0.2, 0.28, 0.3],
    ident["skin"],
  )
  if ident["hair_style"] == 1:
    p.add(
      "hair",
      head + head_rot @ (radii * [0, 0.12, -0.22]),
      head_rot,
      radii * [1.08, 1.06, 1.0],
      ident["hair"],
    )
  elif ident["hair_style"] == 2:
    p.add(
      "hair",
      head + head_rot @ (radii * [0, -0.3, -0.3]),
      head_rot,
      radii * [1.08, 1.3, 0.95],
      ident["hair"],
    )
  keypoints["head"] = head

  # Place in the world.
  world = rot_z(yaw)
  offset = np.array([position[0], position[1], 0.0])
  prims = p.arrays()
  prims["center"] = prims["center"] @ world.T + offset
  prims["rotation"] = world @ prims["rotation"]
  kp = np.stack([keypoints[n] for n in KEYPOINT_NAMES]) @ world.T + offset
  return {
    "prims": prims,
    "head_point": head @ world.T + offset,
    "head_rotation": world @ head_rot,
    "keypoints": kp,
  }
