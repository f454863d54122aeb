"""Tests for ps_jax.metrics: ranks, R@K / MdR / MnR, multi-caption v2t, ties, DSL, JSON."""

import json
import math
import os

import numpy as np
import pytest

from ps_jax import metrics as ev


def test_similarity_is_cosine():
  text = np.array([[3.0, 0.0], [1.0, 1.0]])
  video = np.array([[2.0, 0.0], [0.0, 5.0], [-1.0, -1.0]])
  sim = ev.similarity(text, video)
  assert sim.dtype == np.float32 and sim.shape == (2, 3)
  h = math.sqrt(0.5)
  np.testing.assert_allclose(sim, [[1, 0, -h], [h, h, -1]], atol=1e-6)
  with pytest.raises(ValueError, match="dims differ"):
    ev.similarity(text, np.ones((3, 4)))


def test_metrics_from_ranks_exact_values():
  m = ev.metrics_from_ranks([1, 3, 7, 12, 55])
  assert m == {"R@1": 20.0, "R@5": 40.0, "R@10": 60.0, "R@50": 80.0, "MdR": 7.0,
               "MnR": 15.6}
  assert ev.metrics_from_ranks([1, 2, 3, 4])["MdR"] == 2.5


def test_single_caption_per_video():
  sim = np.array([[0.9, 0.1, 0.2],
                  [0.3, 0.8, 0.85],
                  [0.1, 0.2, 0.7]])
  t2v = np.arange(3)
  np.testing.assert_array_equal(ev.text_to_video_ranks(sim, t2v), [1, 2, 1])
  np.testing.assert_array_equal(ev.video_to_text_ranks(sim, t2v), [1, 1, 2])
  m = ev.retrieval_metrics(sim, t2v)
  assert m["t2v"]["R@1"] == pytest.approx(200 / 3)
  assert m["t2v"]["R@5"] == 100.0
  assert m["t2v"]["MdR"] == 1.0
  assert m["t2v"]["MnR"] == pytest.approx(4 / 3)
  assert m["v2t"]["R@1"] == pytest.approx(200 / 3)
  assert m["v2t"]["MnR"] == pytest.approx(4 / 3)


def test_multiple_captions_per_video_msvd_protocol():
  # 5 captions of 3 videos: captions 0, 1 -> video 0; 2 -> video 1; 3, 4 -> video 2.
  sim = np.array([[0.5, 0.6, 0.1],
                  [0.9, 0.5, 0.3],
                  [0.4, 0.3, 0.35],
                  [0.1, 0.2, 0.25],
                  [0.7, 0.1, 0.6]])
  t2v = np.array([0, 0, 1, 2, 2])
  np.testing.assert_array_equal(ev.text_to_video_ranks(sim, t2v), [2, 1, 3, 1, 2])
  np.testing.assert_allclose(ev.group_max(sim, t2v), [[0.9, 0.6, 0.3],
                                                      [0.4, 0.3, 0.35],
                                                      [0.7, 0.2, 0.6]])
  # Video 1's best caption (0.3) is beaten by video 0's group (best 0.6) only: rank 2. Two
  # captions of video 0 beat it, so a caption-level count would have said 3.
  np.testing.assert_array_equal(ev.video_to_text_ranks(sim, t2v), [1, 2, 1])
  m = ev.retrieval_metrics(sim, t2v)
  assert m["t2v"] == {"R@1": 40.0, "R@5": 100.0, "R@10": 100.0, "R@50": 100.0, "MdR": 2.0,
                      "MnR": 1.8}
  assert m["v2t"]["R@1"] == pytest.approx(200 / 3)
  assert m["v2t"]["MdR"] == 1.0
  assert m["v2t"]["MnR"] == pytest.approx(4 / 3)
  # Caption order does not matter.
  perm = np.array([4, 2, 0, 3, 1])
  assert ev.retrieval_metrics(sim[perm], t2v[perm]) == m


def test_ties_are_pessimistic():
  m = ev.retrieval_metrics(np.zeros((4, 4)), np.arange(4))
  for d in ("t2v", "v2t"):
    assert m[d] == {"R@1": 0.0, "R@5": 100.0, "R@10": 100.0, "R@50": 100.0, "MdR": 4.0,
                    "MnR": 4.0}
  sim = np.array([[0.5, 0.5, 0.1],
                  [0.2, 0.5, 0.5],
                  [0.1, 0.2, 0.3]])
  np.testing.assert_array_equal(ev.text_to_video_ranks(sim, np.arange(3)), [2, 2, 1])


def test_dsl_changes_ranks():
  # Video 0 matches caption 0 strongly, so DSL lowers caption 1's prior on it.
  sim = np.array([[0.9, 0.1],
                  [0.6, 0.5]])
  t2v = np.arange(2)
  plain = ev.retrieval_metrics(sim, t2v)
  dsl = ev.dsl_retrieval_metrics(sim, t2v)
  np.testing.assert_array_equal(ev.text_to_video_ranks(sim, t2v), [1, 2])
  assert plain["t2v"]["R@1"] == 50.0 and plain["t2v"]["MnR"] == 1.5
  assert dsl["t2v"]["R@1"] == 100.0 and dsl["t2v"]["MnR"] == 1.0
  assert dsl["v2t"]["R@1"] == 100.0


