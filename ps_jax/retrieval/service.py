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

from ps_jax.retrieval import store
from ps_jax.retrieval.query import TextSearcher


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
  """One result: index row, video id and cosine score."""
  row: int
  id: str
  score: float


@dataclasses.dataclass
class _Request:
  texts: list
  k: int
  future: concurrent.futures.Future


class SearchService:
  """Text-to-video search over one index, safe to call from many threads."""

  def __init__(self, searcher: TextSearcher, media: store.media_lib.Media, info: dict, *,
               max_batch: int = 32, limits: Limits = Limits()):
    """Args: searcher: the index on device and its text encoder (batch size >=
    max_batch); media: the index's thumbnails and sources; info: what /healthz reports
    about the index and model; max_batch: most queries per device call."""
    if max_batch < 1 or limits.max_queries > max_batch:
      raise ValueError(f"max_batch ({max_batch}) must be >= 1 and >= limits.max_queries "
                       f"({limits.max_queries})")
    self.searcher, self.media, self.info = searcher, media, dict(info)
    self.max_batch, self.limits = int(max_batch), limits
    self.max_k = min(limits.max_k, len(searcher.ids))
    self._rows = {video_id: row for row, video_id in enumerate(searcher.ids)}
    self._queue: queue.Queue = queue.Queue()
    self._stats = {"queries": 0, "requests": 0, "device_calls": 0}
    self._lock = threading.Lock()
    self._worker = threading.Thread(target=self._loop, name="ps_jax-search", daemon=True)
    self._worker.start()

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
    device = jax.devices()[0]
    info = {"index": os.path.abspath(index_dir), "videos": len(index), "dim": index.dim,
            "fingerprint": index.fingerprint, "model": model or meta.get("model_path"),
            "num_frames": meta.get("num_frames"), "device": device.platform,
            "device_kind": device.device_kind, "num_devices": jax.device_count(),
            "thumbnails": media.num_thumbnails,
            "source_files": sum(s is not None for s in media.sources or ())}
    service = cls(searcher, media, info, max_batch=max_batch, limits=limits)
    if warm_up:
      service.warm_up()
    return service

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
    request = _Request(texts, min(k, self.max_k), concurrent.futures.Future())
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
      try:
        texts = [t for r in batch for t in r.texts]
        scores, rows = self._top(texts)
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
        hits = [[Hit(int(j), self.searcher.ids[j], float(s))
                 for s, j in zip(scores[q, :r.k], rows[q, :r.k])]
                for q in range(start, start + len(r.texts))]
        start += len(r.texts)
        r.future.set_result(hits)

  def _top(self, texts: list):
    """One device call: (scores float32[Q, max_k], rows int32[Q, max_k])."""
    return self.searcher.searcher.search(self.searcher.embed(texts), self.max_k)

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

  def has_thumbnail(self, row: int) -> bool:
    return self.media.has_thumbnail(row)

  def thumbnail(self, video_id: str) -> Optional[bytes]:
    """The video's JPEG strip; None for an unknown id or a video without one."""
    row = self._rows.get(video_id)
    return None if row is None else self.media.thumbnail(row)

  def video_file(self, video_id: str) -> Optional[str]:
    """The recorded source file of the video, if it still exists (else None)."""
    row = self._rows.get(video_id)
    path = None if row is None else self.media.source(row)
    return path if path and os.path.isfile(path) else None

  def health(self) -> dict:
    with self._lock:
      stats = dict(self._stats)
    return {"status": "ok", **self.info, "max_k": self.limits.max_k, "max_batch": self.max_batch,
            **stats}
