"""Frame index sampling: the official chunked `rand` / `uniform` scheme and even spreading.

A clip of F = C * P frames is C chunks of P frames, one frame from each of P equal
temporal segments of the video, ordered chunk-major (frames [c*P, (c+1)*P) are chunk c).

Segment boundaries (inclusive [a, b]) for a video of n frames and P segments:

- n >= P: `edges = floor(linspace(0, n, P + 1))`, segment s = [edges[s], edges[s+1] - 1].
  Every segment holds at least one frame; their lengths differ by at most one.
  Example: n = 10, P = 3 -> edges 0, 3, 6, 10 -> [0, 2], [3, 5], [6, 9].
- n < P (short video): segment s = [min(s, n - 1), min(s, n - 1)]: the n frames fill the
  first n segments in order and the remaining segments repeat the last frame.

`rand` (training): every chunk draws, independently, one uniform frame from each
segment [a, b] (both ends included). `uniform` (test): chunk c takes a + (b - a) //
(C + 1) * (c + 1) in every segment.

Layer: data (no ps_jax imports).
"""

from __future__ import annotations

import numpy as np

MODES = ("rand", "uniform")


def segment_bounds(num_video_frames: int, num_segments: int) -> np.ndarray:
  """Inclusive [a, b] frame bounds of the P temporal segments.

  Args:
    num_video_frames: n >= 1, frames available.
    num_segments: P >= 1.

  Returns:
    int64[P, 2] with columns (a, b), a <= b.
  """
  n, p = int(num_video_frames), int(num_segments)
  if n < 1:
    raise ValueError(f"num_video_frames must be >= 1, got {n}")
  if p < 1:
    raise ValueError(f"num_segments must be >= 1, got {p}")
  if n < p:
    a = np.minimum(np.arange(p), n - 1)
    return np.stack([a, a], axis=1).astype(np.int64)
  edges = np.linspace(0, n, p + 1).astype(np.int64)
  return np.stack([edges[:-1], edges[1:] - 1], axis=1)


def sample_frame_indices(num_video_frames: int, num_frames: int, num_prompts: int,
                         mode: str, rng: np.random.Generator | None = None) -> np.ndarray:
  """Official chunked frame sampling.

  Args:
    num_video_frames: n, frames in the (pre-decoded) video.
    num_frames: F = C * P frames to return.
    num_prompts: P, number of segments (= prompts per chunk).
    mode: "rand" (training; needs `rng`) or "uniform" (test, deterministic).
    rng: numpy Generator for "rand".

  Returns:
    int32[F] frame indices in [0, n), chunk-major: [c*P, (c+1)*P) is chunk c.
  """
  if num_prompts < 1 or num_frames < 1 or num_frames % num_prompts:
    raise ValueError(f"num_frames ({num_frames}) must be a positive multiple of "
                     f"num_prompts ({num_prompts})")
  if mode not in MODES:
    raise ValueError(f"Unknown sampling mode {mode!r}: expected one of {MODES}")
  chunks = num_frames // num_prompts
  bounds = segment_bounds(num_video_frames, num_prompts)
  a, b = bounds[:, 0], bounds[:, 1]
  if mode == "rand":
    if rng is None:
      raise ValueError("mode='rand' needs a numpy Generator `rng`")
    idx = rng.integers(a, b + 1, size=(chunks, num_prompts))
  else:
    c = np.arange(1, chunks + 1)[:, None]
    idx = a[None, :] + (b - a)[None, :] // (chunks + 1) * c
  return idx.reshape(-1).astype(np.int32)


def even_indices(num_video_frames: int, num_keep: int) -> np.ndarray:
  """K frames evenly spread over n: the centre frame of K equal slices of the video.

  Returns all n indices when n <= K (frames are never duplicated here; short videos are
  padded later by the sampler).

  Returns:
    int64[min(n, K)] strictly increasing indices in [0, n).
  """
  n, k = int(num_video_frames), int(num_keep)
  if k < 1:
    raise ValueError(f"num_keep must be >= 1, got {k}")
  if n <= k:
    return np.arange(max(n, 0), dtype=np.int64)
  return ((np.arange(k) + 0.5) * n / k).astype(np.int64)
