"""Evaluation of a model on held-out studio captures: generate, score, report.

`pippo-eval` and the training loop's periodic evaluation (`train.eval_every`) run the same three
steps:

1. `generate`: for each of the first N captures of a split, the inputs of `pippo-sample
   --capture` (`inference.studio.capture_views`: the most frontal camera as reference, `views`
   others spread in azimuth as targets) are sampled with the checkpoint's sampler, one capture
   per call, capture i with `jax.random.fold_in(key(seed), i)` (so a capture's views do not
   depend on N). With a mesh, inputs are replicated on it and the outputs gathered, so every
   process of a multi-host run takes part in every collective.
2. `score` (host side, process 0): PSNR, SSIM and LPIPS of every generated view against its
   ground truth, over the whole image and over the person (the view's mask), averaged over the
   views of a capture and then over captures; the reprojection error (`reprojection`) of each
   capture's generated views and, as the floor, of its ground-truth views. Views smaller than
   `match_size` are enlarged (bicubic, an integer factor, the intrinsics scaled with them) before
   keypoint matching, since SIFT finds few keypoints in a 64 px image; RE is reported in pixels
   of the model's resolution and in % of the image size.
3. `write_report`: metrics.json, table.md (the layout of the paper's Tables 3 and 5),
   best_worst.png (the best and the worst capture by PSNR: reference and generated views over
   the ground truth, and the keypoint matches of one generated view pair).
"""

import dataclasses
import json
import math
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from PIL import Image, ImageDraw

from pippo_jax.evaluation import metrics, reprojection
from pippo_jax.geometry import cameras
from pippo_jax.inference import outputs, scene, studio
from pippo_jax.inference import sample as sample_lib
from pippo_jax.parallel import sharding


@dataclasses.dataclass
class Samples:
  """Generated views and their ground truth, N captures x V views."""

  names: list[str]
  reference: np.ndarray  # uint8 [N, H, W, 3]
  generated: np.ndarray  # uint8 [N, V, H, W, 3]
  truth: np.ndarray  # uint8 [N, V, H, W, 3]
  masks: np.ndarray  # uint8 [N, V, H, W]
  K: np.ndarray  # [N, V, 3, 3]
  E: np.ndarray  # [N, V, 4, 4]


def load_captures(data_cfg, split: str, num: int, views: int) -> list[studio.CaptureViews]:
  """The first `num` captures of `split` (all when num <= 0) as sampling inputs."""
  source = studio.open_split(data_cfg, split)
  count = len(source) if num <= 0 else min(num, len(source))
  return [studio.capture_views(data_cfg, source, i, views) for i in range(count)]


def generate(gen, sampler, params, captures, *, seed: int = 0, mesh=None, progress=None) -> Samples:
  """Samples every capture's target views with `sampler` (`gen.sampler(...)`; module docstring,
  step 1). With `mesh`, the inputs are replicated on it (`params` may be sharded there); the
  model's activation constraints stay off, so one capture per call needs no batch sharding."""
  codec = gen.codec
  put = (lambda tree: tree) if mesh is None else (lambda tree: sharding.replicate(tree, mesh))
  views = []
  for i, cap in enumerate(captures):
    batch = scene.scene_batch(
      cap.reference, cap.scene, gen.config.data, controls=gen.cfg.use_control_mlp
    )
    key = jax.random.wrap_key_data(
      put(jax.random.key_data(jax.random.fold_in(jax.random.key(seed), i)))
    )
    out = sampler(params, codec, put(batch), key)
    views.append(np.asarray(multihost_utils.process_allgather(out, tiled=True))[0])
    if progress is not None:
      progress(i + 1, len(captures))
  return Samples(
    names=[c.where for c in captures],
    reference=np.stack([c.reference for c in captures]),
    generated=np.stack(views),
    truth=np.stack([c.truth for c in captures]),
    masks=np.stack([c.masks for c in captures]),
    K=np.stack([c.scene.K for c in captures]),
    E=np.stack([c.scene.E for c in captures]),
  )


