"""An index of a folder kept in step with it (ps_jax.retrieval.folder, index_videos
--video_dir): killed builds continue to the uninterrupted index bit for bit, reruns add,
re-embed and drop exactly what changed, bad files are retried only once they change."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ps_jax import index_videos
from ps_jax.data import moving_shapes
from ps_jax.retrieval import build, folder, service as service_lib, store
from ps_jax.retrieval import progress as progress_lib
from ps_jax.retrieval.model import IndexModel

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# The tiny HF CLIP (4 frames of 32 px, P = 2) and the queries' tokenizer.
FLAGS = ["--num_prompts", "2", "--num_frames", "4", "--tokenizer", "moving_shapes",
         "--short_side", "0", "--batch_size", "2", "--num_workers", "2"]


def write_folder_model(out_dir: str) -> str:
  """A random tiny HF CLIP whose caption head fits (projection = text width)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from conftest import randomize_torch_module, tiny_hf_clip_config  # pylint: disable=g-import-not-at-top

  cfg = tiny_hf_clip_config("a")
  cfg["projection_dim"] = cfg["text_config"]["hidden_size"]
  torch.manual_seed(0)
  model = transformers.CLIPModel(transformers.CLIPConfig(**cfg)).eval()
  randomize_torch_module(model, 0)
  model.save_pretrained(out_dir, safe_serialization=True)
  return out_dir


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  return write_folder_model(str(tmp_path_factory.mktemp("model")))


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
  """moving_shapes/tiny as 28 .mp4 files."""
  out = str(tmp_path_factory.mktemp("mp4"))
  moving_shapes.write_mp4_dataset(out, moving_shapes.SIZES["tiny"])
  return os.path.join(out, "videos")


def _index(*argv):
  return index_videos.main([*argv, *FLAGS, "--no_progress"])


def _contents(index_dir):
  """Everything a built index holds, to compare two builds bit for bit."""
  index = store.load_index(index_dir)
  media = store.load_media(index_dir, len(index))
  thumbs = [media.thumbnail(r) for r in range(len(index))]
  return index.ids, np.asarray(index.embeddings), thumbs, media.sources, store.load_sync(
      index_dir)


def test_killed_builds_continue_to_the_uninterrupted_index(model, videos, tmp_path):
  lib = str(tmp_path / "lib")  # 56 clips: each kill lands early in the build
  for copy in "ab":
    os.makedirs(os.path.join(lib, copy))
    for name in os.listdir(videos):
      shutil.copy(os.path.join(videos, name), os.path.join(lib, copy, copy + name))
  whole = str(tmp_path / "whole")
  assert _index("--model", model, "--video_dir", lib, "--out", whole) == 0
  out = str(tmp_path / "killed")
  cmd = [sys.executable, "-m", "ps_jax.index_videos", "--model", model, "--video_dir", lib,
         "--out", out, "--commit_every", "2", *FLAGS]
  rng = np.random.default_rng(0)
  counts, kills = [], 0
  for attempt in range(4):  # killed three times, then left to finish
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    before = _count(out)
    deadline = time.time() + 120
    while (attempt < 3 and proc.poll() is None and _count(out) == before
           and time.time() < deadline):
      time.sleep(0.005)  # until this run has committed something of its own
    if attempt < 3 and proc.poll() is None:
      time.sleep(rng.uniform(0.0, 0.05))  # then anywhere: mid-batch, mid-commit
    if attempt < 3 and proc.poll() is None:
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      kills += 1
      counts.append(_count(out))
      store.load_index(out)  # every kill leaves a readable index
      continue
    assert proc.wait(timeout=300) == 0, f"attempt {attempt} exited {proc.returncode}"
    break
  assert kills == 3 and counts[-1] < 56, (kills, counts)
  assert counts == sorted(counts)  # no committed work was lost
  ids, emb, thumbs, sources, sync = _contents(out)
  ids_w, emb_w, thumbs_w, sources_w, sync_w = _contents(whole)
  assert ids == ids_w == sorted(c + os.path.splitext(n)[0] for c in "ab"
                                for n in os.listdir(videos))
  assert emb.dtype == emb_w.dtype and emb.tobytes() == emb_w.tobytes()  # bit for bit
  assert thumbs == thumbs_w and sources == sources_w and sync == sync_w
  # The same command once more finds nothing to do and leaves every file as it was.
  assert _index("--model", model, "--video_dir", lib, "--out", out) == 0
  assert _contents(out)[1].tobytes() == emb_w.tobytes()


def _count(index_dir):
  try:
    return len(store.load_index(index_dir, check_norms=False))
  except (store.IndexFormatError, OSError):  # none yet, or a rename in between
    return 0


