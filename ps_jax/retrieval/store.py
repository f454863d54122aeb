"""On-disk video embedding index: ids.json + embeddings.npy + meta.json in one directory.

Layer: foundation (numpy; `media` for the optional thumbnails and source paths,
`commit`). The index is a local directory (it is memory-mapped).

Layout (format version 1):
- `ids.json`: JSON list of N unique video id strings, row order of the embeddings.
- `embeddings.npy`: float16 (default) or float32 [N, E], every row L2-normalised.
- `meta.json`: {"format_version", "fingerprint", "dim", "dtype", "count", "created",
  "updated", "source", "metadata", "appends", optional "removals"}. `fingerprint` identifies the model that
  produced the embeddings (see `ps_jax.retrieval.fingerprint`); appending with another model is
  refused, since embeddings of two models are not comparable.
- optional, per row: thumbnail strips and source video paths (`ps_jax.retrieval.media`).
- optional `sync.json`: what an index of a folder of files knows about those files
  (`ps_jax.retrieval.folder`): {"rows": {id: {"path", "size",
  "mtime_ns"}}, "skipped": {id: {"path", "size", "mtime_ns", "reason", "detail"}}},
  committed with the rows it describes.

Writes are atomic with one writer at a time (`ps_jax.retrieval.commit`): a crash at any
moment leaves either the old index or the new one, never a mix; appends and removals
rewrite the files they change.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ps_jax.retrieval import commit as commit_lib
from ps_jax.retrieval import media as media_lib

FORMAT_VERSION = 1
IDS_FILE = "ids.json"
EMBEDDINGS_FILE = "embeddings.npy"
META_FILE = "meta.json"
COMMIT_MARKER = commit_lib.COMMIT_MARKER
SYNC_FILE = "sync.json"
_FILES = (IDS_FILE, EMBEDDINGS_FILE, META_FILE)
_NEW = commit_lib.NEW
DTYPES = ("float16", "float32")
# Largest allowed | ||row|| - 1 | per storage dtype (rounding of a normalised row).
NORM_TOLERANCE = {"float16": 4e-3, "float32": 1e-4}
_META_KEYS = ("format_version", "fingerprint", "dim", "dtype", "count", "created")
_ROWS_PER_CHUNK = 65536


class IndexFormatError(ValueError):
  """An index directory is missing a file, is corrupt or inconsistent."""


class FingerprintMismatchError(ValueError):
  """Embeddings from a different model than the index's."""


@dataclasses.dataclass(frozen=True)
class Index:
  """A loaded index.

  Attributes:
    ids: N video ids, the row order of `embeddings`.
    embeddings: float16 or float32 [N, E], L2-normalised rows (a read-only memory map when
      loaded with `mmap=True`).
    meta: the content of meta.json.
  """
  ids: list[str]
  embeddings: np.ndarray
  meta: dict

  @property
  def fingerprint(self) -> str:
    return self.meta["fingerprint"]

  @property
  def dim(self) -> int:
    return int(self.meta["dim"])

  def __len__(self) -> int:
    return len(self.ids)


def _recover(path: str) -> None:
  commit_lib.recover(path, _FILES + media_lib.FILES + (SYNC_FILE,))


def _commit(path: str, names: Sequence[str]) -> None:
  commit_lib.commit(path, names, _FILES + media_lib.FILES + (SYNC_FILE,))


# ----------------------------------------------------------------------------- validation


def _check_ids(ids: Sequence[str], what: str) -> list[str]:
  if isinstance(ids, (str, bytes)):
    raise ValueError(f"{what} must be a sequence of id strings, got a single {type(ids).__name__}")
  ids = list(ids)
  for i, video_id in enumerate(ids):
    if not isinstance(video_id, str) or not video_id:
      raise ValueError(f"{what}[{i}] must be a non-empty string, got {video_id!r}")
  seen = {}
  for i, video_id in enumerate(ids):
    if video_id in seen:
      raise ValueError(f"Duplicate id {video_id!r} in {what} (positions {seen[video_id]} and {i})")
    seen[video_id] = i
  return ids


