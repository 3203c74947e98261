r"""Training-step time of the authors' PyTorch Pippo denoiser and ours, side by side.

  git clone https://github.com/facebookresearch/pippo /path/to/pippo   # the authors' release
  pip install -e .[release]                                           # torch, diffusers, omegaconf
  python benchmarks/vs_release.py --release-src /path/to/pippo \
      [--config configs/p3_posttrain.py:size=tiny,res=128] [--batch 1,2] [--dtype float32,bfloat16]

What is compared is the denoiser's training step on the same config and the same inputs, on CPU:

- The release: its own `latent_diffusion.models.pippo.Pippo`, imported from `--release-src` at run
  time (nothing of it is part of this repository). It is built from the release's
  `config/tiny/128_4v_tiny.yml` (model section) with the sizes of `--config` written over it
  (width, depth, heads, patch, latent and image size, views, camera-MLP hidden size, SIREN layers);
  the script prints any value that differs from the yml (none for the default config). Its SDXL
  VAE is not built and its `encode_image` is the identity, so the latents are fed directly, as on
  our side (`model_step.LatentCodec`). Its step is the release's training iteration (`train.py`):
  `Pippo.forward` (noise and timestep drawn inside, one per sample shared by its views; reference
  latent, camera poses, spatial anchors and Plücker maps as conditions) -> its `DenoisingLoss`
  (MSE to the noise) -> backward -> `clip_grad_norm_(params, grad_clip)` -> `torch.optim.AdamW`
  step with our optimizer's lr, betas, eps and weight decay -> `zero_grad`. float32, train mode;
  `bfloat16` runs the forward and loss under `torch.autocast("cpu", dtype=torch.bfloat16)`, as the
  release's `train.use_amp` does.
- Ours: `benchmarks/model_step.py`'s `build(config).step` (the production `compile_train_step`:
  AdamW, clipping, the non-finite guard, donated state) with `model.dtype` set to the dtype.

Inputs are the same arrays on both sides (`model_step.latent_batch`, seed 0), transposed to the
release's layout: channels first with a time axis of length 1 (x_0 / anchors [B,NV,1,4,h,w],
reference latent [B,1,1,4,h,w], Plücker [B,NV,1,6,H,W], camera poses [B,NV,1,16]). As
`model_step.build` does for ours, every release parameter gets +0.01 so zero-initialised layers are
live. For each dtype and batch size both steps are warmed up, then `--repeats` rounds alternate one
release step and one of ours; the table gives the min and median of each and the ratio of the
mins. Beside them the table gives our step's matmul floor: the FLOPs of the dots in its compiled
program (`parallel.aot.matmul_flops`, loops counted as often as they run) divided by this
machine's matmul peak in that dtype, measured in the same run (`model_step.matmul_peak`): the
time of the step if every matmul ran at the peak and nothing else took any time. The column after
it is the release's min / 1.2, the time a step 1.2x faster than the release's must reach; where
the floor is close to it, no rearrangement of the non-matmul work gets there. Parameter counts are
checked: ours equals the release's minus its per-block cross-attention weights (`cond_attn_norm`,
`cond_attn_proj`, `k_cond_norm`), which the release creates but its self-attention conditioning
(`cond_self_attn`) never uses. The loss of each side's last step is
printed to show both are finite.

Condition dropout is off on both sides (the stage's `diffusion.cond_drop` and the yml's `p_drop_*`
are 0): the release's dropout paths are broken (with `p_drop_control > 0` ControlMLP uses
`zero_embs` before assigning it; the keypoint-encoder dropout in `encode_kpts` uses an undefined
`N`), and its `breakpoint()` calls on errors are disabled (PYTHONBREAKPOINT=0) so a failure
raises instead. Only configs with the camera MLP and ControlMLP (P3) are compared. torch uses
`--threads` threads; XLA's CPU client sizes its own thread pool to the machine, so keep `--threads`
at the machine's core count for a like-for-like comparison.
"""

import argparse
import copy
import gc
import os
import shlex
import statistics
import subprocess
import sys
import time

os.environ["PYTHONBREAKPOINT"] = "0"  # the release calls breakpoint() in its error handlers

import jax
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model_step  # noqa: E402  (sibling module)

from pippo_jax import config_lib, hostmem  # noqa: E402
from pippo_jax.models import params as params_lib  # noqa: E402
from pippo_jax.models.config import ModelConfig  # noqa: E402
from pippo_jax.parallel import aot  # noqa: E402

