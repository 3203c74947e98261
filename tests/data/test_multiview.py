"""M2/P3 examples: view choice, crops that keep K consistent, camera conditioning."""

import numpy as np
import pytest
from data_helpers import data_config

from pippo_jax.data_pipelines import multiview, pipelines, schemas, sources
from pippo_jax.geometry import cameras


def _examples(cfg, n=4):
  it = pipelines.make_iterator(cfg, process_index=0, process_count=1, batch=False)
  return [next(it) for _ in range(n)]


def test_p3_and_m2_batch_keys(studio):
  cfg = data_config("p3", studio / "captures", resolution=32, num_views=3)
  batch = next(pipelines.make_iterator(cfg, process_index=0, process_count=1))
  shapes = {k: (v.shape, v.dtype) for k, v in batch.items()}
  u8, f32, i64 = np.uint8, np.float32, np.int64
  assert shapes == {
    "target_images": ((2, 3, 32, 32, 3), u8),
    "ref_image": ((2, 32, 32, 3), u8),
    "target_masks": ((2, 3, 32, 32), u8),
    "ref_mask": ((2, 32, 32), u8),
    "target_cam_pose": ((2, 3, 16), f32),
    "ref_cam_pose": ((2, 16), f32),
    "target_K": ((2, 3, 3, 3), f32),
    "ref_K": ((2, 3, 3), f32),
    "target_E": ((2, 3, 4, 4), f32),
    "ref_E": ((2, 4, 4), f32),
    "target_plucker": ((2, 3, 32, 32, 6), f32),
    "ref_plucker": ((2, 32, 32, 6), f32),
    "target_anchor": ((2, 3, 32, 32, 3), u8),
    "ref_anchor": ((2, 32, 32, 3), u8),
    "ref_camera": ((2,), i64),
    "target_cameras": ((2, 3), i64),
    "record_index": ((2,), i64),
    "epoch": ((2,), i64),
  }
  cfg = data_config("m2", studio / "captures", resolution=32, num_views=5)
  batch = next(pipelines.make_iterator(cfg, process_index=0, process_count=1))
  assert "target_plucker" not in batch and "target_anchor" not in batch
  assert batch["target_images"].shape == (2, 5, 32, 32, 3)


@pytest.mark.parametrize("crop, normalize", [("person", True), ("full", False)])
def test_head_projects_onto_mask_and_anchor_in_every_view(studio, crop, normalize):
  cfg = data_config(
    "p3", studio / "captures", resolution=40, num_views=4, crop=crop, normalize_scene=normalize
  )
  src = sources.ArrayRecordSource(cfg.path)
  for ex in _examples(cfg):
    rec = schemas.decode_capture(src[int(ex["record_index"])]["bytes"])
    head = np.zeros(3) if normalize else rec["head_point"]
    K = np.concatenate([ex["ref_K"][None], ex["target_K"]])
    E = np.concatenate([ex["ref_E"][None], ex["target_E"]])
    masks = np.concatenate([ex["ref_mask"][None], ex["target_masks"]])
    marks = np.concatenate([ex["ref_anchor"][None], ex["target_anchor"]])
    rays = np.concatenate([ex["ref_plucker"][None], ex["target_plucker"]])
    uv, depth = cameras.project_points(K.astype(np.float64), E, head[None])
    for v in range(len(K)):
      j, i = np.floor(uv[v, 0]).astype(int)
      assert depth[v, 0] > 0 and 0 <= i < 40 and 0 <= j < 40
      assert masks[v, i, j] > 127  # the head is on the person ...
      assert marks[v, i, j].min() > 200  # ... under the anchor's white disc
      d, m = rays[v, i, j, :3], rays[v, i, j, 3:]
      # The pixel's ray passes the head within about a pixel's footprint.
      miss = np.linalg.norm(np.cross(head, d) - m)
      assert miss < 2.0 * depth[v, 0] / K[v, 0, 0]
    np.testing.assert_array_equal(ex["target_cam_pose"], ex["target_E"].reshape(-1, 16))


def test_background_and_views(studio):
  cfg = data_config(
    "p3", studio / "captures", num_views=4, background=(0, 255, 0), with_controls=False
  )
  for ex in _examples(cfg):
    outside = ex["target_masks"] == 0
    assert outside.mean() > 0.3
    np.testing.assert_array_equal(
      ex["target_images"][outside], np.broadcast_to([0, 255, 0], (outside.sum(), 3))
    )
    targets = ex["target_cameras"]
    assert len(set(targets.tolist())) == 4 and int(ex["ref_camera"]) not in targets


def test_reference_prefers_frontal_cameras():
  cos = np.linspace(-1, 1, 12)
  rng = np.random.default_rng(0)
  strong = [multiview.choose_views(cos, 3, 50.0, False, rng)[0] for _ in range(50)]
  assert set(strong) == {11}
  uniform = [multiview.choose_views(cos, 3, 0.0, False, rng)[0] for _ in range(600)]
  counts = np.bincount(uniform, minlength=12)
  assert counts.min() > 25
  biased = [multiview.choose_views(cos, 3, 3.0, False, rng)[0] for _ in range(600)]
  assert np.mean(cos[biased]) > 0.5


def test_pipeline_reference_is_frontal_with_strong_bias(studio):
  cfg = data_config("m2", studio / "captures", ref_view_bias=100.0)
  src = sources.ArrayRecordSource(cfg.path)
  for ex in _examples(cfg, 3):
    rec = schemas.decode_capture(src[int(ex["record_index"])]["bytes"])
    cos = multiview.frontal_cosines(rec["E"], rec["head_point"], rec["head_rotation"])
    assert int(ex["ref_camera"]) == int(np.argmax(cos))
    assert cos[int(ex["ref_camera"])] > 0.7
