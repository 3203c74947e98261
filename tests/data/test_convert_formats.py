"""`pippo-data convert`: every format's fixture converts to records that decode to the same
images, masks, cameras and head points; bad layouts fail naming the file; splits by subject."""

import io
import json
import os
import zipfile

import numpy as np
import pytest
from data_helpers import data_config
from PIL import Image

from pippo_jax.cli import data as data_cli
from pippo_jax.data_pipelines import convert, pipelines, schemas, sources, studio_captures, writer
from pippo_jax.data_pipelines import convert_examples as fx
from pippo_jax.errors import InputError
from pippo_jax.geometry import cameras, orbits
from pippo_jax.inference import studio as eval_studio


def records(directory, split="train", kind="capture"):
  src = sources.ArrayRecordSource(str(directory), split)
  decode = schemas.decode_capture if kind == "capture" else schemas.decode_image_record
  return [decode(src[i]["bytes"], src[i]["where"]) for i in range(len(src))]


def run(fmt, src, out, **kw):
  kw.setdefault("split_by", "none")
  return convert.convert(fmt, str(src), str(out), kw.pop("options", {}), stream=io.StringIO(), **kw)


def head_pixels(K, E, point):
  return cameras.project_points(K, E, np.asarray(point)[None])[0][:, 0]


# ----------------------------------------------------------------------------
# capture-folder
# ----------------------------------------------------------------------------
def test_capture_folder_round_trips_and_feeds_the_pipelines_and_eval(studio, tmp_path):
  caps = fx.studio_captures(studio)
  src = fx.capture_folder(tmp_path / "rig", caps)
  report = run("capture-folder", src, tmp_path / "out")
  assert report["splits"]["train"]["records"] == len(caps) and not report["skipped"]
  got = records(tmp_path / "out" / "captures")
  for want, rec in zip(caps, got):
    assert rec["capture_id"] == want["capture_id"] and rec["subject_id"] == want["subject_id"]
    assert rec["camera_names"] == want["camera_names"]
    for a, b in zip(rec["images"], want["images"]):
      np.testing.assert_array_equal(schemas.decode_image(a), schemas.decode_image(b))
    for a, b in zip(rec["masks"], want["masks"]):
      np.testing.assert_array_equal(
        schemas.decode_image(a, mode="L"), schemas.decode_image(b, mode="L")
      )
    np.testing.assert_array_equal(rec["K"], want["K"])
    np.testing.assert_array_equal(rec["E"], want["E"])
    uv = head_pixels(rec["K"], rec["E"], rec["head_point"])
    assert np.abs(uv - head_pixels(want["K"], want["E"], want["head_point"])).max() < 0.5
  # The M2/P3 pipelines yield the same batches from the converted records as from the studio's.
  for stage in ("m2", "p3"):
    batches = []
    for path in (studio / "captures", tmp_path / "out" / "captures"):
      it = pipelines.make_iterator(data_config(stage, path), process_index=0, process_count=1)
      batches.append(next(it))
    assert batches[0].keys() == batches[1].keys()
    for key in batches[0]:
      np.testing.assert_array_equal(batches[0][key], batches[1][key], err_msg=key)
  # pippo-eval reads a capture's reference, scene and ground truth the same way.
  cfg = data_config("p3", studio / "captures", resolution=32)
  a = eval_studio.capture_views(cfg, eval_studio.open_split(cfg, "train"), 1, 4)
  cfg.path = str(tmp_path / "out" / "captures")
  b = eval_studio.capture_views(cfg, eval_studio.open_split(cfg, "train"), 1, 4)
  np.testing.assert_array_equal(a.truth, b.truth)
  np.testing.assert_array_equal(a.scene.E, b.scene.E)


def test_capture_folder_head_point_from_landmarks_within_one_percent(studio, tmp_path):
  rng = np.random.default_rng(0)
  caps = fx.studio_captures(studio)[:2]
  landmarks = {rec["capture_id"]: fx.face_landmarks(rec, rng) for rec in caps}
  src = fx.capture_folder(tmp_path / "rig", caps, head=False, landmarks=landmarks)
  (src / "images" / "cam000" / "lonely.png").write_bytes(caps[0]["images"][0])
  report = run("capture-folder", src, tmp_path / "out")
  assert report["skipped"] == [{"item": "lonely", "reason": "only 1 view(s); a capture needs two"}]
  notes = [n for n in report["notes"] if "reprojection residual" in n]
  assert len(notes) == 2 and "6 landmarks in 12 views" in notes[0]
  for want, rec in zip(caps, records(tmp_path / "out" / "captures")):
    distance = np.linalg.norm(cameras.camera_centers(want["E"]) - want["head_point"], axis=1).mean()
    error = np.linalg.norm(rec["head_point"] - want["head_point"])
    assert error < 0.01 * distance, (error, distance)
  # Without a head pose or landmarks a capture is skipped, and with nothing left the job fails.
  bare = fx.capture_folder(tmp_path / "bare", caps[:1], head=False)
  with pytest.raises(FileNotFoundError, match="nothing to convert.*no landmarks in .*landmarks"):
    run("capture-folder", bare, tmp_path / "out2")