def _normalized_rows(embeddings, num_ids: int, what: str, dim: Optional[int] = None
                     ) -> np.ndarray:
  """float32[N, E] L2-normalised copy of `embeddings`, with shape and value checks."""
  x = np.asarray(embeddings)
  if x.ndim != 2:
    raise ValueError(f"{what} must be 2-D [N, E], got shape {x.shape}")
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"{what} must be floating point, got dtype {x.dtype}")
  if x.shape[0] != num_ids:
    raise ValueError(f"{what} has {x.shape[0]} rows but {num_ids} ids were given")
  if dim is not None and x.shape[1] != dim:
    raise ValueError(f"{what} has dim {x.shape[1]}, the index has dim {dim}")
  if x.shape[1] == 0:
    raise ValueError(f"{what} has embedding dim 0")
  x = x.astype(np.float32)
  if not np.isfinite(x).all():
    raise ValueError(f"{what} row {np.argwhere(~np.isfinite(x))[0][0]} is not finite")
  norms = np.linalg.norm(x, axis=1, keepdims=True)
  zero = np.flatnonzero(norms[:, 0] == 0)
  if zero.size:
    raise ValueError(f"{what} row {zero[0]} is all zeros and cannot be normalised")
  return x / norms


def _check_fingerprint(fingerprint: Any) -> str:
  if not isinstance(fingerprint, str) or not fingerprint:
    raise ValueError(f"fingerprint must be a non-empty string, got {fingerprint!r}")
  return fingerprint


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- write / append


def write_index(path: str, ids: Sequence[str], embeddings, fingerprint: str,
                metadata: Optional[Mapping[str, Any]] = None, dtype: str = "float16", *,
                source: Optional[str] = None, overwrite: bool = False,
                thumbnails: Optional[Sequence[Optional[bytes]]] = None,
                sources: Optional[Sequence[Optional[str]]] = None,
                sync: Optional[Mapping[str, Any]] = None, windows=None) -> dict:
  """Writes a new index directory.

  Args:
    path: the index directory (created if needed).
    ids: N unique, non-empty video id strings.
    embeddings: float[N, E] video embeddings; rows are L2-normalised here.
    fingerprint: the model fingerprint (e.g. `fingerprint.fingerprint_params`).
    metadata: extra JSON-able information stored under meta["metadata"].
    dtype: storage dtype, "float16" (default) or "float32".
    source: where the embeddings come from (dataset, split, checkpoint), meta["source"].
    overwrite: replace an existing index at `path` (refused otherwise).
    thumbnails, sources: N JPEG strips and N source video paths (None entries allowed);
      see `ps_jax.retrieval.media`. The media files are always written (empty if None).
    sync: the folder state to commit with the rows (SYNC_FILE), or None (none kept).
    windows: N (video id, start, end) of window rows, or None (whole videos).

  Returns:
    The meta.json content written.
  """
  if dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
  fingerprint = _check_fingerprint(fingerprint)
  ids = _check_ids(ids, "ids")
  rows = _normalized_rows(embeddings, len(ids), "embeddings")
  os.makedirs(path, exist_ok=True)
  _recover(path)
  if not overwrite and any(os.path.exists(os.path.join(path, n)) for n in _FILES):
    raise FileExistsError(f"{path!r} already holds an index; use append_to_index, or "
                          "overwrite=True to replace it")
  now = _now()
  meta = {"format_version": FORMAT_VERSION, "fingerprint": fingerprint, "dim": rows.shape[1],
          "dtype": dtype, "count": len(ids), "created": now, "updated": now,
          "source": source, "metadata": dict(metadata or {}), "appends": []}
  json.dumps(meta)  # Fails here, before any file is written, if metadata is not JSON-able.
  commit_lib.write_json(os.path.join(path, IDS_FILE + _NEW), ids)
  with open(os.path.join(path, EMBEDDINGS_FILE + _NEW), "wb") as f:
    np.save(f, rows.astype(dtype), allow_pickle=False)
    f.flush()
    os.fsync(f.fileno())
  commit_lib.write_json(os.path.join(path, META_FILE + _NEW), meta)
  none = [None] * len(ids)
  if windows is None and os.path.exists(os.path.join(path, media_lib.WINDOWS_FILE)):
    windows = none  # the replaced index's windows go with it
  media_lib.write_new(path, _NEW, None, len(ids), thumbnails or none, sources or none,
                      windows)
  if sync is None and os.path.exists(os.path.join(path, SYNC_FILE)):
    sync = {"rows": {}, "skipped": {}}  # the replaced index's state goes with it
  _commit(path, _FILES + media_lib.FILES + _write_sync(path, sync))
  return meta


