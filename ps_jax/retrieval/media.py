"""What a results page shows of an indexed video: a thumbnail strip and the source file.

Layer: foundation (numpy and Pillow). Optional files of an index directory, written and
committed together with ids.json and embeddings.npy by `ps_jax.retrieval.store`:

- `thumbnails.bin`: the JPEG thumbnail strips of all rows, concatenated.
- `thumbnails.npy`: int64[N + 1] byte offsets; row i's JPEG is bytes [off[i], off[i+1])
  of thumbnails.bin (empty: no thumbnail for that row).
- `sources.json`: N source video paths (absolute) or null (frames from a prepared
  dataset: no file to play).

A strip is `THUMB_FRAMES` frames of the clip the model embedded (evenly spread over its
F frames that show something: not black, blank or one flat colour), each resized to
THUMB_SIZE x THUMB_SIZE, side by side: a page can show it whole or step through it as an
animation (frames = width / height). An index without
these files (older ones, or rows appended without media) still serves; its rows have no
thumbnail and no source.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
from typing import Optional, Sequence

import numpy as np
from PIL import Image

THUMBS_FILE = "thumbnails.bin"
OFFSETS_FILE = "thumbnails.npy"
SOURCES_FILE = "sources.json"
WINDOWS_FILE = "windows.json"
FILES = (THUMBS_FILE, OFFSETS_FILE, SOURCES_FILE, WINDOWS_FILE)
THUMB_FRAMES = 4
THUMB_SIZE = 96
JPEG_QUALITY = 85
# A frame is usable in a thumbnail unless it is near-uniform: its luminance (BT.601, 0-255)
# has a standard deviation of at most BLANK_MAX_STD (a flat colour: blank, a one-colour
# title card; video coding noise stays well under it) or a mean of at most DARK_MAX_MEAN
# (black, a fade from or to black).
BLANK_MAX_STD = 6.0
DARK_MAX_MEAN = 24.0
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def usable_frames(clip: np.ndarray) -> np.ndarray:
  """bool[F] of uint8[F, H, W, 3]: which frames are not near-uniform (see BLANK_MAX_STD,
  DARK_MAX_MEAN), measured on every 4th pixel of every 4th row."""
  luma = np.asarray(clip[:, ::4, ::4], np.float32) @ _LUMA
  flat = luma.reshape(len(luma), -1)
  return (flat.std(axis=1) > BLANK_MAX_STD) & (flat.mean(axis=1) > DARK_MAX_MEAN)


def strip(clip: np.ndarray, num_frames: int = THUMB_FRAMES, size: int = THUMB_SIZE
          ) -> np.ndarray:
  """uint8[F, H, W, 3] -> uint8[size, size * min(num_frames, F), 3]: frames evenly spread
  over the usable ones (`usable_frames`), each resized (bicubic) to size x size, left to
  right in time order.

  With fewer usable frames than tiles, the usable ones repeat; with none, the frames are
  spread over all F. The shape depends on F alone."""
  clip = np.asarray(clip)
  if clip.ndim != 4 or clip.shape[-1] != 3 or not clip.shape[0]:
    raise ValueError(f"clip must be uint8[F>0, H, W, 3], got {clip.dtype}{clip.shape}")
  k = min(num_frames, clip.shape[0])
  shown = np.flatnonzero(usable_frames(clip))
  if not len(shown):
    shown = np.arange(clip.shape[0])
  picks = shown[np.round(np.linspace(0, len(shown) - 1, k)).astype(int)]
  tiles = [np.asarray(Image.fromarray(np.ascontiguousarray(clip[i], np.uint8)).resize(
      (size, size), Image.Resampling.BICUBIC)) for i in picks]
  return np.concatenate(tiles, axis=1)


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
  """uint8[H, W, 3] -> JPEG bytes."""
  out = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(out, format="JPEG", quality=quality)
  return out.getvalue()


@dataclasses.dataclass
class Media:
  """Per-row media of an index (rows without any: empty thumbnail, None source).

  Attributes:
    offsets: int64[N + 1] into `thumbnails_file`, or None (no thumbnails stored).
    thumbnails_file: path of thumbnails.bin, or None.
    sources: N source paths or None each; None when no sources.json was stored.
    windows: N [video id, start s, end s] or None each (a row of a whole video); None
      when no windows.json was stored (`ps_jax.retrieval.windows`).
  """
  count: int
  offsets: Optional[np.ndarray] = None
  thumbnails_file: Optional[str] = None
  sources: Optional[list] = None
  windows: Optional[list] = None

  def has_thumbnail(self, row: int) -> bool:
    return self.offsets is not None and self.offsets[row + 1] > self.offsets[row]

  def thumbnail(self, row: int) -> Optional[bytes]:
    """Row `row`'s JPEG strip, or None."""
    if not self.has_thumbnail(row):
      return None
    start, stop = int(self.offsets[row]), int(self.offsets[row + 1])
    with open(self.thumbnails_file, "rb") as f:
      f.seek(start)
      return f.read(stop - start)

  def source(self, row: int) -> Optional[str]:
    return self.sources[row] if self.sources is not None else None

  def window(self, row: int) -> Optional[tuple]:
    """(video id, start, end) of a window row, or None (a whole video)."""
    w = self.windows[row] if self.windows is not None else None
    return tuple(w) if w is not None else None

  @property
  def num_thumbnails(self) -> int:
    return 0 if self.offsets is None else int(np.count_nonzero(np.diff(self.offsets)))


