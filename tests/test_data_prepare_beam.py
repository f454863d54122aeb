"""The prepare step on Apache Beam (DirectRunner) against the local path, record for record."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ps_jax.data import annotations as A
from ps_jax.data import beam_jobs
from ps_jax.data import builders
from ps_jax.data import prepare as P
from ps_jax.data import video as V

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MSRVTT = SHARED / "msrvtt"
SPLITS = ("train", "val", "train_full", "test")


def _clip(path, level, n=10):
  frames = np.empty((n, 32, 48, 3), np.uint8)
  frames[:] = (level + 4 * np.arange(n, dtype=np.uint8))[:, None, None, None]
  frames[:, :8, :8] = 255 - level  # a corner, so that JPEG sees some structure
  V.write_video(str(path), frames)


def _msrvtt_sources(tmp_path):
  """Three 1k-A test videos, four training videos (video29 is in the seeded hold-out),
  a corrupt training file and an empty test file; real annotation lists."""
  anno = tmp_path / "anno"
  anno.mkdir()
  for name in ("MSRVTT_train.9k.csv", "MSRVTT_train.7k.csv", A.MSRVTT_TEST_1KA):
    os.symlink(MSRVTT / name, anno / name)
  with open(MSRVTT / A.MSRVTT_TEST_1KA, newline="") as f:
    test_ids = [r["video_id"] for r in list(csv.DictReader(f))[:4]]
  train_ids = ["video0", "video1", "video29", "video3", "video4"]
  sentences = [{"video_id": v, "caption": f"clip {v} caption {k}", "sen_id": 10 * i + k}
               for i, v in enumerate(train_ids) for k in range(2)]
  (anno / A.MSRVTT_DATA_JSON).write_text(json.dumps({"sentences": sentences, "videos": []}))
  videos = tmp_path / "videos"
  videos.mkdir()
  for i, v in enumerate(test_ids[:3] + train_ids[:4]):
    _clip(videos / f"{v}.mp4", 20 * i)
  (videos / "video4.mp4").write_bytes(b"not a video at all" * 20)  # corrupt
  (videos / f"{test_ids[3]}.mp4").write_bytes(b"")  # empty
  return anno, videos, test_ids, train_ids


def _records(out, split):
  data = builders.load_split(str(out), "msrvtt", split)
  source = data.open_source()
  return data, [source[int(r)] for r in data.records]


@pytest.mark.parametrize("encoding", ["jpeg", "raw"])
def test_beam_prepare_equals_local_record_for_record(tmp_path, encoding):
  anno, videos, test_ids, train_ids = _msrvtt_sources(tmp_path)
  kwargs = dict(video_dir=str(videos), anno_dir=str(anno), max_frames=5, short_side=24,
                encoding=encoding, progress=False)
  local = P.prepare("msrvtt", out_dir=str(tmp_path / "local"), num_workers=0, **kwargs)
  beam = P.prepare("msrvtt", out_dir=str(tmp_path / "beam"), runner="beam",
                   beam_options="--runner=DirectRunner --direct_num_workers=1", **kwargs)

  assert local.written == beam.written == {"train": 4, "test": 3}
  assert beam.skipped_by_reason == local.skipped_by_reason
  assert beam.skipped_by_reason["unreadable"] == 1 and beam.skipped_by_reason["empty_file"] == 1
  assert (beam.decoded, beam.partial, beam.protocol_differences) == (
      local.decoded, local.partial, local.protocol_differences)
  # The skip report: the same lines in the same order (one per bad or missing video).
  local_report = (tmp_path / "local" / P.REPORT_FILE).read_text().splitlines()
  beam_report = (tmp_path / "beam" / P.REPORT_FILE).read_text().splitlines()
  assert beam_report == local_report and len(beam_report) == local.skipped
  bad = {r["video_id"]: r["reason"] for r in map(json.loads, beam_report)
         if r["reason"] in ("unreadable", "empty_file")}
  assert bad == {"video4": "unreadable", test_ids[3]: "empty_file"}

  # The index (splits, hold-out, captions, settings) and every record, in order.
  local_index = builders.read_index(local.version_dir)
  assert builders.read_index(beam.version_dir) == local_index
  assert builders.load_split(beam.version_dir.split("/msrvtt/")[0], "msrvtt",
                             "val").video_ids == ["video29"]
  for split in SPLITS:
    local_data, local_records = _records(tmp_path / "local", split)
    beam_data, beam_records = _records(tmp_path / "beam", split)
    assert beam_data.video_ids == local_data.video_ids
    assert len(beam_records) == len(local_records) > 0
    for a, b in zip(local_records, beam_records):
      assert sorted(a) == sorted(b)
      for key in a:
        np.testing.assert_array_equal(np.asarray(b[key]), np.asarray(a[key]), err_msg=key)
  # Annotation-list order (the 9k list has video3 before video29), as on the local path.
  assert [r["video_id"] for r in _records(tmp_path / "beam", "train_full")[1]] == [
      b"video0", b"video1", b"video3", b"video29"]
  assert not (tmp_path / "beam" / P.CACHE_DIR).exists()


def test_beam_option_errors_name_the_flag(tmp_path, capsys):
  anno, videos, _, _ = _msrvtt_sources(tmp_path)
  base = ["--dataset", "msrvtt", "--video_dir", str(videos), "--anno_dir", str(anno),
          "--out_dir", str(tmp_path / "out")]
  with pytest.raises(SystemExit):
    P.main(base + ["--runner", "beam", "--beam_options=--runnr=DirectRunner"])
  assert "--beam_options: unknown Beam pipeline option(s) ['--runnr']" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    P.main(base + ["--beam_options=--runner=DirectRunner"])
  assert "--beam_options is given but --runner is local" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()  # refused before anything was written


def test_local_prepare_never_imports_beam_and_beam_names_the_extra(tmp_path):
  # The local path works without apache-beam: run it with the package made unimportable.
  src = tmp_path / "ms"
  code = f"""
