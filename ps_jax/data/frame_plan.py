"""Which frames a video decode keeps, and how a seeking pass reaches them: pure index
arithmetic over demuxed packets, no decoding (`ps_jax.data.video` decodes).

Layer: data (imports `sampling`).
"""

from __future__ import annotations

import numpy as np

from ps_jax.data import sampling


def plan(count: int, times: np.ndarray | None, rate: float, num_frames: int | None,
          fps: float | None) -> tuple[np.ndarray, np.ndarray]:
  """(source, keep): decoded-frame index of each source frame int64[n], and the
  kept source positions int64[K'] (all, or `num_frames` evenly spread)."""
  if fps is None:
    source = np.arange(count, dtype=np.int64)
  else:
    if times is None or len(times) < count:
      times = np.arange(count) / (rate or fps)  # no timestamps: a constant rate
    source = sampling.retime(times[:count], fps)
  keep = (np.arange(len(source), dtype=np.int64) if num_frames is None
          else sampling.even_indices(len(source), num_frames))
  return source, keep


def positions(keep_only, num_spread: int) -> np.ndarray:
  """int64[M] sorted unique positions in [0, K') chosen by `keep_only` (see `video.decode_video`)."""
  if keep_only is None:
    return np.arange(num_spread, dtype=np.int64)
  chosen = keep_only(num_spread) if callable(keep_only) else keep_only
  chosen = np.unique(np.asarray(chosen, np.int64).reshape(-1))
  if len(chosen) and chosen[0] < 0:
    raise ValueError(f"keep_only positions must be >= 0, got {chosen[0]}")
  chosen = chosen[chosen < num_spread]
  if not len(chosen):
    raise ValueError(f"keep_only chose none of the {num_spread} evenly spread frames")
  return chosen


def seek_steps(targets: np.ndarray, keyframes: np.ndarray) -> tuple[list, int]:
  """How the seeking pass reaches sorted unique decoded-frame indices `targets`.

  Returns ([(start, target)], frames decoded): start is the keyframe to seek to first,
  or None to decode on from the previous target (or from the start of the file), chosen
  when that decodes no more frames than seeking. ([], 0) when a target has no keyframe
  at or before it.
  """
  starts = np.flatnonzero(keyframes)
  steps, cost, at = [], 0, -1  # at: the last frame decoded (-1: none yet)
  for t in (int(t) for t in targets):
    i = np.searchsorted(starts, t, side="right") - 1
    key = int(starts[i]) if i >= 0 else None
    if key is None and at < 0:
      return [], 0
    if key is None or at >= key - 1:
      steps.append((None, t))
      cost += t - at
    else:
      steps.append((key, t))
      cost += t - key + 1
    at = t
  return steps, cost
