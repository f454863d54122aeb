"""Annotation parsers for MSR-VTT, MSVD, LSMDC, ActivityNet Captions and DiDeMo, and the
seeded validation hold-out.

Every parser returns plain Python data in file order: lists of `VideoCaptions` (one per
video, all its captions) or mappings video_id -> captions. Split helpers follow the
official protocols:

- MSR-VTT: training videos from `MSRVTT_train.9k.csv` (9,000) or `MSRVTT_train.7k.csv`
  (7,010) with all their captions from `MSRVTT_data.json`; test = the 1k-A split of
  `MSRVTT_JSFUSION_test.csv` (1,000 video-caption pairs).
- MSVD: `captions_msvd.json` with `{train,val,test}_list.txt` (1,200 / 100 / 670
  videos), every caption kept.
- LSMDC: tab-separated files with 6 columns (clip id, 4 timestamps, caption); one
  caption per clip, the last one listed when a clip repeats (the official behaviour).
- ActivityNet Captions (paragraph retrieval, the official code's `anet_dataset.py`):
  one query per video, all its sentences joined into a paragraph; training videos are
  the ids of `train_ids.json` annotated in `train.json` (10,007 of its 10,022 ids), test
  videos the ids of `val_ids.json` annotated in `val_1.json` (4,916 of 4,925).
- DiDeMo (paragraph retrieval): one query per video, its descriptions joined in file
  order; `val_data.json` / `test_data.json` (and the user's `train_data.json`).

Layer: data (no ps_jax imports).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import Iterable, Mapping, Sequence

import numpy as np

MSRVTT_DATA_JSON = "MSRVTT_data.json"
MSRVTT_TRAIN_LISTS = {"9k": "MSRVTT_train.9k.csv", "7k": "MSRVTT_train.7k.csv"}
MSRVTT_TEST_1KA = "MSRVTT_JSFUSION_test.csv"
MSVD_CAPTIONS = "captions_msvd.json"
MSVD_LISTS = {"train": "train_list.txt", "val": "val_list.txt", "test": "test_list.txt"}
LSMDC_FILES = {"train": "LSMDC16_annos_training.csv",
               "test": "LSMDC16_challenge_1000_publictect.csv"}
ANET_FILES = {"train": ("train_ids.json", "train.json"),
              "test": ("val_ids.json", "val_1.json")}
DIDEMO_FILES = {"train": "train_data.json", "val": "val_data.json",
                "test": "test_data.json"}


class AnnotationError(ValueError):
  """An annotation file is missing or malformed; the message names the file."""


@dataclasses.dataclass(frozen=True)
class VideoCaptions:
  """One video of a split and all of its captions, in file order."""
  video_id: str
  captions: tuple[str, ...]


def _open_text(path: str):
  if not os.path.isfile(path):
    raise AnnotationError(f"Annotation file {path!r} does not exist")
  return open(path, encoding="utf-8", newline="")


def _require_columns(path: str, fieldnames: Sequence[str] | None, needed: Iterable[str]):
  missing = [c for c in needed if c not in (fieldnames or ())]
  if missing:
    raise AnnotationError(f"{path!r}: header {list(fieldnames or [])} lacks column(s) "
                          f"{missing}")


def read_id_list(path: str) -> list[str]:
  """One id per line (blank lines ignored), in file order; duplicates are an error."""
  with _open_text(path) as f:
    ids = [line.strip() for line in f if line.strip()]
  _check_unique(ids, path)
  return ids


def _check_unique(ids: Sequence[str], path: str):
  if len(set(ids)) != len(ids):
    seen, dups = set(), []
    for i in ids:
      if i in seen:
        dups.append(i)
      seen.add(i)
    raise AnnotationError(f"{path!r} lists video id(s) more than once: {dups[:5]}")


# ----------------------------------------------------------------------------- MSR-VTT


def read_msrvtt_train_list(path: str) -> list[str]:
  """Reads `MSRVTT_train.{9k,7k}.csv` (header `video_id`) -> video ids in file order."""
  with _open_text(path) as f:
    reader = csv.DictReader(f)
    _require_columns(path, reader.fieldnames, ["video_id"])
    ids = [row["video_id"].strip() for row in reader if row["video_id"].strip()]
  _check_unique(ids, path)
  return ids


def read_msrvtt_data_json(path: str) -> dict[str, list[str]]:
  """Reads `MSRVTT_data.json` -> {video_id: captions in file order}.

  The file is `{"sentences": [{"video_id", "caption", "sen_id"}, ...], "videos": [...]}`;
  only `sentences` is needed.
  """
  with _open_text(path) as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise AnnotationError(f"{path!r} is not valid JSON: {e}") from e
  if not isinstance(data, dict) or not isinstance(data.get("sentences"), list):
    raise AnnotationError(f"{path!r} has no 'sentences' list (expected the MSR-VTT "
                          "MSRVTT_data.json format)")
  captions: dict[str, list[str]] = {}
  for i, sentence in enumerate(data["sentences"]):
    try:
      video_id, caption = sentence["video_id"], sentence["caption"]
    except (KeyError, TypeError) as e:
      raise AnnotationError(f"{path!r}: sentences[{i}] lacks 'video_id' or 'caption'"
                            ) from e
    captions.setdefault(str(video_id), []).append(str(caption).strip())
  return captions


def read_msrvtt_test_1ka(path: str) -> list[VideoCaptions]:
  """Reads `MSRVTT_JSFUSION_test.csv` (key,vid_key,video_id,sentence) -> 1k-A test pairs.

  Returns one `VideoCaptions` per row, in file order (1,000 for the official file).
  """
  with _open_text(path) as f:
    reader = csv.DictReader(f)
    _require_columns(path, reader.fieldnames, ["video_id", "sentence"])
    rows = [VideoCaptions(r["video_id"].strip(), (r["sentence"].strip(),)) for r in reader]
  _check_unique([r.video_id for r in rows], path)
  return rows


def msrvtt_splits(anno_dir: str, protocol: str = "9k") -> dict[str, list[VideoCaptions]]:
  """Official MSR-VTT splits: {"train": 9k or 7k videos, "test": 1k-A}.

  Training videos without any caption in `MSRVTT_data.json` are kept with an empty
  caption tuple (the prepare step reports and skips them).

  Args:
    anno_dir: directory holding `MSRVTT_data.json`, the train list and the 1k-A csv.
    protocol: "9k" or "7k".
  """
  if protocol not in MSRVTT_TRAIN_LISTS:
    raise AnnotationError(f"Unknown MSR-VTT split protocol {protocol!r}: expected one of "
                          f"{sorted(MSRVTT_TRAIN_LISTS)}")
  train_ids = read_msrvtt_train_list(os.path.join(anno_dir, MSRVTT_TRAIN_LISTS[protocol]))
  captions = read_msrvtt_data_json(os.path.join(anno_dir, MSRVTT_DATA_JSON))
  train = [VideoCaptions(v, tuple(captions.get(v, ()))) for v in train_ids]
  test = read_msrvtt_test_1ka(os.path.join(anno_dir, MSRVTT_TEST_1KA))
  return {"train": train, "test": test}


# ----------------------------------------------------------------------------- MSVD


def read_msvd_captions(path: str) -> dict[str, list[str]]:
  """Reads `captions_msvd.json` ({video_id: [captions]}) keeping every caption."""
  with _open_text(path) as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise AnnotationError(f"{path!r} is not valid JSON: {e}") from e
  if not isinstance(data, dict):
    raise AnnotationError(f"{path!r} must map video ids to caption lists")
  out = {}
  for video_id, caps in data.items():
    if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
      raise AnnotationError(f"{path!r}: captions of {video_id!r} are not a list of strings")
    out[video_id] = [c.strip() for c in caps]
  return out


def msvd_splits(anno_dir: str) -> dict[str, list[VideoCaptions]]:
  """Official MSVD splits {"train", "val", "test"} with all captions of each video."""
  captions = read_msvd_captions(os.path.join(anno_dir, MSVD_CAPTIONS))
  splits = {}
  for split, name in MSVD_LISTS.items():
    path = os.path.join(anno_dir, name)
    ids = read_id_list(path)
    unknown = [v for v in ids if v not in captions]
    if unknown:
      raise AnnotationError(f"{path!r} lists {len(unknown)} video(s) absent from "
                            f"{MSVD_CAPTIONS}: {unknown[:5]}")
    splits[split] = [VideoCaptions(v, tuple(captions[v])) for v in ids]
  return splits


# ----------------------------------------------------------------------------- LSMDC


def read_lsmdc(path: str) -> list[VideoCaptions]:
  """Reads an LSMDC annotation file (tab-separated, 6 columns, caption last).

  A clip listed several times keeps the position of its first line and the caption of
  its last line, as the official loader (a dict assignment per line) does.
  """
  clips: dict[str, str] = {}
  with _open_text(path) as f:
    for line_no, line in enumerate(f, 1):
      line = line.rstrip("\r\n")
      if not line.strip():
        continue
      fields = line.split("\t")
      if len(fields) != 6:
        raise AnnotationError(f"{path!r} line {line_no}: expected 6 tab-separated "
                              f"columns, got {len(fields)}")
      clips[fields[0].strip()] = fields[5].strip()
  return [VideoCaptions(v, (c,)) for v, c in clips.items()]


def lsmdc_splits(anno_dir: str) -> dict[str, list[VideoCaptions]]:
  """LSMDC splits {"train": training clips, "test": the 1,000-clip public test}."""
  return {split: read_lsmdc(os.path.join(anno_dir, name))
          for split, name in LSMDC_FILES.items()}


# ----------------------------------------------------------------------------- paragraphs


def paragraph(sentences: Sequence[str]) -> str:
  """The sentences of a video as one query: each stripped, joined by one space.

  The official code joins the raw sentences with " " (ActivityNet's sentences start
  with a space, so it holds double spaces); CLIP's tokenizer collapses whitespace, so
  the tokens are the same.
  """
  return " ".join(s.strip() for s in sentences if s.strip())


def _load_json(path: str):
  with _open_text(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise AnnotationError(f"{path!r} is not valid JSON: {e}") from e


@dataclasses.dataclass(frozen=True)
class Dropped:
  """Ids a split's list names but its annotations lack (left out, as the official code
  does), per split."""
  split: str
  list_file: str
  video_ids: tuple[str, ...]


def read_activitynet_captions(path: str) -> dict[str, str]:
  """Reads an ActivityNet Captions file (`train.json`, `val_1.json`, ...) ->
  {video_id: paragraph} in file order.

  The file maps "v_<youtube id>" to {"duration", "timestamps", "sentences"}.
  """
  data = _load_json(path)
  if not isinstance(data, dict):
    raise AnnotationError(f"{path!r} must map video ids to {{'sentences': [...]}}")
  out = {}
  for video_id, entry in data.items():
    sentences = entry.get("sentences") if isinstance(entry, dict) else None
    if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
      raise AnnotationError(f"{path!r}: {video_id!r} has no 'sentences' list of strings")
    out[video_id] = paragraph(sentences)
  return out


def _read_json_id_list(path: str) -> list[str]:
  ids = _load_json(path)
  if not isinstance(ids, list) or not all(isinstance(v, str) for v in ids):
    raise AnnotationError(f"{path!r} must be a JSON list of video ids")
  _check_unique(ids, path)
  return ids


def activitynet_splits(anno_dir: str) -> tuple[dict[str, list[VideoCaptions]],
                                                list[Dropped]]:
  """ActivityNet Captions paragraph splits {"train", "test"} and the ids left out.

  As the official loader: a split is the ids of its list file (`train_ids.json`,
  `val_ids.json`, in that order) that have sentences in its captions file
  (`train.json`, `val_1.json`); each video's one query is its paragraph. `val_2.json`
  (other annotators of the same videos) is not used. The three videos of
  `bad_vids.txt` are in no id list.
  """
  splits, dropped = {}, []
  for split, (list_name, captions_name) in ANET_FILES.items():
    ids = _read_json_id_list(os.path.join(anno_dir, list_name))
    paragraphs = read_activitynet_captions(os.path.join(anno_dir, captions_name))
    splits[split] = [VideoCaptions(v, (paragraphs[v],)) for v in ids if paragraphs.get(v)]
    missing = tuple(v for v in ids if not paragraphs.get(v))
    if missing:
      dropped.append(Dropped(split, list_name, missing))
  return splits, dropped


@dataclasses.dataclass(frozen=True)
class VideoMoments:
  """One video's sentences and the [start, end] seconds each describes."""
  video_id: str
  duration: float
  sentences: tuple[str, ...]
  spans: tuple[tuple[float, float], ...]


