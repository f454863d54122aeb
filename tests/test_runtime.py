"""runtime.retain_freed_memory: freed blocks come back without page faults."""

import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc malloc only")

# mallocs, touches and frees 64 MiB twice; prints the minor page faults of the second
# round (a fresh mmap is faulted in page by page: 16384 faults of 4 KiB). libc directly:
# numpy asks for transparent huge pages, which hides the count.
_SCRIPT = textwrap.dedent("""
    import ctypes, sys
    from ps_jax import runtime
    applied = runtime.retain_freed_memory() if sys.argv[1] == "retain" else False
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    def round_trip(size=64 << 20):
      p = libc.malloc(size)
      ctypes.memset(p, 1, size)
      libc.free(p)
    round_trip()
    before = runtime.minor_page_faults()
    round_trip()
    print(applied, runtime.minor_page_faults() - before)
""")


def _faults(mode: str) -> tuple[str, int]:
  out = subprocess.run([sys.executable, "-c", _SCRIPT, mode], check=True,
                       capture_output=True, text=True).stdout.split()
  return out[0], int(out[1])


def test_retained_memory_is_reused_without_page_faults():
  applied, faults = _faults("retain")
  assert applied == "True"
  assert faults < 500, faults
  _, default_faults = _faults("release")
  assert default_faults > 10_000, default_faults  # glibc's default: unmapped on free
