"""Video decoding with PyAV: all frames or K evenly spread ones, optionally re-timed to a
frame rate, short side resized, uint8 RGB.

`decode_video` copes with the files real datasets contain: containers that report no
frame count (frames are counted by demuxing packets), headers that lie, streams that
fail midway (the frames decoded before the failure are kept and the failure is
reported in `DecodedVideo.warnings`), rotation metadata (frames are turned upright),
non-square pixels, videos shorter than K frames (all frames kept), and empty, missing
or non-video files (typed `VideoError`s with a short `reason`).

The "source video" of a decode is the file's frames, or, with `fps`, those frames
re-timed to that constant rate (`sampling.retime`, from the packets' timestamps, like
a video converted with ffmpeg `-r FPS`). `frame_indices` and `num_source_frames` refer
to it.

Layer: data (imports `sampling`).
"""

from __future__ import annotations

import dataclasses
import os

import av
import numpy as np
from PIL import Image

from ps_jax.data import sampling


class VideoError(Exception):
  """A video that cannot be used. `reason` is a short code, the message has details."""

  reason = "error"

  def __init__(self, path: str, detail: str):
    super().__init__(f"{path}: {self.reason}: {detail}")
    self.path = path
    self.detail = detail


class VideoNotFoundError(VideoError):
  reason = "missing"


class EmptyVideoFileError(VideoError):
  reason = "empty_file"


class UnreadableVideoError(VideoError):
  """The container cannot be opened (not a media file, truncated header, ...)."""
  reason = "unreadable"


class NotAVideoError(VideoError):
  """A media file without a video stream."""
  reason = "no_video_stream"


class CorruptVideoError(VideoError):
  """The video stream yields no decodable frame."""
  reason = "corrupt"


@dataclasses.dataclass
class DecodedVideo:
  """Frames kept from one video.

  Attributes:
    frames: uint8[K', H, W, 3] RGB, upright, short side resized; K' = min(K, n).
    frame_indices: int32[K'] strictly increasing index of each kept frame in the source
      video (the decoded frames, or with `fps` the re-timed ones).
    num_source_frames: n, frames of the source video (after a midway failure: of the
      part before it).
    fps: average frame rate reported by the container (0.0 when unknown).
    rotation: counter-clockwise degrees applied to turn frames upright.
    warnings: problems met and worked around (midway failure, header count mismatch).
  """
  frames: np.ndarray
  frame_indices: np.ndarray
  num_source_frames: int
  fps: float
  rotation: int = 0
  warnings: list[str] = dataclasses.field(default_factory=list)


def resize_short_side(frame: np.ndarray, short_side: int | None,
                      pixel_aspect: float = 1.0) -> np.ndarray:
  """Bicubic (antialiased, PIL) resize so that min(H, W) == short_side.

  Args:
    frame: uint8[H, W, 3].
    short_side: target short side; None keeps the size (only fixes `pixel_aspect`).
    pixel_aspect: sample aspect ratio (display width = W * pixel_aspect).

  Returns:
    uint8[H', W', 3].
  """
  h, w = frame.shape[:2]
  disp_w = w * pixel_aspect
  if short_side is None:
    if pixel_aspect == 1.0:
      return frame
    scale = 1.0
  else:
    scale = short_side / min(h, disp_w)
  new_h = max(1, int(round(h * scale)))
  new_w = max(1, int(round(disp_w * scale)))
  if short_side is not None:  # exact short side despite rounding
    if h <= disp_w:
      new_h = short_side
    else:
      new_w = short_side
  if (new_h, new_w) == (h, w):
    return frame
  img = Image.fromarray(frame).resize((new_w, new_h), Image.BICUBIC, reducing_gap=3.0)
  return np.asarray(img)


def _rotate(frame: np.ndarray, rotation: int) -> np.ndarray:
  k = int(round(rotation / 90.0)) % 4
  return np.ascontiguousarray(np.rot90(frame, k)) if k else frame


