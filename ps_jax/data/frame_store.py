"""The frames of a prepared record: raw uint8 or one JPEG file per frame, decoded on demand.

A record keeps K frames of its video in one of two encodings:

  raw   frames        uint8[K, H, W, 3]
  jpeg  jpeg          uint8[N]     the K JPEG files end to end; frame k is the bytes
        jpeg_offsets  int64[K + 1] [jpeg_offsets[k], jpeg_offsets[k + 1])

plus `frame_indices` int32[K] (strictly increasing index of each kept frame in the
source video) and `num_source_frames` (n, frames of the source video). `StoredVideo`
wraps one record; `sample_clip` draws the official chunked indices on n (`sampling`),
maps them to the nearest kept frames (the identity when all n are kept) and decodes
only those. Datasets written before the source count was used (index format 1) are
read with n = K and frame_indices = 0 .. K-1: sampling among the stored frames, as then.

Layer: data (imports `sampling`).
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image

from ps_jax.data import sampling

ENCODINGS = ("raw", "jpeg")
DEFAULT_JPEG_QUALITY = 90


@dataclasses.dataclass(frozen=True)
class JpegFrames:
  """K JPEG files end to end.

  Attributes:
    data: uint8[N] the files' bytes.
    offsets: int64[K + 1]; frame k is data[offsets[k]:offsets[k + 1]].
  """
  data: np.ndarray
  offsets: np.ndarray

  def __len__(self) -> int:
    return len(self.offsets) - 1


def encode_jpeg(frames: np.ndarray, quality: int = DEFAULT_JPEG_QUALITY) -> JpegFrames:
  """One baseline JPEG file per frame (Pillow, 4:2:0 chroma).

  Args:
    frames: uint8[K, H, W, 3] RGB.
    quality: JPEG quality, 1..100.

  Returns:
    JpegFrames of the K frames.
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"frames must be uint8[K, H, W, 3], got {frames.dtype}{frames.shape}")
  if not 1 <= int(quality) <= 100:
    raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
  files = []
  for frame in frames:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=int(quality))
    files.append(buf.getvalue())
  offsets = np.concatenate([[0], np.cumsum([len(f) for f in files])]).astype(np.int64)
  return JpegFrames(np.frombuffer(b"".join(files), np.uint8), offsets)


def decode_jpeg(jpeg: JpegFrames, positions) -> np.ndarray:
  """Decodes the given frames only (each distinct position once).

  Args:
    jpeg: JpegFrames of K frames.
    positions: int[M] positions in [0, K).

  Returns:
    uint8[M, H, W, 3].
  """
  positions = np.asarray(positions, np.int64)
  unique, inverse = np.unique(positions, return_inverse=True)
  if len(unique) and (unique[0] < 0 or unique[-1] >= len(jpeg)):
    raise IndexError(f"frame positions {unique.tolist()} outside [0, {len(jpeg)})")
  decoded = []
  for k in unique:
    blob = jpeg.data[jpeg.offsets[k]:jpeg.offsets[k + 1]].tobytes()
    with Image.open(io.BytesIO(blob)) as img:
      decoded.append(np.asarray(img.convert("RGB")))
  return np.stack(decoded)[inverse.reshape(-1)]


def record_fields(frames, encoding: str, quality: int = DEFAULT_JPEG_QUALITY) -> dict:
  """The frame fields of a record in `encoding`, from raw frames or JpegFrames.

  Returns:
    {"frames": uint8[K, H, W, 3]} (raw) or {"jpeg": uint8[N], "jpeg_offsets":
    int64[K + 1]} (jpeg).
  """
  if encoding not in ENCODINGS:
    raise ValueError(f"frame encoding {encoding!r} is not one of {ENCODINGS}")
  if encoding == "raw":
    if isinstance(frames, JpegFrames):
      frames = decode_jpeg(frames, np.arange(len(frames)))
    return {"frames": np.ascontiguousarray(frames, dtype=np.uint8)}
  if not isinstance(frames, JpegFrames):
    frames = encode_jpeg(frames, quality)
  return {"jpeg": np.asarray(frames.data, np.uint8),
          "jpeg_offsets": np.asarray(frames.offsets, np.int64)}


@dataclasses.dataclass
class StoredVideo:
  """One record's frames as stored; `take` decodes the frames asked for.

  Attributes:
    num_source_frames: n, frames of the video that sampling draws from.
    frame_indices: int64[K] strictly increasing source index of each stored frame.
    raw: uint8[K, H, W, 3], or None for JPEG frames.
    jpeg: JpegFrames, or None for raw frames.
  """
  num_source_frames: int
  frame_indices: np.ndarray
  raw: np.ndarray | None = None
  jpeg: JpegFrames | None = None

  @classmethod
  def from_record(cls, record: dict, sample_on_source: bool = True) -> "StoredVideo":
    """Wraps a decoded TFDS record; `sample_on_source=False` for index format 1."""
    raw = jpeg = None
    if "frames" in record:
      raw = np.asarray(record["frames"])
      count = len(raw)
    elif "jpeg" in record:
      jpeg = JpegFrames(np.asarray(record["jpeg"]), np.asarray(record["jpeg_offsets"]))
      count = len(jpeg)
    else:
      raise ValueError(f"record has no frames (fields {sorted(record)})")
    if count < 1:
      raise ValueError("record stores no frame")
    if sample_on_source:
      n = int(record["num_source_frames"])
      indices = np.asarray(record["frame_indices"], np.int64)
    else:
      n, indices = count, np.arange(count, dtype=np.int64)
    return cls(n, indices, raw, jpeg)

  def __len__(self) -> int:
    return len(self.raw) if self.raw is not None else len(self.jpeg)

  def take(self, positions) -> np.ndarray:
    """Stored frames at `positions` (int[M] in [0, K)) -> uint8[M, H, W, 3]."""
    if self.raw is not None:
      return self.raw[np.asarray(positions, np.int64)]
    return decode_jpeg(self.jpeg, positions)

  def all_frames(self) -> np.ndarray:
    """Every stored frame, uint8[K, H, W, 3]."""
    return self.take(np.arange(len(self)))


def sample_clip(video: StoredVideo, num_frames: int, num_prompts: int, mode: str,
                rng: np.random.Generator | None = None) -> np.ndarray:
  """The official chunked sample of a stored video.

  Indices are drawn on the source count n (`sampling.sample_frame_indices`) and each
  is replaced by the nearest stored frame (`sampling.nearest_stored`).

  Returns:
    uint8[F, H, W, 3], F = num_frames, chunk-major.
  """
  idx = sampling.sample_frame_indices(video.num_source_frames, num_frames, num_prompts,
                                      mode, rng)
  return video.take(sampling.nearest_stored(idx, video.frame_indices))
