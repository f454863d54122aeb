"""Named evaluation protocols: which annotation files, what one query is, and how many
videos and queries each split holds.

Most disagreements between text-video retrieval numbers are disagreements of protocol
(which split, how many videos were present, whether a query is a sentence or a
paragraph). Each prepared dataset therefore maps to a named `Protocol` that pins the
counts its annotation files give; the prepare step reports every split whose count
differs (a wrong or edited annotation file, videos that could not be found or decoded)
and every evaluation labels its table and metrics.json with the protocol's name and the
counts it actually ran on ("995 of 1000 test videos present").

  msrvtt/9k, msrvtt/7k          training list 9,000 / 7,010 videos; test 1k-A
                                (1,000 videos, one caption each)
  msvd/multi-caption            1,200 / 100 / 670 videos, every caption a query
  lsmdc/1k                      the 1,000-clip public test, one caption each; ps_jax
                                keeps all 1,000 clips, where the official loader skips
                                1012_Unbreakable_00.05.16.065-00.05.21.941 (999)
  activitynet/val1-paragraph    paragraphs; test = val_ids.json with val_1.json
  activitynet/moments           moments: each sentence a query, its ground truth the
                                [start, end] it describes in its video (same videos)
  didemo/test-paragraph         paragraphs; val / test = {val,test}_data.json
  moving_shapes/<size>          the synthetic benchmark

Counts are of the annotation files shipped with the official code and the dataset
authors (tests/test_protocols.py checks them against the real files). `None` = not
pinned (training files that are not distributed with this package).

Layer: data (no ps_jax imports).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional


@dataclasses.dataclass(frozen=True)
class SplitCounts:
  """Expected videos and queries of one split (None: not pinned)."""
  videos: Optional[int]
  queries: Optional[int]


@dataclasses.dataclass(frozen=True)
class Protocol:
  """A named protocol.

  Attributes:
    name: e.g. "activitynet/val1-paragraph".
    dataset: the prepared dataset it applies to (config.data.name).
    query: what one query is.
    files: the annotation files it reads.
    splits: the prepared (physical) splits and their expected counts. Validation
      hold-outs carved from "train" are not listed: their size is a prepare setting.
    notes: where the counts differ from the ones quoted in papers, and why.
    kind: "videos" (a query retrieves videos) or "moments" (a query retrieves a span of
      time of a video: `ps_jax.moment_eval`).
  """
  name: str
  dataset: str
  query: str
  files: tuple[str, ...]
  splits: Mapping[str, SplitCounts]
  notes: str = ""
  kind: str = "videos"


_MSRVTT_TEST = SplitCounts(1000, 1000)
_ANET_FILES = ("train_ids.json", "train.json", "val_ids.json", "val_1.json")
PROTOCOLS = {p.name: p for p in (
    Protocol("msrvtt/9k", "msrvtt/9k", "one caption (training: all 20 of a video)",
             ("MSRVTT_train.9k.csv", "MSRVTT_data.json", "MSRVTT_JSFUSION_test.csv"),
             {"train": SplitCounts(9000, None), "test": _MSRVTT_TEST},
             "test is the 1k-A split (1,000 video-caption pairs)"),
    Protocol("msrvtt/7k", "msrvtt/7k", "one caption (training: all 20 of a video)",
             ("MSRVTT_train.7k.csv", "MSRVTT_data.json", "MSRVTT_JSFUSION_test.csv"),
             {"train": SplitCounts(7010, None), "test": _MSRVTT_TEST},
             "test is the 1k-A split (1,000 video-caption pairs)"),
    Protocol("msvd/multi-caption", "msvd", "one caption; every caption of a video is a query",
             ("captions_msvd.json", "train_list.txt", "val_list.txt", "test_list.txt"),
             {"train": SplitCounts(1200, 48774), "val": SplitCounts(100, 4290),
              "test": SplitCounts(670, 27763)}),
    Protocol("lsmdc/1k", "lsmdc", "one caption",
             ("LSMDC16_annos_training.csv", "LSMDC16_challenge_1000_publictect.csv"),
             {"train": SplitCounts(None, None), "test": SplitCounts(1000, 1000)},
             "ps_jax tests on all 1,000 clips; the official loader "
             "(datasets/lsmdc_dataset.py) skips 1012_Unbreakable_00.05.16.065-00.05.21.941 "
             "and tests on 999"),
    Protocol("activitynet/val1-paragraph", "activitynet",
             "a paragraph: all sentences of the video joined, truncated to the text "
             "context (77 CLIP tokens, EOS kept)",
             _ANET_FILES,
             {"train": SplitCounts(10007, 10007), "test": SplitCounts(4916, 4916)},
             "val_1.json annotates 4,917 videos and val_ids.json lists 4,925; the "
             "official code (like CLIP4Clip) evaluates the 4,916 ids of val_ids.json that "
             "val_1.json annotates. train_ids.json lists 10,022 ids, 10,007 of them "
             "annotated in train.json. Papers quote 4,917 (val_1.json) and 10,009."),
    Protocol("activitynet/moments", "activitynet",
             "one sentence; its ground truth the [start, end] seconds of val_1.json "
             "(train.json) it describes, in its own video (within video) or among all "
             "the split's videos (corpus)",
             _ANET_FILES,
             {"train": SplitCounts(10007, 37414), "test": SplitCounts(4916, 17500)},
             "the videos of activitynet/val1-paragraph, every sentence with its own "
             "timestamps (ordered, clipped to the video's duration; train.json's 2 empty "
             "spans dropped). Papers quote 37,421 training and 17,505 val_1 moments: every "
             "sentence of train.json (10,009 videos) and val_1.json (4,917), the id "
             "lists not applied.", kind="moments"),
    Protocol("didemo/test-paragraph", "didemo",
             "a paragraph: all descriptions of the video joined in file order, truncated "
             "to the text context (77 CLIP tokens, EOS kept)",
             ("train_data.json", "val_data.json", "test_data.json"),
             {"train": SplitCounts(None, None), "val": SplitCounts(1094, 1094),
              "test": SplitCounts(1037, 1037)},
             "test_data.json names 1,037 videos and val_data.json 1,094; papers that "
             "evaluate the videos still downloadable quote 1,004 test videos (CLIP4Clip) "
             "or 1,065 val videos: expect '1004 of 1037 test videos present'."),
    Protocol("moving_shapes/demo", "moving_shapes/demo", "one caption; 5 per clip",
             (), {"train": SplitCounts(384, 1920), "val": SplitCounts(96, 480),
                  "test": SplitCounts(160, 800)}),
    Protocol("moving_shapes/tiny", "moving_shapes/tiny", "one caption; 3 per clip",
             (), {"train": SplitCounts(16, 48), "val": SplitCounts(4, 12),
                  "test": SplitCounts(8, 24)}),
)}


class ProtocolError(ValueError):
  """An unknown protocol name; the message lists the known ones."""


def get(name: str) -> Protocol:
  """The protocol called `name`."""
  if name not in PROTOCOLS:
    raise ProtocolError(f"Unknown protocol {name!r}: expected one of {sorted(PROTOCOLS)}")
  return PROTOCOLS[name]


def dataset_name(dataset: Optional[str], config: Optional[str]) -> str:
  """A prepared dataset's name from its builder and config ("msrvtt", "9k" -> "msrvtt/9k")."""
  return "/".join(n for n in (dataset, config) if n)


