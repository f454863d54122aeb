"""Search results over an index of windows: distinct moments, not neighbouring windows.

Layer: foundation (standard library only). Rows of a windowed index
(`ps_jax.retrieval.windows`) overlap in time, so the best rows of a query are often
several windows around one moment of one video. The rule, applied in score order: a
window is dropped when it overlaps (shares more than zero seconds with) a window of the
same video already kept; windows of one video that do not overlap are distinct moments
and are both kept. Rows of whole videos are never dropped. To return k moments the
search first takes the `fetch_k` best rows.
"""

from __future__ import annotations

from typing import Optional, Sequence

# Rows fetched per moment returned: a kept window can suppress the windows that start
# within one window length of it, 2W/S - 1 of them (3 at the default stride W / 2).
FETCH_FACTOR = 4


def fetch_k(k: int, num_rows: int, windowed: bool) -> int:
  """Rows to search for k moments (k itself for an index of whole videos)."""
  return min(num_rows, k * FETCH_FACTOR if windowed else k)


def distinct(hits: Sequence[tuple[int, float]], windows: Optional[Sequence], k: int
             ) -> list[tuple[int, float]]:
  """The first k of `hits` ((row, score), best first) that are distinct moments.

  Args:
    hits: rows and scores, best first.
    windows: per row (video id, start, end) or None (a whole video); None: no windows.
    k: moments to return.
  """
  if windows is None:
    return list(hits[:k])
  kept, taken = [], {}  # taken: video id -> [(start, end)] kept
  for row, score in hits:
    w = windows[row]
    if w is not None:
      video, start, end = w
      if any(start < e and s < end for s, e in taken.get(video, ())):
        continue
      taken.setdefault(video, []).append((start, end))
    kept.append((row, score))
    if len(kept) == k:
      break
  return kept
