"""Shared pieces of the stage configs: variant parsing, model sizes, validation.

A config is named `configs/<stage>.py:<variant>` where the variant is comma-separated key=value
pairs (`res=512,size=tiny,views=8`), as in big_vision. Configs are plain data (ml_collections);
everything a user may turn is a key, and `validate` checks the combination at config time.
"""

import math

import ml_collections

from pippo_jax.data_pipelines.config import default_data_config
from pippo_jax.errors import ConfigError
from pippo_jax.models import attention
from pippo_jax.parallel import sharding

# What a model size sets in every stage: the network's dimensions, the codec, and for the smoke size
# a CPU-sized run (its own small design, see the README). The smoke size keeps the full model's head
# dim of 64 (2 heads): on CPUs 4 heads of 32 made the attention backward 3x slower.
SIZES = {
  "full": dict(
    model=dict(
      width=1536, depth=28, num_heads=24, cam_mlp_hidden=1024, remat_policy="nothing_saveable"
    ),  # activations would not fit
    codec=dict(kind="sdxl_vae"),
  ),
  "tiny": dict(
    model=dict(width=768, depth=12, num_heads=24, cam_mlp_hidden=1024), codec=dict(kind="sdxl_vae")
  ),
  "smoke": dict(
    model=dict(width=128, depth=4, num_heads=2, cam_mlp_hidden=128),
    # 4x4 pixel blocks: 16x16x48 latents at 64 px, 64 tokens per view
    codec=dict(kind="space_to_depth", downsample=4),
    train=dict(
      num_steps=2500,
      log_every=50,
      checkpoint_every=500,
      sample_every=500,
      # with no data.path: a few people, 24 cameras each, learnt in minutes
      synth=dict(subjects=4, cameras=24, moments=1, images_per_subject=8),
    ),
  ),
}
RESOLUTIONS = (64, 128, 256, 512, 1024)
# Total views per sequence the release's attention biasing assumes were seen in training.
RELEASE_TRAIN_VIEWS = {64: 24, 128: 24, 256: 24, 512: 12, 1024: 2}
REMAT_POLICIES = (
  "none",
  "nothing_saveable",
  "everything_saveable",
  "dots_saveable",
  "dots_with_no_batch_dims_saveable",
)
DTYPES = ("float32", "bfloat16")
DECAYS = ("constant", "cosine", "linear")


