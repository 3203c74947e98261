"""Helpers of the data tests (importable: pytest puts tests/data on sys.path)."""
from data_pipelines import config


def data_config(stage, path, resolution=32, num_views=3, **overrides):
  cfg = config.default_data_config(stage, resolution, num_views)
  cfg.path = str(path)
  cfg.batch_size = 2
  for key, value in overrides.items():
    setattr(cfg, key, value)
  return cfg