def append_to_index(path: str, ids: Sequence[str], embeddings, fingerprint: str, *,
                    source: Optional[str] = None, thumbnails=None, sources=None,
                    sync: Optional[Mapping[str, Any]] = None, windows=None) -> dict:
  """Appends rows to an existing index, atomically.

  Args:
    path: an index directory written by `write_index`.
    ids: M new video ids, none already in the index.
    embeddings: float[M, E] (normalised here, stored in the index's dtype).
    fingerprint: must equal the index's fingerprint.
    source: recorded with the append in meta["appends"].
    thumbnails, sources: the new rows' media, as for `write_index` (None: none).
    sync: the folder state to commit with the rows (None: the index's is kept).
    windows: the new rows' windows, as for `write_index`.

  Returns:
    The new meta.json content.
  """
  fingerprint = _check_fingerprint(fingerprint)
  _recover(path)
  index = load_index(path, mmap=True, check_norms=False)
  if fingerprint != index.fingerprint:
    raise FingerprintMismatchError(
        f"Cannot append to {path!r}: its embeddings come from model {index.fingerprint!r}, "
        f"the new ones from {fingerprint!r}")
  new_ids = _check_ids(ids, "ids")
  existing = set(index.ids)
  dup = [video_id for video_id in new_ids if video_id in existing]
  if dup:
    raise ValueError(f"{len(dup)} ids are already in {path!r}, e.g. {dup[0]!r}")
  rows = _normalized_rows(embeddings, len(new_ids), "embeddings", dim=index.dim)
  dtype = index.meta["dtype"]
  old = index.embeddings
  total = old.shape[0] + rows.shape[0]
  out = np.lib.format.open_memmap(os.path.join(path, EMBEDDINGS_FILE + _NEW), mode="w+",
                                  dtype=dtype, shape=(total, index.dim))
  for start in range(0, old.shape[0], _ROWS_PER_CHUNK):
    stop = min(start + _ROWS_PER_CHUNK, old.shape[0])
    out[start:stop] = old[start:stop]
  out[old.shape[0]:] = rows.astype(dtype)
  out.flush()
  del out, old
  commit_lib.sync_file(os.path.join(path, EMBEDDINGS_FILE + _NEW))
  meta = dict(index.meta)
  now = _now()
  meta.update(count=total, updated=now,
              appends=list(meta.get("appends", [])) + [
                  {"time": now, "count": len(new_ids), "source": source}])
  commit_lib.write_json(os.path.join(path, IDS_FILE + _NEW), index.ids + new_ids)
  commit_lib.write_json(os.path.join(path, META_FILE + _NEW), meta)
  names = media_lib.write_new(path, _NEW, load_media(path, index.meta["count"]),
                              len(new_ids), thumbnails, sources, windows)
  _commit(path, _FILES + tuple(names) + _write_sync(path, sync))
  return meta


