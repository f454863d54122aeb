"""Where an index's videos come from (ps_jax.retrieval.sources): a folder of files decoded
only where the clip needs it gives the clips of decoding every spread frame, bit for bit."""

import numpy as np
import pytest

from ps_jax.data import video as V
from ps_jax.retrieval import sources as S

SHORT_SIDE, IMAGE_SIZE = 32, 24


def _moving(n, seed, h=48, w=64):
  """Noisy frames with a square moving across (real P and B frames)."""
  rng = np.random.default_rng(seed)
  frames = rng.integers(0, 80, (n, h, w, 3), dtype=np.uint8)
  for t in range(n):
    x = (3 * t) % (w - 10)
    frames[t, 8:18, x:x + 10] = (40, 220, 90)
  return frames


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
  """Four videos: keyframes every 10 frames, one keyframe only, Matroska, and a video
  shorter than the 32 spread frames."""
  root = tmp_path_factory.mktemp("videos")
  V.write_video(str(root / "a_gop10.mp4"), _moving(60, 0), codec_options={"g": "10"})
  V.write_video(str(root / "b_one_key.mp4"), _moving(60, 1))
  V.write_video(str(root / "c_gop8.mkv"), _moving(45, 2), codec_options={"g": "8"})
  V.write_video(str(root / "d_short.mp4"), _moving(20, 3), codec_options={"g": "6"})
  return str(root)


def _old_clip(path, num_frames, num_prompts):
  """The clip of an index built before: all 32 spread frames, one in-order pass."""
  decoded = V.decode_video(path, num_frames=32, short_side=SHORT_SIDE, threads=1)
  return S.eval_clip(decoded.frames, num_frames, num_prompts, IMAGE_SIZE)


@pytest.mark.parametrize("num_frames,num_prompts", [(12, 6), (4, 4), (8, 2), (6, 3)])
def test_decoding_only_the_frames_used_gives_the_old_clips_bit_for_bit(video_dir, num_frames,
                                                                       num_prompts):
  every = S.video_dir_source(video_dir, 32, SHORT_SIDE)
  used = S.video_dir_source(video_dir, 32, SHORT_SIDE, num_frames=num_frames,
                            num_prompts=num_prompts)
  assert used.ids == every.ids == ["a_gop10", "b_one_key", "c_gop8", "d_short"]
  assert used.info == every.info  # the index metadata does not change
  for i, path in enumerate(used.paths):
    old = _old_clip(path, num_frames, num_prompts)
    assert old.shape == (num_frames, IMAGE_SIZE, IMAGE_SIZE, 3)
    loaded = used.load(i)
    assert isinstance(loaded.frames, S.SpreadFrames) and loaded.warnings == []
    assert len(loaded.frames.frames) <= num_frames
    assert np.array_equal(S.eval_clip(loaded.frames, num_frames, num_prompts, IMAGE_SIZE), old)
    assert np.array_equal(S.eval_clip(every.load(i).frames, num_frames, num_prompts,
                                      IMAGE_SIZE), old)


def test_the_frames_decoded_are_those_of_the_clip(video_dir):
  source = S.video_dir_source(video_dir, 32, SHORT_SIDE, num_frames=12, num_prompts=6)
  spread = source.load(0).frames
  assert spread.num_spread == 32 and len(spread.frames) == 12
  short = source.load(source.ids.index("d_short")).frames
  assert short.num_spread == 20  # a video shorter than 32 frames: all its frames spread
  with pytest.raises(ValueError, match="num_frames=12, num_prompts=6"):
    S.eval_clip(spread, 8, 4, IMAGE_SIZE)  # other frames than those decoded


def test_num_frames_and_num_prompts_are_checked(video_dir):
  with pytest.raises(S.IndexBuildError, match="give both or neither"):
    S.video_dir_source(video_dir, num_frames=12)
  with pytest.raises(S.IndexBuildError, match="--num_frames \\(10\\) must be a positive "
                     "multiple of the model's num_prompts \\(6\\)"):
    S.video_dir_source(video_dir, num_frames=10, num_prompts=6)
