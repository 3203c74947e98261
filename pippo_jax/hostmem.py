"""Host memory: keep what the process frees for its next use (glibc), so that XLA:CPU's buffers
are not page-faulted in afresh on every step.

XLA:CPU allocates each execution's temporaries and outputs with malloc. glibc serves large blocks
with mmap (or from per-thread arenas it trims) and returns them to the kernel when freed, so every
training step touches about a gigabyte of new pages: ~290k page faults per tiny P3 @128
forward+backward, 10-20% of the step on a 2-core CPU. `keep_freed_memory` makes glibc serve every
block from one heap that is never trimmed; steps then reuse pages already mapped (0 faults after
the first steps). The price: memory freed is not given back to the system while the process lives
(its peak stays resident), and with one arena XLA's multi-threaded compiler waits on malloc's
lock, compiling about 1.35x slower (tiny P3 @128's three programs: 30 -> 40 s). That pays off for
a long run of one compiled step, not for short compile-bound work, so `pippo-train` and the
step benchmarks call it and nothing else does (`PIPPO_KEEP_HOST_MEMORY=0` turns it off there).
"""

import ctypes
import ctypes.util
import logging
import os
import sys

# mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
ENV = "PIPPO_KEEP_HOST_MEMORY"  # "0": leave glibc's defaults

_done = False


def keep_freed_memory() -> bool:
  """Set glibc's malloc to keep freed memory (see the module docstring); True if it did.

  Idempotent; a no-op (False) on systems without glibc or with PIPPO_KEEP_HOST_MEMORY=0. Call it
  early, before the first large computation: blocks already mapped are unaffected.
  """
  global _done
  if _done:
    return True
  if os.environ.get(ENV, "1") == "0" or not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  # glibc stores the trim threshold as size_t, so -1 is "never". int's largest, 2 GiB, is not:
  # the tiny P3 @128 step at batch 2 frees more than that at the top of the heap, which then went
  # back to the kernel and was faulted in again every step (420k faults, 1.2-2x the step time).
  ok = all(
    mallopt(param, value)
    for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
  )
  if not ok:
    logging.debug("mallopt refused a setting; host memory is managed as glibc's default")
  _done = ok
  return ok
