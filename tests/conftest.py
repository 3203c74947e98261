"""Test-wide set-up: 8 fake CPU devices for sharding tests, float32 defaults."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib
import sys

import pytest

# tests/ helpers: golden_io, reference
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
GOLDEN = SHARED / "golden" / "release_s0"


@pytest.fixture(scope="session")
def golden_dir():
  if not GOLDEN.is_dir():
    pytest.fail(f"golden data not found at {GOLDEN} (shared/ must sit beside the checkout)")
  return GOLDEN
