"""An index written in row shards, so that each host of a multi-host search reads only
the rows it holds.

Layer: foundation (numpy; `store` for the index it is cut from). Layout of a shard
directory (written once by `write_shards`, from an index directory):

  shards.json                      {"format", "format_version", "count" N, "dim" E,
                                    "dtype", "fingerprint", "index_meta" (the index's
                                    meta.json), "shards": [{"start", "count",
                                    "embeddings", "ids"}, ...]} in row order
  embeddings-00000-of-00004.npy    dtype[n_s, E], rows [start, start + n_s) of the index
  ids-00000-of-00004.json          their n_s ids

`RowSource.open(path)` reads either a shard directory or a plain index directory by
global row range: `rows(start, stop)` opens (memory-maps) only the files that overlap
the range, `ids_of(rows)` only the id files holding those rows. Which files were opened
is kept in `files_opened`. Like an `Index`, it has `meta` (the index's meta.json) and
`fingerprint`, which is what a query encoder needs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Optional, Sequence, Union

import numpy as np

from ps_jax.retrieval import store

SHARDS_FILE = "shards.json"
FORMAT = "ps_jax.index_shards"
FORMAT_VERSION = 1


def _shard_name(kind: str, i: int, n: int, ext: str) -> str:
  return f"{kind}-{i:05d}-of-{n:05d}.{ext}"


def shard_bounds(count: int, num_shards: int) -> list[tuple[int, int]]:
  """[start, stop) of each of num_shards near-equal row ranges (the first ones longer)."""
  base, extra = divmod(count, num_shards)
  bounds, start = [], 0
  for i in range(num_shards):
    stop = start + base + (i < extra)
    bounds.append((start, stop))
    start = stop
  return bounds


def write_shards(index: Union[store.Index, str], out_dir: str, num_shards: int) -> dict:
  """Writes an index as num_shards row shards in out_dir (which must not exist yet).

  The files are written in a temporary directory beside out_dir, renamed into place
  when complete: out_dir never holds a partial shard set.

  Returns:
    The shards.json content.
  """
  if isinstance(index, str):
    index = store.load_index(index, mmap=True)
  count = len(index)
  if not isinstance(num_shards, (int, np.integer)) or not 1 <= num_shards <= count:
    raise ValueError(f"num_shards must be in 1..{count} (the index's rows), got "
                     f"{num_shards!r}")
  if os.path.exists(out_dir):
    raise FileExistsError(f"{out_dir!r} already exists; remove it or choose another "
                          "output directory")
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=".shards_", dir=parent)
  try:
    shards = []
    for i, (start, stop) in enumerate(shard_bounds(count, num_shards)):
      emb_name = _shard_name("embeddings", i, num_shards, "npy")
      ids_name = _shard_name("ids", i, num_shards, "json")
      np.save(os.path.join(staging, emb_name), np.asarray(index.embeddings[start:stop]),
              allow_pickle=False)
      with open(os.path.join(staging, ids_name), "w", encoding="utf-8") as f:
        json.dump(index.ids[start:stop], f)
      shards.append({"start": start, "count": stop - start, "embeddings": emb_name,
                     "ids": ids_name})
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "count": count,
            "dim": index.dim, "dtype": index.meta["dtype"], "fingerprint": index.fingerprint,
            "index_meta": index.meta, "shards": shards}
    with open(os.path.join(staging, SHARDS_FILE), "w", encoding="utf-8") as f:
      json.dump(meta, f, indent=1)
    os.rename(staging, out_dir)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return meta


def is_shard_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, SHARDS_FILE))


def _read_shards_meta(path: str) -> dict:
  file = os.path.join(path, SHARDS_FILE)
  try:
    with open(file, encoding="utf-8") as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise store.IndexFormatError(f"{file!r} cannot be read: {e}") from e
  if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
    raise store.IndexFormatError(f"{file!r} is not a {FORMAT} v{FORMAT_VERSION} file")
  expected = 0
  for i, shard in enumerate(meta["shards"]):
    if shard["start"] != expected or shard["count"] < 1:
      raise store.IndexFormatError(f"{file!r}: shard {i} starts at row {shard['start']} "
                                   f"with {shard['count']} rows; expected start {expected}")
    expected += shard["count"]
  if expected != meta["count"]:
    raise store.IndexFormatError(f"{file!r}: the shards hold {expected} rows, count is "
                                 f"{meta['count']}")
  return meta


class RowSource:
  """Rows and ids of an index by global row range, from a shard or an index directory."""

  def __init__(self, path: str, layout: dict, shards: list[dict],
               index: Optional[store.Index] = None):
    self.path, self.layout, self._shards, self._index = path, layout, shards, index
    self.meta = layout["index_meta"]
    self._starts = np.array([s["start"] for s in shards], np.int64)
    self._ids: dict[int, list[str]] = {}
    self.files_opened: set[str] = set()

  @classmethod
  def open(cls, path: str) -> "RowSource":
    """A shard directory (`write_shards`) or an index directory (memory-mapped)."""
    if is_shard_dir(path):
      meta = _read_shards_meta(path)
      return cls(path, meta, meta["shards"])
    index = store.load_index(path, mmap=True, check_norms=False)
    meta = {"count": len(index), "dim": index.dim, "dtype": index.meta["dtype"],
            "fingerprint": index.fingerprint, "index_meta": index.meta}
    shard = {"start": 0, "count": len(index), "embeddings": store.EMBEDDINGS_FILE,
             "ids": store.IDS_FILE}
    return cls(path, meta, [shard], index)

  @property
  def count(self) -> int:
    return int(self.layout["count"])

  @property
  def dim(self) -> int:
    return int(self.layout["dim"])

  @property
  def dtype(self) -> str:
    return self.layout["dtype"]

  @property
  def fingerprint(self) -> str:
    return self.layout["fingerprint"]

  def __len__(self) -> int:
    return self.count

  def _overlapping(self, start: int, stop: int) -> list[int]:
    first = int(np.searchsorted(self._starts, start, side="right")) - 1
    out = []
    for i in range(max(first, 0), len(self._shards)):
      if self._shards[i]["start"] >= stop:
        break
      out.append(i)
    return out

  def _embeddings(self, i: int) -> np.ndarray:
    if self._index is not None:
      self.files_opened.add(store.EMBEDDINGS_FILE)
      return self._index.embeddings
    shard = self._shards[i]
    file = os.path.join(self.path, shard["embeddings"])
    try:
      rows = np.load(file, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
      raise store.IndexFormatError(f"Shard file {file!r} cannot be read: {e}") from e
    if rows.shape != (shard["count"], self.dim) or rows.dtype != np.dtype(self.dtype):
      raise store.IndexFormatError(f"{file!r} holds {rows.dtype}{list(rows.shape)}; "
                                   f"{SHARDS_FILE} says {self.dtype}"
                                   f"{[shard['count'], self.dim]}")
    self.files_opened.add(shard["embeddings"])
    return rows

  def rows(self, start: int, stop: int) -> np.ndarray:
    """Index rows [start, stop) (stop clipped to count), in the stored dtype."""
    stop = min(stop, self.count)
    if start >= stop:
      return np.zeros((0, self.dim), self.dtype)
    parts = []
    for i in self._overlapping(start, stop):
      s0 = self._shards[i]["start"]
      lo, hi = max(start, s0) - s0, min(stop, s0 + self._shards[i]["count"]) - s0
      parts.append(np.asarray(self._embeddings(i)[lo:hi]))
    return np.concatenate(parts) if len(parts) > 1 else parts[0]

  def _shard_ids(self, i: int) -> list[str]:
    if i not in self._ids:
      if self._index is not None:
        self._ids[i] = self._index.ids
      else:
        file = os.path.join(self.path, self._shards[i]["ids"])
        with open(file, encoding="utf-8") as f:
          self._ids[i] = json.load(f)
        if len(self._ids[i]) != self._shards[i]["count"]:
          raise store.IndexFormatError(f"{file!r} has {len(self._ids[i])} ids, expected "
                                       f"{self._shards[i]['count']}")
      self.files_opened.add(self._shards[i]["ids"])
    return self._ids[i]

  def ids_of(self, rows: Sequence[int]) -> list[str]:
    """The ids of global rows (reading only the id files that hold them)."""
    out = []
    for r in rows:
      r = int(r)
      if not 0 <= r < self.count:
        raise IndexError(f"row {r} is outside the index's {self.count} rows")
      i = int(np.searchsorted(self._starts, r, side="right")) - 1
      out.append(self._shard_ids(i)[r - self._shards[i]["start"]])
    return out
