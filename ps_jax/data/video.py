"""Video decoding with PyAV: all frames or K evenly spread ones (or some of those),
optionally re-timed to a frame rate, short side resized, uint8 RGB.

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

Decoding is one in-order pass over the whole stream, or with `seek=True`, when it
decodes fewer frames, a seeking one: for each frame wanted, seek to the keyframe at or
before it and decode forward to it (a run of wanted frames in one group of pictures is
reached without seeking again). The frames are the in-order pass's, bit for bit: a
frame is recognised by its presentation timestamp, and any surprise (a timestamp not
met, a seek or decoding error) falls back to the in-order pass. The seeking pass trusts
the demuxed packets (one frame per packet, every packet timed, keyframes where they are
flagged), and is not tried where they hint at frames that will not decode: a packet
flagged corrupt (the last one of a truncated file), fewer packets than the container's
frame count, a demuxing error. Damage that leaves the packets intact and only fails
decoding after the last frame wanted is not noticed there, where the in-order pass would
re-spread the frames over those that decode.

Layer: data (imports `frame_plan`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import NamedTuple

import av
import numpy as np
from PIL import Image

from ps_jax.data import frame_plan


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
    frames: uint8[M, H, W, 3] RGB, upright, short side resized: the K' = min(K, n)
      evenly spread frames (M = K'), or those of them `keep_only` chose.
    frame_indices: int32[M] strictly increasing index of each frame in the source
      video (the decoded frames, or with `fps` the re-timed ones).
    num_source_frames: n, frames of the source video (after a midway failure: of the
      part before it).
    fps: average frame rate reported by the container (0.0 when unknown).
    rotation: counter-clockwise degrees applied to turn frames upright.
    warnings: problems met and worked around (midway failure, header count mismatch).
    positions: int64[M] strictly increasing position of each frame among the K' evenly
      spread ones (0 .. K'-1 without `keep_only`).
    num_spread: K'.
    frames_decoded: frames the decoder produced (all n of an in-order pass; fewer when
      seeking).
  """
  frames: np.ndarray
  frame_indices: np.ndarray
  num_source_frames: int
  fps: float
  rotation: int = 0
  warnings: list[str] = dataclasses.field(default_factory=list)
  positions: np.ndarray | None = None
  num_spread: int = 0
  frames_decoded: int = 0


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


class _Packets(NamedTuple):
  """What demuxing the first video stream tells (no decoding).

  count: non-empty packets (frames); times: float64[count] their sorted presentation
  times in seconds, pts: int64[count] the same in the stream's time base, keyframes:
  bool[count] whether the frame at each sorted position is a keyframe (times, pts and
  keyframes are None when a packet has no timestamp); rate: the container's average
  frame rate (0.0 when unknown); problem: None, or why demuxing stopped early (the rest
  covers the packets read before it); clean: no packet is flagged corrupt (a truncated
  file's last one is) and the container's frame count, where it has one, is `count`.
  """
  count: int
  times: np.ndarray | None
  pts: np.ndarray | None
  keyframes: np.ndarray | None
  rate: float
  problem: str | None
  clean: bool


def _demux(path: str) -> _Packets:
  """The first video stream's packets, by demuxing (see `_Packets`)."""
  _check_file(path)
  pts, keys, problem, time_base, corrupt = [], [], None, None, False
  with _open(path) as container:
    stream = container.streams.video[0]
    rate = float(stream.average_rate or stream.guessed_rate or 0.0)
    try:
      for packet in container.demux(stream):
        if packet.size:
          pts.append(packet.pts)
          keys.append(bool(packet.is_keyframe))
          corrupt = corrupt or bool(packet.is_corrupt)
          time_base = packet.time_base
    except (av.FFmpegError, OSError) as e:
      problem = f"demuxing stopped after {len(pts)} packets: {e}"
    clean = not corrupt and stream.frames in (0, len(pts))
  if None in pts:
    return _Packets(len(pts), None, None, None, rate, problem, clean)
  order = np.argsort(np.asarray(pts, np.int64), kind="stable")
  sorted_pts = np.asarray(pts, np.int64)[order]
  times = np.asarray([float(int(p) * time_base) for p in sorted_pts], np.float64)
  return _Packets(len(pts), times, sorted_pts, np.asarray(keys, bool)[order], rate, problem,
                  clean)


class Probe(NamedTuple):
  """What demuxing tells of a video: frames, seconds (None when neither the timestamps
  nor a frame rate tell), the container's average frame rate (0.0 when unknown)."""
  count: int
  duration: float | None
  rate: float


