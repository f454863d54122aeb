"""Named protocols on the real annotation files (../shared/data): counts per split,
paragraph queries (a worked example), truncation with EOS kept, the mismatch report."""

import json
import re
import shutil

import numpy as np
import pytest
import transformers

from conftest import REPO, SHARED_DATA
from ps_jax import tokenizer as tokenizer_lib
from ps_jax.data import annotations as A
from ps_jax.data import preparation as P
from ps_jax.data import protocols
from ps_jax.data import video as V

ANET, DIDEMO = SHARED_DATA / "activitynet", SHARED_DATA / "didemo"


def _counts(videos):
  return protocols.SplitCounts(len(videos), A.count_captions(videos))


def test_activitynet_counts_follow_the_official_loader():
  splits, dropped = A.activitynet_splits(str(ANET))
  want = protocols.get("activitynet/val1-paragraph").splits
  assert _counts(splits["train"]) == want["train"] == protocols.SplitCounts(10007, 10007)
  assert _counts(splits["test"]) == want["test"] == protocols.SplitCounts(4916, 4916)
  # What the files hold, and what the official loader keeps of it.
  val_ids = json.loads((ANET / "val_ids.json").read_text())
  val_1 = json.loads((ANET / "val_1.json").read_text())
  train_ids = json.loads((ANET / "train_ids.json").read_text())
  assert (len(val_ids), len(val_1), len(train_ids)) == (4925, 4917, 10022)
  assert [v.video_id for v in splits["test"]] == [v for v in val_ids if v in val_1]
  assert {(d.split, d.list_file, len(d.video_ids)) for d in dropped} == {
      ("train", "train_ids.json", 15), ("test", "val_ids.json", 9)}
  assert set(val_1) - set(val_ids) == {"v_LURZ8QDfowU"}  # in bad_vids.txt
  bad = (ANET / "bad_vids.txt").read_text().split()
  listed = {v.video_id for s in splits.values() for v in s}
  assert len(bad) == 3 and not listed & set(bad)
  assert not {v.video_id for v in splits["train"]} & {v.video_id for v in splits["test"]}


def test_activitynet_paragraph_worked_example():
  """v_uqiMw7tQ1Cc in val_1.json: two sentences, the second with two leading spaces."""
  raw = json.loads((ANET / "val_1.json").read_text())["v_uqiMw7tQ1Cc"]["sentences"]
  assert raw == ["A weight lifting tutorial is given.",
                 "  The coach helps the guy in red with the proper body placement and "
                 "lifting technique."]
  splits, _ = A.activitynet_splits(str(ANET))
  (video,) = [v for v in splits["test"] if v.video_id == "v_uqiMw7tQ1Cc"]
  assert video.captions == ("A weight lifting tutorial is given. The coach helps the guy "
                            "in red with the proper body placement and lifting technique.",)


def test_didemo_counts_and_paragraphs():
  splits = A.didemo_splits(str(DIDEMO))
  assert set(splits) == {"val", "test"}  # train_data.json is not shipped
  want = protocols.get("didemo/test-paragraph").splits
  assert _counts(splits["val"]) == want["val"] == protocols.SplitCounts(1094, 1094)
  assert _counts(splits["test"]) == want["test"] == protocols.SplitCounts(1037, 1037)
  records = json.loads((DIDEMO / "test_data.json").read_text())
  assert len(records) == 4021  # descriptions, 1 to 6 per video
  first = records[0]["video"]
  mine = [r["description"] for r in records if r["video"] == first]
  assert len(mine) == 5
  assert splits["test"][0].video_id == first == "26292851@N04_4253489686_265c3c8051.m4v"
  assert splits["test"][0].captions == (
      "someone kicks the bug towards some rocks. a man in a red shirt stomps on a "
      "centipede. man in white shirt is seen close up of a millipede on the rocks first "
      "time foot swipes at wiggly thing",)


