"""The activitynet/moments protocol end to end on the real annotation files: video files
named by real val_1 ids and as long as val_1 says -> prepare --fps 3 (moments.json
beside the frames) -> `--mode index` with windows -> `--mode eval` ranks windows for
every sentence; the metrics recomputed here from the index by brute force."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REAL_VOCAB_MAX_LEN, REPO, SHARED_DATA
from ps_jax.data import annotations as A
from ps_jax.data import prepare as P
from ps_jax.data import protocols
from ps_jax.data import video as V
from ps_jax.retrieval import store
from ps_jax.retrieval import windows as W
from ps_jax.retrieval.query import TextSearcher

ANET = SHARED_DATA / "activitynet"
SCALES = "40:20,80:40"
FPS = 3


def test_moment_protocol_counts_from_the_real_files():
  splits, dropped = A.activitynet_moment_splits(str(ANET))
  got = {s: (len(v), sum(len(m.sentences) for m in v)) for s, v in splits.items()}
  assert got == {"train": (10007, 37414), "test": (4916, 17500)}
  assert dropped == {"train": 2, "test": 0}
  protocol = protocols.PROTOCOLS["activitynet/moments"]
  assert protocol.kind == "moments"
  assert {s: (c.videos, c.queries) for s, c in protocol.splits.items()} == got
  assert protocols.moment_protocols("activitynet") == [protocol]
  assert protocols.for_dataset("activitynet").name == "activitynet/val1-paragraph"
  for videos in splits.values():  # ordered, inside the video, one span a sentence
    for v in videos:
      assert len(v.spans) == len(v.sentences)
      assert all(0 <= s < e <= v.duration for s, e in v.spans), v


def _write_long_clip(path, seed, seconds):
  """A clip of `seconds` at FPS frames a second whose texture drifts with time."""
  rng = np.random.default_rng(seed)
  base = np.repeat(np.repeat(rng.integers(0, 200, (1, 8, 8, 3)), 6, axis=1), 6, axis=2)
  t = np.arange(int(round(seconds * FPS)))[:, None, None, None]
  V.write_video(str(path), (base[:, :40, :48] + t % 56).astype(np.uint8), fps=FPS)


def _main(workdir, data_dir, clip_dir, *extra, ok=True):
  cmd = [sys.executable, "-m", "ps_jax.main", "--config",
         "configs/activitynet_moments_vitb32.py", "--workdir", str(workdir),
         f"--config.data.dir={data_dir}", f"--config.model.init_from={clip_dir}",
         "--config.data.image_size=32", f"--config.data.max_len={REAL_VOCAB_MAX_LEN}",
         "--config.eval_batch_size=4", f"--config.moments.windows={SCALES}",
         "--config.data.eval_worker_count=0", *extra]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                        check=False)
  if ok:
    assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def _distinct(order, windows, k):
  """Best-first rows -> the first k that overlap no kept window of their video."""
  kept = []
  for r in order:
    v, s, e = windows[r]
    if not any(v == kv and s < ke and ks < e for kv, ks, ke in kept):
      kept.append(windows[r])
    if len(kept) == k:
      break
  return kept


def _iou(a, b):
  inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
  return inter / (max(a[1], b[1]) - min(a[0], b[0]))


def _recall(found, targets, n, m):
  return 100.0 * np.mean([any(v == t[0] and _iou((s, e), t[1:]) >= m for v, s, e in f[:n])
                          for f, t in zip(found, targets)])


def test_activitynet_moments_prepare_index_and_eval(tmp_path, real_vocab_clip_dir):
  splits, _ = A.activitynet_moment_splits(str(ANET))
  test = splits["test"][:3]
  train = A.activitynet_splits(str(ANET))[0]["train"]
  held = set(A.holdout_split([v.video_id for v in train], 1000, 0)[1])
  train_id = next(v.video_id for v in train if v.video_id not in held)
  videos = tmp_path / "videos"
  videos.mkdir()
  for i, v in enumerate(test):
    _write_long_clip(videos / f"{v.video_id}.mp4", i, v.duration)
  _write_long_clip(videos / f"{train_id}.mp4", 9, 20.0)
  s = P.prepare("activitynet", out_dir=str(tmp_path / "data"), video_dir=str(videos),
                anno_dir=str(ANET), short_side=32, fps=FPS, progress=False)
  sentences = sum(len(v.sentences) for v in test)
  assert f"activitynet/moments test: 3 of 4916 videos present, {sentences} of 17500 " \
         "sentences" in s.protocol_differences
  with open(os.path.join(s.version_dir, "moments.json"), encoding="utf-8") as f:
    moments = json.load(f)
  assert moments["protocol"] == "activitynet/moments"
  assert len(moments["splits"]["test"]) == 4916

  run, data = tmp_path / "run", tmp_path / "data"
  out = _main(run, data, real_vocab_clip_dir, "--mode", "index").stdout
  index_dir = str(run / "index_test_moments")
  scales = W.parse_scales(SCALES)
  index = store.load_index(index_dir)
  windows = [tuple(w) for w in store.load_media(index_dir, len(index)).windows]
  want = [(v.video_id, a, b) for v in test
          for a, b in W.spans_multi(round(v.duration * FPS) / FPS, scales)]
  assert sorted(windows) == sorted(want)
  assert f"{len(want)} windows at scales 40:20 s, 80:40 s" in out
  meta = index.meta["metadata"]
  assert meta["data"]["scales"] == [[40.0, 20.0], [80.0, 40.0]] and meta["num_frames"] == 12

  out = _main(run, data, real_vocab_clip_dir, "--mode", "eval").stdout
  assert f"reusing the windowed index {index_dir} ({len(want)} rows)" in out
  with open(run / "metrics_moments.json", encoding="utf-8") as f:
    record = json.load(f)
  label = f"activitynet/moments test: 3 of 4916 videos present, {sentences} of 17500 queries"
  assert record["protocol"]["label"] == label and label in out
  assert record["rows"] == len(want) and record["windows"] == SCALES

  # Brute force from the index: every query against every window.
  targets = [(v.video_id, a, b) for v in test for a, b in v.spans]
  texts = [t for v in test for t in v.sentences]
  searcher = TextSearcher.from_index(index_dir)
  sims = np.asarray(searcher.embed(texts)) @ np.asarray(index.embeddings, np.float32).T
  within, corpus = [], []
  for q, t in enumerate(targets):
    order = [int(r) for r in np.argsort(-sims[q], kind="stable")]
    within.append(_distinct([r for r in order if windows[r][0] == t[0]], windows, 5))
    corpus.append(_distinct(order, windows, 5))
  for n in (1, 5):
    for m in (0.3, 0.5, 0.7):
      key = f"R@{n} IoU={m}"
      assert record["within"][key] == pytest.approx(_recall(within, targets, n, m)), key
      assert record["corpus"][key] == pytest.approx(_recall(corpus, targets, n, m)), key
  assert record["within"]["mIoU"] == pytest.approx(
      100 * np.mean([_iou(f[0][1:], t[1:]) for f, t in zip(within, targets)]))
  best = np.array([max(_iou(w[1:], t[1:]) for w in windows if w[0] == t[0])
                   for t in targets])
  assert record["oracle"]["IoU=0.5"] == pytest.approx(100 * np.mean(best >= 0.5))
  assert record["oracle"]["mIoU"] == pytest.approx(100 * best.mean())
  assert 0 < record["oracle"]["IoU=0.3"] <= 100  # windows do cover the sentences' spans
  assert record["within"]["R@5 IoU=0.3"] > 0 and record["corpus"]["R@5 IoU=0.3"] > 0

  bad = _main(run, data, real_vocab_clip_dir, "--mode", "eval",
              "--config.moments.windows=40:80", ok=False)
  assert bad.returncode == 2
  assert "config.moments.windows '40:80'" in bad.stderr and "larger than" in bad.stderr
  bad = _main(run, data, real_vocab_clip_dir, "--mode", "eval",
              "--config.moments.protocol=activitynet/val1-paragraph", ok=False)
  assert bad.returncode == 2
  assert ("config.moments.protocol 'activitynet/val1-paragraph' is not a moment protocol "
          "of dataset 'activitynet' (choose from ['activitynet/moments'])") in bad.stderr
  assert os.path.exists(os.path.join(index_dir, store.META_FILE))  # nothing lost


def test_a_broken_moments_file_names_the_file_and_the_video(tmp_path):
  path = tmp_path / "val_1.json"
  path.write_text(json.dumps({"v_a": {"duration": 10.0, "timestamps": [[0, 4], [12, 3]],
                                      "sentences": ["one", "two"]},
                              "v_b": {"duration": 5.0, "timestamps": [[0, 1]],
                                      "sentences": ["x", "y"]}}))
  with pytest.raises(A.AnnotationError, match=r"val_1.json'?: 'v_b' has 1 timestamps for "
                     r"2 sentences"):
    A.read_activitynet_moments(str(path))
  path.write_text(json.dumps({"v_a": {"duration": 10.0, "timestamps": [[0, 4], [12, 3],
                                                                       [11, 12]],
                                      "sentences": [" one", "two", "three"]}}))
  videos, dropped = A.read_activitynet_moments(str(path))
  # [12, 3] is put in order and clipped to the video: [3, 10]; [11, 12] is then empty.
  assert videos["v_a"].spans == ((0.0, 4.0), (3.0, 10.0)) and dropped == 1
  assert videos["v_a"].sentences == ("one", "two")
