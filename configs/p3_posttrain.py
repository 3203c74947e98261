"""P3 post-training: fewer views at high resolution with pixel-aligned controls.

Adds ControlMLP (Plücker rays through a SIREN + Spatial Anchor + x_t) on top of M2. The release's
configs train 4 target views + 1 reference at 128, 512 and 1024 px.
Variants: `res` (default 512), `size` full/tiny/smoke, `views` (default 4), `batch`.
  configs/p3_posttrain.py                 full model at 512 px
  configs/p3_posttrain.py:size=tiny,res=128
  configs/p3_posttrain.py:size=smoke      the README's main job (64 px, 2 views, ~9 CPU minutes)
"""

from pippo_jax import config_lib


def get_config(arg: str | None = None):
  v = config_lib.parse_variant(arg, size="full", res=0, views=0, batch=0)
  smoke = v.size == "smoke"
  config = config_lib.base_config(
    "p3",
    size=v.size,
    res=v.res or (64 if smoke else 512),
    views=v.views or (2 if smoke else 4),
    batch=v.batch or (4 if smoke else 1),
  )
  # Conditioning: the reference image, the camera MLP (from M2) and ControlMLP.
  config.model.update(use_cam_mlp=True, use_control_mlp=True)
  config.optimizer.update(lr=1e-4, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01, grad_clip=1.0)
  config.diffusion.prediction = "eps"
  if smoke:  # from scratch in minutes: a width-128 network with 192 values per token learns clean
    # images (x0), not noise, and takes a higher learning rate with warm-up
    config.diffusion.prediction = "x0"
    config.optimizer.update(lr=1e-3, warmup_steps=100)
    config.train.eval_every = 1250  # RE, PSNR, SSIM, LPIPS on the held-out person
  return config_lib.validate(config)
