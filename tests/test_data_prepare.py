"""The prepare step end to end: real annotation ids backed by small generated videos."""

import csv
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

from ps_jax.data import annotations as A
from ps_jax.data import builders
from ps_jax.data import decoding as D
from ps_jax.data import frame_store
from ps_jax.data import moving_shapes as M
from ps_jax.data import pipeline
from ps_jax.data import prepare as P
from ps_jax.data import video as V
from ps_jax.tokenizer import WordTokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MSRVTT, MSVD, LSMDC = SHARED / "msrvtt", SHARED / "msvd", SHARED / "lsmdc"


def _clip(path, level, n=10, codec="libx264"):
  """A small video whose frame i is grey (level + 4 * i)."""
  frames = np.empty((n, 32, 48, 3), np.uint8)
  frames[:] = (level + 4 * np.arange(n, dtype=np.uint8))[:, None, None, None]
  os.makedirs(os.path.dirname(path), exist_ok=True)
  V.write_video(str(path), frames, codec=codec)


def _word_tokenizer(captions):
  return WordTokenizer.from_texts(list(captions))


def test_msrvtt_real_ids_through_prepare_and_pipeline(tmp_path):
  anno = tmp_path / "anno"
  anno.mkdir()
  for name in ("MSRVTT_train.9k.csv", "MSRVTT_train.7k.csv", A.MSRVTT_TEST_1KA):
    os.symlink(MSRVTT / name, anno / name)
  with open(MSRVTT / A.MSRVTT_TEST_1KA, newline="") as f:
    test_rows = list(csv.DictReader(f))[:3]
  test_ids = [r["video_id"] for r in test_rows]
  train_ids = ["video0", "video1", "video29"]  # video29 is in the seeded 1000-video hold-out
  sentences = [{"video_id": v, "caption": f"train clip {v} caption {k}", "sen_id": 10 * i + k}
               for i, v in enumerate(train_ids) for k in range(3)]
  (anno / A.MSRVTT_DATA_JSON).write_text(json.dumps({"sentences": sentences, "videos": []}))
  videos = tmp_path / "videos"
  for i, v in enumerate(test_ids + train_ids):
    _clip(videos / f"{v}.mp4", 20 * i)

  out = tmp_path / "out"
  s = P.prepare("msrvtt", out_dir=str(out), video_dir=str(videos), anno_dir=str(anno),
                frames_per_video=6, short_side=24, progress=False)
  assert s.written == {"train": 3, "test": 3} and s.decoded == 6
  # Training videos without a sentence in MSRVTT_data.json, then test videos without a file.
  assert s.skipped == 9994 and s.skipped_by_reason == {"no_captions": 8997, "missing": 997}
  report = [json.loads(l) for l in open(s.report_path)]
  assert len(report) == 9994 and report[0]["video_id"] == "video2"
  assert {r["reason"] for r in report if r["split"] == "test"} == {"missing"}
  assert s.version_dir == str(out / "msrvtt" / "9k" / "1.0.0")

  splits = {n: builders.load_split(str(out), "msrvtt", n)
            for n in ("train", "val", "train_full", "test")}
  assert splits["train"].video_ids == ["video0", "video1"]
  assert splits["val"].video_ids == ["video29"]
  assert splits["train_full"].video_ids == train_ids
  assert splits["test"].video_ids == test_ids
  assert splits["test"].captions == [(r["sentence"],) for r in test_rows]
  assert splits["val"].captions[0][2] == "train clip video29 caption 2"
  source = splits["test"].open_source()
  record = source[1]
  assert record["video_id"] == test_ids[1].encode()
  assert "frames" not in record and len(record["jpeg_offsets"]) == 7  # JPEG by default
  assert splits["test"].encoding == "jpeg" and splits["test"].sample_on_source
  frames = frame_store.StoredVideo.from_record(record).all_frames()
  assert frames.shape == (6, 24, 36, 3) and frames.dtype == np.uint8
  np.testing.assert_array_equal(record["frame_indices"], [0, 2, 4, 5, 7, 9])
  assert record["num_source_frames"] == 10
  grey = frames.reshape(6, -1).mean(1)
  np.testing.assert_allclose(grey, 20 + 4 * record["frame_indices"], atol=2.5)

  tok = _word_tokenizer([c for cs in splits["train_full"].captions + splits["test"].captions
                         for c in cs])
  loader = pipeline.make_train_loader(str(out), "msrvtt/9k", "train", tokenizer=tok,
                                      global_batch_size=2, num_frames=4, num_prompts=2,
                                      image_size=16, max_len=8, seed=0, num_epochs=1,
                                      shard_index=0, shard_count=1)
  batches = list(loader)
  assert loader.num_pairs == 6 and loader.steps_per_epoch == 3 and len(batches) == 3
  for b in batches:  # two training videos: every batch holds both
    assert b["frames"].shape == (2, 4, 16, 16, 3)
    words = sorted(tok.decode(ids).split()[2] for ids in b["input_ids"])
    assert words == ["video0", "video1"]
  ev = pipeline.make_eval_data(str(out), "msrvtt/9k", "test", tokenizer=tok,
                               global_batch_size=2, num_frames=4, num_prompts=2,
                               image_size=16, max_len=8, shard_index=0, shard_count=1)
  assert ev.num_videos == 3 and ev.num_batches == 2 and ev.captions[0] == test_rows[0]["sentence"]
  np.testing.assert_array_equal(ev.text_to_video, [0, 1, 2])


