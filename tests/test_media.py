"""Thumbnail strips and source paths stored with an index (ps_jax.retrieval.media + store)."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from ps_jax.retrieval import media
from ps_jax.retrieval import store as ix

FP = "sha256:" + "cd" * 32


def _rows(n, seed=0):
  return np.random.default_rng(seed).standard_normal((n, 8)).astype(np.float32)


def _clip(num_frames, size=32):
  """Frame i is a flat grey of level 20 * i: tiles tell which frame they show."""
  levels = 20 * np.arange(num_frames, dtype=np.uint8)
  return np.broadcast_to(levels[:, None, None, None], (num_frames, size, size, 3)).copy()


def _jpeg(seed):
  return media.encode_jpeg(media.strip(_clip(4) + seed))


def _decode(data):
  return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_strip_spreads_frames_in_time_order():
  s = media.strip(_clip(12))
  assert s.shape == (96, 4 * 96, 3) and s.dtype == np.uint8
  tiles = [int(s[:, 96 * i:96 * (i + 1)].mean().round()) for i in range(4)]
  assert tiles == [0, 80, 140, 220]              # frames 0, 4, 7, 11 of 12
  assert media.strip(_clip(2)).shape == (96, 2 * 96, 3)   # fewer frames than 4: all of them
  back = _decode(media.encode_jpeg(s))
  assert back.shape == s.shape and np.abs(back.astype(int) - s).mean() < 2
  with pytest.raises(ValueError, match="clip must be uint8"):
    media.strip(np.zeros((0, 8, 8, 3), np.uint8))


def test_write_append_and_read_back(tmp_path):
  path = str(tmp_path / "index")
  thumbs = [_jpeg(0), None, _jpeg(1)]
  ix.write_index(path, ["a", "b", "c"], _rows(3), FP, thumbnails=thumbs,
                 sources=["/videos/a.mp4", None, "/videos/c.mp4"])
  m = ix.load_media(path, 3)
  assert [m.thumbnail(i) for i in range(3)] == thumbs and m.num_thumbnails == 2
  assert [m.source(i) for i in range(3)] == ["/videos/a.mp4", None, "/videos/c.mp4"]
  ix.append_to_index(path, ["d"], _rows(1, 1), FP, thumbnails=[_jpeg(2)], sources=["/v/d.mp4"])
  ix.append_to_index(path, ["e"], _rows(1, 2), FP)   # embeddings only: no media for e
  m = ix.load_media(path, 5)
  assert [m.thumbnail(i) for i in range(5)] == thumbs + [_jpeg(2), None]
  assert [m.source(i) for i in range(5)] == ["/videos/a.mp4", None, "/videos/c.mp4",
                                             "/v/d.mp4", None]
  with pytest.raises(ValueError, match="2 thumbnails given for 1 ids"):
    ix.append_to_index(path, ["f"], _rows(1, 3), FP, thumbnails=[None, None])
  assert ix.load_index(path).ids == ["a", "b", "c", "d", "e"]


def test_an_index_without_media_files_serves_and_takes_media_on_append(tmp_path):
  path = str(tmp_path / "index")
  ix.write_index(path, ["a", "b"], _rows(2), FP)
  for name in media.FILES:           # as written before thumbnails existed
    if os.path.exists(os.path.join(path, name)):  # (windows.json: only of windows)
      os.remove(os.path.join(path, name))
  assert not os.path.exists(os.path.join(path, media.WINDOWS_FILE))
  m = ix.load_media(path, 2)
  assert m.num_thumbnails == 0 and m.thumbnail(1) is None and m.source(0) is None
  ix.append_to_index(path, ["c"], _rows(1, 1), FP)
  assert not any(os.path.exists(os.path.join(path, n)) for n in media.FILES)
  ix.append_to_index(path, ["d"], _rows(1, 2), FP, thumbnails=[_jpeg(3)], sources=["/d.mp4"])
  m = ix.load_media(path, 4)
  assert [m.thumbnail(i) for i in range(4)] == [None, None, None, _jpeg(3)]
  assert [m.source(i) for i in range(4)] == [None, None, None, "/d.mp4"]


def test_interrupted_commit_reads_consistent_media(tmp_path, monkeypatch):
  path = str(tmp_path / "index")
  ix.write_index(path, ["a"], _rows(1), FP, thumbnails=[_jpeg(0)], sources=["/a.mp4"])

  def crash_mid_rename(directory, names):
    open(os.path.join(directory, ix.COMMIT_MARKER), "w").close()
    os.replace(os.path.join(directory, "thumbnails.npy.new"),
               os.path.join(directory, "thumbnails.npy"))
    raise RuntimeError("power cut")

  monkeypatch.setattr(ix, "_commit", crash_mid_rename)
  with pytest.raises(RuntimeError):
    ix.append_to_index(path, ["b"], _rows(1, 1), FP, thumbnails=[_jpeg(1)], sources=["/b"])
  m = ix.load_media(path, 2)           # offsets renamed, thumbnails.bin still .new
  assert [m.thumbnail(i) for i in range(2)] == [_jpeg(0), _jpeg(1)]
  monkeypatch.undo()
  ix.append_to_index(path, ["c"], _rows(1, 2), FP)
  m = ix.load_media(path, 3)
  assert [m.thumbnail(i) for i in range(3)] == [_jpeg(0), _jpeg(1), None]
  assert [m.source(i) for i in range(3)] == ["/a.mp4", "/b", None]


def test_corrupt_media_files_are_named(tmp_path):
  path = str(tmp_path / "index")
  ix.write_index(path, ["a", "b"], _rows(2), FP, thumbnails=[_jpeg(0), _jpeg(1)])
  with open(os.path.join(path, "thumbnails.bin"), "r+b") as f:
    f.truncate(100)
  with pytest.raises(ix.IndexFormatError, match=r"thumbnails\.npy.*thumbnails\.bin"):
    ix.load_media(path, 2)
  with open(os.path.join(path, "sources.json"), "w") as f:
    f.write("[1, 2")
  os.remove(os.path.join(path, "thumbnails.npy"))
  with pytest.raises(ix.IndexFormatError, match=r"sources\.json.*not valid JSON"):
    ix.load_media(path, 2)


def test_strip_skips_black_and_blank_frames():
  rng = np.random.default_rng(0)
  clip = rng.integers(40, 220, (12, 32, 32, 3), dtype=np.uint8)  # textured frames
  clip[:3] = 0                 # a fade in from black
  clip[3, :, :, :] = 5         # near black
  clip[10:] = 200              # a flat title card at the end
  clip[7] = clip[7] // 8       # a dark frame with detail: mean under the threshold
  usable = media.usable_frames(clip)
  assert usable.tolist() == [False] * 4 + [True] * 3 + [False] + [True] * 2 + [False] * 2
  s = media.strip(clip)
  assert s.shape == (96, 4 * 96, 3)
  expected = media.strip(clip[[4, 5, 8, 9]])  # 4 spread over the usable 4, 5, 6, 8, 9
  np.testing.assert_array_equal(s, expected)
  # One usable frame: every tile shows it; none: spread over all frames as before.
  one = np.zeros((6, 32, 32, 3), np.uint8)
  one[2] = clip[5]
  tiles = media.strip(one)
  assert all(np.array_equal(tiles[:, :96], tiles[:, 96 * i:96 * (i + 1)]) for i in range(4))
  black = np.zeros((6, 32, 32, 3), np.uint8)
  assert media.strip(black).shape == (96, 4 * 96, 3) and not media.strip(black).any()
  # Coding noise on a flat frame does not make it usable.
  noisy = np.clip(np.full((2, 32, 32, 3), 128.0) + rng.normal(0, 2, (2, 32, 32, 3)), 0,
                  255).astype(np.uint8)
  assert not media.usable_frames(noisy).any()
