"""Files of workdirs and data directories, local or behind a URL (gs://, s3://): etils.epath.

Layer: foundation (no ps_jax imports). Every file that a run writes into its workdir or
data directory goes through these helpers, so a workdir can be a Cloud Storage URL.
Writes are atomic: a local file is written under a temporary name and renamed; an
object store publishes an object only when its upload completes.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any, Union

from etils import epath

PathLike = Union[str, os.PathLike]


def is_url(path: PathLike) -> bool:
  """True for `scheme://...` paths (object stores), False for local paths."""
  return "://" in os.fspath(path)


def as_path(path: PathLike) -> epath.Path:
  return epath.Path(path)


def absolute(path: PathLike) -> str:
  """A local path made absolute; a URL unchanged."""
  path = os.fspath(path)
  return path if is_url(path) else os.path.abspath(path)


def join(path: PathLike, *names: str) -> str:
  """`os.path.join` that keeps URLs intact."""
  return os.fspath(epath.Path(path).joinpath(*names))


def makedirs(path: PathLike) -> None:
  epath.Path(path).mkdir(parents=True, exist_ok=True)


def exists(path: PathLike) -> bool:
  return epath.Path(path).exists()


def isdir(path: PathLike) -> bool:
  return epath.Path(path).is_dir()


def listdir(path: PathLike) -> list[str]:
  """Names in a directory (sorted); [] when it does not exist."""
  p = epath.Path(path)
  return sorted(c.name for c in p.iterdir()) if p.is_dir() else []


def remove(path: PathLike) -> None:
  p = epath.Path(path)
  if p.exists():
    p.unlink()


def read_text(path: PathLike) -> str:
  return epath.Path(path).read_text(encoding="utf-8")


def read_json(path: PathLike) -> Any:
  return json.loads(read_text(path))


def write_bytes(path: PathLike, data: bytes) -> None:
  """Writes `data` atomically (readers see the old file or the new one, never a mix)."""
  p = epath.Path(path)
  if is_url(path):
    p.write_bytes(data)
    return
  tmp = p.with_name(f"{p.name}.tmp-{uuid.uuid4().hex[:8]}")
  tmp.write_bytes(data)
  os.replace(tmp, p)


def write_text(path: PathLike, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def write_json(path: PathLike, value: Any, **dump_kwargs) -> None:
  """`json.dump(value)` to `path`, atomically; dump_kwargs as for json.dumps."""
  write_text(path, json.dumps(value, **{"indent": 2, **dump_kwargs}))


def append_text(path: PathLike, text: str) -> None:
  """Appends to a file; on an object store (no appends) the object is rewritten."""
  if is_url(path):
    old = read_text(path) if exists(path) else ""
    write_text(path, old + text)
    return
  with open(path, "a", encoding="utf-8") as f:
    f.write(text)