def read_activitynet_moments(path: str) -> tuple[dict[str, VideoMoments], int]:
  """An ActivityNet Captions file as moments: ({video_id: VideoMoments}, spans dropped).

  Each sentence keeps its own timestamp pair, put in order (start <= end) and clipped to
  [0, duration] (a few end past the video: 29 of train.json's, 5 of val_1.json's); a
  sentence whose span is then empty (2 in train.json) is dropped and counted. Sentences
  are stripped of the leading space ActivityNet's have.
  """
  data = _load_json(path)
  if not isinstance(data, dict):
    raise AnnotationError(f"{path!r} must map video ids to {{'duration', 'timestamps', "
                          "'sentences'}}")
  out, dropped = {}, 0
  for video_id, entry in data.items():
    try:
      duration = float(entry["duration"])
      pairs = [(float(a), float(b)) for a, b in entry["timestamps"]]
      sentences = list(entry["sentences"])
    except (KeyError, TypeError, ValueError) as e:
      raise AnnotationError(f"{path!r}: {video_id!r} needs 'duration', 'timestamps' "
                            f"([start, end] pairs) and 'sentences' ({e})") from e
    if len(pairs) != len(sentences) or not duration > 0:
      raise AnnotationError(f"{path!r}: {video_id!r} has {len(pairs)} timestamps for "
                            f"{len(sentences)} sentences and duration {duration}")
    kept_s, kept_t = [], []
    for (a, b), text in zip(pairs, sentences):
      a, b = max(0.0, min(a, b)), min(duration, max(a, b))
      if b <= a or not str(text).strip():
        dropped += 1
        continue
      kept_s.append(str(text).strip())
      kept_t.append((a, b))
    out[video_id] = VideoMoments(video_id, duration, tuple(kept_s), tuple(kept_t))
  return out, dropped