def _check_new(count: int, thumbnails, sources, windows=None) -> None:
  if thumbnails is not None:
    if len(thumbnails) != count:
      raise ValueError(f"{len(thumbnails)} thumbnails given for {count} ids")
    for i, t in enumerate(thumbnails):
      if t is not None and not isinstance(t, (bytes, bytearray)):
        raise ValueError(f"thumbnails[{i}] must be JPEG bytes or None, got {type(t).__name__}")
  if sources is not None:
    if len(sources) != count:
      raise ValueError(f"{len(sources)} sources given for {count} ids")
    for i, s in enumerate(sources):
      if s is not None and not isinstance(s, str):
        raise ValueError(f"sources[{i}] must be a path string or None, got {type(s).__name__}")
  if windows is not None:
    if len(windows) != count:
      raise ValueError(f"{len(windows)} windows given for {count} ids")
    for i, w in enumerate(windows):
      if w is not None and not (len(w) == 3 and isinstance(w[0], str) and 0 <= w[1] < w[2]):
        raise ValueError(f"windows[{i}] must be (video id, start, end > start) or None, "
                         f"got {w!r}")


def _write_list(file: str, rows: list) -> None:
  with open(file, "w", encoding="utf-8") as f:
    json.dump(rows, f)
    f.flush()
    os.fsync(f.fileno())


def write_new(path: str, suffix: str, old: Optional[Media], count: int,
              thumbnails: Optional[Sequence[Optional[bytes]]],
              sources: Optional[Sequence[Optional[str]]], windows=None) -> list[str]:
  """Writes the media files of `old`'s rows followed by `count` new rows as
  `<name><suffix>` files, synced, for the store's commit; returns the names written
  (none when neither the old rows nor the new ones have media).
  """
  _check_new(count, thumbnails, sources, windows)
  old = old or Media(0)
  names = []
  if thumbnails is not None or old.offsets is not None:
    sizes = [len(t) if t else 0 for t in (thumbnails or [None] * count)]
    base = old.offsets if old.offsets is not None else np.zeros(old.count + 1, np.int64)
    offsets = np.concatenate([base, base[-1] + np.cumsum(sizes, dtype=np.int64)])
    with open(os.path.join(path, THUMBS_FILE + suffix), "wb") as out:
      if old.thumbnails_file is not None:
        with open(old.thumbnails_file, "rb") as f:
          shutil.copyfileobj(f, out, 1 << 20)
      for t in thumbnails or ():
        if t:
          out.write(t)
      out.flush()
      os.fsync(out.fileno())
    with open(os.path.join(path, OFFSETS_FILE + suffix), "wb") as f:
      np.save(f, offsets.astype(np.int64), allow_pickle=False)
      f.flush()
      os.fsync(f.fileno())
    names += [THUMBS_FILE, OFFSETS_FILE]
  if sources is not None or old.sources is not None:
    rows = list(old.sources or [None] * old.count) + list(sources or [None] * count)
    _write_list(os.path.join(path, SOURCES_FILE + suffix), rows)
    names.append(SOURCES_FILE)
  if windows is not None or old.windows is not None:
    rows = list(old.windows or [None] * old.count) + [
        None if w is None else [w[0], float(w[1]), float(w[2])]
        for w in (windows or [None] * count)]
    _write_list(os.path.join(path, WINDOWS_FILE + suffix), rows)
    names.append(WINDOWS_FILE)
  return names