def test_dual_softmax_values():
  sim = np.array([[0.01, 0.0], [0.0, 0.01]])
  e = math.e
  out = ev.dual_softmax(sim, temperature=100.0, axis=0)
  np.testing.assert_allclose(out, [[0.01 * e / (e + 1), 0.0], [0.0, 0.01 * e / (e + 1)]])
  np.testing.assert_allclose(ev.dual_softmax(sim, 100.0, axis=1), out)
  # Priors of e^-190 (below float32's range) keep scores apart instead of tying at zero.
  far = ev.dual_softmax(np.array([[1.0, -0.5], [-0.9, 0.8]]), 100.0, axis=0)
  assert far[1, 0] == pytest.approx(-0.9 * math.exp(-190), rel=1e-9)
  assert far[0, 1] == pytest.approx(-0.5 * math.exp(-130), rel=1e-9)


def test_input_validation():
  sim = np.zeros((3, 2))
  with pytest.raises(ValueError, match=r"shape \[T\] = \[3\]"):
    ev.retrieval_metrics(sim, np.array([0, 1]))
  with pytest.raises(ValueError, match=r"text_to_video\[2\] = 5 is out of range"):
    ev.retrieval_metrics(sim, np.array([0, 1, 5]))
  with pytest.raises(ValueError, match="Video 1 has no caption"):
    ev.retrieval_metrics(sim, np.array([0, 0, 0]))
  with pytest.raises(ValueError, match="integer"):
    ev.retrieval_metrics(sim, np.array([0.0, 1.0, 1.0]))
  bad = sim.copy()
  bad[2, 1] = np.nan
  with pytest.raises(ValueError, match=r"sim\[2, 1\]"):
    ev.retrieval_metrics(bad, np.array([0, 1, 1]))


def test_large_msvd_sized_case_matches_sorting():
  rng = np.random.default_rng(0)
  num_texts, num_videos = 30_000, 700
  t2v = np.concatenate([np.arange(num_videos), rng.integers(0, num_videos,
                                                             num_texts - num_videos)])
  sim = rng.standard_normal((num_texts, num_videos)).astype(np.float32)
  ranks = ev.text_to_video_ranks(sim, t2v)
  rows = rng.choice(num_texts, 200, replace=False)
  order = np.argsort(-sim[rows], axis=1, kind="stable")
  expected = np.argmax(order == t2v[rows, None], axis=1) + 1
  np.testing.assert_array_equal(ranks[rows], expected)
  v2t = ev.video_to_text_ranks(sim, t2v)
  groups = np.stack([sim[t2v == g].max(axis=0) for g in range(num_videos)])
  order = np.argsort(-groups.T, axis=1, kind="stable")
  np.testing.assert_array_equal(v2t, np.argmax(order == np.arange(num_videos)[:, None], 1) + 1)


def test_json_record_and_table(tmp_path):
  sim = np.array([[0.9, 0.1], [0.6, 0.5]])
  metrics = ev.retrieval_metrics(sim, np.arange(2))
  dsl = ev.dsl_retrieval_metrics(sim, np.arange(2))
  record = ev.metrics_to_json(7, 2, 2, metrics)
  assert list(record) == ["step", "num_videos", "num_texts", "t2v", "v2t"]
  assert list(record["t2v"]) == ["R@1", "R@5", "R@10", "R@50", "MdR", "MnR"]
  assert record["step"] == 7 and record["t2v"]["R@1"] == 50.0
  path = os.path.join(tmp_path, "eval", "metrics.json")
  written = ev.write_metrics_json(path, 7, 2, 2, metrics, dsl)
  with open(path) as f:
    loaded = json.load(f)
  assert loaded == written
  assert list(loaded) == ["step", "num_videos", "num_texts", "t2v", "v2t", "dsl"]
  assert list(loaded["dsl"]) == ["t2v", "v2t"] and loaded["dsl"]["t2v"]["R@1"] == 100.0
  assert os.listdir(os.path.dirname(path)) == ["metrics.json"]
  table = ev.format_table(metrics, dsl)
  lines = table.splitlines()
  assert len(lines) == 5 and "MdR" in lines[0]
  assert lines[1].split()[:2] == ["t2v", "50.0"]
  assert "DSL" in lines[3] and "DSL" in lines[4]
  with pytest.raises(ValueError, match="lacks"):
    ev.metrics_to_json(0, 2, 2, {"t2v": metrics["t2v"]})


def test_moment_recalls_and_temporal_iou_by_hand():
  assert ev.temporal_iou((0, 10), (5, 15)) == pytest.approx(5 / 15)
  assert ev.temporal_iou((0, 4), (4, 8)) == 0.0  # touching spans share nothing
  assert ev.temporal_iou((2, 3), (0, 10)) == pytest.approx(0.1)
  targets = [("a", 0.0, 10.0), ("b", 20.0, 30.0), ("c", 0.0, 4.0)]
  found = [[("a", 0.0, 8.0), ("a", 20.0, 28.0)],      # IoU 0.8 first
           [("a", 20.0, 30.0), ("b", 24.0, 34.0)],    # right span, wrong video; then 0.43
           []]                                        # nothing found: a miss
  r = ev.moment_recalls(found, targets)
  assert r == pytest.approx({"R@1 IoU=0.3": 100 / 3, "R@1 IoU=0.5": 100 / 3,
                             "R@1 IoU=0.7": 100 / 3, "R@5 IoU=0.3": 200 / 3,
                             "R@5 IoU=0.5": 100 / 3, "R@5 IoU=0.7": 100 / 3})
  assert ev.mean_top_iou(found, targets) == pytest.approx(80 / 3)
  with pytest.raises(ValueError, match="2 ranked lists for 3 targets"):
    ev.moment_recalls(found[:2], targets)