def activitynet_moment_splits(anno_dir: str) -> tuple[dict[str, list[VideoMoments]],
                                                       dict[str, int]]:
  """The `activitynet/moments` splits {"train", "test"}: the videos of the paragraph
  splits (`activitynet_splits`: list file ids with sentences), each sentence a query
  with its span; and per split the spans dropped (`read_activitynet_moments`)."""
  splits, dropped = {}, {}
  for split, (list_name, captions_name) in ANET_FILES.items():
    ids = _read_json_id_list(os.path.join(anno_dir, list_name))
    videos, dropped[split] = read_activitynet_moments(os.path.join(anno_dir, captions_name))
    splits[split] = [videos[v] for v in ids if v in videos and videos[v].sentences]
  return splits, dropped


def read_didemo(path: str) -> list[VideoCaptions]:
  """Reads a DiDeMo file (`{train,val,test}_data.json`: a list of {"video",
  "description", ...}) -> one paragraph per video: its descriptions in file order,
  videos in order of first appearance."""
  data = _load_json(path)
  if not isinstance(data, list):
    raise AnnotationError(f"{path!r} must be a list of {{'video', 'description'}} records")
  descriptions: dict[str, list[str]] = {}
  for i, item in enumerate(data):
    try:
      video_id, text = str(item["video"]).strip(), str(item["description"])
    except (KeyError, TypeError) as e:
      raise AnnotationError(f"{path!r}: record {i} lacks 'video' or 'description'") from e
    if not video_id:
      raise AnnotationError(f"{path!r}: record {i} has an empty 'video'")
    descriptions.setdefault(video_id, []).append(text)
  return [VideoCaptions(v, (paragraph(d),) if paragraph(d) else ())
          for v, d in descriptions.items()]