RELEASE_YML = "config/tiny/128_4v_tiny.yml"
RELEASE_FILES = (
  "latent_diffusion/models/pippo.py",
  "latent_diffusion/models/dit.py",
  "latent_diffusion/models/control_mlp.py",
  "latent_diffusion/losses.py",
  RELEASE_YML,
)
# Per-block cross-attention weights of the release's DiTBlock, unused with cond_self_attn.
CROSS_ATTENTION = ("cond_attn_norm", "cond_attn_proj", "k_cond_norm")
DTYPES = ("float32", "bfloat16")


def fail(message: str):
  """One line on stderr, exit status 2."""
  print(f"vs_release: error: {message}", file=sys.stderr)
  sys.exit(2)


def check_release_src(path: str | None) -> str:
  """The absolute path of a checkout of the release, or exit 2 with one line."""
  hint = "get one with: git clone https://github.com/facebookresearch/pippo DIR"
  if not path:
    fail(f"--release-src DIR is required (a checkout of the authors' release; {hint})")
  if not os.path.isdir(path):
    fail(f"--release-src {path}: not a directory ({hint})")
  missing = [f for f in RELEASE_FILES if not os.path.isfile(os.path.join(path, f))]
  if missing:
    fail(
      f"--release-src {path} is not a checkout of facebookresearch/pippo (no {missing[0]}; {hint})"
    )
  return os.path.abspath(path)


def import_release(src: str):
  """The release's `pippo` and `losses` modules, imported from `src`."""
  sys.path.insert(0, src)
  try:
    from latent_diffusion import losses
    from latent_diffusion.models import pippo
  except ImportError as e:
    fail(f"cannot import the release from {src}: {e} (pip install -e .[release])")
  return pippo, losses


class _NoVAE(torch.nn.Module):
  """Stands in for the release's SDXL VAE: no weights, never called (`encode_image` is replaced)."""

  @classmethod
  def from_pretrained(cls, **kwargs):
    del kwargs
    return cls()


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def release_model_kwargs(src: str, config) -> tuple[dict, list[str]]:
  """`Pippo(**kwargs)` for the stage config: the release's tiny yml with our sizes written over it.

  Returns:
    The constructor arguments, and one "key: yml -> value" string per value that differs from the
    yml (sizes of a config other than the default; none for the default config).
  """
  from omegaconf import OmegaConf

  cfg = ModelConfig.from_config(config.model)
  if not (cfg.use_cam_mlp and cfg.use_control_mlp):
    fail("only configs with the camera MLP and ControlMLP (P3) are compared")
  parameterization = {"eps": "eps", "v": "v"}.get(config.diffusion.prediction)
  if parameterization is None:
    fail(f"diffusion.prediction={config.diffusion.prediction!r}: the release trains eps or v")
  base = OmegaConf.to_container(OmegaConf.load(os.path.join(src, RELEASE_YML)).model, resolve=True)
  kw = copy.deepcopy(base)
  kw.pop("class_name")
  s, c, px, w = cfg.latent_size, cfg.latent_channels, cfg.image_size, cfg.width
  kw.update(
    parameterization=parameterization,
    img_size=px,
    ref_img_size=px,
    multiview_size=px,
    num_views=cfg.num_views,
    p_drop_ref_img=0.0,
    p_drop_cam_pos_enc=0.0,
    p_drop_control=0.0,
  )
  kw["generator"].update(
    in_channels=c,
    img_size=s,
    patch_size=cfg.patch_size,
    dim=w,
    depth=cfg.depth,
    num_heads=cfg.num_heads,
  )
  if cfg.mlp_ratio != 4.0:  # the DiT's default
    kw["generator"]["mlp_ratio"] = cfg.mlp_ratio
  kw["cam_mlp"].update(in_channels=cfg.cam_pose_dim, hidden_size=cfg.cam_mlp_hidden, out_channels=w)
  kw["ref_encoder"].update(img_size=s, in_channels=c, dim=w, patch_size=cfg.patch_size)
  kw["control_mlp"].update(hidden_size=w, depth=cfg.depth, in_channels=cfg.control_in_channels)
  siren = kw["control_mlp"]["plucker_siren_config"]
  siren.update(
    layers=list(cfg.siren_hidden), in_features=cfg.plucker_dim, out_features=cfg.siren_out
  )
  if (cfg.siren_w0_first, cfg.siren_w0) != (30.0, 1.0):  # the release SIREN's defaults
    siren.update(w0_initial=cfg.siren_w0_first, w0=cfg.siren_w0)
  kw["schedule"].update(num_timesteps=config.diffusion.num_timesteps)
  old, new = _flatten(base), _flatten(kw)
  diffs = [
    f"{k}: {old.get(k, '(absent)')} -> {v}" for k, v in new.items() if k not in old or old[k] != v
  ]
  return kw, diffs


