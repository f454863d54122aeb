"""Atomic commits of a directory's files: write `<name>.new` files, then one marker.

Layer: foundation (os only). The protocol (`ps_jax.retrieval.store` uses it): new files
are written and synced as `<name>.new`, then the marker `COMMIT` is created (the commit
point), then each `<name>.new` is renamed over `<name>` and the marker removed. A
reader that finds `COMMIT` reads the `.new` files still there (`current`); a writer
first finishes such an interrupted commit, or deletes `.new` files left without a
marker (`recover`).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Sequence

COMMIT_MARKER = "COMMIT"
NEW = ".new"


def fsync_dir(path: str) -> None:
  with contextlib.suppress(OSError):
    fd = os.open(path, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)


def recover(path: str, names: Sequence[str]) -> None:
  """Finishes a commit interrupted after its marker, or drops one interrupted before it."""
  marker = os.path.join(path, COMMIT_MARKER)
  committed = os.path.exists(marker)
  for name in names:
    new = os.path.join(path, name + NEW)
    if os.path.exists(new):
      if committed:
        os.replace(new, os.path.join(path, name))
      else:
        os.unlink(new)
  if committed:
    fsync_dir(path)
    os.unlink(marker)
  fsync_dir(path)


def commit(path: str, names: Sequence[str], all_names: Sequence[str]) -> None:
  """Makes the already written and synced `<name>.new` files the index, atomically."""
  fsync_dir(path)
  marker = os.path.join(path, COMMIT_MARKER)
  with open(marker + NEW, "w") as f:
    f.write(" ".join(names) + "\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(marker + NEW, marker)  # The commit point.
  fsync_dir(path)
  recover(path, all_names)


def current(path: str, name: str) -> str:
  """The file a reader should read for `name` (its `.new` during a committed rename)."""
  new = os.path.join(path, name + NEW)
  if os.path.exists(os.path.join(path, COMMIT_MARKER)) and os.path.exists(new):
    return new
  return os.path.join(path, name)


def write_json(file: str, value: Any) -> None:
  with open(file, "w", encoding="utf-8") as f:
    f.write(json.dumps(value, indent=1) + "\n")
    f.flush()
    os.fsync(f.fileno())


def sync_file(file: str) -> None:
  with open(file, "rb+") as f:
    os.fsync(f.fileno())
