"""ActivityNet Captions and DiDeMo end to end on the real annotation files: generated
video files named by real ids -> prepare -> train (`python -m ps_jax.main` with the
datasets' configs, a tiny CLIP with CLIP's own tokenizer) -> test, labelled with the
named protocol and the counts it ran on, beside the configs' published numbers."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REAL_VOCAB_MAX_LEN, REPO, SHARED_DATA
from ps_jax.data import annotations as A
from ps_jax.data import builders
from ps_jax.data import prepare as P
from ps_jax.data import video as V

ANET, DIDEMO = SHARED_DATA / "activitynet", SHARED_DATA / "didemo"
MAX_LEN = REAL_VOCAB_MAX_LEN


@pytest.fixture(scope="module")
def clip_dir(real_vocab_clip_dir):
  return real_vocab_clip_dir


def _write_clip(path, seed, frames=30):
  """A small clip with its own texture and motion (30 frames: sampling spans it)."""
  rng = np.random.default_rng(seed)
  base = rng.integers(0, 256, (1, 8, 8, 3))
  video = np.repeat(np.repeat(base, 6, axis=1), 6, axis=2)[:, :40, :48]
  drift = np.arange(frames)[:, None, None, None] * (seed % 5 + 1)
  V.write_video(str(path), np.clip(video + drift, 0, 255).astype(np.uint8))


def _main(config, workdir, data_dir, clip_dir, *extra):
  cmd = [sys.executable, "-m", "ps_jax.main", "--config", config, "--workdir", str(workdir),
         f"--config.data.dir={data_dir}", f"--config.model.init_from={clip_dir}",
         "--config.data.image_size=32", f"--config.data.max_len={MAX_LEN}",
         "--config.batch_size=2", "--config.eval_batch_size=2", "--config.num_epochs=2",
         "--config.eval_every_steps=2", "--config.checkpoint.every_steps=2",
         "--config.data.worker_count=0", "--config.data.eval_worker_count=0", *extra]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "metrics.json"), encoding="utf-8") as f:
    return proc.stdout, json.load(f)


def test_activitynet_prepare_train_test(tmp_path, clip_dir):
  splits, _ = A.activitynet_splits(str(ANET))
  test = [v.video_id for v in splits["test"][:3]]
  train_ids = [v.video_id for v in splits["train"]]
  held = set(A.holdout_split(train_ids, 1000, 0)[1])
  train = [v for v in train_ids if v not in held][:3] + [v for v in train_ids if v in held][:1]
  videos = tmp_path / "videos"
  videos.mkdir()
  for i, vid in enumerate(test + train):
    _write_clip(videos / f"{vid}.mp4", i)

  s = P.prepare("activitynet", out_dir=str(tmp_path / "data"), video_dir=str(videos),
                anno_dir=str(ANET), short_side=32, progress=False)
  assert s.written == {"train": 4, "test": 3}
  not_train = [v for v in train_ids if v not in train]
  moments = {v.video_id: v for vs in A.activitynet_moment_splits(str(ANET))[0].values()
             for v in vs}
  said = lambda ids: sum(len(moments[v].sentences) for v in ids)  # pylint: disable=unnecessary-lambda-assignment
  assert s.protocol_differences == [
      "activitynet/val1-paragraph train: 4 of 10007 videos present, 4 of 10007 queries; "
      "not prepared (10003): " + ", ".join(not_train[:5]) + ", ...",
      "activitynet/val1-paragraph test: 3 of 4916 videos present, 3 of 4916 queries; "
      "not prepared (4913): " + ", ".join(v.video_id for v in splits["test"][3:8]) + ", ...",
      f"activitynet/moments train: 4 of 10007 videos present, {said(train)} of 37414 "
      "sentences",
      f"activitynet/moments test: 3 of 4916 videos present, {said(test)} of 17500 "
      "sentences"]
  val = builders.load_split(str(tmp_path / "data"), "activitynet", "val")
  assert val.video_ids == train[3:]
  paragraph = dict((v.video_id, v.captions) for v in splits["test"])[test[0]]
  assert builders.load_split(str(tmp_path / "data"), "activitynet",
                             "test").captions[0] == paragraph

  out, record = _main("configs/activitynet_vitb32.py", tmp_path / "run", tmp_path / "data",
                      clip_dir)
  label = ("activitynet/val1-paragraph test: 3 of 4916 videos present, 3 of 4916 queries")
  assert label in out
  assert "activitynet/val1-paragraph val (hold-out of train): 1 videos, 1 queries" in out
  assert record["dataset_protocol"] == {
      "protocol": "activitynet/val1-paragraph", "split": "test", "videos": 3, "queries": 3,
      "expected_videos": 4916, "expected_queries": 4916, "label": label}
  assert record["num_videos"] == 3 and record["num_texts"] == 3
  assert record["selection"]["split"] == "val"
  lines = out[out.index("beside the published numbers:"):].splitlines()
  assert lines[1].split() == ["R@1", "R@5", "R@10", "R@50", "MdR", "MnR"]
  assert lines[2].split()[:2] == ["t2v", "ours"]
  assert [float(x) for x in lines[2].split()[2:]] == pytest.approx(
      [record["t2v"][k] for k in ("R@1", "R@5", "R@10", "R@50", "MdR", "MnR")], abs=0.05)
  assert lines[3].split() == ["t2v", "CLIP4Clip", "ViT-B/32", "40.5", "73.4", "-", "98.2",
                              "2.0", "7.5"]

  out, again = _main("configs/activitynet_vitb32.py", tmp_path / "run", tmp_path / "data",
                     clip_dir, "--mode", "eval")
  assert label in out and again["dataset_protocol"] == record["dataset_protocol"]
  assert again["t2v"] == record["t2v"]


def test_didemo_prepare_train_test(tmp_path, clip_dir):
  """Test files named as downloaded (`<video>` itself) or converted (`<video>.mp4`); the
  user's train_data.json beside the shipped val/test files."""
  anno = tmp_path / "anno"
  anno.mkdir()
  for name in ("val_data.json", "test_data.json"):
    os.symlink(DIDEMO / name, anno / name)
  splits = A.didemo_splits(str(DIDEMO))
  test = [v.video_id for v in splits["test"][:3]]
  val = [v.video_id for v in splits["val"][:1]]
  assert test[0].endswith(".m4v")
  train = [{"video": f"user_train_{i}.mp4", "description": d, "times": [[0, 1]],
            "num_segments": 6, "annotation_id": 90000 + i, "dl_link": ""}
           for i, d in enumerate(["a dog runs", "the dog stops", "a car turns"])]
  train[1]["video"] = train[0]["video"]  # two descriptions of one video
  (anno / "train_data.json").write_text(json.dumps(train))
  videos = tmp_path / "videos"
  videos.mkdir()
  names = [test[0], f"{test[1]}.mp4", f"{test[2]}.mp4", f"{val[0]}.mp4",
           "user_train_0.mp4", "user_train_2.mp4"]
  for i, name in enumerate(names):
    _write_clip(videos / (name if name.endswith(".mp4") else name + ".tmp.mp4"), i)
  os.rename(videos / f"{test[0]}.tmp.mp4", videos / test[0])  # the downloaded .m4v

  # Without the user's train_data.json: val and test only, and training says why.
  no_train = P.prepare("didemo", out_dir=str(tmp_path / "eval_only"), video_dir=str(videos),
                       anno_dir=str(DIDEMO), short_side=32, progress=False)
  assert no_train.written == {"val": 1, "test": 3}
  proc = subprocess.run(
      [sys.executable, "-m", "ps_jax.main", "--config", "configs/didemo_vitb32.py",
       "--workdir", str(tmp_path / "no_train"), f"--config.data.dir={tmp_path / 'eval_only'}",
       f"--config.model.init_from={clip_dir}"],
      cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert "Split 'train' not in" in proc.stderr and "train_data.json" in proc.stderr

  s = P.prepare("didemo", out_dir=str(tmp_path / "data"), video_dir=str(videos),
                anno_dir=str(anno), short_side=32, progress=False)
  assert s.written == {"train": 2, "val": 1, "test": 3}
  train_split = builders.load_split(str(tmp_path / "data"), "didemo", "train")
  assert train_split.captions == [("a dog runs the dog stops",), ("a car turns",)]
  assert [d[:60] for d in s.protocol_differences] == [
      "didemo/test-paragraph val: 1 of 1094 videos present, 1 of 1094 queries; not pre"[:60],
      "didemo/test-paragraph test: 3 of 1037 videos present, 3 of 1037 queries; not pre"[:60]]

  out, record = _main("configs/didemo_vitb32.py", tmp_path / "run", tmp_path / "data",
                      clip_dir)
  label = "didemo/test-paragraph test: 3 of 1037 videos present, 3 of 1037 queries"
  assert label in out and record["dataset_protocol"]["label"] == label
  assert "didemo/test-paragraph val: 1 of 1094 videos present, 1 of 1094 queries" in out
  assert record["selection"]["split"] == "val" and record["num_texts"] == 3
  assert "t2v CLIP4Clip ViT-B/32" in out