def test_msvd_real_ids_all_captions(tmp_path):
  ids = {"train": "-4wsuPCjDBc_5_15", "val": "bQJQGoJF7_k_162_169",
         "test": "eyhzdC936uk_15_27"}
  videos = tmp_path / "YouTubeClips"
  for i, v in enumerate(ids.values()):
    _clip(videos / f"{v}.avi", 30 * i, codec="mpeg4")
  out = tmp_path / "out"
  s = P.prepare("msvd", out_dir=str(out), video_dir=str(videos), anno_dir=str(MSVD),
                frames_per_video=4, short_side=32, progress=False)
  assert s.written == {"train": 1, "val": 1, "test": 1}
  assert s.skipped_by_reason == {"missing": 1967}
  captions = A.read_msvd_captions(str(MSVD / A.MSVD_CAPTIONS))
  for split, v in ids.items():
    data = builders.load_split(str(out), "msvd", split)
    assert data.video_ids == [v] and data.captions == [tuple(captions[v])]
  assert set(builders.load_split(str(out), "msvd", "test").index["splits"]) == {
      "train", "val", "test"}
  tok = _word_tokenizer(captions[ids["test"]])
  ev = pipeline.make_eval_data(str(out), "msvd", "test", tokenizer=tok, global_batch_size=1,
                               num_frames=2, num_prompts=2, image_size=16, max_len=16,
                               shard_index=0, shard_count=1)
  assert len(ev.captions) == 37 and ev.input_ids.shape == (37, 16)
  assert (ev.text_to_video == 0).all()
  assert tok.decode(ev.input_ids[0]) == captions[ids["test"]][0]


def test_lsmdc_real_ids_nested_dirs(tmp_path):
  anno = tmp_path / "anno"
  anno.mkdir()
  os.symlink(LSMDC / A.LSMDC_FILES["test"], anno / A.LSMDC_FILES["test"])
  test_clips = A.read_lsmdc(str(LSMDC / A.LSMDC_FILES["test"]))[:2]
  train = ["0001_MOVIE_00.00.01.000-00.00.02.000", "0001_MOVIE_00.00.03.000-00.00.04.000",
           "0002_FILM_00.00.01.000-00.00.05.000"]
  (anno / A.LSMDC_FILES["train"]).write_text(
      "".join(f"{c}\t0\t1\t0\t1\tSOMEONE does thing {i}.\n" for i, c in enumerate(train))
      + f"{train[0]}\t0\t1\t0\t1\tSOMEONE does it again.\n")
  videos = tmp_path / "avi"
  for i, clip in enumerate([c.video_id for c in test_clips] + train):
    movie = clip.split("_00.")[0]
    _clip(videos / movie / f"{clip}.avi", 25 * i, codec="mpeg4")
  out = tmp_path / "out"
  s = P.prepare("lsmdc", out_dir=str(out), video_dir=str(videos), anno_dir=str(anno),
                frames_per_video=4, short_side=24, holdout_size=1, progress=False)
  assert s.written == {"train": 3, "test": 2} and s.skipped_by_reason == {"missing": 998}
  test = builders.load_split(str(out), "lsmdc", "test")
  assert test.video_ids == [c.video_id for c in test_clips]
  assert test.captions[0] == ("SOMEONE stands below, hands on her hips.",)
  full = builders.load_split(str(out), "lsmdc", "train_full")
  assert full.captions[0] == ("SOMEONE does it again.",)  # last caption listed wins
  val = builders.load_split(str(out), "lsmdc", "val")
  trn = builders.load_split(str(out), "lsmdc", "train")
  assert len(val.video_ids) == 1 and sorted(val.video_ids + trn.video_ids) == sorted(train)
  assert val.video_ids == A.holdout_split(train, 1, 0)[1]