def didemo_splits(anno_dir: str) -> dict[str, list[VideoCaptions]]:
  """DiDeMo paragraph splits {"val", "test"} and "train" when `train_data.json` is in
  anno_dir (it is not distributed with this package)."""
  splits = {}
  for split, name in DIDEMO_FILES.items():
    path = os.path.join(anno_dir, name)
    if split == "train" and not os.path.isfile(path):
      continue
    splits[split] = read_didemo(path)
  return splits


# ----------------------------------------------------------------------------- hold-out


def holdout_split(video_ids: Sequence[str], num_holdout: int,
                  seed: int = 0) -> tuple[list[str], list[str]]:
  """Fixed, seeded hold-out of training videos for model selection.

  The choice depends only on the SET of ids, `num_holdout` and `seed` (ids are sorted
  before a seeded permutation), so it does not change with file order or with which
  video files happen to exist.

  Returns:
    (kept, held_out): both in the order of `video_ids`.
  """
  if not 0 <= num_holdout <= len(video_ids):
    raise ValueError(f"num_holdout must be in [0, {len(video_ids)}] (the number of "
                     f"training videos), got {num_holdout}")
  ordered = sorted(set(video_ids))
  if len(ordered) != len(video_ids):
    raise ValueError("holdout_split needs unique video ids")
  perm = np.random.default_rng(np.random.SeedSequence([seed, 0x686f6c64])).permutation(
      len(ordered))
  chosen = {ordered[i] for i in perm[:num_holdout]}
  kept = [v for v in video_ids if v not in chosen]
  held = [v for v in video_ids if v in chosen]
  return kept, held


def count_captions(videos: Sequence[VideoCaptions]) -> int:
  """Total number of (video, caption) pairs."""
  return sum(len(v.captions) for v in videos)


def by_id(videos: Sequence[VideoCaptions]) -> Mapping[str, VideoCaptions]:
  """{video_id: VideoCaptions}."""
  return {v.video_id: v for v in videos}
