"""M2 mid-training: many views jointly denoised at low resolution, coarse camera conditioning.

Adds the camera MLP on the flattened 4x4 camera pose of every view. Paper: up to 48 views at 128 px.
Variants: `res`, `size` full/tiny/smoke, `views` (target views; default 24), `batch`.
  configs/m2_midtrain.py                  full model, 24 target views at 128 px
  configs/m2_midtrain.py:size=tiny,views=12
"""
from pippo_jax import config_lib


def get_config(arg: str | None = None):
  v = config_lib.parse_variant(arg, size="full", res=0, views=0, batch=0)
  v.batch = v.batch or (4 if v.size == "smoke" else 1)
  v.views = v.views or (2 if v.size == "smoke" else 24)
  v.res = v.res or (64 if v.size == "smoke" else 128)
  config = config_lib.stage_config("m2", v, cam=True, control=False)
  return config_lib.validate(config)
