"""A warm search service: one index and its model loaded once, queries batched per device call.

Layer: jobs (imports retrieval.query, retrieval.store, retrieval.media). The web front end
(`ps_jax.serve`) and the benchmarks use it; it knows nothing of HTTP.

  service = SearchService.from_index("/data/demo_index")   # loads, compiles, warms up
  service.search(["a red circle moves left"], k=5)          # -> [[Hit, ...]]
  service.thumbnail("test00007f")                          # JPEG strip or None

Queries from concurrent callers are queued; one worker thread takes every query waiting
when the device becomes free (up to `max_batch`), encodes them in one padded batch,
runs one top-k for all (at `max_k`, the slice each caller asked for is cut afterwards)
and hands each caller its rows. Batch shapes are the powers of two up to `max_batch`,
all compiled by `warm_up()` before the first request.

An index that grows while it is served (`ps_jax.serve --video_dir`: built in the
background) is swapped in whole by `reload()`: the new rows are put on the device and
their top-k compiled beside the old ones, then one assignment makes every later query
see them; a query sees one version of the index, never a mix. Before the first commit
the service answers every query with no results.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import queue
import threading
import time
from typing import Optional, Sequence

import jax
import numpy as np

from ps_jax.embed import TextEncoder
from ps_jax.retrieval import moments, store
from ps_jax.retrieval.query import TextSearcher
from ps_jax.retrieval.topk import Searcher


class RequestError(ValueError):
  """A request the service refuses (empty or too long query, k out of range, ...)."""


@dataclasses.dataclass(frozen=True)
class Limits:
  """Bounds on what one request may ask.

  Attributes:
    max_k: results per query (a larger k is refused; a smaller index gives all its
      videos).
    max_query_chars: characters per query text.
    max_queries: queries per request (<= the service's max_batch).
  """
  max_k: int = 100
  max_query_chars: int = 500
  max_queries: int = 32


@dataclasses.dataclass(frozen=True)
class Hit:
  """One result: index row, its id and cosine score; of a windowed index the video and
  the moment's start and end in seconds (else video = id, start = end = None)."""
  row: int
  id: str
  score: float
  video: Optional[str] = None
  start: Optional[float] = None
  end: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class _View:
  """One version of the index as served: its searcher (None: no rows yet), media, rows."""
  searcher: Optional[TextSearcher]
  media: store.media_lib.Media
  info: dict
  rows: dict
  max_k: int

  @property
  def ids(self) -> list:
    return self.searcher.ids if self.searcher is not None else []


@dataclasses.dataclass
class _Request:
  texts: list
  k: int
  future: concurrent.futures.Future


class SearchService:
  """Text-to-video search over one index, safe to call from many threads."""

  def __init__(self, searcher: Optional[TextSearcher], media: store.media_lib.Media,
               info: dict, *, max_batch: int = 32, limits: Limits = Limits(),
               encoder: Optional[TextEncoder] = None):
    """Args: searcher: the index on device and its text encoder (batch size >=
    max_batch), or None for an index without rows yet (then give `encoder`); media: the
    index's thumbnails and sources; info: what /healthz reports about the index and
    model; max_batch: most queries per device call."""
    if max_batch < 1 or limits.max_queries > max_batch:
      raise ValueError(f"max_batch ({max_batch}) must be >= 1 and >= limits.max_queries "
                       f"({limits.max_queries})")
    if searcher is None and encoder is None:
      raise ValueError("give a searcher, or the text encoder of an index without rows yet")
    self.encoder = encoder if encoder is not None else searcher.encoder
    self.max_batch, self.limits = int(max_batch), limits
    self._view = self._make_view(searcher, media, info)
    # A function returning what /healthz reports under "indexing" (set by a server that
    # builds the index while it serves), or None.
    self.progress = None
    self._queue: queue.Queue = queue.Queue()
    self._stats = {"queries": 0, "requests": 0, "device_calls": 0}
    self._lock = threading.Lock()
    self._worker = threading.Thread(target=self._loop, name="ps_jax-search", daemon=True)
    self._worker.start()

  def _make_view(self, searcher, media, info) -> _View:
    ids = searcher.ids if searcher is not None else []
    return _View(searcher, media, dict(info, videos=len(ids)),
                 {video_id: row for row, video_id in enumerate(ids)},
                 moments.fetch_k(self.limits.max_k, len(ids), media.windows is not None))

  # Read-only views of the index version being served.
  searcher = property(lambda self: self._view.searcher)
  media = property(lambda self: self._view.media)
  info = property(lambda self: self._view.info)
  max_k = property(lambda self: self._view.max_k)

  @classmethod
  def from_index(cls, index_dir: str, *, model: Optional[str] = None,
                 tokenizer: Optional[str] = None, max_batch: int = 32,
                 limits: Limits = Limits(), warm_up: bool = True) -> "SearchService":
    """Loads the index (checked), its model (fingerprint checked, see `query_encoder`)
    and media, and compiles every batch shape unless `warm_up=False`."""
    index = store.load_index(index_dir)
    searcher = TextSearcher.from_index(index, model=model, tokenizer=tokenizer,
                                       batch_size=max_batch)
    media = store.load_media(index_dir, len(index))
    meta = index.meta.get("metadata") or {}
    info = _info(index_dir, index, media, model or meta.get("model_path"))
    service = cls(searcher, media, info, max_batch=max_batch, limits=limits)
    if warm_up:
      service.warm_up()
    return service

  def reload(self, index_dir: str) -> int:
    """Serves the index at `index_dir` as it is now (the same model: fingerprint
    checked), its top-k compiled for every batch shape first; returns its rows."""
    index = store.load_index(index_dir)
    old = self._view
    if old.info.get("fingerprint") and index.fingerprint != old.info["fingerprint"]:
      raise store.FingerprintMismatchError(
          f"{index_dir!r} is now an index of model {index.fingerprint}, not the "
          f"{old.info['fingerprint']} this service encodes queries with")
    searcher = None
    if len(index):
      searcher = TextSearcher(Searcher(index.embeddings, index.ids, mesh=self.encoder.mesh,
                                       batch_size=self.max_batch), self.encoder)
    media = store.load_media(index_dir, len(index))
    view = self._make_view(searcher, media, {**old.info, **_info(
        index_dir, index, media, old.info.get("model"))})
    n = 1
    while searcher is not None:  # compile every batch shape before queries reach it
      self._top(["warm up"] * n, view)
      if n >= self.max_batch:
        break
      n = min(2 * n, self.max_batch)
    self._view = view
    return len(index)

  # ---------------------------------------------------------------------------- queries

  def check(self, texts: Sequence[str], k: int) -> list[str]:
    """The queries, stripped, or RequestError saying what is wrong."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.limits.max_k:
      raise RequestError(f"k must be an integer in [1, {self.limits.max_k}], got {k!r}")
    texts = list(texts)
    if not texts:
      raise RequestError("no query given")
    if len(texts) > self.limits.max_queries:
      raise RequestError(f"{len(texts)} queries in one request; at most "
                         f"{self.limits.max_queries}")
    out = []
    for i, text in enumerate(texts):
      if not isinstance(text, str):
        raise RequestError(f"query {i} must be a string, got {type(text).__name__}")
      text = text.strip()
      if not text:
        raise RequestError(f"query {i} is empty" if len(texts) > 1 else "the query is empty")
      if len(text) > self.limits.max_query_chars:
        raise RequestError(f"query {i} has {len(text)} characters; at most "
                           f"{self.limits.max_query_chars}")
      out.append(text)
    return out

  def submit(self, texts: Sequence[str], k: int) -> concurrent.futures.Future:
    """Queues a request (checked first: RequestError); the future's result is one list
    of min(k, videos) Hits per query, best first."""
    texts = self.check(texts, k)
    request = _Request(texts, k, concurrent.futures.Future())
    self._queue.put(request)
    return request.future

  def search(self, texts: Sequence[str], k: int) -> list[list[Hit]]:
    """Blocking `submit`."""
    return self.submit(texts, k).result()

  def _take_batch(self, first: _Request) -> list[_Request]:
    batch, n = [first], len(first.texts)
    while True:
      try:
        nxt = self._queue.get_nowait()
      except queue.Empty:
        return batch
      if nxt is None or n + len(nxt.texts) > self.max_batch:
        self._queue.put(nxt)  # next round (order among waiting requests is not kept)
        return batch
      batch.append(nxt)
      n += len(nxt.texts)

  def _loop(self) -> None:
    while True:
      first = self._queue.get()
      if first is None:
        return
      batch = self._take_batch(first)
      view = self._view  # one version of the index for the whole batch
      try:
        texts = [t for r in batch for t in r.texts]
        scores, rows = self._top(texts, view)
      except Exception as e:  # pylint: disable=broad-except  # reported to every caller
        for r in batch:
          r.future.set_exception(e)
        continue
      with self._lock:
        self._stats["queries"] += len(texts)
        self._stats["requests"] += len(batch)
        self._stats["device_calls"] += 1
      start = 0
      for r in batch:
        hits = [[_hit(view, j, s) for j, s in moments.distinct(
                    [(int(j), float(s)) for s, j in zip(scores[q], rows[q])],
                    view.media.windows, r.k)]
                for q in range(start, start + len(r.texts))]
        start += len(r.texts)
        r.future.set_result(hits)

  def _top(self, texts: list, view: Optional[_View] = None):
    """One device call: (scores float32[Q, max_k], rows int32[Q, max_k]) over `view`
    (default the current one; no rows yet: the queries are encoded, k = 0)."""
    view = view or self._view
    queries = self.encoder(texts)
    if view.searcher is None:
      return np.zeros((len(texts), 0), np.float32), np.zeros((len(texts), 0), np.int32)
    return view.searcher.searcher.search(queries, view.max_k)

  def warm_up(self) -> float:
    """Compiles every padded batch shape (powers of two up to max_batch), before any
    request is taken; returns the seconds it took."""
    start, n = time.perf_counter(), 1
    while True:
      self._top(["warm up"] * n)
      if n >= self.max_batch:
        return time.perf_counter() - start
      n = min(2 * n, self.max_batch)

  def close(self) -> None:
    """Stops the worker thread (queued requests are answered first)."""
    self._queue.put(None)
    self._worker.join()

  # ---------------------------------------------------------------------------- media

  def has_thumbnail(self, video_id: str) -> bool:
    view = self._view
    row = view.rows.get(video_id)
    return row is not None and view.media.has_thumbnail(row)

  def thumbnail(self, video_id: str) -> Optional[bytes]:
    """The video's JPEG strip; None for an unknown id or a video without one."""
    view = self._view
    row = view.rows.get(video_id)
    return None if row is None else view.media.thumbnail(row)

  def video_file(self, video_id: str) -> Optional[str]:
    """The recorded source file of the video, if it still exists (else None)."""
    view = self._view
    row = view.rows.get(video_id)
    path = None if row is None else view.media.source(row)
    return path if path and os.path.isfile(path) else None

  def health(self) -> dict:
    with self._lock:
      stats = dict(self._stats)
    out = {"status": "ok", **self.info, "max_k": self.limits.max_k,
           "max_batch": self.max_batch, **stats}
    if self.progress is not None:
      out["indexing"] = self.progress()
    return out


def _hit(view: _View, row: int, score: float) -> Hit:
  w = view.media.window(row)
  if w is None:
    return Hit(row, view.ids[row], score, view.ids[row])
  return Hit(row, view.ids[row], score, w[0], float(w[1]), float(w[2]))


def _info(index_dir: str, index: store.Index, media, model: Optional[str]) -> dict:
  """What /healthz reports about an index, its model and the device."""
  meta = index.meta.get("metadata") or {}
  device = jax.devices()[0]
  return {"index": os.path.abspath(index_dir), "videos": len(index), "dim": index.dim,
          "fingerprint": index.fingerprint, "model": model,
          "num_frames": meta.get("num_frames"), "device": device.platform,
          "device_kind": device.device_kind, "num_devices": jax.device_count(),
          "thumbnails": media.num_thumbnails,
          "source_files": sum(s is not None for s in media.sources or ())}