def remove_from_index(path: str, ids: Sequence[str], *, reason: Optional[str] = None,
                      sync: Optional[Mapping[str, Any]] = None) -> dict:
  """Removes rows from an existing index, atomically; the others keep their order.

  Args:
    path: an index directory.
    ids: ids to remove (ids not in the index are ignored).
    reason: recorded with the removal in meta["removals"].
    sync: the folder state to commit with it (None: the index's is kept).

  Returns:
    The new meta.json content.
  """
  _recover(path)
  index = load_index(path, mmap=True, check_norms=False)
  gone = set(_check_ids(ids, "ids")) if ids else set()
  keep = np.asarray([r for r, video_id in enumerate(index.ids) if video_id not in gone],
                    np.int64)
  out = np.lib.format.open_memmap(os.path.join(path, EMBEDDINGS_FILE + _NEW), mode="w+",
                                  dtype=index.meta["dtype"], shape=(len(keep), index.dim))
  for start in range(0, len(keep), _ROWS_PER_CHUNK):
    rows = keep[start:start + _ROWS_PER_CHUNK]
    out[start:start + len(rows)] = index.embeddings[rows]
  out.flush()
  del out
  commit_lib.sync_file(os.path.join(path, EMBEDDINGS_FILE + _NEW))
  meta = dict(index.meta)
  now = _now()
  meta.update(count=len(keep), updated=now,
              removals=list(meta.get("removals", [])) + [
                  {"time": now, "count": len(index) - len(keep), "reason": reason}])
  commit_lib.write_json(os.path.join(path, IDS_FILE + _NEW), [index.ids[r] for r in keep])
  commit_lib.write_json(os.path.join(path, META_FILE + _NEW), meta)
  names = media_lib.write_subset(path, _NEW, load_media(path, len(index)), keep)
  _commit(path, _FILES + tuple(names) + _write_sync(path, sync))
  return meta


def _write_sync(path: str, sync: Optional[Mapping[str, Any]]) -> tuple:
  """Writes SYNC_FILE.new for the commit; returns the names to commit (none if None)."""
  if sync is None:
    return ()
  commit_lib.write_json(os.path.join(path, SYNC_FILE + _NEW), dict(sync))
  return (SYNC_FILE,)


def load_sync(path: str) -> Optional[dict]:
  """The index's SYNC_FILE content, or None when it keeps none."""
  file = commit_lib.current(path, SYNC_FILE)
  if not os.path.exists(file):
    return None
  state = _load_json(file)
  if not isinstance(state, dict) or not isinstance(state.get("rows"), dict) or not \
      isinstance(state.get("skipped"), dict):
    raise IndexFormatError(f"{file!r} must hold an object with 'rows' and 'skipped' objects")
  return state


def load_media(path: str, count: int) -> media_lib.Media:
  """The thumbnails and source paths of an index of `count` rows (none stored: empty)."""
  try:
    return media_lib.read({n: commit_lib.current(path, n) for n in media_lib.FILES}, count)
  except ValueError as e:
    raise IndexFormatError(str(e)) from e


# ----------------------------------------------------------------------------- load


def _load_json(file: str) -> Any:
  if not os.path.exists(file):
    raise IndexFormatError(f"Index file {file!r} is missing")
  try:
    with open(file, encoding="utf-8") as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise IndexFormatError(f"Index file {file!r} is not valid JSON (truncated or corrupt?): "
                           f"{e}") from e


def _check_meta(file: str, meta: Any) -> dict:
  if not isinstance(meta, dict):
    raise IndexFormatError(f"{file!r} must hold a JSON object, got {type(meta).__name__}")
  missing = [k for k in _META_KEYS if k not in meta]
  if missing:
    raise IndexFormatError(f"{file!r} lacks the keys {missing}")
  if meta["format_version"] != FORMAT_VERSION:
    raise IndexFormatError(f"{file!r} has format_version {meta['format_version']!r}; this "
                           f"ps_jax reads version {FORMAT_VERSION}")
  if meta["dtype"] not in DTYPES:
    raise IndexFormatError(f"{file!r} has dtype {meta['dtype']!r}, expected one of {DTYPES}")
  for key in ("dim", "count"):
    if not isinstance(meta[key], int) or isinstance(meta[key], bool) or meta[key] < 0:
      raise IndexFormatError(f"{file!r} has an invalid {key}: {meta[key]!r}")
  return meta


