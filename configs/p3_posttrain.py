"""P3 post-training: fewer views at high resolution with pixel-aligned controls.

Adds ControlMLP (Plücker rays through a SIREN + Spatial Anchor + x_t) on top of M2. The release's
configs train 4 target views + 1 reference at 128, 512 and 1024 px.
Variants: `res` (default 512), `size` full/tiny/smoke, `views` (default 4), `batch`.
  configs/p3_posttrain.py                 full model at 512 px
  configs/p3_posttrain.py:size=tiny,res=128
"""
from pippo_jax import config_lib


def get_config(arg: str | None = None):
  v = config_lib.parse_variant(arg, size="full", res=0, views=0, batch=0)
  v.batch = v.batch or (4 if v.size == "smoke" else 1)
  v.views = v.views or (2 if v.size == "smoke" else 4)
  v.res = v.res or (64 if v.size == "smoke" else 512)
  config = config_lib.stage_config("p3", v, cam=True, control=True)
  return config_lib.validate(config)