def for_dataset(dataset_name: str) -> Optional[Protocol]:
  """The protocol of a prepared dataset name (config.data.name), None for datasets
  without one (custom, synthetic). "msrvtt" alone means its default, "msrvtt/9k"."""
  name = {"msrvtt": "msrvtt/9k"}.get(dataset_name, dataset_name)
  for protocol in PROTOCOLS.values():
    if protocol.dataset == name and protocol.kind == "videos":
      return protocol
  return None


def moment_protocols(dataset_name: str) -> list[Protocol]:
  """The moment protocols of a prepared dataset name (activitynet: activitynet/moments)."""
  return [p for p in PROTOCOLS.values() if p.dataset == dataset_name and p.kind == "moments"]


@dataclasses.dataclass(frozen=True)
class CountCheck:
  """A split's actual counts against its protocol.

  Attributes:
    protocol: the protocol's name (None: the dataset has none).
    split: the split evaluated or prepared; physical: the prepared split it reads.
    videos, queries: the actual counts.
    expected: what the protocol pins for this split (None when it pins nothing: no
      protocol, or a hold-out carved from `physical`).
    held_out: `split` is a hold-out carved from `physical`.
  """
  protocol: Optional[str]
  split: str
  physical: str
  videos: int
  queries: int
  expected: Optional[SplitCounts]
  held_out: bool = False

  @property
  def differences(self) -> list[str]:
    """One line per count that differs from the protocol (empty when all agree)."""
    if self.expected is None:
      return []
    out = []
    for what, got, want in (("videos", self.videos, self.expected.videos),
                            ("queries", self.queries, self.expected.queries)):
      if want is not None and got != want:
        gap = f"missing {want - got}" if got < want else f"extra {got - want}"
        out.append(f"{self.protocol} {self.split}: {got} {what}, the protocol has {want} "
                   f"({gap})")
    return out

  @property
  def label(self) -> str:
    """E.g. "activitynet/val1-paragraph test: 4913 of 4916 videos present, 4913 of 4916
    queries"."""
    name = f"{self.protocol} " if self.protocol else ""
    pinned = self.expected

    def part(got, want, what):
      if want is None:
        return f"{got} {what}"
      return f"{got} of {want} {what}{' present' if what == 'videos' else ''}"

    extra = f" (hold-out of {self.physical})" if self.held_out else ""
    return (f"{name}{self.split}{extra}: "
            f"{part(self.videos, pinned and pinned.videos, 'videos')}, "
            f"{part(self.queries, pinned and pinned.queries, 'queries')}")

  def to_json(self) -> dict:
    return {"protocol": self.protocol, "split": self.split, "videos": self.videos,
            "queries": self.queries,
            "expected_videos": self.expected and self.expected.videos,
            "expected_queries": self.expected and self.expected.queries,
            "label": self.label}


def check(dataset_name: str, split: str, physical: str, videos: int, queries: int,
          held_out: bool = False) -> CountCheck:
  """Compares a split's counts with the protocol of `dataset_name`."""
  protocol = for_dataset(dataset_name)
  expected = None if protocol is None or held_out else protocol.splits.get(physical)
  return CountCheck(protocol.name if protocol else None, split, physical, videos, queries,
                    expected, held_out)