def test_capture_folder_alpha_masks_and_bad_layouts(studio, tmp_path):
  caps = fx.studio_captures(studio)[:1]
  rec = caps[0]
  # A view given as RGBA without a mask file: its alpha channel is the mask.
  src = fx.capture_folder(tmp_path / "rgba", caps)
  image = schemas.decode_image(rec["images"][2])
  alpha = schemas.decode_image(rec["masks"][2], mode="L")
  (src / "images" / "cam002" / f"{rec['capture_id']}.png").write_bytes(
    fx.png(np.dstack([image, alpha]))
  )
  os.remove(src / "masks" / "cam002" / f"{rec['capture_id']}.png")
  run("capture-folder", src, tmp_path / "out_rgba")
  got = records(tmp_path / "out_rgba" / "captures")[0]
  np.testing.assert_array_equal(schemas.decode_image(got["images"][2]), image)
  np.testing.assert_array_equal(schemas.decode_image(got["masks"][2], mode="L"), alpha)
  # Missing cameras.json, broken captures.json, images of another size than cameras.json gives.
  src = fx.capture_folder(tmp_path / "rig", caps)
  os.remove(src / "cameras.json")
  with pytest.raises(FileNotFoundError, match=r"rig/cameras.json not found"):
    run("capture-folder", src, tmp_path / "out")
  src = fx.capture_folder(tmp_path / "rig2", caps)
  (src / "captures.json").write_text("{broken")
  with pytest.raises(InputError, match=r"rig2/captures.json: not valid JSON"):
    run("capture-folder", src, tmp_path / "out")
  src = fx.capture_folder(tmp_path / "rig3", caps)
  orbits.cameras_to_json(src / "cameras.json", rec["K"], rec["E"], rec["camera_names"], (40, 48))
  with pytest.raises(
    InputError, match=r"cam000/s000000_m00.png: 48x48 pixels but cameras.json gives 40x48"
  ):
    run("capture-folder", src, tmp_path / "out")


def test_split_by_subject_is_deterministic_resumable_and_parallel(studio, tmp_path):
  caps = fx.studio_captures(studio)
  subjects = {r["capture_id"]: f"person{i % 5}" for i, r in enumerate(caps)}
  src = fx.capture_folder(tmp_path / "rig", caps, subjects=subjects)
  out = tmp_path / "out"
  kw = dict(split_by="subject", val=0.3, test=0.3, records_per_shard=1)
  first = run("capture-folder", src, out, workers=2, **kw)
  want = {s: convert.subject_split(s, 0.3, 0.3) for s in set(subjects.values())}
  seen = {}
  for split in first["splits"]:
    for rec in records(out / "captures", split):
      key = subjects[rec["capture_id"]]
      assert want[key] == split and rec["subject_id"] == convert.subject_number(key)
      seen[rec["capture_id"]] = split
  assert len(seen) == len(caps) and len(set(seen.values())) >= 2
  # One process writes the same bytes as two.
  run("capture-folder", src, tmp_path / "serial", workers=1, **kw)
  for name in sorted(os.listdir(out / "captures")):
    if name.endswith(".array_record"):
      assert (out / "captures" / name).read_bytes() == (
        tmp_path / "serial" / "captures" / name
      ).read_bytes()
  # Run again after losing one shard: the others are kept, the lost one is rewritten.
  split, entry = next(iter(writer.read_index(str(out / "captures"))["splits"].items()))
  os.remove(out / "captures" / entry["shards"][0]["file"])
  again = run("capture-folder", src, out, **kw)
  assert again["splits"][split]["shards_kept"] == len(entry["shards"]) - 1
  assert again["splits"][split]["records"] == first["splits"][split]["records"]
  with pytest.raises(writer.DatasetError, match="other settings"):
    run("capture-folder", src, out, **{**kw, "val": 0.2})


# ----------------------------------------------------------------------------
# image-folder
# ----------------------------------------------------------------------------
def test_image_folder_boxes_from_metadata_mask_alpha_or_whole_photo(tmp_path):
  src, truth = fx.photo_folder(tmp_path / "photos")
  report = run("image-folder", src, tmp_path / "out")
  assert [s["item"] for s in report["skipped"]] == ["broken.jpg"]
  got = {r["image_id"]: r for r in records(tmp_path / "out" / "images", kind="image")}
  assert set(got) == set(truth)
  for rel, (image, box) in truth.items():
    np.testing.assert_array_equal(schemas.decode_image(got[rel]["image"]), image)
    np.testing.assert_allclose(got[rel]["person_box"], box)
    assert got[rel]["subject_id"] == convert.subject_number(rel.split(os.sep)[0])
  assert got[os.path.join("person1", "photo0.png")]["quality"] == 0.5


