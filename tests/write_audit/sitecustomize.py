"""Records the files a process writes, for tests that must know which process wrote what.

Put this directory on PYTHONPATH and PS_JAX_WRITE_LOG=DIR in the environment of a
subprocess (tests/test_multihost_main.py does so for `launch/local.sh`): Python imports
this module at start-up, and an audit hook (`sys.addaudithook`) appends a line
"<process>\t<event>\t<path>" to DIR/<pid>.tsv for every file the process opens for
writing ("open") and every rename ("os.rename": how `ps_jax.fileio` puts a file in
place). <process> is the value of the command line's --process_id=N, "-" without one.
Without PS_JAX_WRITE_LOG it does nothing.
"""

import os
import sys


def _process_label() -> str:
  with open("/proc/self/cmdline", "rb") as f:
    argv = f.read().split(b"\0")
  flag = b"--process_id="
  return next((a[len(flag):].decode() for a in argv if a.startswith(flag)), "-")


def _install(log_dir: str) -> None:
  label = _process_label()
  fd = os.open(os.path.join(log_dir, f"{os.getpid()}.tsv"),
               os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

  def hook(event, args):
    if event == "open":
      path, mode, flags = args
      writes = (any(c in mode for c in "wax+") if isinstance(mode, str)
                else isinstance(flags, int) and bool(flags & (os.O_WRONLY | os.O_RDWR)))
    elif event == "os.rename":
      path, writes = args[1], True
    else:
      return
    if writes and isinstance(path, (str, bytes, os.PathLike)):
      os.write(fd, f"{label}\t{event}\t{os.path.abspath(os.fsdecode(path))}\n".encode())

  sys.addaudithook(hook)


if os.environ.get("PS_JAX_WRITE_LOG"):
  _install(os.environ["PS_JAX_WRITE_LOG"])