def _check_file(path: str):
  if not os.path.exists(path):
    raise VideoNotFoundError(path, "file does not exist")
  if not os.path.isfile(path):
    raise UnreadableVideoError(path, "not a regular file")
  if os.path.getsize(path) == 0:
    raise EmptyVideoFileError(path, "file is 0 bytes")


def _open(path: str):
  try:
    container = av.open(path, metadata_errors="ignore")
  except (av.FFmpegError, OSError, ValueError) as e:
    raise UnreadableVideoError(path, f"cannot open container ({e})") from e
  if not container.streams.video:
    container.close()
    raise NotAVideoError(path, "the container has no video stream")
  return container


def _demux(path: str) -> tuple[int, np.ndarray | None, float, str | None]:
  """(count, times, rate, problem) of the first video stream, by demuxing (no decoding).

  count: non-empty packets (frames); times: their sorted presentation times in seconds
  (None when a packet has no timestamp); rate: the container's average frame rate (0.0
  when unknown); problem: None, or why demuxing stopped early (the rest covers the
  packets read before it).
  """
  _check_file(path)
  pts, problem = [], None
  with _open(path) as container:
    stream = container.streams.video[0]
    rate = float(stream.average_rate or stream.guessed_rate or 0.0)
    try:
      for packet in container.demux(stream):
        if packet.size:
          pts.append(None if packet.pts is None else float(packet.pts * packet.time_base))
    except (av.FFmpegError, OSError) as e:
      problem = f"demuxing stopped after {len(pts)} packets: {e}"
  times = None if None in pts else np.sort(np.asarray(pts, np.float64))
  return len(pts), times, rate, problem


def count_frames(path: str) -> tuple[int, str | None]:
  """Frames of the first video stream, counted by demuxing (no decoding).

  Returns:
    (count, problem): problem is None, or a message if demuxing stopped on an error
    (the count then covers the packets read before it).
  """
  count, _, _, problem = _demux(path)
  return count, problem