# ----------------------------------------------------------------------------
# pippo-samples
# ----------------------------------------------------------------------------
def test_release_samples_need_allow_pickle_and_convert(tmp_path):
  src, truth = fx.release_samples(tmp_path / "samples")
  with pytest.raises(
    InputError, match=r"sample_0.npy: .*unpickling can run arbitrary code.*--allow-pickle"
  ):
    run("pippo-samples", src, tmp_path / "out")
  assert not (tmp_path / "out" / "captures").exists()
  report = run("pippo-samples", src, tmp_path / "out", options={"allow_pickle": True})
  assert "no head pose" in report["notes"][0]
  side = 64
  for rec in records(tmp_path / "out" / "captures"):
    t = truth[rec["capture_id"]]
    for a, want in zip(rec["images"], t["video"][:, 0].transpose(0, 2, 3, 1)):
      np.testing.assert_array_equal(schemas.decode_image(a), want.astype(np.uint8))
    np.testing.assert_array_equal(rec["E"], t["E"])
    # Independent reference: project in the 4096 x 2668 frame, then crop rows 714.. and scale.
    uv_frame = head_pixels(t["K_frame"], t["E"], t["head"])
    want = (uv_frame - [0, (4096 - 2668) / 2]) * side / 2668
    assert np.abs(head_pixels(rec["K"], rec["E"], rec["head_point"]) - want).max() < 0.5
    assert rec["camera_names"][0].startswith("40")


# ----------------------------------------------------------------------------
# ava256 and goliath
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", ["ava256", "goliath"])
def test_studio_captures_convert_with_square_crop(tmp_path, dataset):
  folder, truth = fx.studio_capture(tmp_path / "src", dataset)
  opts = {"frame_size": "96x64", "resolution": 64, "frames_per_capture": 0}
  report = run(dataset, tmp_path / "src", tmp_path / "out", options=opts)
  assert report["splits"]["train"]["records"] == 2 and not report["skipped"]
  for rec in records(tmp_path / "out" / "captures"):
    frame = int(rec["capture_id"].rsplit("/", 1)[1])
    assert rec["camera_names"] == truth["names"]
    assert rec["subject_id"] == convert.subject_number("aan112")
    for c, name in enumerate(truth["names"]):
      with zipfile.ZipFile(folder / "image" / f"cam{name}.zip") as z:
        stored = np.asarray(
          Image.open(io.BytesIO(z.read(f"cam{name}/{frame:06d}.avif"))).convert("RGB")
        )
      np.testing.assert_array_equal(schemas.decode_image(rec["images"][c]), stored[16:80])
      want_mask = np.where(truth["labels"][name, frame] > 0, 255, 0)[16:80]
      np.testing.assert_array_equal(schemas.decode_image(rec["masks"][c], mode="L"), want_mask)
    # K: the true (centre-pixel) intrinsics, rows 16.. kept.
    np.testing.assert_allclose(rec["K"][:, 1, 2], truth["K"][:, 1, 2] - 16, atol=1e-9)
    np.testing.assert_allclose(rec["K"][:, 0, 2], truth["K"][:, 0, 2], atol=1e-9)
    np.testing.assert_allclose(rec["E"], truth["E"], atol=1e-12)
    uv = head_pixels(rec["K"], rec["E"], rec["head_point"])
    want = head_pixels(truth["K"], truth["E"], truth["head"][frame]) - [0, 16]
    assert np.abs(uv - want).max() < 0.5


def test_ava256_full_frame_calibration_with_downscaled_images(tmp_path):
  # The calibration is for 4096 x 2668 frames, the stored images are 1/32 of that (128 x 83).
  _, truth = fx.studio_capture(
    tmp_path / "src", "ava256", frame_hw=(128, 83), calib_hw=(4096, 2668)
  )
  run("ava256", tmp_path / "src", tmp_path / "out", options={"resolution": 64})
  rec = records(tmp_path / "out" / "captures")[0]
  assert schemas.decode_image(rec["images"][0]).shape == (64, 64, 3)
  # Independent reference: project into the stored image, drop (128 - 83) / 2 rows, scale 64/83.
  uv = head_pixels(truth["K"], truth["E"], truth["head"][100])
  want = (uv - [0, 22.5]) * 64 / 83
  assert np.abs(head_pixels(rec["K"], rec["E"], rec["head_point"]) - want).max() < 0.5


