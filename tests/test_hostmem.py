"""hostmem keeps freed host memory mapped: a second large allocation reuses pages."""

import os
import subprocess
import sys

import pytest

# In a fresh process: set glibc's malloc up as pippo-train does, then allocate and fill
# N float32 values twice; print the page faults of the second fill (4 KiB pages: numpy's own
# huge-page advice is off, as for XLA's buffers).
PROGRAM = """
import resource, sys
import numpy as np
np._core.multiarray._set_madvise_hugepage(False)
from pippo_jax import hostmem
kept = hostmem.keep_freed_memory()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
n = int(sys.argv[1])
a = np.ones(n, np.float32); del a
before = faults()
b = np.ones(n, np.float32)
print(kept, faults() - before)
"""


def refill_faults(keep: bool, values: int = 2**26) -> tuple[bool, int]:
  env = dict(os.environ, **{"PIPPO_KEEP_HOST_MEMORY": "1" if keep else "0"})
  out = subprocess.run(
    [sys.executable, "-c", PROGRAM, str(values)],
    env=env,
    capture_output=True,
    text=True,
    check=True,
  ).stdout.split()
  return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_freed_memory_is_reused_without_page_faults():
  kept, faults = refill_faults(keep=True)
  off, faults_off = refill_faults(keep=False)
  assert kept and not off
  pages = 2**28 // 4096  # 65536 pages of 4 KiB in 256 MiB
  assert faults_off > pages // 2  # glibc's default: the freed block went back to the kernel
  assert faults < pages // 100  # kept: the same pages again


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_freed_blocks_over_2_gib_are_kept():
  # A trim threshold of 2 GiB (int's largest) gave every freed block past it back to the kernel:
  # at batch 2 the tiny P3 @128 step then faulted 420k pages in again every step.
  values = 9 * 2**26  # 2.25 GiB of float32
  kept, faults = refill_faults(keep=True, values=values)
  assert kept
  assert faults < values * 4 // 4096 // 100
