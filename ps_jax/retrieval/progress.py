"""Where a folder build stands (`ps_jax.retrieval.folder`), for a page or a bar.

Layer: foundation (standard library only).
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Optional

_RECENT_PROBLEMS = 20


class Progress:
  """Where a folder build stands; written by the build, read from any thread."""

  def __init__(self):
    self._lock = threading.Lock()
    self._state = {"state": "starting", "files": 0, "total": 0, "done": 0, "indexed": 0,
                   "skipped": 0, "rows": 0, "commits": 0, "message": "", "error": None}
    self._started: Optional[float] = None
    self._finished: Optional[float] = None
    self._problems = collections.deque(maxlen=_RECENT_PROBLEMS)

  def update(self, **fields) -> None:
    with self._lock:
      self._state.update(fields)
      if fields.get("state") in ("done", "error") and self._finished is None:
        self._finished = time.monotonic()

  def start(self, total: int) -> None:
    """A pass over `total` videos begins."""
    with self._lock:
      self._state.update(state="indexing" if total else "done", total=total, done=0,
                         indexed=0, skipped=0, error=None)
      self._started, self._finished = time.monotonic(), None

  def video(self, status: int) -> None:
    """One video processed: 0 embedded, > 0 skipped."""
    with self._lock:
      self._state["done"] += 1
      self._state["indexed" if status == 0 else "skipped"] += 1

  def problem(self, video_id: str, reason: str, detail: str) -> None:
    with self._lock:
      self._problems.append({"id": video_id, "reason": reason, "detail": detail[:300]})

  def snapshot(self) -> dict:
    """{"state", "files", "total", "done", "indexed", "skipped", "rows", "commits",
    "videos_per_s", "seconds_left", "message", "error", "problems"}."""
    with self._lock:
      out = dict(self._state, problems=list(self._problems))
      end = self._finished if self._finished is not None else time.monotonic()
      elapsed = end - self._started if self._started is not None else 0.0
    rate = out["done"] / elapsed if out["done"] and elapsed > 0 else None
    left = out["total"] - out["done"]
    out["videos_per_s"] = round(rate, 3) if rate else None
    out["seconds_left"] = round(left / rate, 1) if rate and out["state"] == "indexing" else (
        0.0 if not left else None)
    return out
