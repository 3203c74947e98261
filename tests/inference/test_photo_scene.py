"""Photos in (formats, masks, errors), the cameras placed for them, and view chunking."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from pippo_jax import errors
from pippo_jax.data_pipelines import imageops
from pippo_jax.diffusion import schedule as schedule_lib
from pippo_jax.geometry import cameras
from pippo_jax.inference import outputs, photo, sample, scene

RES = 64
BG = (255, 255, 255)


def _figure(h=240, w=180, background=(30, 120, 200)):
  """A plain-background photo of a standing 'person' (head disc, body box) and its mask."""
  yy, xx = np.mgrid[:h, :w]
  head = (yy - 40) ** 2 + (xx - 90) ** 2 < 18**2
  body = (yy > 55) & (yy < 220) & (abs(xx - 90) < 30)
  mask = head | body
  rgb = np.empty((h, w, 3), np.uint8)
  rgb[:] = background
  rgb[mask] = (220, 60, 40)
  return rgb, (mask * 255).astype(np.uint8)


def _expected(rgb, mask):
  """What the training transform makes of a view with this mask (imageops directly)."""
  box = imageops.square_box(imageops.mask_box(mask), 0.1)
  return imageops.crop_resize(imageops.composite(rgb, mask, BG), box, (RES, RES), BG)


def _prepare(path, **kw):
  return photo.prepare_reference(str(path), RES, background=BG, margin=0.1, **kw)


def test_person_found_by_alpha_plain_background_and_mask(tmp_path):
  rgb, mask = _figure()
  want = _expected(rgb, mask)
  rgba = np.concatenate([rgb, mask[..., None]], -1)
  Image.fromarray(rgba).save(tmp_path / "cutout.png")
  Image.fromarray(rgb).save(tmp_path / "plain.png")
  Image.fromarray(rgb).save(tmp_path / "plain.webp", lossless=True)
  Image.fromarray(mask).save(tmp_path / "mask.png")
  noisy = rgb.copy()
  noisy[::2] = 255 - noisy[::2]  # not a plain background: only --mask finds the person
  Image.fromarray(noisy).save(tmp_path / "busy.png")

  cut = _prepare(tmp_path / "cutout.png")
  assert cut.source == "alpha" and np.array_equal(cut.image, want)
  for name in ("plain.png", "plain.webp"):
    plain = _prepare(tmp_path / name)
    assert plain.source == "plain background"
    assert np.array_equal(plain.image, want)  # the 3x3 opening keeps the shapes' pixels
  masked = _prepare(tmp_path / "busy.png", mask_path=str(tmp_path / "mask.png"))
  assert masked.source == "mask"
  assert np.array_equal(masked.image, _expected(noisy, mask))
  whole = _prepare(tmp_path / "busy.png")
  assert whole.source == "none" and whole.person_box is None
  # The person fills the crop's height (margin 0.1 each side) and is centred.
  x, y, w, h = cut.person_box
  assert abs(h - RES / 1.2) <= 1.5 and abs(y - (RES - h) / 2) <= 1.0


def test_exif_orientation_greyscale_and_16_bit(tmp_path):
  rgb, mask = _figure()
  # Stored rotated 90 degrees with EXIF orientation 6 ("rotate 90 CW to display"): the reader
  # must show the upright photo.
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(np.rot90(rgb, 1)).save(tmp_path / "rot.jpg", exif=exif, quality=100)
  upright, _ = photo.read_rgba(str(tmp_path / "rot.jpg"))
  assert upright.shape == rgb.shape
  assert np.abs(upright.astype(int) - rgb).mean() < 3
  grey = rgb.mean(-1).astype(np.uint8)
  Image.fromarray(grey).save(tmp_path / "grey.png")
  g, alpha = photo.read_rgba(str(tmp_path / "grey.png"))
  assert g.shape == rgb.shape and alpha is None and np.array_equal(g[..., 0], grey)
  Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "deep.png")
  d, _ = photo.read_rgba(str(tmp_path / "deep.png"))
  assert np.abs(d[..., 0].astype(int) - grey).max() <= 1


def test_bad_photos_name_the_file(tmp_path):
  (tmp_path / "empty.jpg").write_bytes(b"")
  (tmp_path / "notes.png").write_text("not an image")
  Image.new("RGB", (20, 20)).save(tmp_path / "tiny.png")
  Image.new("RGBA", (100, 100), (255, 0, 0, 0)).save(tmp_path / "clear.png")  # nobody there
  Image.new("RGB", (100, 80), (255, 255, 255)).save(tmp_path / "blank.png")
  rgb, _ = _figure()
  Image.fromarray(rgb).save(tmp_path / "ok.png")
  Image.new("L", (10, 10)).resize((40, 40)).save(tmp_path / "small_mask.png")
  cases = {
    "missing.jpg": "no such file",
    "empty.jpg": "empty",
    "notes.png": "not a readable image",
    "tiny.png": "too small",
    "clear.png": "no person found",
    "blank.png": "no person found",
  }
  for name, message in cases.items():
    with pytest.raises(errors.InputError, match=message) as e:
      _prepare(tmp_path / name)
    assert name in str(e.value)
  with pytest.raises(errors.InputError, match="small_mask.png.*40x40"):
    _prepare(tmp_path / "ok.png", mask_path=str(tmp_path / "small_mask.png"))


def test_photo_camera_looks_at_the_head_pixel_and_frames_the_person(tmp_path):
  rgb, mask = _figure()
  Image.fromarray(np.concatenate([rgb, mask[..., None]], -1)).save(tmp_path / "p.png")
  ref = _prepare(tmp_path / "p.png")
  K, E, scale = scene.photo_camera(ref.person_box, RES, ref.mask, distance=1.0)
  # The head (the origin of the head frame) projects onto the head's pixel: the middle of the top
  # rows of the mask, HEAD_BELOW_TOP of the person's height below the top.
  uv, depth = cameras.project_points(K, E, np.zeros((1, 3)))
  x, top, w, h = ref.person_box
  head_rows = ref.mask[int(top) : int(top + 2 * scene.HEAD_BELOW_TOP * h)] > 127
  assert np.allclose(uv[0], [np.flatnonzero(head_rows.any(0)).mean() + 0.5, top + 0.07 * h])
  assert np.isclose(depth[0], 1.0) and np.isclose(scale, 1 / scene.CAMERA_DISTANCE_M)
  # A PERSON_HEIGHT_M tall person at the camera's distance spans the box's height.
  feet = np.array([[0.0, -scene.PERSON_HEIGHT_M * scale, 0.0]])
  crown = feet + [0.0, scene.PERSON_HEIGHT_M * scale, 0.0]
  span = cameras.project_points(K, E, feet)[0][0, 1] - cameras.project_points(K, E, crown)[0][0, 1]
  assert np.isclose(span, h, rtol=1e-9)

  sc = scene.photo_scene(K, E, scale, RES, num_views=8, distance=1.0, elevations_deg=(0, 20))
  assert sc.num_views == 16 and np.allclose(sc.K, K)
  centres = cameras.camera_centers(sc.E)
  assert np.allclose(np.linalg.norm(centres, axis=-1), 1.0)
  assert np.allclose(centres[0], cameras.camera_centers(E))  # azimuth 0 = the photo's camera
  # Round trip through the cameras JSON, reference included.
  scene.write_cameras(tmp_path / "cams.json", sc)
  back = scene.read_cameras(tmp_path / "cams.json", RES)
  assert back.names == sc.names and np.isclose(back.anchor_scale, scale)
  assert np.allclose(back.E, sc.E) and np.allclose(back.ref_K, K) and np.allclose(back.ref_E, E)
  # Intrinsics of another image size are rescaled to the model's; without a reference camera
  # the photo's camera is used.
  data = json.loads((tmp_path / "cams.json").read_text())
  data["cameras"] = [c for c in data["cameras"] if c["name"] != "reference"]
  for c in data["cameras"]:
    c["K"] = (np.diag([2, 2, 1]) @ np.array(c["K"])).tolist()
    c["height"] = c["width"] = 2 * RES
  (tmp_path / "big.json").write_text(json.dumps(data))
  big = scene.read_cameras(tmp_path / "big.json", RES, (K, E, scale))
  assert np.allclose(big.K, sc.K) and np.allclose(big.ref_E, E)
  (tmp_path / "bad.json").write_text('{"cameras": [{"name": "c0", "K": [[1]]}]}')
  with pytest.raises(errors.InputError, match="bad.json"):
    scene.read_cameras(tmp_path / "bad.json", RES, (K, E, scale))


def test_view_chunks_cover_every_view_with_shared_anchors():
  assert sample.view_chunks(8, 0) is None and sample.view_chunks(8, 8) is None
  chunks = sample.view_chunks(13, 5, 2)
  assert chunks.shape == (4, 5)
  anchors = chunks[:, :2]
  assert (anchors == anchors[0]).all() and list(anchors[0]) == [0, 6]
  assert set(chunks.ravel()) == set(range(13))
  assert all(len(set(row)) == 5 for row in chunks)  # no view twice in one pass
  with pytest.raises(ValueError, match="anchor_views"):
    sample.view_chunks(13, 5, 5)


class _PerViewModel:
  """A denoiser whose output for a view depends on that view only (and on the reference)."""

  def apply(self, variables, x_t, t, cond, drop, attention_biasing=False):
    w = variables["params"]["w"]
    pose = cond["cam_pose"][:, :, :3, None, None]  # [B, V, 3, 1, 1] -> broadcast over pixels
    ref = cond["ref_latent"].mean(axis=(1, 2, 3))[:, None, None, None, None]
    out = w * x_t + 0.1 * jnp.moveaxis(pose, 2, -1) + ref
    return jnp.where(drop["ref"][:, None, None, None, None], 0.5 * out, out)


def test_chunked_sampling_equals_joint_for_a_per_view_model(monkeypatch):
  """With a per-view denoiser, sampling in passes of 3 (1 shared) equals one joint pass, with
  guidance and the SV3D triangle (which spans all views, not each pass)."""
  monkeypatch.setattr(sample.codec_lib, "to_uint8", lambda x: x)  # compare the latents

  class Cfg:
    latent_size, latent_channels = 4, 3

  codec = type("Codec", (), {})()
  codec.encode = lambda images, key=None: images.astype(jnp.float32)[..., ::16, ::16, :] / 255
  codec.decode = lambda z: z
  v = 7
  rng = np.random.default_rng(0)
  batch = {
    "ref_image": rng.integers(0, 255, (1, 64, 64, 3), dtype=np.uint8),
    "target_cam_pose": rng.normal(size=(1, v, 16)).astype(np.float32),
  }
  cond_batch = dict(batch, ref_cam_pose=np.zeros((1, 16), np.float32))

  class Cfg2(Cfg):
    use_cam_mlp, use_control_mlp = True, False

  sched = schedule_lib.cosine_schedule(1000)
  params = {"w": jnp.float32(0.3)}

  def run(chunks):
    return sample.sample_views(
      _PerViewModel(),
      params,
      cond_batch,
      codec,
      Cfg2,
      sched,
      jax.random.key(3),
      num_steps=5,
      scales={"ref": 2.0},
      triangular=True,
      parameterization="eps",
      chunks=chunks,
    )

  joint = np.asarray(run(None), np.float64)
  chunked = np.asarray(run(sample.view_chunks(v, 3, 1)), np.float64)
  assert joint.shape == (1, v, 4, 4, 3)
  np.testing.assert_allclose(chunked, joint, atol=1e-5)


def test_contact_sheet_layout():
  s, g = 128, outputs.GAP
  ref = np.zeros((s, s, 3), np.uint8)
  views = np.full((12, s, s, 3), 100, np.uint8)
  sheet = outputs.contact_sheet(ref, views)  # 13 cells -> 2 rows of 7
  assert sheet.shape == (2 * s + g, 7 * s + 6 * g, 3)
  with_truth = outputs.contact_sheet(ref, views, truth=views + 50)
  assert with_truth.shape[0] == 4 * s + 3 * g
  # Row 2 is the truth under row 1: its first cell is blank, its second the first truth view
  # (labelled in the top-left corner).
  assert (with_truth[s + g : 2 * s + g, :s] == 255).all()
  assert (with_truth[s + g + 20 : 2 * s + g, s + g : 2 * s + g] == 150).all()
  # Small views are enlarged by an integer factor (64 px -> 2x).
  small = outputs.contact_sheet(ref[:64, :64], views[:3, :64, :64])
  assert small.shape == (s, 4 * s + 3 * g, 3)
