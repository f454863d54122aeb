"""Frame index sampling: the official chunked `rand` / `uniform` scheme, even spreading,
re-timing to a frame rate and the stored frame nearest to a source frame.

A clip of F = C * P frames is C chunks of P frames, one frame from each of P equal
temporal segments of the video, ordered chunk-major (frames [c*P, (c+1)*P) are chunk c).

Segment boundaries (inclusive [a, b]) of a video of n frames: with S = min(P, n)
segments, `edges = floor(linspace(0, n, S + 1))` and segment s = [edges[s], edges[s+1] - 1].
Every segment holds at least one frame; their lengths differ by at most one.
Example: n = 10, P = 3 -> edges 0, 3, 6, 10 -> [0, 2], [3, 5], [6, 9].

`rand` (training): every chunk draws, independently, one uniform frame from each
segment's [a, b) (the official `random.choice(range(a, b))`: the segment's last frame b
is never drawn); a one-frame segment (a == b) gives a, where the official code fails.
`uniform` (test): chunk c takes a + (b - a) // (C + 1) * (c + 1) in every segment.

Short video (n < P): as in the official code, the C chunks of n frames (one segment per
frame) come first and the last index is repeated up to F. Example: n = 2, P = 4, C = 2
-> 0, 1, 0, 1, 1, 1, 1, 1.

Indices are drawn on the source video's frame count; a prepared record that keeps only
some frames maps each drawn index to the nearest kept one (`nearest_stored`), which is
exact when every frame is kept.

Layer: data (no ps_jax imports).
"""

from __future__ import annotations

import numpy as np

MODES = ("rand", "uniform")


def segment_bounds(num_video_frames: int, num_segments: int) -> np.ndarray:
  """Inclusive [a, b] frame bounds of S = min(P, n) temporal segments.

  Args:
    num_video_frames: n >= 1, frames available.
    num_segments: P >= 1, segments asked for.

  Returns:
    int64[S, 2] with columns (a, b), a <= b: a partition of [0, n).
  """
  n, p = int(num_video_frames), int(num_segments)
  if n < 1:
    raise ValueError(f"num_video_frames must be >= 1, got {n}")
  if p < 1:
    raise ValueError(f"num_segments must be >= 1, got {p}")
  edges = np.linspace(0, n, min(p, n) + 1).astype(np.int64)
  return np.stack([edges[:-1], edges[1:] - 1], axis=1)


def sample_frame_indices(num_video_frames: int, num_frames: int, num_prompts: int,
                         mode: str, rng: np.random.Generator | None = None) -> np.ndarray:
  """Official chunked frame sampling (see the module docstring).

  Args:
    num_video_frames: n >= 1, frames of the video sampled from.
    num_frames: F = C * P frames to return.
    num_prompts: P, number of segments (= prompts per chunk).
    mode: "rand" (training; needs `rng`) or "uniform" (test, deterministic).
    rng: numpy Generator for "rand".

  Returns:
    int32[F] frame indices in [0, n), chunk-major: [c*P, (c+1)*P) is chunk c (n >= P;
    a shorter video gives C chunks of n frames, then the last index repeated).
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
    idx = rng.integers(a, np.maximum(b, a + 1), size=(chunks, len(a)))
  else:
    c = np.arange(1, chunks + 1)[:, None]
    idx = a[None, :] + (b - a)[None, :] // (chunks + 1) * c
  idx = idx.reshape(-1)
  if len(idx) < num_frames:  # short video: repeat the last index
    idx = np.concatenate([idx, np.full(num_frames - len(idx), idx[-1])])
  return idx.astype(np.int32)


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


def nearest_stored(source_indices: np.ndarray, stored_indices: np.ndarray) -> np.ndarray:
  """Position of the stored frame nearest to each source frame (ties: the earlier one).

  Args:
    source_indices: int[F] frame indices in the source video.
    stored_indices: int[K] strictly increasing source index of each stored frame, K >= 1.

  Returns:
    int64[F] positions in [0, K); position k holds source frame stored_indices[k].
  """
  stored = np.asarray(stored_indices, np.int64)
  if stored.ndim != 1 or len(stored) == 0:
    raise ValueError(f"stored_indices must be a non-empty 1-D array, got {stored.shape}")
  src = np.asarray(source_indices, np.int64)
  right = np.clip(np.searchsorted(stored, src), 0, len(stored) - 1)
  left = np.maximum(right - 1, 0)
  take_left = np.abs(src - stored[left]) <= np.abs(stored[right] - src)
  return np.where(take_left, left, right)


def retime(times: np.ndarray, fps: float) -> np.ndarray:
  """Input frame shown by each frame of the video re-timed to a constant `fps`.

  Input frame i (time t_i) lands on output slot round(fps * (t_i - t_0)); output frame k
  shows the last input frame landing on slot k or earlier (as ffmpeg's `fps` filter),
  so frames are dropped when the input is faster and repeated when it is slower. At the
  input's own constant rate this is the identity. ffmpeg's `-r FPS` output option
  (frame-rate conversion in the ffmpeg tool) may pick a neighbouring input frame and
  differ by one output frame at the end.

  Args:
    times: float[n] non-decreasing presentation times in seconds, n >= 1.
    fps: output frame rate, > 0.

  Returns:
    int64[m] input frame index of each output frame, m = round(fps * (t_n-1 - t_0)) + 1.
  """
  t = np.asarray(times, np.float64)
  if t.ndim != 1 or len(t) == 0:
    raise ValueError(f"times must be a non-empty 1-D array, got {t.shape}")
  if not fps > 0:
    raise ValueError(f"fps must be > 0, got {fps}")
  slots = np.floor((t - t[0]) * fps + 0.5).astype(np.int64)
  slots = np.maximum.accumulate(np.maximum(slots, 0))
  return np.searchsorted(slots, np.arange(slots[-1] + 1), side="right") - 1
