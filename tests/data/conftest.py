"""Fixtures of the data tests: a tiny synthetic studio written once per session."""

import io

import pytest
from absl import flags

from pippo_jax.data_pipelines import synthetic_studio

# Grain's multi-worker loading reads absl flags.
flags.FLAGS.mark_as_parsed()

TINY = synthetic_studio.StudioSettings(
  seed=3,
  subjects=6,
  cameras=12,
  resolution=48,
  moments=2,
  images_per_subject=10,
  test_fraction=0.2,
  records_per_shard=16,
)


@pytest.fixture(scope="session")
def studio(tmp_path_factory):
  """OUT of `pippo-data synth` with TINY settings: OUT/captures, OUT/images."""
  out = tmp_path_factory.mktemp("studio")
  synthetic_studio.write_studio(str(out), TINY, progress_stream=io.StringIO())
  return out
