"""Helpers of the data tests (importable: pytest puts tests/data on sys.path)."""

from pippo_jax.data_pipelines import config, sources, writer


def data_config(stage, path, resolution=32, num_views=3, **overrides):
  cfg = config.default_data_config(stage, resolution, num_views)
  cfg.path = str(path)
  cfg.batch_size = 2
  for key, value in overrides.items():
    setattr(cfg, key, value)
  return cfg


def write_images(directory, num_records=6, records_per_shard=2):
  """A small image dataset (32 px records made up from their index);
  returns the split's index entry."""
  src = sources.IndexSynthesizedSource(num_records)
  return writer.write_split(
    str(directory), "train", "image", num_records, lambda i: src[i]["bytes"], records_per_shard
  )
