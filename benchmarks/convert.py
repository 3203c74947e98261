"""`pippo-data convert` throughput per format, and the head point estimated from landmarks.

  python benchmarks/convert.py --out /tmp/convert_bench [--workers 1,2]

Writes a small source folder in every layout (`data_pipelines.convert_examples`: a synthetic
studio as a capture folder with 2D facial landmarks instead of head poses, its photos as an image
folder, pickled release-style samples, one Ava-256 and one Goliath capture folder with AVIF views)
under OUT/src, converts each with every worker count into OUT/<format>-w<N> and prints a table
of items/s and views/s (listing, decoding, cropping, encoding and writing included), then the
error of the triangulated head points in % of the camera distance.
"""

import argparse
import io
import json
import pathlib
import time

import numpy as np
from absl import flags

from pippo_jax.data_pipelines import convert, schemas, sources, synthetic_studio
from pippo_jax.data_pipelines import convert_examples as ex
from pippo_jax.geometry import cameras


def _sources(root: pathlib.Path):
  """{format: (src, options, views per item)}."""
  settings = synthetic_studio.StudioSettings(
    seed=1,
    subjects=4,
    cameras=24,
    resolution=256,
    moments=2,
    images_per_subject=16,
    test_fraction=0,
  )
  synthetic_studio.write_studio(str(root / "studio"), settings, progress_stream=io.StringIO())
  caps = ex.studio_captures(root / "studio")
  rng = np.random.default_rng(0)
  marks = {r["capture_id"]: ex.face_landmarks(r, rng) for r in caps}
  ex.capture_folder(root / "rig", caps, head=False, landmarks=marks)
  photos = root / "photos"
  photos.mkdir(exist_ok=True)
  for i, el in enumerate(sources.ArrayRecordSource(str(root / "studio" / "images"), "train")):
    rec = schemas.decode_image_record(el["bytes"])
    (photos / f"{rec['subject_id']:03d}").mkdir(exist_ok=True)
    (photos / f"{rec['subject_id']:03d}" / f"{i:04d}.png").write_bytes(rec["image"])
  ex.release_samples(root / "samples", num=4, views=8, side=256)
  frames = (100, 200, 300, 400)
  for dataset in ("ava256", "goliath"):
    ex.studio_capture(root / dataset, dataset, frame_hw=(512, 334), frames=frames, views=16)
  studio_opts = {"frame_size": "512x334", "resolution": 256, "frames_per_capture": 0}
  return {
    "capture-folder": (root / "rig", {}, 24),
    "image-folder": (photos, {}, 1),
    "pippo-samples": (root / "samples", {"allow_pickle": True}, 8),
    "ava256": (root / "ava256", studio_opts, 16),
    "goliath": (root / "goliath", studio_opts, 16),
  }, caps


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--workers", default="1,2")
  args = parser.parse_args()
  flags.FLAGS.mark_as_parsed()
  out = pathlib.Path(args.out).resolve()
  if out.exists() and any(out.iterdir()):
    parser.error(f"--out {out} exists and is not empty; give a new folder")
  start = time.perf_counter()
  formats, caps = _sources(out / "src")
  print(f"example sources written in {time.perf_counter() - start:.1f} s")
  workers = [int(w) for w in args.workers.split(",")]
  print(
    "| format | items | views/item | "
    + " | ".join(f"{w} worker(s): items/s (views/s)" for w in workers)
    + " |"
  )
  print("|---|---|---|" + "---|" * len(workers))
  for name, (src, options, views) in formats.items():
    cells, items = [], 0
    for w in workers:
      start = time.perf_counter()
      report = convert.convert(
        name,
        str(src),
        str(out / f"{name}-w{w}"),
        options,
        split_by="none",
        workers=w,
        stream=io.StringIO(),
      )
      seconds = time.perf_counter() - start
      items = sum(s["records"] for s in report["splits"].values())
      cells.append(f"{items / seconds:.1f} ({items * views / seconds:.0f})")
    print(f"| {name} | {items} | {views} | " + " | ".join(cells) + " |")
  got = sources.ArrayRecordSource(str(out / f"capture-folder-w{workers[0]}" / "captures"), "train")
  errors, residuals = [], []
  for i, rec in enumerate(schemas.decode_capture(el["bytes"]) for el in got):
    want = caps[i]
    distance = np.linalg.norm(cameras.camera_centers(want["E"]) - want["head_point"], axis=1)
    errors.append(np.linalg.norm(rec["head_point"] - want["head_point"]) / distance.mean())
  report = json.loads(
    (out / f"capture-folder-w{workers[0]}" / "captures" / convert.REPORT_FILE).read_text()
  )
  for note in report["notes"]:
    if "residual mean" in note:
      residuals.append(float(note.split("residual mean ")[1].split(" px")[0]))
  print(
    f"head point from 6 landmarks (0.5 px noise) in {len(errors)} captures: error "
    f"{100 * np.mean(errors):.3f}% mean, {100 * np.max(errors):.3f}% max of the camera distance; "
    f"reprojection residual {np.mean(residuals):.3f} px mean"
  )


if __name__ == "__main__":
  main()