@pytest.mark.parametrize("name,reader", [
    ("msvd/multi-caption", lambda: A.msvd_splits(str(SHARED_DATA / "msvd"))),
    ("msrvtt/9k", lambda: {"test": A.read_msrvtt_test_1ka(
        str(SHARED_DATA / "msrvtt" / A.MSRVTT_TEST_1KA))}),
    ("lsmdc/1k", lambda: {"test": A.read_lsmdc(
        str(SHARED_DATA / "lsmdc" / A.LSMDC_FILES["test"]))}),
])
def test_sentence_protocols_match_the_real_files(name, reader):
  expected = protocols.get(name).splits
  for split, videos in reader().items():
    assert _counts(videos) == expected[split], (name, split)
  if name == "msrvtt/9k":
    for protocol, n in (("msrvtt/9k", 9000), ("msrvtt/7k", 7010)):
      ids = A.read_msrvtt_train_list(str(SHARED_DATA / "msrvtt" / A.MSRVTT_TRAIN_LISTS[
          protocol.split("/")[1]]))
      assert len(ids) == protocols.get(protocol).splits["train"].videos == n


def test_paragraphs_truncate_at_77_tokens_keeping_eos(clip_tokenizer_dir):
  """The longest test paragraph: BOS + its first 75 tokens + EOS, as the official code's
  Hugging Face tokenizer (truncation=True) gives; the official raw join (double
  spaces) tokenizes the same."""
  tok = tokenizer_lib.load_tokenizer(clip_tokenizer_dir)
  splits, _ = A.activitynet_splits(str(ANET))
  longest = max(splits["test"], key=lambda v: len(v.captions[0]))
  text = longest.captions[0]
  body = tok.encode(text)
  assert len(body) > 300
  ids, mask = tok([text], 77)
  assert ids.shape == (1, 77) and mask.sum() == 77
  assert ids[0, 0] == tok.bos_id and ids[0, -1] == tok.eos_id
  assert list(ids[0, 1:-1]) == body[:75]
  hf = transformers.CLIPTokenizer.from_pretrained(clip_tokenizer_dir)
  raw = json.loads((ANET / "val_1.json").read_text())[longest.video_id]["sentences"]
  official = hf(" ".join(raw), truncation=True, max_length=77)["input_ids"]
  assert official == list(ids[0])
  # Short queries are padded with EOS after their own EOS, masked out.
  ids, mask = tok(["a man dances."], 77)  # BOS a man dances . EOS
  assert mask.sum() == 6 and (ids[0, 5:] == tok.eos_id).all() and ids[0, 4] != tok.eos_id


def test_count_check_labels_and_differences():
  check = protocols.check("activitynet", "test", "test", 4913, 4913)
  assert check.protocol == "activitynet/val1-paragraph"
  assert check.label == ("activitynet/val1-paragraph test: 4913 of 4916 videos present, "
                         "4913 of 4916 queries")
  assert check.differences == [
      "activitynet/val1-paragraph test: 4913 videos, the protocol has 4916 (missing 3)",
      "activitynet/val1-paragraph test: 4913 queries, the protocol has 4916 (missing 3)"]
  full = protocols.check("msrvtt/9k", "test", "test", 1000, 1000)
  assert full.differences == [] and full.label == (
      "msrvtt/9k test: 1000 of 1000 videos present, 1000 of 1000 queries")
  held = protocols.check("activitynet", "val", "train", 1000, 1000, held_out=True)
  assert held.differences == [] and held.label == (
      "activitynet/val1-paragraph val (hold-out of train): 1000 videos, 1000 queries")
  extra = protocols.check("msvd", "test", "test", 670, 27800)
  assert extra.differences == ["msvd/multi-caption test: 27800 queries, the protocol has "
                               "27763 (extra 37)"]
  none = protocols.check("synthetic", "test", "test", 5, 7)
  assert none.protocol is None and none.label == "test: 5 videos, 7 queries"
  assert protocols.for_dataset("msrvtt") is protocols.get("msrvtt/9k")
  with pytest.raises(protocols.ProtocolError, match="activitynet/val1-paragraph"):
    protocols.get("activitynet/val2")


