"""PyAV decoding on small generated files: even spreading, resizing and every failure mode."""

import av
import numpy as np
import pytest

from ps_jax.data import sampling
from ps_jax.data import video as V


def _graded_frames(n, h=48, w=64):
  """Frame i is uniform grey 8 * i: its index survives lossy coding."""
  frames = np.repeat((8 * np.arange(n, dtype=np.uint8))[:, None, None, None], 3, axis=3)
  frames = np.broadcast_to(frames, (n, h, w, 3)).copy()
  return frames


def _grey_levels(frames):
  return np.round(frames[:, frames.shape[1] // 2:, frames.shape[2] // 2:].mean(axis=(1, 2, 3))
                  / 8).astype(int)


def test_mp4_keeps_evenly_spread_frames_and_resizes(tmp_path):
  path = str(tmp_path / "v.mp4")
  V.write_video(path, _graded_frames(30))
  d = V.decode_video(path, num_frames=6, short_side=32)
  np.testing.assert_array_equal(d.frame_indices, [2, 7, 12, 17, 22, 27])  # (i + .5) * 5
  np.testing.assert_array_equal(_grey_levels(d.frames), d.frame_indices)
  assert d.frames.shape == (6, 32, 43, 3) and d.frames.dtype == np.uint8
  assert d.num_source_frames == 30 and d.fps == 10.0 and d.warnings == []
  native = V.decode_video(path, num_frames=6, short_side=None)
  assert native.frames.shape == (6, 48, 64, 3)


def test_matroska_without_frame_count_and_short_video(tmp_path):
  path = str(tmp_path / "v.mkv")
  V.write_video(path, _graded_frames(20), container_format="matroska")
  with av.open(path) as c:
    assert c.streams.video[0].frames == 0  # the container reports no count
  d = V.decode_video(path, num_frames=4, short_side=24)
  np.testing.assert_array_equal(d.frame_indices, [2, 7, 12, 17])
  np.testing.assert_array_equal(_grey_levels(d.frames), [2, 7, 12, 17])
  short = V.decode_video(path, num_frames=32, short_side=24)  # fewer frames than asked
  assert short.frames.shape == (20, 24, 32, 3)
  np.testing.assert_array_equal(short.frame_indices, np.arange(20))


def test_rotation_metadata_turns_frames_upright(tmp_path):
  frames = np.zeros((4, 32, 64, 3), np.uint8)
  frames[:, :8, :8] = (250, 0, 0)  # red top-left corner, landscape
  path = str(tmp_path / "rot.mp4")
  V.write_video(path, frames, rotation=90)
  d = V.decode_video(path, num_frames=2, short_side=None)
  assert d.rotation == 90 and d.frames.shape == (2, 64, 32, 3)  # portrait
  red = d.frames[0, :, :, 0] > 128
  assert red[-8:, :8].mean() > 0.9 and red[:8, :8].mean() < 0.1  # CCW: to bottom-left


def test_stream_failing_midway_keeps_decoded_frames(tmp_path):
  good = str(tmp_path / "good.mp4")
  rng = np.random.default_rng(0)
  noisy = rng.integers(0, 255, (30, 48, 64, 3), dtype=np.uint8)
  noisy[:, 24:, 32:] = _graded_frames(30)[:, 24:, 32:]
  V.write_video(good, noisy, options={"movflags": "faststart"})  # index first, data after
  data = open(good, "rb").read()
  cut = str(tmp_path / "cut.mp4")
  open(cut, "wb").write(data[:len(data) // 2])
  d = V.decode_video(cut, num_frames=4, short_side=None)
  assert 0 < d.num_source_frames < 30 and d.warnings
  assert "decoded" in " ".join(d.warnings)
  # The 4 frames are re-spread over the frames that did decode.
  n = d.num_source_frames
  np.testing.assert_array_equal(d.frame_indices, ((np.arange(4) + 0.5) * n / 4).astype(int))
  np.testing.assert_array_equal(_grey_levels(d.frames), d.frame_indices)


@pytest.mark.parametrize("kind,error,reason", [
    ("missing", V.VideoNotFoundError, "missing"),
    ("empty", V.EmptyVideoFileError, "empty_file"),
    ("text", V.UnreadableVideoError, "unreadable"),
    ("junk", V.UnreadableVideoError, "unreadable"),
    ("truncated_header", V.UnreadableVideoError, "unreadable"),
    ("audio_only", V.NotAVideoError, "no_video_stream"),
    ("directory", V.UnreadableVideoError, "unreadable"),
])
def test_bad_files_raise_typed_errors(tmp_path, kind, error, reason):
  path = tmp_path / f"{kind}.mp4"
  if kind == "empty":
    path.write_bytes(b"")
  elif kind == "text":
    path.write_text("this is not a video\n" * 20)
  elif kind == "junk":
    path.write_bytes(np.random.default_rng(1).bytes(4000))
  elif kind == "truncated_header":  # moov atom at the end, cut off
    V.write_video(str(tmp_path / "full.mp4"), _graded_frames(10))
    path.write_bytes((tmp_path / "full.mp4").read_bytes()[:600])
  elif kind == "audio_only":
    path = tmp_path / "audio.wav"
    with av.open(str(path), "w") as c:
      s = c.add_stream("pcm_s16le", rate=8000)
      frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16",
                                         layout="mono")
      frame.sample_rate = 8000
      for p in list(s.encode(frame)) + list(s.encode()):
        c.mux(p)
  elif kind == "directory":
    path.mkdir()
  with pytest.raises(error) as info:
    V.decode_video(str(path), num_frames=4)
  assert info.value.reason == reason and str(path) in str(info.value)


def test_resize_short_side_exact_and_pixel_aspect():
  frame = np.zeros((48, 64, 3), np.uint8)
  assert V.resize_short_side(frame, 256).shape == (256, 341, 3)
  assert V.resize_short_side(frame.transpose(1, 0, 2), 30).shape == (40, 30, 3)
  assert V.resize_short_side(frame, None) is frame
  assert V.resize_short_side(frame, None, pixel_aspect=2.0).shape == (48, 128, 3)
  const = np.full((40, 60, 3), 77, np.uint8)
  assert (V.resize_short_side(const, 20) == 77).all()


def _moving(n, h=48, w=64, seed=0):
  """Noisy frames with a square moving across: P and B frames with real motion."""
  rng = np.random.default_rng(seed)
  frames = rng.integers(0, 60, (n, h, w, 3), dtype=np.uint8)
  for t in range(n):
    x = (2 * t) % (w - 12)
    frames[t, 10:22, x:x + 12] = (230, 200, 40)
  return frames


def _keyframes(path):
  with av.open(path) as c:
    packets = sorted((p.pts, p.is_keyframe) for p in c.demux(c.streams.video[0]) if p.size)
  return [i for i, (_, key) in enumerate(packets) if key]


@pytest.mark.parametrize("container", ["mp4", "mkv"])
@pytest.mark.parametrize("gop", [None, 10])
def test_keep_only_and_seeking_give_the_in_order_frames_bit_for_bit(tmp_path, container,
                                                                    gop):
  path = str(tmp_path / f"v.{container}")
  V.write_video(path, _moving(60), codec_options={"g": str(gop)} if gop else None)
  if gop:
    assert len(_keyframes(path)) >= 6  # a keyframe every 10 frames or sooner
  full = V.decode_video(path, num_frames=32, short_side=None, threads=1)
  assert full.frames_decoded == 60 and full.num_spread == 32
  np.testing.assert_array_equal(full.positions, np.arange(32))
  chosen = [[0], [31], [5, 20], [3, 4, 5, 6], list(range(32)),
            lambda k: sampling.sample_frame_indices(k, 12, 6, "uniform")]
  for threads in (1, 0):
    for keep_only in chosen:
      for seek in (False, True):
        d = V.decode_video(path, num_frames=32, short_side=None, threads=threads,
                           keep_only=keep_only, seek=seek)
        np.testing.assert_array_equal(d.frames, full.frames[d.positions])
        np.testing.assert_array_equal(d.frame_indices, full.frame_indices[d.positions])
        assert d.num_source_frames == 60 and d.num_spread == 32 and d.warnings == []
        assert d.frames_decoded == 60 or seek
  sparse = V.decode_video(path, num_frames=32, short_side=None, keep_only=[5, 20], seek=True)
  if gop:  # frames 10 and 38, each a few frames past a keyframe
    assert sparse.frames_decoded <= 2 * 10
  else:  # one keyframe: decoding stops at frame 38
    assert sparse.frames_decoded == 39


def test_seeking_with_fps_and_resizing_gives_the_in_order_frames(tmp_path):
  path = str(tmp_path / "v.mp4")
  V.write_video(path, _moving(60), fps=10, codec_options={"g": "8"})
  full = V.decode_video(path, num_frames=16, short_side=32, fps=4.0)
  d = V.decode_video(path, num_frames=16, short_side=32, fps=4.0, keep_only=[1, 7, 14],
                     seek=True)
  assert d.frames_decoded < 60 and d.num_source_frames == full.num_source_frames
  np.testing.assert_array_equal(d.frames, full.frames[[1, 7, 14]])
  np.testing.assert_array_equal(d.frame_indices, full.frame_indices[[1, 7, 14]])


def test_keep_only_on_a_short_video_and_bad_positions(tmp_path):
  path = str(tmp_path / "v.mp4")
  V.write_video(path, _graded_frames(20))
  d = V.decode_video(path, num_frames=32, short_side=24, keep_only=[3, 19, 25, 40],
                     seek=True)  # K' = 20 frames: 25 and 40 are past them
  np.testing.assert_array_equal(d.positions, [3, 19])
  np.testing.assert_array_equal(_grey_levels(d.frames), [3, 19])
  assert d.num_spread == 20
  with pytest.raises(ValueError, match="none of the 20"):
    V.decode_video(path, num_frames=32, keep_only=[25])
  with pytest.raises(ValueError, match=">= 0"):
    V.decode_video(path, num_frames=32, keep_only=[-1, 2])


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.97])
def test_a_truncated_file_decodes_in_order_when_seeking_is_allowed(tmp_path, fraction):
  good = str(tmp_path / "good.mp4")
  noisy = np.random.default_rng(0).integers(0, 255, (30, 48, 64, 3), dtype=np.uint8)
  noisy[:, 24:, 32:] = _graded_frames(30)[:, 24:, 32:]
  V.write_video(good, noisy, options={"movflags": "faststart"}, codec_options={"g": "5"})
  data = open(good, "rb").read()
  cut = str(tmp_path / "cut.mp4")
  open(cut, "wb").write(data[:int(len(data) * fraction)])
  in_order = V.decode_video(cut, num_frames=4, short_side=None)
  seeking = V.decode_video(cut, num_frames=4, short_side=None, keep_only=[0, 2], seek=True)
  assert "decoded" in " ".join(in_order.warnings)  # frames re-spread over those decoded
  assert seeking.warnings == in_order.warnings
  np.testing.assert_array_equal(seeking.frames, in_order.frames[[0, 2]])
  np.testing.assert_array_equal(seeking.frame_indices, in_order.frame_indices[[0, 2]])