def release_inputs(batch: dict) -> dict:
  """Our host batch (channels last, no time axis) in the release's `Pippo.forward` layout."""
  t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
  views = lambda a: t(np.asarray(a).transpose(0, 1, 4, 2, 3)[:, :, None])  # [B,NV,1,C,H,W]
  single = lambda a: t(np.asarray(a).transpose(0, 3, 1, 2)[:, None, None])  # [B,1,1,C,H,W]
  return dict(
    image=views(batch["target_images"]),
    ref_image=single(batch["ref_image"]),
    kpts=views(batch["target_anchor"]),
    ref_kpts=single(batch["ref_anchor"]),
    plucker=views(batch["target_plucker"]),
    ref_plucker=single(batch["ref_plucker"]),
    cam_pose=t(np.asarray(batch["target_cam_pose"])[:, :, None]),
    ref_cam_pose=t(np.asarray(batch["ref_cam_pose"])[:, None, None]),
  )


class ReleaseStep:
  """The release's model, loss and AdamW, and one training iteration of its `train.py`."""

  def __init__(self, pippo, losses, kwargs: dict, config, batch: dict, dtype: str, seed: int):
    from omegaconf import OmegaConf

    torch.manual_seed(seed)
    real_vae = pippo.AutoencoderKL
    pippo.AutoencoderKL = _NoVAE
    try:
      # As the release's load_from_config does: sections are OmegaConf nodes (read as attributes).
      model = pippo.Pippo(**OmegaConf.create(kwargs))
    finally:
      pippo.AutoencoderKL = real_vae
    model.encode_image = lambda image: image  # latents in, as the VAE is not compared
    model.post_init()
    model.train()
    with torch.no_grad():
      for p in model.parameters():
        p.add_(0.01)
    opt = config.optimizer
    self.model, self.loss_fn = model, losses.DenoisingLoss()
    self.optimizer = torch.optim.AdamW(
      [p for p in model.parameters() if p.requires_grad],
      lr=opt.lr,
      betas=(opt.b1, opt.b2),
      eps=opt.eps,
      weight_decay=opt.weight_decay,
    )
    self.grad_clip = opt.grad_clip
    self.inputs = release_inputs(batch)
    self.bf16 = dtype == "bfloat16"

  def param_counts(self) -> tuple[int, int]:
    """(all parameters, parameters without the unused per-block cross-attention)."""
    total = sum(p.numel() for p in self.model.parameters())
    cross = sum(
      p.numel()
      for block in self.model.generator.blocks
      for name in CROSS_ATTENTION
      if getattr(block, name, None) is not None
      for p in getattr(block, name).parameters()
    )
    return total, total - cross

  def __call__(self) -> tuple[float, float]:
    """One step: (seconds, loss)."""
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
      preds = self.model(**self.inputs)
      loss, _ = self.loss_fn(preds)
    loss.backward()
    if self.grad_clip:
      torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
    self.optimizer.step()
    self.optimizer.zero_grad()
    seconds = time.perf_counter() - start
    return seconds, float(loss.detach())


class OursStep:
  """`model_step.build(config).step`, its donated state threaded through as `time_step` does."""

  def __init__(self, bench):
    self.bench, self.state = bench, bench.state
    bench.state = None  # donated by the first step; only self.state is live

  def __call__(self) -> tuple[float, float]:
    """One step: (seconds, loss)."""
    start = time.perf_counter()
    self.state, metrics = self.bench.step(self.state, self.bench.batch)
    jax.block_until_ready((self.state, metrics))
    seconds = time.perf_counter() - start
    return seconds, float(metrics["loss"])


