"""Moments: a video file embedded as overlapping windows of time, one index row each.

Layer: data access for retrieval (imports data.video, data.sampling, data.transforms).

A video of duration D seconds gets the windows [0, W), [S, S + W), ... of `window` W
and `stride` S (S <= W), the last one ending at D; a video shorter than W gets one
window [0, D). Inside a window the frames are those of the video re-timed to `fps`
(`ps_jax.data.video.decode_video`'s `fps`: 3 by default, the rate the datasets are
prepared at), sampled as evaluation samples a clip (`uniform` chunked sampling of F =
C x P frames over the window's frames), then resized and centre-cropped like a clip.
The frames of a video's windows are decoded in one pass (seeking where that decodes
fewer frames), each frame once however many windows use it.

Row ids are `<video id>@<start>-<end>` (seconds, at most 3 decimals); the index keeps
each row's (video id, start, end) in `windows.json` (`ps_jax.retrieval.media`).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from ps_jax.data import sampling, transforms
from ps_jax.data import video as video_lib

DEFAULT_FPS = 3.0
MIN_WINDOW = 0.5      # seconds
MAX_WINDOW = 3600.0


class WindowError(ValueError):
  """Bad --window / --stride / --window_fps; the message names the flag."""


def check(window: float, stride: Optional[float], fps: float = DEFAULT_FPS) -> float:
  """The stride (default: half the window), after checking the three flags."""
  if not MIN_WINDOW <= window <= MAX_WINDOW:
    raise WindowError(f"--window must be in [{MIN_WINDOW:g}, {MAX_WINDOW:g}] seconds, got "
                      f"{window:g}")
  stride = window / 2 if stride is None else stride
  if not stride > 0:
    raise WindowError(f"--stride must be > 0 seconds, got {stride:g}")
  if stride > window:
    raise WindowError(f"--stride ({stride:g} s) is larger than --window ({window:g} s): "
                      "parts of the videos would belong to no window")
  if not 0 < fps <= 60:
    raise WindowError(f"--window_fps must be in (0, 60], got {fps:g}")
  return float(stride)


def spans(duration: float, window: float, stride: float) -> list[tuple[float, float]]:
  """[(start, end)] seconds of the windows of a video of `duration` (module docstring),
  rounded to milliseconds."""
  if not duration > 0:
    raise ValueError(f"duration must be > 0, got {duration}")
  if duration <= window:
    return [(0.0, round(duration, 3))]
  out, start = [], 0.0
  while start + window < duration - 1e-6:
    out.append((round(start, 3), round(start + window, 3)))
    start += stride
  last = (round(duration - window, 3), round(duration, 3))
  if out[-1][1] < last[1]:
    out.append(last)
  return out


def parse_scales(text: str, field: str = "config.moments.windows") -> list[tuple[float, float]]:
  """"W:S,W:S,..." (seconds) -> [(window, stride)], each checked (`check`); several
  scales index every video at each (multi-scale windows, one row per window)."""
  scales = []
  for part in (p.strip() for p in text.split(",")):
    try:
      w, st = (float(x) for x in part.split(":"))
    except ValueError:
      raise WindowError(f"{field}: each scale is W:S seconds (e.g. '16:8,32:16'), got "
                        f"{part!r} in {text!r}") from None
    try:
      scales.append((float(w), check(w, st)))
    except WindowError as e:
      raise WindowError(f"{field} {part!r}: {e}") from None
  return scales


def spans_multi(duration: float, scales) -> list[tuple[float, float]]:
  """The windows of every (window, stride) scale of one video, sorted and distinct."""
  return sorted({span for w, st in scales for span in spans(duration, w, st)})


def row_id(video_id: str, start: float, end: float) -> str:
  return f"{video_id}@{start:.3f}".rstrip("0").rstrip(".") + f"-{end:.3f}".rstrip(
      "0").rstrip(".")


def duration(path: str, fps: float = DEFAULT_FPS) -> float:
  """Seconds of video in `path` (from its packets' timestamps, else count / rate).

  Raises:
    video_lib.VideoError: unreadable; NoDurationError when neither tells a duration.
  """
  probe = video_lib.probe(path)
  if probe.duration is None or not probe.duration > 0:
    raise NoDurationError(path, "no frame rate or timestamps tell how long it is; windows "
                          "of time cannot be placed in it")
  return probe.duration


class NoDurationError(video_lib.VideoError):
  """A video whose duration cannot be told."""
  reason = "no_duration"


def _frame_range(span: tuple[float, float], fps: float, count: int) -> tuple[int, int]:
  """[a, b) of the re-timed frames (time i / fps) inside the span, at least one frame."""
  a = min(int(math.floor(span[0] * fps + 1e-6)), count - 1)
  b = min(max(int(math.ceil(span[1] * fps - 1e-6)), a + 1), count)
  return a, b


def window_frames(count: int, window_spans: Sequence[tuple[float, float]], fps: float,
                  num_frames: int, num_prompts: int) -> list[np.ndarray]:
  """For each span, int64[F] indices into the video's `count` re-timed frames."""
  out = []
  for span in window_spans:
    a, b = _frame_range(span, fps, count)
    out.append(a + sampling.sample_frame_indices(b - a, num_frames, num_prompts,
                                                 "uniform").astype(np.int64))
  return out


def decode_windows(path: str, window_spans: Sequence[tuple[float, float]], *,
                   num_frames: int, num_prompts: int, image_size: int,
                   short_side: Optional[int], fps: float = DEFAULT_FPS,
                   threads: int = 1) -> tuple[list[np.ndarray], list[str], int]:
  """The clips of `window_spans` of one video, decoded once.

  Returns:
    (clips: uint8[F, S, S, 3] per span, decoding warnings, frames decoded).
  """
  picks = {}

  def keep(count: int) -> np.ndarray:  # called once the re-timed frame count is known
    picks["count"] = count
    picks["rows"] = window_frames(count, window_spans, fps, num_frames, num_prompts)
    return np.unique(np.concatenate(picks["rows"]))

  decoded = video_lib.decode_video(path, num_frames=None, short_side=short_side,
                                   threads=threads, fps=fps, keep_only=keep, seek=True)
  where = {int(p): i for i, p in enumerate(decoded.positions)}
  clips = [transforms.resize_center_crop(decoded.frames[[where[int(j)] for j in rows]],
                                         image_size) for rows in picks["rows"]]
  return clips, list(decoded.warnings), decoded.frames_decoded


def plan_rows(paths: Sequence[str], window: float, stride: float, workers: int = 4):
  """The windows of each video file: ([(position, (start, end))] in video order,
  {position: VideoError} of the videos whose duration could not be read)."""
  return plan_spans(len(paths), lambda i: duration(paths[i]), [(window, stride)], workers)


def plan_spans(count: int, duration_of, scales, workers: int = 4):
  """`plan_rows` for `count` videos whose duration_of(position) tells their seconds (or
  raises VideoError), at every (window, stride) of `scales`."""
  import concurrent.futures  # pylint: disable=g-import-not-at-top

  def one(i):
    try:
      return spans_multi(duration_of(i), scales), None
    except video_lib.VideoError as e:
      return None, e

  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    found = list(pool.map(one, range(count)))
  rows, failed = [], {}
  for pos, (video_spans, error) in enumerate(found):
    if error is not None:
      failed[pos] = error
    else:
      rows += [(pos, span) for span in video_spans]
  return rows, failed