def _shapes_mp4(tmp_path):
  cfg = dataclasses.replace(M.SIZES["tiny"], num_train=6, num_val=0, num_test=4)
  M.write_mp4_dataset(str(tmp_path / "ms"), cfg)
  return tmp_path / "ms"


def test_bad_videos_reported_and_skipped_with_workers(tmp_path):
  src = _shapes_mp4(tmp_path)
  vids = src / "videos"
  (vids / "train00000f.mp4").write_bytes(b"definitely not a video" * 10)  # corrupt
  os.remove(vids / "train00001r.mp4")  # missing
  (vids / "test00000r.mp4").write_bytes(b"")  # zero-length
  out = tmp_path / "out"
  s = P.prepare("moving_shapes", out_dir=str(out), video_dir=str(vids), anno_dir=str(src),
                num_workers=2, progress=False)
  assert s.written == {"train": 4, "test": 3} and s.decoded == 7
  assert s.skipped_by_reason == {"unreadable": 1, "missing": 1, "empty_file": 1}
  report = {r["video_id"]: r for r in map(json.loads, open(out / P.REPORT_FILE))}
  assert report["train00000f"]["reason"] == "unreadable"
  assert report["train00000f"]["path"].endswith("train00000f.mp4")
  assert report["train00001r"]["reason"] == "missing"
  assert report["test00000r"]["reason"] == "empty_file" and len(report) == 3
  written = builders.load_split(str(out), "moving_shapes", "train").video_ids
  assert written == ["train00000r", "train00001f", "train00002f", "train00002r"]
  assert "written 7 videos (train 4, test 3), skipped 3 (empty_file 1, missing 1, " \
         "unreadable 1)" in s.line()
  assert os.path.isfile(os.path.join(s.version_dir, M.VOCAB_FILE))
  assert not (out / P.CACHE_DIR).exists()  # removed after a successful write
  # Running again finds the finished dataset and does nothing.
  again = P.prepare("moving_shapes", out_dir=str(out), video_dir=str(vids), anno_dir=str(src),
                    progress=False)
  assert again.already_prepared and again.written == s.written and again.skipped == 3


class _Interrupt(BaseException):
  pass


def test_interrupted_prepare_resumes(tmp_path, monkeypatch):
  src = _shapes_mp4(tmp_path)
  out = tmp_path / "out"
  kwargs = dict(out_dir=str(out), video_dir=str(src / "videos"), anno_dir=str(src),
                progress=False)
  calls = []
  real = D.decode_to_cache

  def decode_then_stop(task):
    if len(calls) == 4:
      raise _Interrupt()  # like Ctrl-C in the middle of the decode phase
    calls.append(task["video_id"])
    return real(task)

  monkeypatch.setattr(D, "decode_to_cache", decode_then_stop)
  with pytest.raises(_Interrupt):
    P.prepare("moving_shapes", **kwargs)
  cache = out / P.CACHE_DIR / "moving_shapes-custom-kall-snative-rsrc-raw"
  assert len(list(cache.glob("*.npz"))) == 4 and not list(cache.glob("*.attempts"))
  assert not (out / "moving_shapes" / "custom" / "1.0.0").exists()

  # Second attempt dies while writing the TFDS files.
  monkeypatch.setattr(D, "decode_to_cache", real)
  builder_cls = builders.BUILDERS["moving_shapes"]
  real_generate = builder_cls._generate_examples  # pylint: disable=protected-access

  def generate_then_stop(self, split):
    for i, example in enumerate(real_generate(self, split)):
      if i == 2:
        raise _Interrupt()
      yield example

  monkeypatch.setattr(builder_cls, "_generate_examples", generate_then_stop)
  with pytest.raises(_Interrupt):
    P.prepare("moving_shapes", **kwargs)
  assert not (out / "moving_shapes" / "custom" / "1.0.0").exists()
  assert len(list(cache.glob("*.npz"))) == 10
  stale = out / "moving_shapes" / "custom" / "incomplete.ABC123_1.0.0"  # as after a SIGKILL
  stale.mkdir()

  monkeypatch.setattr(builder_cls, "_generate_examples", real_generate)
  s = P.prepare("moving_shapes", **kwargs)
  assert s.reused == 10 and s.decoded == 0 and s.written == {"train": 6, "test": 4}
  assert not stale.exists()
  record = builders.load_split(str(out), "moving_shapes", "test").open_source()[3]
  clip = list(M.iter_clips(dataclasses.replace(M.SIZES["tiny"], num_train=6, num_val=0,
                                               num_test=4), "test"))[3]
  assert record["video_id"].decode() == clip.video_id
  assert np.abs(record["frames"].astype(int) - clip.frames.astype(int)).mean() < 8