def _report(index_dir):
  with open(os.path.join(index_dir, build.REPORT_FILE)) as f:
    return [json.loads(line) for line in f]


def test_reruns_add_re_embed_and_drop_exactly_what_changed(model, videos, tmp_path, capsys):
  lib = str(tmp_path / "lib")
  shutil.copytree(videos, lib)
  with open(os.path.join(lib, "broken.mp4"), "wb") as f:
    f.write(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
  out = str(tmp_path / "index")
  assert _index("--model", model, "--video_dir", lib, "--out", out) == 0
  first = store.load_index(out)
  assert len(first) == 28 and "broken" not in first.ids
  assert [(r["video_id"], r["reason"], r["size"]) for r in _report(out)] == [
      ("broken", "unreadable", 1036)]
  sync = store.load_sync(out)
  assert sync["skipped"]["broken"]["reason"] == "unreadable"
  st = os.stat(os.path.join(lib, "train00000f.mp4"))
  assert sync["rows"]["train00000f"] == {"path": os.path.join(lib, "train00000f.mp4"),
                                         "size": st.st_size, "mtime_ns": st.st_mtime_ns}
  # Nothing changed: nothing is embedded, the unreadable file is not tried again.
  capsys.readouterr()
  assert _index("--model", model, "--video_dir", lib, "--out", out) == 0
  assert "indexed 0 videos" in capsys.readouterr().out
  assert len(_report(out)) == 1 and store.load_index(out).ids == first.ids

  # One file removed, one rewritten with other frames, one new, the broken one fixed.
  os.remove(os.path.join(lib, "train00001f.mp4"))
  changed = os.path.join(lib, "train00002f.mp4")
  shutil.copy(os.path.join(lib, "test00003r.mp4"), changed)
  shutil.copy(os.path.join(lib, "val00000f.mp4"), os.path.join(lib, "new_clip.mp4"))
  shutil.copy(os.path.join(lib, "val00001f.mp4"), os.path.join(lib, "broken.mp4"))
  capsys.readouterr()
  assert _index("--model", model, "--video_dir", lib, "--out", out) == 0
  line = capsys.readouterr().out
  assert "indexed 3 videos" in line and "2 removed" in line and "skipped 0" in line, line
  now = store.load_index(out)
  kept = [i for i in first.ids if i not in ("train00001f", "train00002f")]
  assert now.ids == kept + ["broken", "new_clip", "train00002f"]  # new rows at the end
  row = {i: r for r, i in enumerate(now.ids)}
  old_row = {i: r for r, i in enumerate(first.ids)}
  for copy, original in (("train00002f", "test00003r"), ("new_clip", "val00000f"),
                         ("broken", "val00001f")):  # each embeds its new content
    np.testing.assert_array_equal(now.embeddings[row[copy]],
                                  first.embeddings[old_row[original]])
  for i in kept:  # the others are the rows they were
    np.testing.assert_array_equal(now.embeddings[row[i]], first.embeddings[old_row[i]])
  sources = store.load_media(out, len(now)).sources
  assert sources[row["new_clip"]] == os.path.join(lib, "new_clip.mp4")
  assert store.load_sync(out)["skipped"] == {}
  assert now.meta["removals"][-1]["count"] == 2


def test_another_model_another_folder_and_bad_flags_are_refused(model, videos, tmp_path,
                                                                 capsys):
  out = str(tmp_path / "index")
  assert _index("--model", model, "--video_dir", videos, "--out", out) == 0
  before = _contents(out)
  other = str(tmp_path / "other")
  shutil.copytree(model, other)
  # Same weights, another path: the same model, accepted.
  capsys.readouterr()
  assert _index("--model", other, "--video_dir", videos, "--out", out) == 0
  imodel = IndexModel.load(model, {"num_prompts": 3})  # other prompts: another model
  with pytest.raises(store.FingerprintMismatchError, match="not comparable"):
    folder.sync_video_dir(out, videos, imodel, short_side=None, tokenizer="moving_shapes",
                          num_frames=6)
  elsewhere = str(tmp_path / "elsewhere")
  shutil.copytree(videos, elsewhere)
  capsys.readouterr()
  assert _index("--model", model, "--video_dir", elsewhere, "--out", out) == 2
  err = capsys.readouterr().err
  assert f"holds an index of video_dir {videos}" in err and "--overwrite" in err
  assert _index("--model", model, "--video_dir", videos, "--out", out,
                "--commit_every", "0") == 2
  assert "--commit_every must be >= 1 video, got 0" in capsys.readouterr().err
  after = _contents(out)
  assert after[0] == before[0] and after[1].tobytes() == before[1].tobytes()
  with pytest.raises(SystemExit):
    index_videos.main(["--model", model, "--dataset_dir", str(tmp_path), "--dataset", "x",
                       "--out", out, "--watch"])
  assert "--watch is for --video_dir" in capsys.readouterr().err


def test_plan_and_progress():
  stamp = lambda path, size: {"path": path, "size": size, "mtime_ns": 5}  # noqa: E731
  index = store.Index(["a", "b", "c"], np.zeros((3, 2)), {})
  state = {"rows": {"a": stamp("/v/a.mp4", 1), "b": stamp("/v/b.mp4", 1)},
           "skipped": {"x": stamp("/v/x.mp4", 9), "y": stamp("/v/y.mp4", 9)}}
  now = {"a": stamp("/v/a.mp4", 1), "b": stamp("/v/b.mp4", 2), "c": stamp("/v/c.mp4", 1),
         "d": stamp("/v/d.mp4", 1), "x": stamp("/v/x.mp4", 9), "y": stamp("/v/y.mp4", 8)}
  plan = folder.plan_sync(index, state, now, sources=[None, None, "/v/c.mp4"])
  # a unchanged; b changed; c from an index without stamps, its file still there.
  assert plan.remove == ["b"] and sorted(plan.kept_rows) == ["a", "c"]
  assert plan.todo == ["b", "d", "y"] and list(plan.kept_skips) == ["x"]
  assert folder.plan_sync(index, state, {}, None).remove == ["a", "b", "c"]

  progress = progress_lib.Progress()
  assert progress.snapshot()["state"] == "starting"
  progress.start(10)
  progress._started -= 4.0  # pylint: disable=protected-access  # 4 s into the pass
  for status in (0, 0, 3, 0):
    progress.video(status)
  snap = progress.snapshot()
  assert (snap["done"], snap["indexed"], snap["skipped"]) == (4, 3, 1)
  assert snap["videos_per_s"] == pytest.approx(1.0, rel=0.05)
  assert snap["seconds_left"] == pytest.approx(6.0, rel=0.05)
  progress.update(state="done")
  assert progress.snapshot()["videos_per_s"] == snap["videos_per_s"]


def test_a_video_that_vanishes_mid_build_is_reported_and_the_build_goes_on(
    model, videos, tmp_path):
  lib = str(tmp_path / "lib")
  shutil.copytree(videos, lib)
  doomed = os.path.join(lib, "val00000r.mp4")

  def gone_before_decoding():  # at the first commit, a file far from being read goes
    if os.path.exists(doomed):
      os.remove(doomed)

  out = str(tmp_path / "index")
  summary = folder.sync_video_dir(
      out, lib, model_path=model, load_kwargs={"num_prompts": 2}, short_side=None,
      num_frames=4, tokenizer="moving_shapes", batch_size=2, commit_every=2,
      progress_bar=False, on_commit=gone_before_decoding)
  assert [(s.video_id, s.reason) for s in summary.skipped] == [("val00000r", "missing")]
  assert summary.count == 27 and len(store.load_index(out)) == 27
  assert store.load_sync(out)["skipped"]["val00000r"]["reason"] == "missing"
  # Gone for good: the next run forgets it.
  assert folder.sync_video_dir(out, lib, model_path=model, short_side=None,
                               progress_bar=False).added == 0
  assert store.load_sync(out)["skipped"] == {}


def test_the_service_swaps_in_each_commit(model, videos, tmp_path):
  imodel = IndexModel.load(model, {"num_prompts": 2})
  from ps_jax.embed import TextEncoder  # pylint: disable=g-import-not-at-top
  from ps_jax.retrieval.model import load_tokenizer  # pylint: disable=g-import-not-at-top
  encoder = TextEncoder(imodel.model, imodel.params, load_tokenizer("moving_shapes"), 16,
                        batch_size=4)
  service = service_lib.SearchService(None, store.media_lib.Media(0), {}, max_batch=4,
                                      limits=service_lib.Limits(max_queries=4),
                                      encoder=encoder)
  assert service.search(["a red circle"], 5) == [[]]  # nothing indexed yet
  out = str(tmp_path / "index")
  seen = []

  def reload():
    seen.append((service.reload(out), len(service.search(["a red circle"], 50)[0])))

  folder.sync_video_dir(out, videos, imodel, short_side=None, num_frames=4,
                        tokenizer="moving_shapes", max_len=16, batch_size=4, commit_every=8,
                        progress_bar=False, on_commit=reload)
  assert seen == [(8, 8), (16, 16), (24, 24), (28, 28)]
  hits = service.search(["a red circle"], 3)[0]
  assert [h.id for h in hits] == [i for i, _ in service.searcher.search(["a red circle"], 3)[0]]
  assert service.health()["videos"] == 28 and service.thumbnail(hits[0].id)
  service.close()
