"""Process-wide settings that must be made before JAX starts its runtime.

Layer: foundation (the standard library only).
"""

from __future__ import annotations

import ctypes
import platform
import resource
import sys

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def retain_freed_memory() -> bool:
  """Makes glibc's malloc keep freed memory for reuse instead of handing it back.

  XLA:CPU allocates an executable's temporaries (activations, gradients, optimizer
  updates: about 1.4 GB per ViT-B/32 train step at batch 2 x 6 frames) when it runs and
  frees them when it returns. By default glibc serves blocks that large with fresh
  mmaps, from per-thread arenas it trims, so every step page-faults all of it in again:
  about 350k minor faults per step there, 10-15% of the step time. With one arena, no
  mmaps and no trimming, the second step reuses the first one's pages (0 faults).

  One arena also means one malloc lock for every thread: a loop that makes its batches
  in the training process (`config.data.worker_count=0`, the demo) while XLA's threads
  run the step waits on it. For the demo's tiny model that cost ~60% per step (175 vs
  106-113 ms in one run on 2 cores; `--config.retain_host_memory=False` avoids it); for
  ViT-B/32, without the one arena the step page-faulted 406k times (4.46 vs 4.18 s).

  The cost: the process keeps its peak heap size for its lifetime, as with jemalloc or
  tcmalloc. Call it first thing in a program's main, before the first JAX computation
  (threads that already took an arena keep it). Accelerator backends allocate device
  memory elsewhere; this only touches host allocations.

  Returns:
    Whether the settings were applied (False off Linux / glibc, where it does nothing).
  """
  if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
  except OSError:
    return False
  ok = libc.mallopt(_M_ARENA_MAX, 1) == 1
  ok &= libc.mallopt(_M_MMAP_MAX, 0) == 1
  ok &= libc.mallopt(_M_TRIM_THRESHOLD, -1) == 1  # -1: never trim
  return bool(ok)


def minor_page_faults() -> int:
  """Minor page faults of this process so far (first touches of newly mapped memory)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
