"""What a results file records about the run that made it: command, commit, date, host.

  record = provenance.record("run_seeds.py", argv)
  # {"command": "python benchmarks/run_seeds.py --seeds 0,1", "commit": "3f4971e",
  #  "date": "2026-12-01", "host": "vm (2 CPUs, x86_64)"}
  provenance.commit_line(record)
  # "Commit: 3f4971e; date: 2026-12-01; host: vm (2 CPUs, x86_64)."

JSON results keep the dict as their "provenance" entry; markdown results print the
command and `commit_line`, the form tests/test_readme.py looks for beside every table the
docs quote. The commit is the checkout's HEAD when the run started, uncommitted changes
not included; the date is UTC.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import time
from typing import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def head_commit() -> str:
  """`git rev-parse --short HEAD` of this checkout, or a note saying there is none."""
  try:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                          capture_output=True, text=True, check=False)
  except OSError:  # no git on this machine
    return "unknown (no git)"
  return proc.stdout.strip() if proc.returncode == 0 else "unknown (not a git checkout)"


def record(script: str, argv: Sequence[str]) -> dict:
  """{"command", "commit", "date", "host"} of a run of benchmarks/<script> with `argv`."""
  return {"command": shlex.join(["python", f"benchmarks/{script}", *argv]),
          "commit": head_commit(),
          "date": time.strftime("%Y-%m-%d", time.gmtime()),
          "host": f"{platform.node()} ({os.cpu_count()} CPUs, {platform.machine()})"}


def commit_line(rec: dict) -> str:
  """`rec`'s commit, date and host as the results files write them."""
  return f"Commit: {rec['commit']}; date: {rec['date']}; host: {rec['host']}."
