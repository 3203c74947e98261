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
  v.batch = v.batch or (4 if v.size == "smoke" else 1)
  v.res = v.res or (64 if v.size == "smoke" else 128)
  config = config_lib.stage_config("p1", v, cam=False, control=False)
  return config_lib.validate(config)