def _open_embeddings(file: str, meta: dict, mmap: bool) -> np.ndarray:
  """Opens embeddings.npy after checking its header and size against meta.json."""
  if not os.path.exists(file):
    raise IndexFormatError(f"Index file {file!r} is missing")
  try:
    with open(file, "rb") as f:
      version = np.lib.format.read_magic(f)
      if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
      else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
      data_offset = f.tell()
  except (ValueError, OSError, EOFError, SyntaxError) as e:
    raise IndexFormatError(f"Index file {file!r} is not a valid .npy file (corrupt?): {e}") from e
  expected_shape = (meta["count"], meta["dim"])
  if dtype != np.dtype(meta["dtype"]) or fortran:
    raise IndexFormatError(f"{file!r} holds dtype {dtype} (fortran_order={fortran}); meta.json "
                           f"says C-ordered {meta['dtype']}")
  if tuple(shape) != expected_shape:
    raise IndexFormatError(f"{file!r} has shape {tuple(shape)}; meta.json says "
                           f"[count, dim] = {list(expected_shape)}")
  expected_size = data_offset + int(np.prod(shape)) * dtype.itemsize
  actual_size = os.path.getsize(file)
  if actual_size != expected_size:
    raise IndexFormatError(f"{file!r} is {actual_size} bytes, expected {expected_size} for "
                           f"shape {tuple(shape)} {dtype} (truncated or corrupt)")
  if mmap:
    return np.load(file, mmap_mode="r", allow_pickle=False)
  return np.load(file, allow_pickle=False)


def load_index(path: str, *, mmap: bool = False, check_norms: bool = True) -> Index:
  """Loads and validates an index directory.

  Args:
    path: the index directory.
    mmap: memory-map embeddings.npy read-only instead of reading it into memory.
    check_norms: verify that every row is finite and L2-normalised (reads every row).

  Returns:
    Index(ids list[N], embeddings float16/float32[N, E], meta dict).

  Raises:
    IndexFormatError naming the file that is missing, corrupt or inconsistent.
  """
  if not os.path.isdir(path):
    raise IndexFormatError(f"Index directory {path!r} does not exist")
  meta_file = commit_lib.current(path, META_FILE)
  meta = _check_meta(meta_file, _load_json(meta_file))
  ids_file = commit_lib.current(path, IDS_FILE)
  ids = _load_json(ids_file)
  if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
    raise IndexFormatError(f"{ids_file!r} must hold a JSON list of id strings")
  if len(ids) != meta["count"]:
    raise IndexFormatError(f"{ids_file!r} has {len(ids)} ids but meta.json count is "
                           f"{meta['count']}")
  if len(set(ids)) != len(ids):
    raise IndexFormatError(f"{ids_file!r} has duplicate ids")
  emb_file = commit_lib.current(path, EMBEDDINGS_FILE)
  embeddings = _open_embeddings(emb_file, meta, mmap)
  if check_norms:
    tol = NORM_TOLERANCE[meta["dtype"]]
    for start in range(0, embeddings.shape[0], _ROWS_PER_CHUNK):
      block = np.asarray(embeddings[start:start + _ROWS_PER_CHUNK], np.float32)
      err = np.abs(np.linalg.norm(block, axis=1) - 1.0)
      bad = np.flatnonzero(~(err <= tol))  # Also catches NaN.
      if bad.size:
        row = start + bad[0]
        raise IndexFormatError(
            f"{emb_file!r} row {row} (id {ids[row]!r}) has norm "
            f"{np.linalg.norm(block[bad[0]]):.6g}, expected 1 +- {tol} (corrupt?)")
  return Index(ids=ids, embeddings=embeddings, meta=meta)