@pytest.mark.parametrize(
  "dataset, remove, message",
  [
    ("ava256", "head_pose/head_pose.zip", r"head_pose/head_pose.zip not found"),
    ("ava256", "frame_list.csv", r"decoder/frame_list.csv not found"),
    (
      "goliath",
      "keypoints_3d/keypoints_3d.zip",
      r"head_pose.zip not found, nor .*keypoints_3d.zip",
    ),
    ("goliath", "camera_calibration.json", r"src/camera_calibration.json not found"),
  ],
)
def test_studio_capture_partial_layouts_name_the_missing_file(tmp_path, dataset, remove, message):
  folder, _ = fx.studio_capture(tmp_path / "src", dataset, frames=(100,), views=2)
  os.remove(folder / remove)
  with pytest.raises(FileNotFoundError, match=message):
    run(dataset, tmp_path / "src", tmp_path / "out", options={"frame_size": "96x64"})


def test_samples_and_photos_bad_layouts_name_the_file(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match=r"empty/\*.npy not found"):
    run("pippo-samples", tmp_path / "empty", tmp_path / "out", options={"allow_pickle": True})
  with pytest.raises(FileNotFoundError, match=r"empty: nothing to convert as image-folder"):
    run("image-folder", tmp_path / "empty", tmp_path / "out")
  src, _ = fx.release_samples(tmp_path / "samples", num=1, views=2)
  sample = np.load(src / "sample_0.npy", allow_pickle=True).item()
  del sample["cam_extrin"]
  np.save(src / "sample_0.npy", np.array(sample, dtype=object), allow_pickle=True)
  with pytest.raises(InputError, match=r"sample_0.npy: no 'cam_extrin' entry"):
    run("pippo-samples", src, tmp_path / "out", options={"allow_pickle": True})
  src, _ = fx.release_samples(tmp_path / "samples2", num=1, views=2)
  with pytest.raises(InputError, match=r"outside the 64x64 views.*--sample-intrinsics frame"):
    run(
      "pippo-samples",
      src,
      tmp_path / "out",
      options={"allow_pickle": True, "sample_intrinsics": "image"},
    )
  with pytest.raises(FileNotFoundError, match=r"--src .*nowhere: no such directory"):
    run("image-folder", tmp_path / "nowhere", tmp_path / "out")


# ----------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------
def test_cli_refuses_pickles_and_bad_flags(tmp_path, capsys):
  src, _ = fx.release_samples(tmp_path / "samples", num=1, views=2)
  argv = ["convert", "--format=pippo-samples", f"--src={src}", f"--out={tmp_path / 'out'}"]
  with pytest.raises(SystemExit) as e:
    data_cli.main(argv)
  assert e.value.code == 1
  err = capsys.readouterr().err
  assert err.startswith("pippo-data: error: ") and "sample_0.npy" in err and "--allow-pickle" in err
  with pytest.raises(SystemExit) as e:
    data_cli.main([*argv, "--val=0.6", "--test=0.5"])
  assert e.value.code == 2
  with pytest.raises(SystemExit) as e:
    data_cli.main(["convert", "--help"])
  assert e.value.code == 0
  text = capsys.readouterr().out
  assert "allow-pickle:" in text and "--split-by:" in text and "capture-folder" in text
  assert data_cli.main([*argv, "--allow-pickle", "--split-by=none"]) == 0
  out = capsys.readouterr()
  assert "1 records of 1 subjects" in out.out and "--allow-pickle: unpickling" in out.err
  report = json.loads((tmp_path / "out" / "captures" / convert.REPORT_FILE).read_text())
  assert report["format"] == "pippo-samples" and report["splits"]["train"]["records"] == 1


def test_goliath_head_from_keypoint_files_of_each_shape():
  rows = np.arange(30, dtype=float).reshape(10, 3)
  want = rows[:5].mean(0)
  h = studio_captures.head_from_keypoints
  np.testing.assert_allclose(h(rows.tolist(), "", "f.json"), want)
  np.testing.assert_allclose(h({"keypoints": rows.tolist()}, "", "f.json"), want)
  np.testing.assert_allclose(h(rows.tolist(), "7,9", "f.json"), rows[[7, 9]].mean(0))
  named = {"nose": [0, 0, 0], "left_eye": [2, 0, 0], "right_ear": [4, 6, 0], "left_knee": [9, 9, 9]}
  np.testing.assert_allclose(h(named, "", "f.json"), [2, 2, 0])
  with pytest.raises(InputError, match=r"f.json: no keypoints named \['chin'\]"):
    h(named, "nose,chin", "f.json")
  with pytest.raises(InputError, match=r"f.json: expected at least 5 keypoint rows"):
    h(rows[:3].tolist(), "", "f.json")