def machine() -> str:
  """CPU model, AMX-BF16 support, thread counts and JAX devices, on one line."""
  name = ""
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    name = next(
      (
        line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name:")
      ),
      "",
    )
  except OSError:
    pass
  flags = ""
  try:
    with open("/proc/cpuinfo") as f:
      flags = next((line for line in f if line.startswith("flags")), "")
  except OSError:
    pass
  if not name:
    try:
      with open("/proc/cpuinfo") as f:
        name = next(
          (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
          "unknown CPU",
        )
    except OSError:
      name = "unknown CPU"
  amx = "yes" if "amx_bf16" in flags.split() else "no"
  return (
    f"{name}; amx_bf16: {amx}; {os.cpu_count()} CPUs; torch {torch.__version__} threads "
    f"{torch.get_num_threads()}; jax {jax.__version__} devices {jax.devices()}"
  )


def parse_list(text: str, kind, allowed=None) -> list:
  values = [kind(v) for v in text.split(",") if v.strip()]
  if not values or (allowed and any(v not in allowed for v in values)):
    fail(f"bad list {text!r}" + (f" (choose from {','.join(allowed)})" if allowed else ""))
  return values


def main():
  hostmem.keep_freed_memory()  # as pippo-train does (before JAX starts its threads)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--release-src", metavar="DIR", help="a checkout of https://github.com/facebookresearch/pippo"
  )
  parser.add_argument("--config", default="configs/p3_posttrain.py:size=tiny,res=128")
  parser.add_argument("--batch", default="1,2", help="comma-separated batch sizes")
  parser.add_argument(
    "--dtype", default="float32,bfloat16", help="comma-separated: float32, bfloat16"
  )
  parser.add_argument("--repeats", type=int, default=5, help="timed rounds (after one warm-up)")
  parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
  parser.add_argument("--seed", type=int, default=0, help="torch seed of the release model")
  args = parser.parse_args()
  src = check_release_src(args.release_src)
  batches = parse_list(args.batch, int)
  dtypes = parse_list(args.dtype, str, DTYPES)
  if args.repeats < 1 or args.threads < 1 or min(batches) < 1:
    fail("--repeats, --threads and --batch must be >= 1")
  torch.set_num_threads(args.threads)
  pippo, losses = import_release(src)

  print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))
  print(f"machine: {machine()}")
  print(f"release: {src} (its {RELEASE_YML} model section; VAE replaced by the identity)")
  rows, counted = [], False
  peaks = {dtype: model_step.matmul_peak(dtype=dtype) for dtype in dtypes}
  print(
    "matmul peak (2048^3, GFLOP/s): "
    + ", ".join(f"{dtype} {peak / 1e9:.1f}" for dtype, peak in peaks.items())
  )
  for dtype in dtypes:
    for b in batches:
      config = model_step.load_config(args.config, dtype)
      config.batch_size = b
      config = config_lib.validate(config)
      kwargs, diffs = release_model_kwargs(src, config)
      if not counted:
        print("release constructor differs from the yml in: " + ("; ".join(diffs) or "nothing"))
      bench = model_step.build(config)
      ours = OursStep(bench)
      release = ReleaseStep(
        pippo, losses, kwargs, config, model_step.latent_batch(bench.cfg, b), dtype, args.seed
      )
      if not counted:
        total, without_cross = release.param_counts()
        n_ours = params_lib.count(ours.state.params)
        verdict = "equal" if n_ours == without_cross else "DIFFERENT"
        print(
          f"parameters: release {total:,} ({without_cross:,} without its unused "
          f"cross-attention), ours {n_ours:,}: {verdict}"
        )
        counted = True
      release()  # warm-up (ours is already compiled by build)
      ours()
      times = {"release": [], "ours": []}
      loss = {}
      for _ in range(args.repeats):
        for name, step in (("release", release), ("ours", ours)):
          seconds, loss[name] = step()
          times[name].append(seconds)
      finite = "finite" if np.isfinite(list(loss.values())).all() else "NOT FINITE"
      print(
        f"{dtype} batch {b}: last loss release {loss['release']:.4f}, ours "
        f"{loss['ours']:.4f} ({finite})",
        flush=True,
      )
      floor = aot.matmul_flops(bench.step.as_text()) / peaks[dtype]
      rows.append((dtype, b, times["release"], times["ours"], floor))
      del release, ours, bench
      gc.collect()

  print(
    "\n| dtype | batch | release s (min / median) | ours s (min / median) | release / ours | "
    "our matmul floor s | release / 1.2 s |"
  )
  print("|---|---|---|---|---|---|---|")
  for dtype, b, rel, our, floor in rows:
    print(
      f"| {dtype} | {b} | {min(rel):.3f} / {statistics.median(rel):.3f} | "
      f"{min(our):.3f} / {statistics.median(our):.3f} | {min(rel) / min(our):.2f} | "
      f"{floor:.3f} | {min(rel) / 1.2:.3f} |"
    )


if __name__ == "__main__":
  main()