def test_crashing_decoder_is_isolated_and_skipped(tmp_path):
  tasks = [{"video_id": f"v{i}", "path": f"/nowhere/v{i}.mp4"} for i in range(5)]
  results = {}
  D.run_tasks(tasks, _die_on_v2, 2, lambda t, r: results.setdefault(t["video_id"], r))
  assert sorted(results) == ["v0", "v1", "v2", "v3", "v4"]
  assert results["v2"]["reason"] == "decoder_crashed"
  assert all(results[v]["status"] == "ok" for v in ("v0", "v1", "v3", "v4"))
  # Across runs: a video whose decode already killed the process twice is skipped.
  cache = tmp_path / "x.npz"
  open(str(cache) + ".attempts", "w").write(str(D.MAX_DECODE_ATTEMPTS))
  task = {"video_id": "x", "path": "/nowhere", "cache_path": str(cache),
          "frames_per_video": 4, "short_side": None, "threads": 1}
  r = D.decode_to_cache(task)
  assert r["status"] == "skipped" and r["reason"] == "decoder_crashed"


def _die_on_v2(task):
  if task["video_id"] == "v2":
    os._exit(1)  # what a segfault in the decoder looks like to the pool
  return {"status": "ok"}


def test_rendered_moving_shapes_via_cli(tmp_path, capsys):
  out = tmp_path / "out"
  assert P.main(["--dataset", "moving_shapes", "--shapes_size", "tiny", "--out_dir", str(out),
                 "--frames_per_video", "6", "--no_progress"]) == 0
  printed = capsys.readouterr().out
  line, check = printed.strip().splitlines()[-2:]
  assert line.startswith("prepare moving_shapes: written 28 videos (train 16, val 4, test 8)")
  assert check == "protocol moving_shapes/tiny: every split has the protocol's counts"
  # Nothing is downloaded, and the output does not say otherwise (TFDS's own wording).
  assert "Downloading and preparing" not in printed
  assert "downloaded and prepared" not in printed
  assert "from local files" in printed and "(nothing is downloaded)" in printed
  version_dir = out / "moving_shapes" / "tiny" / "1.0.0"
  assert M.vocab_path(str(out)) == str(version_dir / M.VOCAB_FILE)
  tok = WordTokenizer.load(M.vocab_path(str(out)))
  assert tok.words == M.vocabulary()
  data = builders.load_split(str(out), "moving_shapes", "val")
  clip = list(M.iter_clips(M.SIZES["tiny"], "val"))[1]
  record = data.open_source()[1]
  np.testing.assert_array_equal(record["frame_indices"], [0, 2, 3, 4, 6, 7])  # (i+.5)*8/6
  np.testing.assert_array_equal(record["frames"], clip.frames[[0, 2, 3, 4, 6, 7]])  # exact
  assert record["num_source_frames"] == 8
  assert data.captions[1] == clip.captions


def test_argument_errors_name_the_flag(tmp_path, capsys):
  with pytest.raises(SystemExit):
    P.main(["--dataset", "msvd", "--out_dir", str(tmp_path)])
  assert "--video_dir is required" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    P.main(["--dataset", "msvd", "--out_dir", str(tmp_path), "--video_dir", str(tmp_path),
            "--anno_dir", str(tmp_path / "nope")])
  assert "--anno_dir" in capsys.readouterr().err
  with pytest.raises(P.PrepareError, match="--frames_per_video"):
    P.prepare("moving_shapes", out_dir=str(tmp_path), frames_per_video=0)
  with pytest.raises(P.PrepareError, match="--split_protocol"):
    P.prepare("msvd", out_dir=str(tmp_path), video_dir=str(tmp_path), anno_dir=str(MSVD),
              split_protocol="7k")
  with pytest.raises(P.PrepareError, match="--holdout_size"):
    P.prepare("msvd", out_dir=str(tmp_path), video_dir=str(tmp_path), anno_dir=str(MSVD),
              holdout_size=5)
  with pytest.raises(P.PrepareError, match=r"--anno_dir.*captions_msvd.json"):
    P.prepare("msvd", out_dir=str(tmp_path), video_dir=str(tmp_path), anno_dir=str(tmp_path))
  with pytest.raises(P.PrepareError, match=r"No video of msvd could be prepared.*missing"):
    P.prepare("msvd", out_dir=str(tmp_path), video_dir=str(tmp_path), anno_dir=str(MSVD),
              progress=False)
  P.prepare("moving_shapes", out_dir=str(tmp_path / "o"), shapes_size="tiny", progress=False)
  with pytest.raises(P.PrepareError, match=r"--out_dir already holds.*moving_shapes/tiny"):
    P.prepare("moving_shapes", out_dir=str(tmp_path / "o"), shapes_size="tiny", seed=1,
              progress=False)