def parse_variant(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'res=512,size=tiny' -> ConfigDict over `defaults`; values are cast to the default's type."""
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    if "=" not in item:
      raise ConfigError(
        f"config variant item {item!r} is not key=value (valid keys: {sorted(out)})"
      )
    key, value = (s.strip() for s in item.split("=", 1))
    if key not in out:
      raise ConfigError(f"unknown config variant key {key!r}; valid keys: {sorted(out)}")
    kind = type(out[key]) if out[key] is not None else str
    out[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
  return ml_collections.ConfigDict(out)


def codec_config(kind: str, downsample: int = 8) -> ml_collections.ConfigDict:
  """The pixel <-> latent codec: the frozen SDXL VAE (x8, 4 channels), or an exactly invertible
  space-to-depth codec (f x f pixel blocks -> 3 f^2 channels) for runs without a pretrained VAE."""
  if kind == "sdxl_vae":
    return ml_collections.ConfigDict(
      dict(
        kind=kind,
        downsample=8,
        latent_channels=4,
        scale_factor=0.13025,
        shift_factor=0.0,
        weights_path="",  # a diffusers folder or one .safetensors file (see models.autoencoder)
        sample_posterior=True,
        dtype="float32",  # the VAE's matmul/conv inputs (GroupNorm statistics stay float32)
        chunk=0,  # images per encode/decode call (0: all at once); bounds the VAE's memory
      )
    )
  if kind == "space_to_depth":
    return ml_collections.ConfigDict(
      dict(
        kind=kind,
        downsample=downsample,
        latent_channels=3 * downsample**2,
        scale_factor=1.0,
        shift_factor=0.0,
        weights_path="",
      )
    )
  raise ConfigError(f"unknown codec kind {kind!r}; choose 'sdxl_vae' or 'space_to_depth'")


def model_config(
  size: str, res: int, views: int, codec: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
  """The `model` section (keys = `pippo_jax.models.config.ModelConfig` fields); the stage file turns
  on its conditioning (`use_cam_mlp`, `use_control_mlp`)."""
  m = dict(
    mlp_ratio=4.0,
    patch_size=2,
    latent_channels=codec.latent_channels,
    latent_size=res // codec.downsample,
    image_size=res,
    num_views=views,
    freq_dim=256,
    max_period=1e4,
    block_norm_eps=1e-5,
    patch_norm_eps=1e-6,
    use_cam_mlp=False,
    cam_pose_dim=16,
    cam_norm_eps=1e-5,
    use_control_mlp=False,
    siren_hidden=(16, 32),
    siren_out=32,
    siren_w0_first=30.0,
    siren_w0=1.0,
    plucker_dim=6,
    control_norm_eps=1e-6,
    attention_impl="auto",
    attention_block_q=512,
    attention_block_kv=512,
    attention_gamma=1.4,
    attention_train_views=RELEASE_TRAIN_VIEWS.get(res, 24),
    dtype="float32",
    scan_blocks=True,
    remat_policy="none",
  )
  m.update(SIZES[size]["model"])
  return ml_collections.ConfigDict(m)


def diffusion_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    dict(
      num_timesteps=1000,
      schedule="cosine",
      cosine_s=0.008,
      max_beta=0.999,
      prediction="eps",
      loss_mask="none",
      sampler=dict(num_steps=30, eta=0.1, attention_biasing=False),
      # Classifier-free guidance: training-time dropout per condition group, sampling scales.
      cond_drop=dict(ref=0.0, cam=0.0, control=0.0),
      guidance=dict(ref=1.0, cam=1.0, control=1.0, rescale=0.0, triangular=False),
    )
  )


def optimizer_config() -> ml_collections.ConfigDict:
  """AdamW's schedule and structure; each stage file sets its own lr, betas, eps, decay and clip."""
  return ml_collections.ConfigDict(
    dict(
      name="adamw",
      warmup_steps=0,
      decay="constant",
      decay_steps=0,
      grad_accum_steps=1,
      lr_multipliers={},
      frozen=[],
    )
  )


def train_config() -> ml_collections.ConfigDict:
  """The `train` section: loop length, logging, checkpoints, samples, mesh."""
  return ml_collections.ConfigDict(
    dict(
      num_steps=100_000,
      log_every=100,
      checkpoint_every=2000,
      keep_checkpoints=3,
      sample_every=5000,
      sample_steps=30,  # DDIM steps for the sample grids
      sample_batch=2,  # samples (rows) per grid
      # Evaluation on the data's held-out split (`pippo_jax.evaluation.evaluate`): every
      # eval_every steps (0: never) and at the end, eval_samples captures x eval_views views,
      # sampled with sample_steps DDIM steps; scalars eval/... in metrics.jsonl and TensorBoard,
      # reports in WORKDIR/eval/step_N/.
      eval_every=0,
      eval_split="test",
      eval_samples=4,
      eval_views=4,
      eval_lpips="vgg",
      ema_decay=0.0,  # 0 disables the EMA copy of the parameters
      max_nonfinite=10,  # stop after this many non-finite steps in a row
      init_from="",  # checkpoint of the previous stage (stage transition)
      profile_steps=0,  # >0: capture a profile of that many steps after warm-up
      peak_flops=0.0,  # per-device peak FLOP/s for MFU; 0 = flops.PEAK_FLOPS or none
      # With no data.path and subjects > 0, a synthetic studio of this size is built in
      # WORKDIR/cache and trained on; subjects = 0 asks for data.path instead.
      synth=dict(subjects=0, cameras=24, moments=1, images_per_subject=8),
    )
  )


def sharding_config() -> ml_collections.ConfigDict:
  """The `sharding` section: mesh axis sizes (one may be -1: all remaining devices) and the
  logical-axis rules (logical name -> mesh axis, tuple of axes, or None: replicated)."""
  return ml_collections.ConfigDict(
    dict(
      mesh=dict(data=-1, fsdp=1, seq=1, tensor=1),
      # Multi-slice (DCN): how many slices each mesh axis spans (all 1: `data` spans them all).
      dcn=dict(data=1, fsdp=1, seq=1, tensor=1),
      rules=[list(rule) for rule in sharding.LOGICAL_RULES],
    )
  )


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Check a resolved config; raise ConfigError naming the offending key(s)."""
  m, codec = config.model, config.codec
  if m.width % m.num_heads:
    raise ConfigError(f"model.num_heads={m.num_heads} does not divide model.width={m.width}")
  if (m.width // m.num_heads) % 2:
    raise ConfigError(f"model.width / model.num_heads = {m.width // m.num_heads} must be even")
  if m.width % 4:
    raise ConfigError(f"model.width={m.width} must be divisible by 4 (2D sin-cos position table)")
  step = codec.downsample * m.patch_size
  if m.image_size % step:
    raise ConfigError(
      f"model.image_size={m.image_size} is not divisible by codec.downsample * "
      f"model.patch_size = {step}"
    )
  if m.latent_size != m.image_size // codec.downsample:
    raise ConfigError(
      f"model.latent_size={m.latent_size} must equal model.image_size / "
      f"codec.downsample = {m.image_size // codec.downsample}"
    )
  if m.latent_channels != codec.latent_channels:
    raise ConfigError(
      f"model.latent_channels={m.latent_channels} != codec.latent_channels={codec.latent_channels}"
    )
  if m.use_control_mlp and m.patch_size != 2:
    raise ConfigError(
      f"model.patch_size={m.patch_size}: ControlMLP's encoder downsamples by 2, "
      "so model.use_control_mlp needs model.patch_size=2"
    )
  if m.use_control_mlp and not m.use_cam_mlp:
    raise ConfigError("model.use_control_mlp=True needs model.use_cam_mlp=True (P3 builds on M2)")
  if m.num_views < 1:
    raise ConfigError(f"model.num_views={m.num_views} must be >= 1")
  if m.attention_impl not in attention.IMPLEMENTATIONS:
    raise ConfigError(
      f"model.attention_impl={m.attention_impl!r}; choose from {attention.IMPLEMENTATIONS}"
    )
  if m.remat_policy not in REMAT_POLICIES:
    raise ConfigError(f"model.remat_policy={m.remat_policy!r}; choose from {REMAT_POLICIES}")
  if m.dtype not in DTYPES:
    raise ConfigError(f"model.dtype={m.dtype!r}; choose from {DTYPES}")
  if m.attention_train_views < 1 or m.attention_gamma <= 0:
    raise ConfigError("model.attention_train_views must be >= 1 and model.attention_gamma > 0")
  if config.batch_size < 1:
    raise ConfigError(f"batch_size={config.batch_size} must be >= 1")
  if "data" in config:
    if config.data.resolution != m.image_size:
      raise ConfigError(
        f"data.resolution={config.data.resolution} != model.image_size={m.image_size}"
      )
    if config.data.num_views != m.num_views:
      raise ConfigError(f"data.num_views={config.data.num_views} != model.num_views={m.num_views}")
    if config.data.get("latents", False):
      _check_latents(config)
  if config.train.get("eval_every", 0):
    if config.data.get("kind") != "multiview":
      raise ConfigError(
        "train.eval_every needs multi-view captures (M2/P3 data): evaluation compares views "
        "with their ground truth; set train.eval_every=0"
      )
    if config.train.eval_views < 2 or config.train.eval_samples < 1:
      raise ConfigError("train.eval_views must be >= 2 (RE needs view pairs), eval_samples >= 1")
  if config.optimizer.name != "adamw":
    raise ConfigError(f"optimizer.name={config.optimizer.name!r}: only 'adamw' is implemented")
  if config.optimizer.decay not in DECAYS:
    raise ConfigError(f"optimizer.decay={config.optimizer.decay!r}; choose from {DECAYS}")
  # The train step skips a step on a non-finite loss or gradient alone: finite hyperparameters
  # then make a finite update.
  for key in ("lr", "b1", "b2", "eps", "weight_decay", "grad_clip"):
    value = config.optimizer[key]
    if not math.isfinite(value) or value < 0:
      raise ConfigError(f"optimizer.{key}={value} must be finite and >= 0")
  for name, mult in dict(config.optimizer.lr_multipliers).items():
    if not math.isfinite(mult) or mult < 0:
      raise ConfigError(f"optimizer.lr_multipliers.{name}={mult} must be finite and >= 0")
  for group, p in config.diffusion.cond_drop.items():
    if not 0.0 <= p <= 1.0:
      raise ConfigError(f"diffusion.cond_drop.{group}={p} is not a probability")
  return config


def _check_latents(config: ml_collections.ConfigDict) -> None:
  """`data.latents=True`: the dataset at `data.path` (once set) must hold latents of this codec,
  resolution and crop (`data_pipelines.latents.problem`)."""
  from pippo_jax.data_pipelines import latents  # pylint: disable=g-import-not-at-top
  from pippo_jax.models import codec as codec_lib  # pylint: disable=g-import-not-at-top

  try:
    codec_id = codec_lib.identity(config.codec)
  except (OSError, ValueError):
    codec_id = None  # no VAE weights where codec.weights_path says: making the codec says so
  problem = latents.problem(config.data, codec_id)
  if problem is not None:
    raise ConfigError(problem)


def base_config(
  stage: str, *, size: str, res: int, views: int, batch: int
) -> ml_collections.ConfigDict:
  """Every key at its shared default for `stage` ("p1", "m2", "p3") and model `size`; the stage
  files set what is their own on top of it."""
  if size not in SIZES:
    raise ConfigError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
  if res not in RESOLUTIONS:
    raise ConfigError(f"res={res} is not one of {RESOLUTIONS}")
  config = ml_collections.ConfigDict()
  config.stage = stage
  config.variant = dict(size=size, res=res, views=views, batch=batch)  # for the record only
  config.seed = 0
  config.batch_size = batch
  config.codec = codec_config(**SIZES[size]["codec"])
  config.model = model_config(size, res, views, config.codec)
  config.diffusion = diffusion_config()
  config.optimizer = optimizer_config()
  config.data = default_data_config(stage, res, views)
  config.data.batch_size = config.get_ref("batch_size")  # one global batch size
  config.sharding = sharding_config()
  config.train = train_config()
  config.train.update(SIZES[size].get("train", {}))
  return config
