"""Frame sampling: hand-worked examples of segment bounds, `uniform` and `rand`."""

import numpy as np
import pytest

from ps_jax.data import sampling as S


def test_segment_bounds_worked_examples():
  # n = 10, P = 3: edges floor(linspace(0, 10, 4)) = 0, 3, 6, 10.
  np.testing.assert_array_equal(S.segment_bounds(10, 3), [[0, 2], [3, 5], [6, 9]])
  # n = 12, P = 3: edges 0, 4, 8, 12.
  np.testing.assert_array_equal(S.segment_bounds(12, 3), [[0, 3], [4, 7], [8, 11]])
  # n = 7, P = 2: edges 0, 3, 7 (floor of 3.5).
  np.testing.assert_array_equal(S.segment_bounds(7, 2), [[0, 2], [3, 6]])
  # n = P: one frame per segment.
  np.testing.assert_array_equal(S.segment_bounds(4, 4), [[0, 0], [1, 1], [2, 2], [3, 3]])
  # Short video, n = 2 < P = 4: frames 0, 1 then the last frame repeats.
  np.testing.assert_array_equal(S.segment_bounds(2, 4), [[0, 0], [1, 1], [1, 1], [1, 1]])
  for n in range(1, 40):
    for p in range(1, 9):
      b = S.segment_bounds(n, p)
      assert b.shape == (p, 2) and (b[:, 0] <= b[:, 1]).all() and b.max() == n - 1
      if n >= p:  # a partition of [0, n) into P contiguous segments of near-equal size
        assert b[0, 0] == 0 and (b[1:, 0] == b[:-1, 1] + 1).all()
        sizes = b[:, 1] - b[:, 0] + 1
        assert sizes.max() - sizes.min() <= 1


def test_uniform_worked_examples():
  # n = 12, P = 3, C = 1: a + (b - a) // 2 * 1 in [0,3], [4,7], [8,11] -> 1, 5, 9.
  np.testing.assert_array_equal(S.sample_frame_indices(12, 3, 3, "uniform"), [1, 5, 9])
  # C = 2: (b - a) // 3 = 1 -> chunk 0: a + 1, chunk 1: a + 2; chunk-major.
  np.testing.assert_array_equal(S.sample_frame_indices(12, 6, 3, "uniform"),
                                [1, 5, 9, 2, 6, 10])
  # n = 10, P = 3 ([0,2], [3,5], [6,9]), C = 2: steps 2//3=0, 2//3=0, 3//3=1.
  np.testing.assert_array_equal(S.sample_frame_indices(10, 6, 3, "uniform"),
                                [0, 3, 7, 0, 3, 8])
  # n = 32, P = 6 (edges 0,5,10,16,21,26,32), C = 2 (official test setting, 12 frames).
  np.testing.assert_array_equal(S.sample_frame_indices(32, 12, 6, "uniform"),
                                [1, 6, 11, 17, 22, 27, 2, 7, 12, 18, 23, 28])
  # Short video, n = 2 < P = 4, C = 2: frames 0, 1, 1, 1 in both chunks.
  np.testing.assert_array_equal(S.sample_frame_indices(2, 8, 4, "uniform"),
                                [0, 1, 1, 1, 0, 1, 1, 1])
  # Single-frame video.
  np.testing.assert_array_equal(S.sample_frame_indices(1, 4, 2, "uniform"), [0, 0, 0, 0])


def test_rand_stays_in_segments_and_covers_them():
  rng = np.random.default_rng(0)
  seen = [set(), set(), set()]
  for _ in range(300):
    idx = S.sample_frame_indices(10, 6, 3, "rand", rng)  # [0,2], [3,5], [6,9], C = 2
    assert idx.dtype == np.int32 and idx.shape == (6,)
    for c in range(2):
      chunk = idx[c * 3:(c + 1) * 3]
      assert 0 <= chunk[0] <= 2 and 3 <= chunk[1] <= 5 and 6 <= chunk[2] <= 9
      for s in range(3):
        seen[s].add(int(chunk[s]))
  assert seen == [{0, 1, 2}, {3, 4, 5}, {6, 7, 8, 9}]  # both segment ends reachable
  # The two chunks draw independently.
  draws = np.stack([S.sample_frame_indices(100, 4, 2, "rand", rng) for _ in range(50)])
  assert (draws[:, :2] != draws[:, 2:]).any()
  # Short video: the padded segments repeat the last frame.
  np.testing.assert_array_equal(S.sample_frame_indices(2, 4, 4, "rand", rng), [0, 1, 1, 1])
  a = S.sample_frame_indices(50, 12, 6, "rand", np.random.default_rng(5))
  b = S.sample_frame_indices(50, 12, 6, "rand", np.random.default_rng(5))
  np.testing.assert_array_equal(a, b)


def test_even_indices_and_errors():
  np.testing.assert_array_equal(S.even_indices(100, 4), [12, 37, 62, 87])
  np.testing.assert_array_equal(S.even_indices(10, 3), [1, 5, 8])
  np.testing.assert_array_equal(S.even_indices(3, 8), [0, 1, 2])  # never duplicated
  with pytest.raises(ValueError, match="multiple of num_prompts"):
    S.sample_frame_indices(10, 5, 3, "uniform")
  with pytest.raises(ValueError, match="rng"):
    S.sample_frame_indices(10, 3, 3, "rand")
  with pytest.raises(ValueError, match="mode"):
    S.sample_frame_indices(10, 3, 3, "middle")
  with pytest.raises(ValueError, match="num_video_frames"):
    S.segment_bounds(0, 3)
