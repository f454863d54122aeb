"""What the prepare step reads: a dataset's splits from its annotation files (or the
rendered moving_shapes clips), and how they and the written splits compare with the
dataset's named protocol.

Layer: data (imports `annotations`, `moving_shapes`, `protocols`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Callable

import numpy as np

from ps_jax.data import annotations as anno_lib
from ps_jax.data import moving_shapes
from ps_jax.data import protocols as protocols_lib


class SourceError(ValueError):
  """A prepare argument that contradicts the annotations; the message names the flag."""


@dataclasses.dataclass
class Source:
  """What to prepare: physical splits, virtual split rules, config name, settings."""
  name: str
  config: str | None
  physical: dict[str, list[anno_lib.VideoCaptions]]
  holdout_ids: list[str] | None
  settings: dict
  render: Callable[[str, int], np.ndarray] | None = None  # moving_shapes in memory
  extra_files: dict[str, str] = dataclasses.field(default_factory=dict)
  dropped: list[anno_lib.Dropped] = dataclasses.field(default_factory=list)


def load_source(dataset, anno_dir, video_dir, split_protocol, holdout_size, holdout_seed,
                storage, shapes_size, seed, holdout_datasets) -> Source:
  """Reads a dataset's annotations (or renders moving_shapes) into a `Source`.

  `storage` (what each record stores) becomes the recorded settings; datasets in
  `holdout_datasets` get a seeded hold-out of `holdout_size` training videos.
  Raises AnnotationError for bad files and SourceError for a hold-out too large.
  """
  settings = dict(storage)
  if dataset == "moving_shapes":
    vocab = json.dumps(moving_shapes.vocabulary())
    extra = {moving_shapes.VOCAB_FILE: vocab}
    if video_dir is None:
      cfg = dataclasses.replace(moving_shapes.SIZES[shapes_size], seed=seed).validate()
      physical = {}
      clips = {}
      for split in moving_shapes.SPLITS:
        if cfg.num_clips(split):
          items = list(moving_shapes.iter_clips(cfg, split))
          clips[split] = items
          physical[split] = [anno_lib.VideoCaptions(c.video_id, c.captions) for c in items]

      def render(split, i):
        return clips[split][i].frames

      settings |= {"source": "rendered", "moving_shapes": dataclasses.asdict(cfg)}
      return Source(dataset, shapes_size, physical, None, settings, render, extra)
    splits = moving_shapes.read_annotations(anno_dir)
    physical = {s: [anno_lib.VideoCaptions(v, c) for v, c in items]
                for s, items in splits.items() if items}
    settings |= {"source": "files"}
    return Source(dataset, "custom", physical, None, settings, None, extra)
  dropped, extra = [], {}
  if dataset == "msrvtt":
    physical = anno_lib.msrvtt_splits(anno_dir, split_protocol)
    config = split_protocol
    settings["split_protocol"] = split_protocol
  elif dataset == "msvd":
    physical = anno_lib.msvd_splits(anno_dir)
    config = None
  elif dataset == "activitynet":
    physical, dropped = anno_lib.activitynet_splits(anno_dir)
    config = None
    extra = {MOMENTS_FILE: moments_file(anno_dir)}
  elif dataset == "didemo":
    physical = anno_lib.didemo_splits(anno_dir)
    config = None
  else:
    physical = anno_lib.lsmdc_splits(anno_dir)
    config = None
  holdout_ids = None
  if dataset in holdout_datasets:
    train_ids = [v.video_id for v in physical["train"]]
    if holdout_size > len(train_ids):
      raise SourceError(f"--holdout_size {holdout_size} exceeds the {len(train_ids)} "
                         f"training videos of {dataset}")
    holdout_ids = anno_lib.holdout_split(train_ids, holdout_size, holdout_seed)[1]
    settings |= {"holdout_size": holdout_size, "holdout_seed": holdout_seed}
  return Source(dataset, config, physical, holdout_ids, settings, dropped=dropped,
                extra_files=extra)


MOMENTS_FILE = "moments.json"  # beside a prepared dataset with a moment protocol


def moments_file(anno_dir: str) -> str:
  """The text of `moments.json`: per physical split {video_id: {"duration", "sentences",
  "spans"}} of ActivityNet Captions (`annotations.activitynet_moment_splits`)."""
  splits, dropped = anno_lib.activitynet_moment_splits(anno_dir)
  return json.dumps({
      "format": 1, "protocol": "activitynet/moments", "dropped_spans": dropped,
      "splits": {split: {v.video_id: {"duration": v.duration, "sentences": list(v.sentences),
                                      "spans": [list(t) for t in v.spans]} for v in videos}
                 for split, videos in splits.items()}})


def moment_differences(source: Source, written) -> list[str]:
  """How the written videos of each split ({split: [VideoCaptions or PlannedVideo]}) and
  their sentences differ from the dataset's moment protocols (empty when they agree or
  there is none)."""
  if MOMENTS_FILE not in source.extra_files:
    return []
  moments = json.loads(source.extra_files[MOMENTS_FILE])["splits"]
  lines = []
  name = protocols_lib.dataset_name(source.name, source.config)
  for protocol in protocols_lib.moment_protocols(name):
    for split, want in protocol.splits.items():
      have = [moments[split][v.video_id] for v in written.get(split, [])
              if v.video_id in moments.get(split, {})]
      got = protocols_lib.SplitCounts(len(have), sum(len(m["sentences"]) for m in have))
      if got != want:
        lines.append(f"{protocol.name} {split}: {got.videos} of {want.videos} videos "
                     f"present, {got.queries} of {want.queries} sentences")
  return lines


def protocol_differences(source: Source, written: dict[str, list[anno_lib.VideoCaptions]]
                         ) -> tuple[str | None, list[str]]:
  """The dataset's protocol name and how the annotations and the written splits differ
  from its counts: a split whose annotation files already disagree is reported as such
  (a wrong or edited file), one whose written videos disagree names the missing ones."""
  name = protocols_lib.dataset_name(source.name, source.config)
  protocol = protocols_lib.for_dataset(name)
  if protocol is None:
    return None, []
  lines = []
  for split in protocol.splits:
    annotated = [v for v in source.physical.get(split, []) if v.captions]
    got = written.get(split, [])
    listed = protocols_lib.check(name, split, split, len(annotated),
                                 anno_lib.count_captions(annotated))
    if listed.differences:
      lines += [f"{d} in the annotation files (wrong or edited file?)"
                for d in listed.differences]
      continue
    present = protocols_lib.check(name, split, split, len(got), anno_lib.count_captions(got))
    if present.differences:
      have = {v.video_id for v in got}
      missing = [v.video_id for v in annotated if v.video_id not in have]
      lines.append(f"{present.label}; not prepared ({len(missing)}): "
                   f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}")
  return protocol.name, lines