def _plan(count: int, times: np.ndarray | None, rate: float, num_frames: int | None,
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


def _decode_pass(path: str, targets, short_side: int | None, threads: int,
                 stop_after: int | None):
  """Decodes frames in order, keeping the target indices. Returns (kept, count, error)."""
  wanted = set(int(t) for t in targets)
  kept: dict[int, np.ndarray] = {}
  n, error, rotation, fps = 0, None, 0, 0.0
  with _open(path) as container:
    stream = container.streams.video[0]
    if threads != 1:
      stream.thread_type = "AUTO"
    stream.codec_context.thread_count = threads
    fps = float(stream.average_rate or stream.guessed_rate or 0.0)
    sar = stream.sample_aspect_ratio
    pixel_aspect = float(sar) if sar and float(sar) > 0 else 1.0
    try:
      for frame in container.decode(stream):
        if n in wanted:
          rotation = frame.rotation or 0
          rgb = frame.to_ndarray(format="rgb24")
          kept[n] = _rotate(resize_short_side(rgb, short_side, pixel_aspect), rotation)
        n += 1
        if stop_after is not None and n >= stop_after:
          break
    except (av.FFmpegError, OSError, ValueError) as e:
      error = f"decoding failed after {n} frames: {e}"
  return kept, n, error, rotation, fps


def decode_video(path: str, *, num_frames: int | None = 32, short_side: int | None = 256,
                 threads: int = 0, fps: float | None = None) -> DecodedVideo:
  """Decodes a video file into RGB frames: all of them, or K evenly spread ones.

  The frame count comes from demuxing (container headers are not trusted; Matroska
  reports none). With `fps` the source video is the file re-timed to that rate (see
  the module docstring). Frames are decoded in order and the kept ones (all, or the
  K centre frames of K equal slices, `sampling.even_indices`) are resized. When the
  stream yields fewer frames than counted (a midway failure or a lying index), the
  frames are re-chosen among the frames that did decode and a warning says so.

  Args:
    path: video file.
    num_frames: K, frames to keep (all frames if the video is shorter); None: all.
    short_side: resize (bicubic) so the short side is this; None keeps the size.
    threads: decoder threads (0: FFmpeg's choice, 1: single-threaded).
    fps: re-time the video to this frame rate first; None keeps its frames.

  Returns:
    DecodedVideo with frames uint8[K', H, W, 3].

  Raises:
    VideoError subclasses: VideoNotFoundError, EmptyVideoFileError,
    UnreadableVideoError, NotAVideoError, CorruptVideoError.
  """
  if num_frames is not None and num_frames < 1:
    raise ValueError(f"num_frames must be >= 1 or None, got {num_frames}")
  if fps is not None and not fps > 0:
    raise ValueError(f"fps must be > 0 or None, got {fps}")
  warnings = []
  counted, times, rate, problem = _demux(path)
  if problem:
    warnings.append(problem)
  if counted == 0:
    raise CorruptVideoError(path, problem or "the video stream holds no packets")
  source, keep = _plan(counted, times, rate, num_frames, fps)
  kept, decoded, error, rotation, avg_fps = _decode_pass(path, source[keep], short_side,
                                                         threads, None)
  if error:
    warnings.append(error)
  if decoded == 0:
    raise CorruptVideoError(path, error or "no frame could be decoded")
  if decoded != counted:
    warnings.append(f"{counted} packets but {decoded} decoded frames")
    source, keep = _plan(decoded, times, rate, num_frames, fps)
    if not set(source[keep].tolist()) <= set(kept):
      kept, again, error2, rotation, avg_fps = _decode_pass(path, source[keep], short_side,
                                                            threads, decoded)
      if again < decoded:  # not reproducible; keep what this pass gave
        warnings.append(f"second pass decoded {again} frames: {error2}")
        source, keep = _plan(again, times, rate, num_frames, fps)
        if not set(source[keep].tolist()) <= set(kept):
          raise CorruptVideoError(path, "decoding is not reproducible: "
                                  + "; ".join(warnings))
  frames = [kept[int(i)] for i in source[keep]]
  shapes = {f.shape for f in frames}
  if len(shapes) != 1:  # resolution changes mid-stream: bring all to the first size
    h, w = frames[0].shape[:2]
    frames = [f if f.shape == frames[0].shape else
              np.asarray(Image.fromarray(f).resize((w, h), Image.BICUBIC)) for f in frames]
    warnings.append(f"frame sizes changed within the stream: {sorted(shapes)}")
  return DecodedVideo(frames=np.stack(frames), frame_indices=keep.astype(np.int32),
                      num_source_frames=len(source), fps=avg_fps, rotation=int(rotation),
                      warnings=warnings)


def write_video(path: str, frames: np.ndarray, *, fps: float = 10.0,
                codec: str = "libx264", rotation: int | None = None,
                container_format: str | None = None, options: dict | None = None) -> None:
  """Writes uint8[T, H, W, 3] RGB frames as a video file (H and W even for yuv420p).

  Args:
    path: output file.
    frames: uint8[T, H, W, 3].
    fps: frame rate.
    codec: FFmpeg encoder name ("libx264", "mpeg4", ...).
    rotation: optional display rotation metadata in degrees (counter-clockwise).
    container_format: FFmpeg muxer (default: guessed from the file extension).
    options: muxer options (e.g. {"movflags": "faststart"}).
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"frames must be uint8[T, H, W, 3], got {frames.dtype}{frames.shape}")
  with av.open(path, "w", format=container_format, options=options or {}) as container:
    stream = container.add_stream(codec, rate=int(round(fps)))
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = "yuv420p"
    if codec in ("libx264", "h264"):
      stream.options = {"crf": "12", "preset": "veryfast"}
    stream.codec_context.thread_count = 1
    if rotation is not None:
      stream.set_display_rotation(rotation)
    for frame in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)

