"""Frame sampling: hand-worked examples, and the official rule transcribed as a reference.

`_official` restates the index rule of the official `VideoCapture.load_frames_from_video`
(datasets/video_capture.py of the PromptSwitch repository) with plain Python lists, so
the vectorised `sampling` module is checked against the formula, not against itself.
"""

import numpy as np
import pytest

from ps_jax.data import sampling as S


def _official(vlen, num_frames, num_prompts, mode, choice=None):
  """The official index list; `choice` plays `random.choice` for mode "rand".

  Segments: min(P, vlen) of them, edges int(linspace(0, vlen, S + 1)), segment s =
  (edge_s, edge_{s+1} - 1); rand takes choice(range(lo, hi)), uniform
  (hi - lo) // (C + 1) * (c + 1) + lo; chunk after chunk, then the last index repeated
  up to num_frames.
  """
  segments = min(num_prompts, vlen)
  edges = [int(e) for e in np.linspace(0, vlen, segments + 1)]
  ranges = [(edges[s], edges[s + 1] - 1) for s in range(segments)]
  chunks = num_frames // num_prompts
  out = []
  for c in range(chunks):
    for lo, hi in ranges:
      out.append(choice(range(lo, hi)) if mode == "rand"
                 else (hi - lo) // (chunks + 1) * (c + 1) + lo)
  while len(out) < num_frames:
    out.append(out[-1])
  return out


def test_segment_bounds_worked_examples():
  # n = 10, P = 3: edges floor(linspace(0, 10, 4)) = 0, 3, 6, 10.
  np.testing.assert_array_equal(S.segment_bounds(10, 3), [[0, 2], [3, 5], [6, 9]])
  # n = 12, P = 3: edges 0, 4, 8, 12.
  np.testing.assert_array_equal(S.segment_bounds(12, 3), [[0, 3], [4, 7], [8, 11]])
  # n = 7, P = 2: edges 0, 3, 7 (floor of 3.5).
  np.testing.assert_array_equal(S.segment_bounds(7, 2), [[0, 2], [3, 6]])
  # n = P: one frame per segment.
  np.testing.assert_array_equal(S.segment_bounds(4, 4), [[0, 0], [1, 1], [2, 2], [3, 3]])
  # Short video, n = 2 < P = 4: min(P, n) = 2 one-frame segments.
  np.testing.assert_array_equal(S.segment_bounds(2, 4), [[0, 0], [1, 1]])
  for n in range(1, 40):
    for p in range(1, 9):
      b = S.segment_bounds(n, p)
      assert b.shape == (min(n, p), 2) and (b[:, 0] <= b[:, 1]).all() and b.max() == n - 1
      # a partition of [0, n) into contiguous segments of near-equal size
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
  # Short video, n = 2 < P = 4, C = 2: two chunks of (0, 1), then the last index.
  np.testing.assert_array_equal(S.sample_frame_indices(2, 8, 4, "uniform"),
                                [0, 1, 0, 1, 1, 1, 1, 1])
  # 300 frames, P = 6, 12 test frames: segment 0 = [0, 49] gives 49 // 3 * 1 and * 2.
  idx = S.sample_frame_indices(300, 12, 6, "uniform")
  assert (idx[0], idx[6]) == (16, 32)
  # Single-frame video.
  np.testing.assert_array_equal(S.sample_frame_indices(1, 4, 2, "uniform"), [0, 0, 0, 0])


def test_uniform_is_the_official_rule():
  for n in range(1, 70):
    for p in range(1, 9):
      for c in (1, 2, 3):
        np.testing.assert_array_equal(S.sample_frame_indices(n, c * p, p, "uniform"),
                                      _official(n, c * p, p, "uniform"), err_msg=(n, p, c))


@pytest.mark.parametrize("n,p,c", [(10, 3, 2), (300, 6, 1), (300, 6, 2), (12, 6, 1),
                                   (7, 6, 2), (13, 4, 3), (3, 6, 2), (1, 4, 1)])
def test_rand_draws_what_the_official_rule_can_draw(n, p, c):
  """Per output position, the set of indices drawn over many draws is the official
  `range(lo, hi)` (never the segment's last frame); a one-frame segment, where the
  official `random.choice` of an empty range fails, gives its frame."""
  ranges = _official(n, c * p, p, "rand", choice=lambda r: r)  # the range of each slot
  support = [set(r) or {r.start} for r in ranges]
  real = min(p, n) * c  # slots drawn; the rest repeat the last drawn index
  rng = np.random.default_rng(0)
  draws = np.stack([S.sample_frame_indices(n, c * p, p, "rand", rng) for _ in range(3000)])
  assert draws.dtype == np.int32 and draws.shape == (3000, c * p)
  for j in range(real):
    assert set(draws[:, j].tolist()) == support[j], (j, ranges[j])
  assert (draws[:, real:] == draws[:, real - 1:real]).all()
  if c > 1 and max(len(s) for s in support) > 1:  # the chunks draw independently
    assert (draws[:, :p] != draws[:, p:2 * p]).any()


def test_rand_is_seeded():
  a = S.sample_frame_indices(50, 12, 6, "rand", np.random.default_rng(5))
  b = S.sample_frame_indices(50, 12, 6, "rand", np.random.default_rng(5))
  np.testing.assert_array_equal(a, b)
  # Every slot of a 12-frame video with 6 segments of 2 frames is the segment's start.
  np.testing.assert_array_equal(S.sample_frame_indices(12, 6, 6, "rand", np.random.default_rng(1)),
                                [0, 2, 4, 6, 8, 10])


def test_nearest_stored_and_retime():
  stored = np.array([0, 10, 20, 31])
  np.testing.assert_array_equal(S.nearest_stored([0, 4, 5, 6, 15, 26, 40], stored),
                                [0, 0, 0, 1, 1, 3, 3])  # ties go to the earlier frame
  np.testing.assert_array_equal(S.nearest_stored(np.arange(5), np.arange(5)), np.arange(5))
  with pytest.raises(ValueError, match="stored_indices"):
    S.nearest_stored([1], [])
  # Same rate: the identity. 30 fps -> 3 fps over 10 s: slot k takes frames whose time
  # rounds to k (10k - 5 .. 10k + 4) and shows the last of them.
  t30 = np.arange(300) / 30
  np.testing.assert_array_equal(S.retime(t30, 30), np.arange(300))
  np.testing.assert_array_equal(S.retime(t30, 3), np.minimum(np.arange(31) * 10 + 4, 299))
  # 2 fps -> 4 fps repeats frames; an irregular stream keeps the latest frame per slot.
  np.testing.assert_array_equal(S.retime(np.arange(3) / 2, 4), [0, 0, 1, 1, 2])
  np.testing.assert_array_equal(S.retime([0.0, 0.1, 0.2, 0.9], 2), [2, 2, 3])  # slots 0,0,0,2
  with pytest.raises(ValueError, match="fps"):
    S.retime(t30, 0)


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