def probe(path: str) -> Probe:
  """Frame count and duration of the first video stream, by demuxing (no decoding).

  The duration is the span of the presentation timestamps plus one frame (at the
  average rate, else the mean frame interval), else count / rate.
  """
  packets = _demux(path)
  n, times, rate = packets.count, packets.times, packets.rate
  if n == 0:
    raise CorruptVideoError(path, packets.problem or "the video stream holds no packets")
  if times is not None and n > 1 and times[-1] > times[0]:
    step = 1.0 / rate if rate > 0 else (times[-1] - times[0]) / (n - 1)
    return Probe(n, float(times[-1] - times[0] + step), rate)
  return Probe(n, n / rate if rate > 0 else None, rate)


def count_frames(path: str) -> tuple[int, str | None]:
  """Frames of the first video stream, counted by demuxing (no decoding).

  Returns:
    (count, problem): problem is None, or a message if demuxing stopped on an error
    (the count then covers the packets read before it).
  """
  packets = _demux(path)
  return packets.count, packets.problem


def _open_decoder(container, threads: int):
  """(stream, pixel aspect) of the first video stream, its decoder set up."""
  stream = container.streams.video[0]
  if threads != 1:
    stream.thread_type = "AUTO"
  stream.codec_context.thread_count = threads
  sar = stream.sample_aspect_ratio
  return stream, float(sar) if sar and float(sar) > 0 else 1.0


def _keep_frame(frame, short_side: int | None, pixel_aspect: float) -> np.ndarray:
  rgb = frame.to_ndarray(format="rgb24")
  return _rotate(resize_short_side(rgb, short_side, pixel_aspect), frame.rotation or 0)


def _decode_pass(path: str, targets, short_side: int | None, threads: int,
                 stop_after: int | None):
  """Decodes frames in order, keeping the target indices.

  Returns (kept, count, error, rotation, fps)."""
  wanted = set(int(t) for t in targets)
  kept: dict[int, np.ndarray] = {}
  n, error, rotation, fps = 0, None, 0, 0.0
  with _open(path) as container:
    stream, pixel_aspect = _open_decoder(container, threads)
    fps = float(stream.average_rate or stream.guessed_rate or 0.0)
    try:
      for frame in container.decode(stream):
        if n in wanted:
          rotation = frame.rotation or 0
          kept[n] = _keep_frame(frame, short_side, pixel_aspect)
        n += 1
        if stop_after is not None and n >= stop_after:
          break
    except (av.FFmpegError, OSError, ValueError) as e:
      error = f"decoding failed after {n} frames: {e}"
  return kept, n, error, rotation, fps


def _decode_seeking(path: str, steps: list, pts: np.ndarray, short_side: int | None,
                    threads: int):
  """The seeking pass (`frame_plan.seek_steps`' steps; `pts` int64[n] of each
  decoded-frame index).

  Returns (kept, frames decoded, rotation, fps), or None when a target was not met
  exactly (the caller then decodes in order)."""
  kept: dict[int, np.ndarray] = {}
  decoded, rotation = 0, 0
  known = set(pts.tolist())
  try:
    with _open(path) as container:
      stream, pixel_aspect = _open_decoder(container, threads)
      fps = float(stream.average_rate or stream.guessed_rate or 0.0)
      frames = container.decode(stream)
      for start, target in steps:
        if start is not None:
          container.seek(int(pts[start]), stream=stream, backward=True, any_frame=False)
          frames = container.decode(stream)
        for frame in frames:
          decoded += 1
          if frame.pts is None or frame.pts not in known or frame.pts > pts[target]:
            return None
          if frame.pts == pts[target]:
            rotation = frame.rotation or 0
            kept[target] = _keep_frame(frame, short_side, pixel_aspect)
            break
        else:
          return None  # the stream ended before the target
  except (av.FFmpegError, OSError, ValueError):
    return None
  return kept, decoded, rotation, fps


