"""Frame storage: JPEG records, sampling on the source frame count, old datasets, re-timing.

Frame i of a synthetic video is the constant colour (10 * (i // 20) + 5, 12 * (i % 20) + 6,
90 + v): JPEG keeps constant blocks within a few levels, so every output frame says
which source frame it is. Expected indices come from the official formula written out
here (segment (lo, hi) = (edge_s, edge_{s+1} - 1) of int(linspace(0, n, P + 1)); test
frame of chunk c: lo + (hi - lo) // (C + 1) * (c + 1); training: any of range(lo, hi)).
"""

import json
import os

import numpy as np
import pytest

from ps_jax.data import builders, frame_store, pipeline, preparation, video
from ps_jax.tokenizer import WordTokenizer

NAME = "synthetic"


def _frames(n, v=0, h=8, w=12):
  i = np.arange(n)
  f = np.empty((n, h, w, 3), np.uint8)
  f[..., 0] = (10 * (i // 20) + 5)[:, None, None]
  f[..., 1] = (12 * (i % 20) + 6)[:, None, None]
  f[..., 2] = 90 + v
  return f


def _frame_ids(frames):
  """uint8[..., H, W, 3] -> int[...] source frame index of each frame."""
  px = frames[..., frames.shape[-3] // 2, frames.shape[-2] // 2, :].astype(int)
  return (np.round((px[..., 0] - 5) / 10).astype(int) * 20
          + np.round((px[..., 1] - 6) / 12).astype(int))


def _official_ranges(n, p):
  edges = [int(e) for e in np.linspace(0, n, min(p, n) + 1)]
  return [(edges[s], edges[s + 1] - 1) for s in range(len(edges) - 1)]


def _official_test_frames(n, num_frames, p):
  """Chunk after chunk, then the last index repeated up to num_frames (short videos)."""
  chunks = num_frames // p
  out = [lo + (hi - lo) // (chunks + 1) * (c + 1) for c in range(chunks)
         for lo, hi in _official_ranges(n, p)]
  return out + out[-1:] * (num_frames - len(out))


def _write(out, lengths, encoding, keep=None):
  """One video per length; keep(n) -> stored source indices (default: all)."""
  def load(v, n):
    idx = np.arange(n) if keep is None else keep(n)
    return _frames(n, v)[idx], idx.astype(np.int32), n
  videos = [builders.PlannedVideo(f"v{v}", (f"clip {v}",), lambda v=v, n=n: load(v, n))
            for v, n in enumerate(lengths)]
  return builders.write_dataset(str(out), NAME, {"train": videos, "test": videos},
                                encoding=encoding, progress=False)


TOK = WordTokenizer(["clip"] + [str(i) for i in range(10)])
COMMON = dict(tokenizer=TOK, num_prompts=6, image_size=8, max_len=5, shard_index=0,
              shard_count=1)


def _eval_ids(out, num_frames=12, **kw):
  ev = pipeline.make_eval_data(str(out), NAME, "test", global_batch_size=1,
                               num_frames=num_frames, **(COMMON | kw))
  return [_frame_ids(b["frames"][0]) for b in ev]


def test_jpeg_roundtrip_decodes_only_what_is_asked(monkeypatch):
  frames = np.random.default_rng(0).integers(0, 256, (5, 32, 24, 3), dtype=np.uint8)
  frames[:, :16] = 128  # two rows of 16x16 blocks: a flat one, a noisy one
  jpeg = frame_store.encode_jpeg(frames, quality=95)
  assert len(jpeg) == 5 and jpeg.offsets[0] == 0 and jpeg.offsets[-1] == len(jpeg.data)
  out = frame_store.decode_jpeg(jpeg, [3, 1, 3])
  assert out.shape == (3, 32, 24, 3) and out.dtype == np.uint8
  assert np.abs(out[:, :8].astype(int) - 128).max() <= 2  # the flat block survives
  np.testing.assert_array_equal(out[0], out[2])
  with pytest.raises(IndexError, match="outside"):
    frame_store.decode_jpeg(jpeg, [5])
  with pytest.raises(ValueError, match="quality"):
    frame_store.encode_jpeg(frames, quality=0)
  video_ = frame_store.StoredVideo(5, np.arange(5), jpeg=jpeg)
  calls = []
  real = frame_store.decode_jpeg
  monkeypatch.setattr(frame_store, "decode_jpeg",
                      lambda j, p: calls.append(np.asarray(p).tolist()) or real(j, p))
  frame_store.sample_clip(video_, 4, 2, "uniform")
  # Segments [0, 1], [2, 4], C = 2: frames 0 + 1 // 3 * c and 2 + 2 // 3 * c -> 0, 2, 0, 2.
  assert calls == [[0, 2, 0, 2]]  # one call for the clip; each distinct frame once


@pytest.mark.parametrize("encoding", ["raw", "jpeg"])
def test_test_frames_are_the_official_ones_on_the_source_count(tmp_path, encoding):
  lengths = [300, 61, 6, 4]
  version_dir = _write(tmp_path, lengths, encoding)
  index = builders.read_index(version_dir)
  assert index["format"] == 2 and index["frames"]["encoding"] == encoding
  for n, got in zip(lengths, _eval_ids(tmp_path)):
    np.testing.assert_array_equal(got, _official_test_frames(n, 12, 6))
  # 300 frames: segment 0 is [0, 49]; the two chunks take frames 16 and 32.
  first = _eval_ids(tmp_path)[0]
  assert (first[0], first[6]) == (16, 32)


def test_training_reaches_every_official_frame(tmp_path):
  _write(tmp_path, [60], "jpeg")
  loader = pipeline.make_train_loader(str(tmp_path), NAME, "train", global_batch_size=1,
                                      num_frames=3, seed=0, crop_scale=(1.0, 1.0),
                                      crop_ratio=(1.5, 1.5), **(COMMON | {"num_prompts": 3}))
  it = iter(loader)
  ids = np.stack([_frame_ids(next(it)["frames"][0]) for _ in range(300)])
  for s, (lo, hi) in enumerate(_official_ranges(60, 3)):
    assert set(ids[:, s].tolist()) == set(range(lo, hi)), s  # every frame but the last


def test_kept_subset_maps_to_the_nearest_stored_frame(tmp_path):
  keep = lambda n: ((np.arange(10) + 0.5) * n / 10).astype(int)  # 10 evenly spread
  _write(tmp_path, [300], "raw", keep=keep)
  got = _eval_ids(tmp_path)[0]
  stored = keep(300)  # 15, 45, 75, ...
  want = [stored[np.argmin(np.abs(stored - i))] for i in _official_test_frames(300, 12, 6)]
  np.testing.assert_array_equal(got, want)


def test_datasets_written_before_sample_among_their_stored_frames(tmp_path):
  """Index format 1 (raw frames, K kept of n): sampling sees K frames, as it did."""
  keep = lambda n: ((np.arange(8) + 0.5) * n / 8).astype(int)
  version_dir = _write(tmp_path, [80, 80], "raw", keep=keep)
  path = os.path.join(version_dir, builders.INDEX_FILE)
  index = json.load(open(path))
  index["format"] = 1
  del index["frames"]  # what the earlier writer left
  json.dump(index, open(path, "w"))
  split = builders.load_split(str(tmp_path), NAME, "test")
  assert not split.sample_on_source and split.encoding == "raw"
  stored = keep(80)
  for got in _eval_ids(tmp_path, num_frames=6, num_prompts=3):
    np.testing.assert_array_equal(got, stored[_official_test_frames(8, 6, 3)])
  loader = pipeline.make_train_loader(str(tmp_path), NAME, "train", global_batch_size=2,
                                      num_frames=6, seed=0, num_epochs=1,
                                      **(COMMON | {"num_prompts": 3}))
  for b in loader:
    assert set(_frame_ids(b["frames"]).reshape(-1).tolist()) <= set(stored.tolist())


def _clip(path, n, fps):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  video.write_video(str(path), _frames(n, h=32, w=48), fps=fps)


def test_decode_all_frames_and_retime(tmp_path):
  path = tmp_path / "v.mp4"
  _clip(path, 30, fps=10)
  d = video.decode_video(str(path), num_frames=None, short_side=None)
  assert d.num_source_frames == 30 and len(d.frames) == 30
  np.testing.assert_array_equal(_frame_ids(d.frames), np.arange(30))
  r = video.decode_video(str(path), num_frames=None, short_side=None, fps=2.5)
  # 10 fps -> 2.5 fps over 0 .. 2.9 s: slots 0 .. round(7.25) = 7; slot k holds source
  # frames 4k - 2 .. 4k + 1 and shows the last.
  assert r.num_source_frames == 8
  np.testing.assert_array_equal(_frame_ids(r.frames), 4 * np.arange(8) + 1)
  capped = video.decode_video(str(path), num_frames=4, short_side=None, fps=2.5)
  np.testing.assert_array_equal(capped.frame_indices, [1, 3, 5, 7])  # of the 8
  np.testing.assert_array_equal(_frame_ids(capped.frames), 4 * np.array([1, 3, 5, 7]) + 1)
  assert capped.num_source_frames == 8


def test_prepare_defaults_store_every_frame_as_jpeg(tmp_path):
  ids = {"train": "-4wsuPCjDBc_5_15", "val": "bQJQGoJF7_k_162_169",
         "test": "eyhzdC936uk_15_27"}
  shared = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "msvd")
  for i, v in enumerate(ids.values()):
    _clip(tmp_path / "videos" / f"{v}.mp4", 40 + 5 * i, fps=10)
  s = preparation.prepare("msvd", out_dir=str(tmp_path / "out"),
                          video_dir=str(tmp_path / "videos"), anno_dir=shared,
                          short_side=None, progress=False)
  assert s.written == {"train": 1, "val": 1, "test": 1}
  split = builders.load_split(str(tmp_path / "out"), "msvd", "test")
  settings = split.index["settings"]
  assert settings["max_frames"] is None and settings["fps"] is None
  assert split.encoding == "jpeg" and split.index["frames"]["jpeg_quality"] == 90
  record = split.open_source()[0]
  assert record["num_source_frames"] == 50 and len(record["frame_indices"]) == 50
  frames = frame_store.StoredVideo.from_record(record).all_frames()
  np.testing.assert_array_equal(_frame_ids(frames), np.arange(50))
  assert preparation.DEFAULT_SHORT_SIDE == 224
  with pytest.raises(preparation.PrepareError, match="--fps"):
    preparation.prepare("moving_shapes", out_dir=str(tmp_path / "o"), fps=3.0)
  with pytest.raises(preparation.PrepareError, match="--encoding"):
    preparation.prepare("moving_shapes", out_dir=str(tmp_path / "o"), encoding="png")
  with pytest.raises(preparation.PrepareError, match="--max_frames"):
    preparation.prepare("moving_shapes", out_dir=str(tmp_path / "o"), max_frames=0)
