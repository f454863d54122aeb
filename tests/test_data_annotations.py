"""Annotation parsers on the real MSR-VTT / MSVD / LSMDC files, and the hold-out helper."""

import json
import os
from pathlib import Path

import pytest

from ps_jax.data import annotations as A

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MSRVTT, MSVD, LSMDC = SHARED / "msrvtt", SHARED / "msvd", SHARED / "lsmdc"


def test_msrvtt_real_lists():
  test = A.read_msrvtt_test_1ka(str(MSRVTT / A.MSRVTT_TEST_1KA))
  assert len(test) == 1000 and A.count_captions(test) == 1000
  assert test[0] == A.VideoCaptions("video9770", ("a person is connecting something to system",))
  assert test[1].video_id == "video9771"
  assert test[1].captions == ("a little girl does gymnastics",)
  train9k = A.read_msrvtt_train_list(str(MSRVTT / "MSRVTT_train.9k.csv"))
  train7k = A.read_msrvtt_train_list(str(MSRVTT / "MSRVTT_train.7k.csv"))
  assert (len(train9k), len(train7k)) == (9000, 7010)
  assert train9k[:2] == ["video0", "video1"] and train7k[:2] == ["video0", "video1000"]
  assert set(train7k) <= set(train9k)
  assert not set(train9k) & {v.video_id for v in test}


def _msrvtt_anno_dir(tmp_path, sentences):
  """Real csv files (symlinked) plus a small generated MSRVTT_data.json."""
  for name in ("MSRVTT_train.9k.csv", "MSRVTT_train.7k.csv", A.MSRVTT_TEST_1KA):
    os.symlink(MSRVTT / name, tmp_path / name)
  (tmp_path / A.MSRVTT_DATA_JSON).write_text(json.dumps(
      {"sentences": [{"video_id": v, "caption": c, "sen_id": i}
                     for i, (v, c) in enumerate(sentences)],
       "videos": [{"video_id": v} for v in sorted({v for v, _ in sentences})]}))
  return str(tmp_path)


def test_msrvtt_splits(tmp_path):
  anno = _msrvtt_anno_dir(tmp_path, [("video0", "a cat"), ("video1", "a dog"),
                                     ("video0", " a black cat "), ("video9770", "ignored")])
  splits = A.msrvtt_splits(anno, "9k")
  assert len(splits["train"]) == 9000 and len(splits["test"]) == 1000
  by_id = A.by_id(splits["train"])
  assert by_id["video0"].captions == ("a cat", "a black cat")
  assert by_id["video1"].captions == ("a dog",)
  assert by_id["video2"].captions == ()  # no sentence: reported and skipped by prepare
  assert len(A.msrvtt_splits(anno, "7k")["train"]) == 7010
  with pytest.raises(A.AnnotationError, match="protocol"):
    A.msrvtt_splits(anno, "8k")


def test_msvd_real():
  captions = A.read_msvd_captions(str(MSVD / A.MSVD_CAPTIONS))
  assert len(captions) == 1970
  assert sum(len(c) for c in captions.values()) == 80827
  assert captions["-4wsuPCjDBc_5_15"][:2] == ["a squirrel is eating a peanut in it s shell",
                                             "a chipmunk is eating"]
  splits = A.msvd_splits(str(MSVD))
  assert {k: len(v) for k, v in splits.items()} == {"train": 1200, "val": 100, "test": 670}
  assert {k: A.count_captions(v) for k, v in splits.items()} == {
      "train": 48774, "val": 4290, "test": 27763}
  assert splits["train"][0].video_id == "-4wsuPCjDBc_5_15"
  assert splits["test"][0].video_id == "eyhzdC936uk_15_27"
  assert splits["val"][0].video_id == "bQJQGoJF7_k_162_169"


def test_lsmdc_real_and_last_caption_wins(tmp_path):
  test = A.read_lsmdc(str(LSMDC / A.LSMDC_FILES["test"]))
  assert len(test) == 1000 and A.count_captions(test) == 1000
  assert test[0].video_id == "3086_UGLY_TRUTH_00.23.23.000-00.23.28.886"
  assert test[0].captions == ("SOMEONE stands below, hands on her hips.",)
  assert test[1].video_id == "3071_THE_DESCENDANTS_01.41.52.043-01.41.54.754"
  path = tmp_path / "annos.csv"
  path.write_text("a\t1\t2\t1\t2\tfirst a\nb\t1\t2\t1\t2\tonly b\na\t1\t2\t1\t2\tlast a\n")
  assert A.read_lsmdc(str(path)) == [A.VideoCaptions("a", ("last a",)),
                                     A.VideoCaptions("b", ("only b",))]
  path.write_text("a\t1\t2\tcaption\n")
  with pytest.raises(A.AnnotationError, match=r"annos.csv.*line 1.*6 tab-separated"):
    A.read_lsmdc(str(path))


def test_errors_name_the_file(tmp_path):
  with pytest.raises(A.AnnotationError, match="nothere.csv"):
    A.read_msrvtt_train_list(str(tmp_path / "nothere.csv"))
  bad = tmp_path / "bad.csv"
  bad.write_text("vid\nvideo0\n")
  with pytest.raises(A.AnnotationError, match=r"bad.csv.*video_id"):
    A.read_msrvtt_train_list(str(bad))
  dup = tmp_path / "dup.txt"
  dup.write_text("x\ny\nx\n")
  with pytest.raises(A.AnnotationError, match=r"dup.txt.*\['x'\]"):
    A.read_id_list(str(dup))


def test_holdout_is_fixed_seeded_and_order_free():
  ids = A.read_msrvtt_train_list(str(MSRVTT / "MSRVTT_train.9k.csv"))
  kept, held = A.holdout_split(ids, 1000, seed=0)
  assert len(held) == 1000 and len(kept) == 8000 and not set(kept) & set(held)
  assert held[:3] == ["video29", "video46", "video53"]  # pinned: prepared data relies on it
  assert kept + held != ids and sorted(kept + held) == sorted(ids)
  assert A.holdout_split(list(reversed(ids)), 1000, seed=0)[1] == list(reversed(held))
  assert A.holdout_split(ids, 1000, seed=1)[1] != held
  assert set(A.holdout_split(ids, 10, seed=0)[1]) == set(A.holdout_split(ids, 10, seed=0)[1])
  assert A.holdout_split(ids, 0)[1] == []
  with pytest.raises(ValueError, match="num_holdout"):
    A.holdout_split(ids[:5], 6)
