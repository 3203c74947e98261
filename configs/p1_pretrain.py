"""P1 pretraining: image-conditioned single-view generation on a large human image set.

No camera conditioning: one target view per sample, conditioned on a reference image of the same
person (the image itself or an augmented crop). Variants: `res` in 64/128/256/512/1024 (paper:
P1@128/256/512), `size` full/tiny/smoke, `views`, `batch`.
  configs/p1_pretrain.py                  full model at 128 px
  configs/p1_pretrain.py:res=256,size=tiny
"""

from pippo_jax import config_lib


def get_config(arg: str | None = None):
  v = config_lib.parse_variant(arg, size="full", res=0, views=1, batch=0)
  smoke = v.size == "smoke"
  config = config_lib.base_config(
    "p1",
    size=v.size,
    res=v.res or (64 if smoke else 128),
    views=v.views,
    batch=v.batch or (4 if smoke else 1),
  )
  # Conditioning: the reference image only.
  config.model.update(use_cam_mlp=False, use_control_mlp=False)
  config.optimizer.update(lr=1e-4, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01, grad_clip=1.0)
  config.diffusion.prediction = "eps"
  if smoke:  # as P3's smoke size: x0-prediction, a higher learning rate with warm-up
    config.diffusion.prediction = "x0"
    config.optimizer.update(lr=1e-3, warmup_steps=100)
  return config_lib.validate(config)
