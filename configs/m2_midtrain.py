"""M2 mid-training: many views jointly denoised at low resolution, coarse camera conditioning.

Adds the camera MLP on the flattened 4x4 camera pose of every view. Paper: up to 48 views at 128 px.
Variants: `res`, `size` full/tiny/smoke, `views` (target views; default 24), `batch`.
  configs/m2_midtrain.py                  full model, 24 target views at 128 px
  configs/m2_midtrain.py:size=tiny,views=12
"""

from pippo_jax import config_lib


def get_config(arg: str | None = None):
  v = config_lib.parse_variant(arg, size="full", res=0, views=0, batch=0)
  smoke = v.size == "smoke"
  config = config_lib.base_config(
    "m2",
    size=v.size,
    res=v.res or (64 if smoke else 128),
    views=v.views or (2 if smoke else 24),
    batch=v.batch or (4 if smoke else 1),
  )
  # Conditioning: the reference image and the camera MLP.
  config.model.update(use_cam_mlp=True, use_control_mlp=False)
  config.optimizer.update(lr=1e-4, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01, grad_clip=1.0)
  config.diffusion.prediction = "eps"
  if smoke:  # as P3's smoke size: x0-prediction, a higher learning rate with warm-up
    config.diffusion.prediction = "x0"
    config.optimizer.update(lr=1e-3, warmup_steps=100)
    config.train.eval_every = 1250
  return config_lib.validate(config)