def write_subset(path: str, suffix: str, old: Media, keep: np.ndarray) -> list[str]:
  """Writes the media files of `old`'s rows at `keep` (int[M], increasing) as
  `<name><suffix>` files, synced, for the store's commit; returns the names written
  (none when `old` has no media)."""
  keep = np.asarray(keep, np.int64)
  names = []
  if old.offsets is not None:
    sizes = old.offsets[keep + 1] - old.offsets[keep]
    offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
    with open(os.path.join(path, THUMBS_FILE + suffix), "wb") as out, \
        open(old.thumbnails_file, "rb") as f:
      for row, size in zip(keep, sizes):
        if size:
          f.seek(int(old.offsets[row]))
          out.write(f.read(int(size)))
      out.flush()
      os.fsync(out.fileno())
    with open(os.path.join(path, OFFSETS_FILE + suffix), "wb") as f:
      np.save(f, offsets, allow_pickle=False)
      f.flush()
      os.fsync(f.fileno())
    names += [THUMBS_FILE, OFFSETS_FILE]
  if old.sources is not None:
    _write_list(os.path.join(path, SOURCES_FILE + suffix), [old.sources[int(r)] for r in keep])
    names.append(SOURCES_FILE)
  if old.windows is not None:
    _write_list(os.path.join(path, WINDOWS_FILE + suffix), [old.windows[int(r)] for r in keep])
    names.append(WINDOWS_FILE)
  return names


def read(files: dict, count: int) -> Media:
  """The media of an index with `count` rows; `files` maps each name of FILES to the
  path to read (the store resolves commits in progress). Raises ValueError naming the
  file when one is inconsistent with the index."""
  media = Media(count)
  offsets_file, thumbs_file = files[OFFSETS_FILE], files[THUMBS_FILE]
  if os.path.exists(offsets_file):
    try:
      offsets = np.load(offsets_file, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
      raise ValueError(f"{offsets_file!r} is not a valid .npy file (corrupt?): {e}") from e
    if offsets.shape != (count + 1,) or offsets.dtype != np.int64:
      raise ValueError(f"{offsets_file!r} holds {offsets.dtype}{offsets.shape}, expected "
                       f"int64[{count + 1}] (one offset per row, plus the end)")
    size = os.path.getsize(thumbs_file) if os.path.exists(thumbs_file) else -1
    if offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] != size:
      raise ValueError(f"{offsets_file!r} does not match {thumbs_file!r} ({size} bytes; "
                       "missing, truncated or corrupt?)")
    media.offsets, media.thumbnails_file = offsets, thumbs_file
  sources_file = files[SOURCES_FILE]
  if os.path.exists(sources_file):
    try:
      with open(sources_file, encoding="utf-8") as f:
        sources = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f"{sources_file!r} is not valid JSON (corrupt?): {e}") from e
    if not isinstance(sources, list) or len(sources) != count or not all(
        s is None or isinstance(s, str) for s in sources):
      raise ValueError(f"{sources_file!r} must hold a list of {count} paths or nulls")
    media.sources = sources
  windows_file = files[WINDOWS_FILE]
  if os.path.exists(windows_file):
    try:
      with open(windows_file, encoding="utf-8") as f:
        windows = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f"{windows_file!r} is not valid JSON (corrupt?): {e}") from e
    if not isinstance(windows, list) or len(windows) != count or not all(
        w is None or (isinstance(w, list) and len(w) == 3) for w in windows):
      raise ValueError(f"{windows_file!r} must hold a list of {count} [video id, start, "
                       "end] or nulls")
    media.windows = windows
  return media
