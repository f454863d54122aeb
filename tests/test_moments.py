"""Moments inside long videos (ps_jax.retrieval.windows, moments): windows of time as
index rows, each embedded from its own frames, results as distinct moments with start and
end in every interface, and the page playing the moment."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

from ps_jax import embed, index_videos, search, sharding
from ps_jax.data import sampling, transforms
from ps_jax.data import video as video_lib
from ps_jax.retrieval import moments, store, windows
from ps_jax.retrieval.model import IndexModel
from ps_jax.retrieval.query import TextSearcher
from test_folder_index import FLAGS, write_folder_model

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def test_spans_cover_the_video_with_the_last_window_at_its_end():
  assert windows.spans(30.0, 8.0, 4.0) == [(0, 8), (4, 12), (8, 16), (12, 20), (16, 24),
                                           (20, 28), (22, 30)]
  assert windows.spans(24.0, 8.0, 8.0) == [(0, 8), (8, 16), (16, 24)]
  assert windows.spans(5.5, 8.0, 4.0) == [(0.0, 5.5)]  # shorter than a window: one
  assert windows.spans(8.0, 8.0, 2.0) == [(0.0, 8.0)]
  assert windows.spans(9.0, 4.0, 3.0) == [(0, 4), (3, 7), (5, 9)]
  assert windows.check(8.0, None) == 4.0  # the stride defaults to half the window
  with pytest.raises(windows.WindowError, match=r"--stride \(9 s\) is larger than "
                     r"--window \(8 s\)"):
    windows.check(8.0, 9.0)
  with pytest.raises(windows.WindowError, match=r"--window must be in \[0.5, 3600\]"):
    windows.check(0.1, None)
  with pytest.raises(windows.WindowError, match="--stride must be > 0"):
    windows.check(8.0, 0.0)
  with pytest.raises(windows.WindowError, match="--window_fps"):
    windows.check(8.0, 4.0, fps=0)
  assert windows.row_id("clip", 1.25, 9.5) == "clip@1.25-9.5"


def test_scales_parse_and_lay_out_windows_at_every_scale():
  assert windows.parse_scales("4:2, 8:8") == [(4.0, 2.0), (8.0, 8.0)]
  assert windows.spans_multi(10.0, [(4.0, 2.0), (8.0, 8.0)]) == [
      (0, 4), (0, 8), (2, 6), (2, 10), (4, 8), (6, 10)]  # (2, 10): 8 s ends at the end
  assert windows.spans_multi(3.0, [(4.0, 2.0), (8.0, 4.0)]) == [(0.0, 3.0)]  # one, once
  with pytest.raises(windows.WindowError, match=r"config.moments.windows '4:8': --stride "
                     r"\(8 s\) is larger than --window \(4 s\)"):
    windows.parse_scales("2:1,4:8")
  with pytest.raises(windows.WindowError, match=r"config.moments.windows: each scale is "
                     r"W:S seconds .* got '16' in '16'"):
    windows.parse_scales("16")
  with pytest.raises(windows.WindowError, match=r"--scales '0.1:0.1': --window must be"):
    windows.parse_scales("0.1:0.1", "--scales")


def test_distinct_moments_drop_overlapping_windows_of_one_video():
  w = [("a", 0.0, 8.0), ("a", 4.0, 12.0), ("a", 8.0, 16.0), ("b", 0.0, 8.0), None]
  hits = [(1, 0.9), (0, 0.8), (3, 0.7), (2, 0.6), (4, 0.5)]
  # a@4-12 kept; a@0-8 overlaps it; b@0-8 another video; a@8-16 overlaps a@4-12.
  assert moments.distinct(hits, w, 10) == [(1, 0.9), (3, 0.7), (4, 0.5)]
  assert moments.distinct(hits, w, 2) == [(1, 0.9), (3, 0.7)]
  assert moments.distinct([(0, 0.9), (2, 0.8)], w, 5) == [(0, 0.9), (2, 0.8)]  # touching
  assert moments.distinct(hits, None, 3) == hits[:3]  # whole videos: the rows
  assert moments.fetch_k(10, 1000, True) == 40 and moments.fetch_k(10, 25, True) == 25
  assert moments.fetch_k(10, 1000, False) == 10


def _events(seed=0):
  """A 30-s, 10 fps video of three 10-s events (noise, a red square moving right, a
  green one moving left) with keyframes every 2 s."""
  rng = np.random.default_rng(seed)
  frames = rng.integers(0, 70, (300, 64, 96, 3), dtype=np.uint8)
  for t in range(100, 300):
    x = (t - 100) % 70 if t < 200 else 70 - (t - 200) % 70
    frames[t, 20:40, x:x + 20] = (220, 40, 40) if t < 200 else (40, 220, 40)
  return frames


def test_window_clips_are_their_own_frames_decoded_once(tmp_path):
  path = str(tmp_path / "long.mp4")
  video_lib.write_video(path, _events(), fps=10, codec_options={"g": "20"})
  probe = video_lib.probe(path)
  assert probe.count == 300 and probe.duration == pytest.approx(30.0)
  spans = windows.spans(probe.duration, 8.0, 4.0)
  clips, warnings, decoded = windows.decode_windows(
      path, spans, num_frames=4, num_prompts=2, image_size=32, short_side=48)
  assert warnings == [] and len(clips) == len(spans) == 7
  assert decoded < 300  # only the frames the windows sample, seeking to them
  # Each clip is evaluation's sampling of the window's frames of the 3 fps video.
  every = video_lib.decode_video(path, num_frames=None, short_side=48, fps=3.0).frames
  assert len(every) == 91  # slots 0 .. round(3 x 29.9)
  for (start, end), clip in zip(spans, clips):
    a, b = int(round(start * 3)), int(round(end * 3))
    idx = a + sampling.sample_frame_indices(b - a, 4, 2, "uniform")
    np.testing.assert_array_equal(clip, transforms.resize_center_crop(every[idx], 32))


@pytest.fixture(scope="module")
def library(tmp_path_factory):
  """A folder of two long event videos (one the time reversal of the other) and a
  short clip, its windowed index (8-s windows every 4 s) and the model."""
  root = tmp_path_factory.mktemp("moments")
  model = write_folder_model(str(root / "model"))
  lib = root / "videos"
  lib.mkdir()
  frames = _events()
  video_lib.write_video(str(lib / "events.mp4"), frames, fps=10, codec_options={"g": "20"})
  video_lib.write_video(str(lib / "reversed.mp4"), frames[::-1].copy(), fps=10,
                        codec_options={"g": "20"})
  video_lib.write_video(str(lib / "short.mp4"), frames[120:160], fps=10)
  out = str(root / "index")
  assert index_videos.main(["--model", model, "--video_dir", str(lib), "--out", out,
                            "--window", "8", "--stride", "4", *FLAGS, "--no_progress"]) == 0
  return model, str(lib), out


def test_a_windowed_index_has_a_row_per_window_embedded_from_its_frames(library, capsys):
  model, lib, out = library
  index = store.load_index(out)
  media = store.load_media(out, len(index))
  spans = windows.spans(30.0, 8.0, 4.0)
  expected = ([f"events@{windows.row_id('', s, e)[1:]}" for s, e in spans]
              + [f"reversed@{windows.row_id('', s, e)[1:]}" for s, e in spans]
              + ["short@0-4"])
  assert index.ids == expected
  assert media.window(0) == ("events", 0.0, 8.0) and media.window(14) == ("short", 0.0, 4.0)
  assert media.num_thumbnails == 15 and media.source(14) == os.path.join(lib, "short.mp4")
  assert index.meta["metadata"]["data"]["window"] == 8.0
  # Row events@12-20 is encode_video of that window's clip, computed here independently.
  imodel = IndexModel.load(model, {"num_prompts": 2})
  clips, _, _ = windows.decode_windows(os.path.join(lib, "events.mp4"), [(12.0, 20.0)],
                                       num_frames=4, num_prompts=2, image_size=32,
                                       short_side=None)
  mesh = sharding.make_mesh()
  encode_video = embed.make_encoders(imodel.model, mesh)[0]
  emb = np.asarray(encode_video(imodel.params, np.stack([clips[0]] * 8)))[0]
  emb = emb / np.linalg.norm(emb)
  row = index.ids.index("events@12-20")
  np.testing.assert_allclose(index.embeddings[row].astype(np.float32), emb, atol=2e-3)

  # TextSearcher and the CLI: distinct moments with their times.
  searcher = TextSearcher.from_index(out)
  found = searcher.search_moments(["a red square moves right"], 6)[0]
  assert len(found) == 6 and all(set(m) == {"id", "video", "start", "end", "score"}
                                 for m in found)
  for i, a in enumerate(found):
    assert a["id"] == windows.row_id(a["video"], a["start"], a["end"])
    for b in found[:i]:
      assert a["video"] != b["video"] or a["end"] <= b["start"] or b["end"] <= a["start"]
  scores = [m["score"] for m in found]
  assert scores == sorted(scores, reverse=True)
  capsys.readouterr()
  assert search.main(["--index", out, "--query", "a red square moves right",
                      "--top_k", "6"]) == 0
  lines = capsys.readouterr().out.splitlines()[1:]
  assert [l.split("\t")[2:] for l in lines] == [
      [m["id"], m["video"], f"{m['start']:.3f}", f"{m['end']:.3f}"] for m in found]

  # Rerun: nothing to do. A changed video: its windows go and come back, the others stay.
  capsys.readouterr()
  assert index_videos.main(["--model", model, "--video_dir", lib, "--out", out, "--window",
                            "8", "--stride", "4", *FLAGS, "--no_progress"]) == 0
  assert "indexed 0 videos" in capsys.readouterr().out
  assert index_videos.main(["--model", model, "--video_dir", lib, "--out", out, "--window",
                            "6", *FLAGS, "--no_progress"]) == 2
  assert "with window=8.0, not window=6.0 (--window)" in capsys.readouterr().err
  assert index_videos.main(["--model", model, "--video_dir", lib, "--out", out, "--window",
                            "8", "--stride", "9", *FLAGS, "--no_progress"]) == 2
  assert "--stride (9 s) is larger than --window (8 s)" in capsys.readouterr().err
  assert store.load_index(out).ids == expected  # nothing lost


def test_the_page_plays_the_moment(library, tmp_path):
  from test_serve import BROWSER_ARGS, CHROMIUM, _browser_or_skip, _free_port  # pylint: disable=g-import-not-at-top
  sync_playwright = _browser_or_skip()
  _, _, out = library
  port = _free_port()
  proc = subprocess.Popen([sys.executable, "-m", "ps_jax.serve", "--index", out, "--port",
                           str(port)], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  base = f"http://127.0.0.1:{port}"
  try:
    deadline = time.time() + 120
    while True:
      try:
        urllib.request.urlopen(base + "/healthz", timeout=2).close()
        break
      except OSError:
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.2)
    query = "a green square moves left"
    with urllib.request.urlopen(f"{base}/api/search?q={urllib.parse.quote(query)}&k=8") as r:
      results = json.load(r)["results"]
    # 15 windows hold 7 distinct moments (3 or 4 that do not overlap per long video).
    assert len(results) == 7 and all(
        set(x) >= {"id", "video_id", "start", "end", "video", "thumbnail"} for x in results)
    for i, a in enumerate(results):
      assert all(a["video_id"] != b["video_id"] or a["end"] <= b["start"]
                 or b["end"] <= a["start"] for b in results[:i])
    first = next(x for x in results if x["start"] > 0)  # one that does not start at 0
    with sync_playwright() as p:
      browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
      page = browser.new_page(viewport={"width": 1280, "height": 900})
      page.goto(f"{base}/?q={urllib.parse.quote(query)}&k=8")
      page.wait_for_selector("body[data-state=done]", timeout=30000)
      times = page.eval_on_selector_all(".result .when", "els => els.map(e => e.textContent)")
      assert len(times) == 7 and all("\u2013" in t for t in times)
      page.click(f".result[data-id='{first['id']}']")
      page.wait_for_function(
          f"document.getElementById('video').currentTime >= {first['start']} && "
          "!document.getElementById('video').paused", timeout=20000)
      at = page.eval_on_selector("#video", "v => v.currentTime")
      assert first["start"] <= at < first["end"], (at, first)
      assert page.inner_text("#player-title").startswith(first["video_id"])
      browser.close()
  finally:
    proc.terminate()
    proc.wait(timeout=30)
