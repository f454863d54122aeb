"""PyAV decoding on small generated files: even spreading, resizing and every failure mode."""

import av
import numpy as np
import pytest

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