def test_an_edited_annotation_file_is_reported_as_such(tmp_path):
  """val_ids.json cut to 100 ids (99 annotated): the summary says the annotation files
  give fewer test videos than the protocol (not that videos are missing); the training
  split, whose files are intact, reports the videos that were not found."""
  anno = tmp_path / "anno"
  shutil.copytree(ANET, anno)
  val_ids = json.loads((ANET / "val_ids.json").read_text())
  (anno / "val_ids.json").chmod(0o644)
  (anno / "val_ids.json").write_text(json.dumps(val_ids[:100]))
  train_ids = json.loads((ANET / "train_ids.json").read_text())
  (tmp_path / "videos").mkdir()
  for vid in (val_ids[0], train_ids[0]):
    V.write_video(str(tmp_path / "videos" / f"{vid}.mp4"),
                  np.full((4, 16, 16, 3), 100, np.uint8))
  s = P.prepare("activitynet", out_dir=str(tmp_path / "out"),
                video_dir=str(tmp_path / "videos"), anno_dir=str(anno), progress=False)
  assert s.written == {"train": 1, "test": 1} and s.protocol == "activitynet/val1-paragraph"
  said = {v.video_id: len(v.sentences)
          for vs in A.activitynet_moment_splits(str(ANET))[0].values() for v in vs}
  assert s.protocol_differences == [
      "activitynet/val1-paragraph train: 1 of 10007 videos present, 1 of 10007 queries; "
      f"not prepared (10006): {', '.join(train_ids[1:6])}, ...",
      "activitynet/val1-paragraph test: 99 videos, the protocol has 4916 (missing 4817) "
      "in the annotation files (wrong or edited file?)",
      "activitynet/val1-paragraph test: 99 queries, the protocol has 4916 (missing 4817) "
      "in the annotation files (wrong or edited file?)",
      f"activitynet/moments train: 1 of 10007 videos present, {said[train_ids[0]]} of "
      "37414 sentences",
      f"activitynet/moments test: 1 of 4916 videos present, {said[val_ids[0]]} of 17500 "
      "sentences"]
  assert s.protocol_lines()[0].startswith("protocol activitynet/val1-paragraph differs: ")
  report = [json.loads(l) for l in open(s.report_path)]
  not_annotated = [r for r in report if r["status"] == "not_annotated"]
  # train_ids.json's 15 ids without sentences, and one of the first 100 of val_ids.json.
  assert len(not_annotated) == 16
  assert s.skipped_by_reason == {"missing": 10006 + 98}


def test_readme_dataset_table_is_the_protocols():
  """docs/reproducing.md's dataset table: every count it gives is the protocol's; a
  "hold-out" cell is a split the protocol does not pin (carved from train by prepare)."""
  page = (REPO / "docs" / "reproducing.md").read_text()
  start = page.index("## Datasets and their protocols")
  end = page.find("\n## ", start)
  section = page[start:end if end >= 0 else None]
  rows = [l for l in section.splitlines() if l.startswith("| ")][1:]
  seen = set()
  for row in rows:
    cells = [c.strip() for c in row.strip("|").split("|")]
    name = re.search(r"`([a-z_]+/[^`]+)`", cells[2]).group(1)
    protocol = protocols.get(name)
    seen.add(name)
    for cell, split in zip(cells[3:6], ("train", "val", "test")):
      counts = re.fullmatch(r"([\d,]+)(?: \([\d,]+\))? / ([\d,]+)", cell)
      if counts:
        got = [int(n.replace(",", "")) for n in counts.groups()]
        assert got == [protocol.splits[split].videos, protocol.splits[split].queries], (
            name, split, cell)
      elif cell.startswith("hold-out"):
        assert split not in protocol.splits, (name, split)
  assert seen == {"msrvtt/9k", "msvd/multi-caption", "lsmdc/1k",
                  "activitynet/val1-paragraph", "activitynet/moments",
                  "didemo/test-paragraph", "moving_shapes/demo"}
  assert len(rows) == 7
