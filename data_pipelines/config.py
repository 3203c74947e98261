"""The `data` section of a stage config: every knob the pipelines read.

Stage configs include it as `config.data = default_data_config(stage, res,
views)`. Keys:

  kind               "image" (P1) or "multiview" (M2, P3)
  source             "array_record" | "tfds" | "synthetic_index"
  path               dataset directory for "array_record" (e.g. OUT/captures)
  tfds_name, tfds_data_dir   for "tfds" (e.g. "pippo_synthetic_studio/captures")
  synthetic_length   records of the "synthetic_index" source
  split              split to read
  latents            read the crops' stored latents (written by `pippo-data
                     encode-latents` for this resolution, crop and codec;
                     `config_lib.validate` checks) instead of decoding and
                     encoding images: batches hold target_latents / ref_latent
                     instead of target_images / ref_image (see `schemas`).
                     Anchors and Plücker maps are still made per example. P1
                     needs ref_jitter = 0 and then has no face crop
  resolution         output side in pixels (square)
  num_views          target views per example (P1: 1)
  with_controls      compute Plücker maps and Spatial Anchors (P3)
  background         RGB fill outside the person mask and outside the image
  crop               "person" (square around the mask/person box) or "full"
                     (largest centred square)
  crop_margin        extra side, as a fraction of the person box's long side
  ref_view_bias      reference camera sampled with weight exp(bias * cos), cos
                     = angle between the face direction and the camera; 0 is
                     uniform, large values pick the most frontal camera
  targets_include_ref  whether the reference camera may also be a target
  normalize_scene    move each capture into its head frame (see `schemas`)
  align_head         ... rotating the head axes onto the world axes
  scene_distance     ... scaled so the mean camera-head distance is this (1:
                     Plücker moments stay within [-1, 1])
  anchor             Spatial Anchor marker sizes (radius, axis_length,
                     line_width) in capture units (metres in the studio);
                     scaled with the scene
  ref_jitter         P1: reference = crop with scale/shift jitter of this size
                     (0: the reference is the target image itself)
  face_resolution    side of the P1 face crop
  face_margin        margin around the face box
  filters            P1 metadata thresholds (Humans-3B style): records with
                     detection_confidence, person height / image height,
                     visibility or quality below these are dropped;
                     require_face drops records without a face box
  corrupt_threshold  fail (CorruptDataError) when corrupt / read records
                     exceeds this fraction. Each process checks it after every
                     record it reads, from its N-th record on, N =
                     min(corrupt_min_records, its records per epoch) (its
                     share of an epoch: every process_count-th record). So a
                     large dataset never fails within its first
                     corrupt_min_records records, and a smaller one is checked
                     from the end of its first epoch on (tiny datasets with
                     bad records fail fast).
                     Corrupt: unreadable, fails to parse or decode, or outside
                     the image size limits of `schemas.decode_image`
  corrupt_min_records  see corrupt_threshold
  seed               shuffling and augmentation seed (epoch e uses seed + e)
  shuffle            global shuffle (False: index order, for evaluation)
  num_epochs         None: repeat forever
  drop_remainder     drop the last partial batch (only with num_epochs)
  batch_size         GLOBAL batch size; each process gets batch_size /
                     process_count
  worker_count       Grain worker processes (0: in the main process)
  worker_buffer_size per-worker prefetch, in examples
  read_threads, read_buffer   threads and buffer of the in-process reader
"""

from __future__ import annotations

import ml_collections

STAGES = ("p1", "m2", "p3")


def default_data_config(
  stage: str, resolution: int = 128, num_views: int = 4
) -> ml_collections.ConfigDict:
  """Defaults for a stage ("p1", "m2", "p3")."""
  stage = stage.lower()
  if stage not in STAGES:
    raise ValueError(f"unknown stage {stage!r}; choose one of {STAGES}")
  multiview = stage != "p1"
  return ml_collections.ConfigDict(
    dict(
      kind="multiview" if multiview else "image",
      source="array_record",
      path="",
      tfds_name="",
      tfds_data_dir="",
      synthetic_length=10**9,
      split="train",
      latents=False,
      resolution=resolution,
      num_views=num_views if multiview else 1,
      with_controls=stage == "p3",
      background=(255, 255, 255),
      crop="person",
      crop_margin=0.1,
      ref_view_bias=3.0,
      targets_include_ref=False,
      normalize_scene=True,
      align_head=True,
      scene_distance=1.0,
      anchor=dict(radius=0.03, axis_length=0.12, line_width=0.012),
      ref_jitter=0.0 if multiview else 0.1,
      face_resolution=max(32, resolution // 4),
      face_margin=0.25,
      filters=dict(
        min_detection_confidence=0.5,
        min_person_size=0.2,
        min_visibility=0.5,
        min_quality=0.3,
        require_face=False,
      ),
      corrupt_threshold=0.01,
      corrupt_min_records=200,
      seed=0,
      shuffle=True,
      num_epochs=None,
      drop_remainder=True,
      batch_size=1,
      worker_count=0,
      worker_buffer_size=2,
      read_threads=2,
      read_buffer=8,
    )
  )