def decode_video(path: str, *, num_frames: int | None = 32, short_side: int | None = 256,
                 threads: int = 0, fps: float | None = None, keep_only=None,
                 seek: bool = False) -> DecodedVideo:
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
    keep_only: None (all K' = min(K, n) evenly spread frames), or which of them to
      decode: positions in [0, K'), or a function K' -> positions (K' is known only
      after demuxing); positions at or past K' are left out. The frames returned are
      those the same call without `keep_only` would return at these positions.
    seek: allow the seeking pass (module docstring) when it decodes fewer frames than
      one in-order pass; the frames are the same.

  Returns:
    DecodedVideo with frames uint8[M, H, W, 3].

  Raises:
    VideoError subclasses: VideoNotFoundError, EmptyVideoFileError,
    UnreadableVideoError, NotAVideoError, CorruptVideoError.
  """
  if num_frames is not None and num_frames < 1:
    raise ValueError(f"num_frames must be >= 1 or None, got {num_frames}")
  if fps is not None and not fps > 0:
    raise ValueError(f"fps must be > 0 or None, got {fps}")
  warnings = []
  packets = _demux(path)
  counted, times, rate = packets.count, packets.times, packets.rate
  if packets.problem:
    warnings.append(packets.problem)
  if counted == 0:
    raise CorruptVideoError(path, packets.problem or "the video stream holds no packets")
  source, keep = frame_plan.plan(counted, times, rate, num_frames, fps)
  chosen = frame_plan.positions(keep_only, len(keep))
  targets = np.unique(source[keep[chosen]])
  seeking = None
  if (seek and packets.clean and packets.problem is None and packets.pts is not None
      and len(np.unique(packets.pts)) == counted):
    steps, cost = frame_plan.seek_steps(targets, packets.keyframes)
    if steps and cost < counted:
      seeking = _decode_seeking(path, steps, packets.pts, short_side, threads)
  if seeking is not None:
    kept, decoded, rotation, avg_fps = seeking
  else:
    kept, decoded, error, rotation, avg_fps = _decode_pass(path, targets, short_side,
                                                           threads, None)
    if error:
      warnings.append(error)
    if decoded == 0:
      raise CorruptVideoError(path, error or "no frame could be decoded")
    if decoded != counted:
      warnings.append(f"{counted} packets but {decoded} decoded frames")
      source, keep = frame_plan.plan(decoded, times, rate, num_frames, fps)
      chosen = frame_plan.positions(keep_only, len(keep))
      if not set(source[keep[chosen]].tolist()) <= set(kept):
        count = decoded
        kept, again, error2, rotation, avg_fps = _decode_pass(
            path, source[keep[chosen]], short_side, threads, count)
        decoded += again
        if again < count:  # not reproducible; keep what this pass gave
          warnings.append(f"second pass decoded {again} frames: {error2}")
          source, keep = frame_plan.plan(again, times, rate, num_frames, fps)
          chosen = frame_plan.positions(keep_only, len(keep))
          if not set(source[keep[chosen]].tolist()) <= set(kept):
            raise CorruptVideoError(path, "decoding is not reproducible: "
                                    + "; ".join(warnings))
  frames = [kept[int(i)] for i in source[keep[chosen]]]
  shapes = {f.shape for f in frames}
  if len(shapes) != 1:  # resolution changes mid-stream: bring all to the first size
    h, w = frames[0].shape[:2]
    frames = [f if f.shape == frames[0].shape else
              np.asarray(Image.fromarray(f).resize((w, h), Image.BICUBIC)) for f in frames]
    warnings.append(f"frame sizes changed within the stream: {sorted(shapes)}")
  return DecodedVideo(frames=np.stack(frames), frame_indices=keep[chosen].astype(np.int32),
                      num_source_frames=len(source), fps=avg_fps, rotation=int(rotation),
                      warnings=warnings, positions=chosen, num_spread=len(keep),
                      frames_decoded=decoded)


def write_video(path: str, frames: np.ndarray, *, fps: float = 10.0,
                codec: str = "libx264", rotation: int | None = None,
                container_format: str | None = None, options: dict | None = None,
                codec_options: dict | None = None) -> None:
  """Writes uint8[T, H, W, 3] RGB frames as a video file (H and W even for yuv420p).

  Args:
    path: output file.
    frames: uint8[T, H, W, 3].
    fps: frame rate.
    codec: FFmpeg encoder name ("libx264", "mpeg4", ...).
    rotation: optional display rotation metadata in degrees (counter-clockwise).
    container_format: FFmpeg muxer (default: guessed from the file extension).
    options: muxer options (e.g. {"movflags": "faststart"}).
    codec_options: encoder options (e.g. {"g": "10"}: a keyframe every 10 frames or
      sooner), on top of libx264's crf 12, preset veryfast.
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
    if codec_options:
      stream.options = {**stream.options, **codec_options}
    stream.codec_context.thread_count = 1
    if rotation is not None:
      stream.set_display_rotation(rotation)
    for frame in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)