import sys
sys.modules["apache_beam"] = None  # import apache_beam now raises ImportError
from ps_jax.data import moving_shapes as M, prepare as P, beam_jobs
import dataclasses
cfg = dataclasses.replace(M.SIZES["tiny"], num_train=2, num_val=0, num_test=2)
M.write_mp4_dataset({str(src)!r}, cfg)
s = P.prepare("moving_shapes", out_dir={str(tmp_path / 'out')!r}, video_dir={str(src / 'videos')!r},
              anno_dir={str(src)!r}, progress=False)
print("written", sum(s.written.values()))
try:
  P.prepare("moving_shapes", out_dir={str(tmp_path / 'out2')!r}, runner="beam", progress=False)
except P.PrepareError as e:
  print("error:", e)
"""
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True).stdout
  assert "written 4" in out
  assert "error: --runner beam needs apache-beam, which is not installed" in out
  assert beam_jobs.INSTALL_HINT in out


def test_beam_writes_rendered_clips_like_the_local_path(tmp_path):
  # moving_shapes rendered in memory: no decode tasks, the renderer travels to the workers.
  kwargs = dict(shapes_size="tiny", progress=False)
  beam = P.prepare("moving_shapes", out_dir=str(tmp_path / "beam"), runner="beam", **kwargs)
  local = P.prepare("moving_shapes", out_dir=str(tmp_path / "local"), **kwargs)
  assert beam.written == local.written == {"train": 16, "val": 4, "test": 8}
  for split in beam.written:
    a = builders.load_split(str(tmp_path / "beam"), "moving_shapes", split)
    b = builders.load_split(str(tmp_path / "local"), "moving_shapes", split)
    assert a.video_ids == b.video_ids and a.captions == b.captions
    source_a, source_b = a.open_source(), b.open_source()
    for r in a.records:
      np.testing.assert_array_equal(source_a[int(r)]["frames"], source_b[int(r)]["frames"])


def test_beam_skips_a_video_that_already_killed_its_decoder(tmp_path):
  # What a runner's retries leave behind for a video whose decoder kills the worker: the
  # attempt counter beside the cache entry. The Beam path then reports it, once.
  from ps_jax.data import decoding as D  # pylint: disable=g-import-not-at-top
  from ps_jax.data import moving_shapes as M  # pylint: disable=g-import-not-at-top
  import dataclasses  # pylint: disable=g-import-not-at-top
  src = tmp_path / "ms"
  M.write_mp4_dataset(str(src), dataclasses.replace(M.SIZES["tiny"], num_train=4, num_val=0,
                                                    num_test=2))
  out = tmp_path / "out"
  storage = {"max_frames": None, "short_side": None, "fps": None, "encoding": "raw"}
  cache_dir = out / P.CACHE_DIR / D.cache_dir_name("moving_shapes", "custom", storage)
  cache_dir.mkdir(parents=True)
  marker = D.cache_path(str(cache_dir), "train00001f") + ".attempts"
  with open(marker, "w") as f:
    f.write(str(D.MAX_DECODE_ATTEMPTS))
  s = P.prepare("moving_shapes", out_dir=str(out), video_dir=str(src / "videos"),
                anno_dir=str(src), runner="beam", progress=False)
  assert s.written == {"train": 3, "test": 2}
  assert s.skipped_by_reason == {"decoder_crashed": 1}
  (entry,) = [json.loads(l) for l in open(out / P.REPORT_FILE)]
  assert entry["video_id"] == "train00001f" and entry["reason"] == "decoder_crashed"
