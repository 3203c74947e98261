"""A trained checkpoint, ready to sample: the model, its parameters, codec, schedule and settings.

`load_generator` is the one place that turns a checkpoint folder (a training workdir or a
`pippo-convert` output) into what `sample.sample_views` needs; `pippo-sample`, `pippo-export` and
the benchmarks use it.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from pippo_jax import checkpoints
from pippo_jax.diffusion import guidance
from pippo_jax.diffusion import sampler as sampler_lib
from pippo_jax.diffusion import schedule as schedule_lib
from pippo_jax.inference import sample as sample_lib
from pippo_jax.models import codec as codec_lib
from pippo_jax.models.config import ModelConfig
from pippo_jax.models.pippo import Pippo, dummy_inputs


@dataclasses.dataclass
class Generator:
  """Everything a sampler needs from a checkpoint."""

  model: Pippo
  params: Any
  codec: Any
  cfg: ModelConfig
  config: ml_collections.ConfigDict  # the whole saved training config
  schedule: Any
  step: int | None = None

  @property
  def image_size(self) -> int:
    return self.cfg.image_size

  def model_calls(self, num_steps: int) -> int:
    """Denoiser calls (DDIM steps) of a `num_steps` sampler."""
    return len(sampler_lib.ddim_timesteps(num_steps, self.schedule.num_timesteps))

  def with_model(self, **settings) -> "Generator":
    """This generator with model settings changed (e.g. attention_gamma); same parameters."""
    cfg = dataclasses.replace(self.cfg, **settings)
    return dataclasses.replace(self, cfg=cfg, model=Pippo(cfg))

  @property
  def condition_groups(self) -> tuple[str, ...]:
    return guidance.model_groups(self.cfg)

  def settings(
    self,
    *,
    num_steps: int | None = None,
    eta: float | None = None,
    scales=None,
    rescale: float | None = None,
    triangular: bool | None = None,
    attention_biasing: bool | None = None,
  ) -> dict:
    """Sampler settings, unset ones from the checkpoint's `diffusion` section, checked.

    `scales` is {group: scale} for classifier-free guidance (None: the config's guidance scales
    that are not 1.0, i.e. the plain conditional model when all are 1.0).
    """
    d = self.config.diffusion
    if scales is None:
      scales = {g: float(d.guidance[g]) for g in self.condition_groups if d.guidance[g] != 1.0}
    unknown = sorted(set(scales) - set(self.condition_groups))
    if unknown:
      raise ValueError(
        f"guidance for {unknown}: this model's condition groups are {list(self.condition_groups)}"
      )
    num_steps = int(d.sampler.num_steps if num_steps is None else num_steps)
    if not 1 <= num_steps < d.num_timesteps:
      raise ValueError(f"num_steps={num_steps} must be in [1, {d.num_timesteps})")
    pick = lambda given, default: default if given is None else given
    return dict(
      num_steps=num_steps,
      eta=float(pick(eta, d.sampler.eta)),
      scales={g: float(v) for g, v in scales.items()},
      rescale=float(pick(rescale, d.guidance.rescale)),
      triangular=bool(pick(triangular, d.guidance.triangular)),
      attention_biasing=bool(pick(attention_biasing, d.sampler.attention_biasing)),
    )

  def sampler(self, *, chunks: np.ndarray | None = None, progress=None, **settings):
    """A jitted `(params, codec, batch, key) -> uint8 views [B, V, H, W, 3]` with `settings`
    (`Generator.settings`), denoising views in `chunks` (`sample.view_chunks`; None: all at
    once) and calling `progress(step, value)` after each DDIM step."""
    settings = dict(
      self.settings(**settings),
      parameterization=self.config.diffusion.prediction,
      chunks=chunks,
      progress=progress,
    )

    def run(params, codec, batch, key):
      return sample_lib.sample_views(
        self.model, params, batch, codec, self.cfg, self.schedule, key, **settings
      )

    return jax.jit(run)


def build_generator(
  config, params=None, *, codec=None, seed: int = 0, step: int | None = None
) -> Generator:
  """A `Generator` for a training config; `params=None` initialises them and `codec` replaces the
  config's (both for benchmarks)."""
  config = ml_collections.ConfigDict(checkpoints.config_dict(config))
  cfg = ModelConfig.from_config(config.model)
  model = Pippo(cfg)
  if params is None:
    params = nn.unbox(model.init(jax.random.key(seed), *dummy_inputs(cfg))["params"])
  schedule = schedule_lib.cosine_schedule(
    config.diffusion.num_timesteps, config.diffusion.cosine_s, config.diffusion.max_beta
  )
  return Generator(
    model=model,
    params=jax.device_put(params),
    codec=codec_lib.make_codec(config.codec) if codec is None else codec,
    cfg=cfg,
    config=config,
    schedule=schedule,
    step=step,
  )


def load_generator(
  checkpoint: str, *, ema: bool = True, vae: str | None = None, step: int | None = None
) -> Generator:
  """Reads a checkpoint folder into a `Generator` (EMA parameters where the run kept them).

  `vae` overrides the saved `codec.weights_path` (the VAE file need not be where the training run
  had it).
  """
  params, saved = checkpoints.read_params(checkpoint, step=step, ema=ema)
  if vae:
    saved["codec"]["weights_path"] = vae
  return build_generator(saved, params, step=step)