def enlarge(images: np.ndarray, K: np.ndarray, size: int):
  """(images [..., H, W, 3] enlarged by the integer factor reaching `size`, K scaled, factor)."""
  res = images.shape[-2]
  f = max(1, math.ceil(size / res))
  if f == 1:
    return images, K, 1
  flat = images.reshape(-1, *images.shape[-3:])
  big = np.stack(
    [np.asarray(Image.fromarray(x).resize((res * f,) * 2, Image.BICUBIC)) for x in flat]
  )
  K = cameras.resize_intrinsics(K, (res, res), (res * f, res * f))
  return big.reshape(*images.shape[:-3], res * f, res * f, 3), K, f


def score(samples: Samples, *, matcher=None, lpips_net: str = "vgg", match_size: int = 256):
  """Per-capture and mean metrics (module docstring, step 2) as a JSON-ready dict."""
  matcher = reprojection.SiftMatcher() if matcher is None else matcher
  gen, gt, mask = samples.generated, samples.truth, samples.masks > 127
  image = {
    "psnr": metrics.psnr(gen, gt),
    "ssim": metrics.ssim(gen, gt),
    "lpips": metrics.lpips(gen, gt, net=lpips_net),
    "psnr_person": metrics.psnr(gen, gt, mask),
    "ssim_person": metrics.ssim(gen, gt, mask),
    "lpips_person": metrics.lpips(gen, gt, net=lpips_net, mask=mask),
  }
  image = {k: np.asarray(v, np.float64) for k, v in image.items()}  # [N, V]
  captures, res = [], gen.shape[-2]
  for n, name in enumerate(samples.names):
    big_gen, K, f = enlarge(gen[n], samples.K[n], match_size)
    big_gt, _, _ = enlarge(gt[n], samples.K[n], match_size)
    re = reprojection.reprojection_error(
      big_gen, K, samples.E[n], ground_truth=big_gt, matcher=matcher
    )
    row = {"capture": name, **{k: _mean(v[n]) for k, v in image.items()}}
    for key in ("gen_balanced", "gen_unbalanced", "gt_balanced", "gt_unbalanced"):
      row[f"re_{key}"] = re[key] / f  # pixels at the model's resolution
      row[f"re_{key}_pct"] = re[f"{key}_pct"]
    row["re_pairs"] = re["pairs"]
    row["re_matches"] = re["gen_pair_matches"][0]
    row["re_gt_matches"] = re["gt_pair_matches"]
    captures.append(row)
  means = {
    k: _mean([c[k] for c in captures])
    for k in captures[0]
    if k.startswith(("psnr", "ssim", "lpips", "re_g"))
  }
  for kind in ("balanced", "unbalanced"):
    for unit in ("", "_pct"):
      means[f"re_deviation_{kind}{unit}"] = _mean(
        [c[f"re_gen_{kind}{unit}"] - c[f"re_gt_{kind}{unit}"] for c in captures]
      )
  return {
    "captures": captures,
    "mean": means,
    "num_captures": len(captures),
    "views": int(gen.shape[1]),
    "resolution": int(res),
    "matcher": reprojection.matcher_name(matcher),
    "match_size": int(match_size),
    "lpips_net": lpips_net,
  }


def _mean(values) -> float:
  values = np.asarray(values, np.float64)
  finite = values[np.isfinite(values)]
  return float(finite.mean()) if finite.size else float("nan")


def _fmt(x, scale=1.0, digits=2) -> str:
  return "n/a" if x is None or not np.isfinite(x) else f"{x * scale:.{digits}f}"


def _re(m: dict, row: str, unit: str = "") -> str:
  prefix = "re_deviation" if row == "deviation" else f"re_{row}"
  return f"{_fmt(m[f'{prefix}_balanced{unit}'])} / {_fmt(m[f'{prefix}_unbalanced{unit}'])}"


def markdown_table(result: dict, title: str = "") -> str:
  """The paper's Table 3/5 layout: RE (px and %), PSNR, SSIM x 100, LPIPS x 100."""
  m = result["mean"]
  lines = [
    title
    or (
      f"{counted(result['num_captures'], 'capture')} of the {result.get('split', 'test')} split x "
      f"{result['views']} views at "
      f"{result['resolution']} px; RE balanced (pairs matched in every row) / unbalanced "
      f"(each row's matched pairs), matcher {result['matcher']} on views enlarged to "
      f">= {result['match_size']} px"
    ),
    "",
    "| | RE px ↓ | RE % ↓ | PSNR ↑ | SSIM x100 ↑ | LPIPS x100 ↓ |",
    "|---|---|---|---|---|---|",
    f"| generated | {_re(m, 'gen')} | {_re(m, 'gen', '_pct')} | "
    f"{_fmt(m['psnr'])} | {_fmt(m['ssim'], 100, 1)} | {_fmt(m['lpips'], 100, 1)} |",
    f"| ground truth (RE floor) | {_re(m, 'gt')} | {_re(m, 'gt', '_pct')} | | | |",
    f"| generated - ground truth | {_re(m, 'deviation')} | {_re(m, 'deviation', '_pct')} | | | |",
    f"| generated, person only | | | {_fmt(m['psnr_person'])} | "
    f"{_fmt(m['ssim_person'], 100, 1)} | {_fmt(m['lpips_person'], 100, 1)} |",
  ]
  return "\n".join(lines) + "\n"


def counted(n: int, noun: str) -> str:
  """'1 capture', '3 captures'."""
  return f"{n} {noun}{'' if n == 1 else 's'}"


def scalars(result: dict) -> dict:
  """The mean metrics as flat `eval/...` scalars (TensorBoard, metrics.jsonl)."""
  return {f"eval/{k}": v for k, v in result["mean"].items() if np.isfinite(v)}


def _draw_matches(img1, img2, matcher, limit: int = 40) -> np.ndarray:
  """Two views side by side with up to `limit` of their keypoint matches drawn."""
  uv1, uv2 = matcher(img1, img2)
  canvas = Image.fromarray(np.concatenate([img1, img2], 1))
  draw = ImageDraw.Draw(canvas)
  w = img1.shape[1]
  for (x1, y1), (x2, y2) in list(zip(uv1, uv2))[:limit]:
    draw.line((x1, y1, x2 + w, y2), fill=(0, 200, 0), width=1)
  draw.text((4, 4), f"{len(uv1)} matches", fill=(200, 0, 0))
  return np.asarray(canvas)


def best_worst_picture(samples: Samples, result: dict, *, matcher=None, match_size=256):
  """Best and worst capture by PSNR: contact sheet over the truth, then one pair's matches."""
  matcher = reprojection.SiftMatcher() if matcher is None else matcher
  psnrs = [c["psnr"] for c in result["captures"]]
  order = [int(np.nanargmax(psnrs)), int(np.nanargmin(psnrs))]
  blocks = []
  labels = ["best", "worst"] if order[0] != order[1] else ["only capture"]
  for n, label in zip(order, labels):
    sheet = outputs.contact_sheet(
      samples.reference[n], samples.generated[n], truth=samples.truth[n]
    )
    i, j = result["captures"][n]["re_pairs"][0]
    big, _, _ = enlarge(samples.generated[n][[i, j]], samples.K[n][[i, j]], match_size)
    pair = _draw_matches(big[0], big[1], matcher)
    blocks.append(_caption(sheet, f"{label}, PSNR {psnrs[n]:.2f} dB: {samples.names[n]}"))
    blocks.append(_caption(pair, f"generated views {i} and {j}: keypoint matches"))
  width = max(b.shape[1] for b in blocks)
  padded = [
    np.pad(b, ((0, 8), (0, width - b.shape[1]), (0, 0)), constant_values=255) for b in blocks
  ]
  return np.concatenate(padded, 0)


def _caption(image: np.ndarray, text: str) -> np.ndarray:
  strip = Image.new("RGB", (image.shape[1], 16), (255, 255, 255))
  ImageDraw.Draw(strip).text((2, 2), text, fill=(0, 0, 0))
  return np.concatenate([np.asarray(strip), image], 0)


def write_report(folder: str, samples: Samples, result: dict, *, matcher=None, match_size=256):
  """metrics.json, table.md and best_worst.png in `folder` (module docstring, step 3)."""
  with open(os.path.join(folder, "metrics.json"), "w") as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(folder, "table.md"), "w") as f:
    f.write(markdown_table(result))
  picture = best_worst_picture(samples, result, matcher=matcher, match_size=match_size)
  sample_lib.save_png(picture, os.path.join(folder, "best_worst.png"))
