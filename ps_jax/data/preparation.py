"""The prepare step as a library: decode videos once with PyAV, write a TFDS ArrayRecord
dataset (`prepare`). The command line is `ps_jax.data.prepare`.

Layer: data (sources, annotations, decoding, builders, moving_shapes, frame_store).

  python -m ps_jax.data.prepare --dataset {msrvtt,msvd,lsmdc,activitynet,didemo,moving_shapes} \
      --video_dir VIDEOS --anno_dir ANNOTATIONS --out_dir DATA_DIR \
      [--split_protocol 9k|7k] [--max_frames K] [--fps R] [--short_side 224] \
      [--encoding auto|raw|jpeg] [--jpeg_quality 90] [--num_workers N]

What is stored (defaults): every frame of each video file (the official code samples
from all frames of the video it is given), short side 224 (the official compress step;
moving_shapes: native size), one JPEG per frame (moving_shapes: raw pixels), with each
record's source frame count, so training and test sampling reach exactly the official
frame indices. --max_frames K keeps K evenly spread frames (sampling then takes the
nearest kept frame); --fps R re-times every video to R frames a second first (the
official preprocess/compress_video.py converts with ffmpeg `-r 3`; `--fps 3`
approximates it, feeding its output files instead is exact).

Two phases, both restartable:

1. Decode: every video listed by the annotations is looked up (recursively, by file
   stem) in --video_dir, decoded (`ps_jax.data.video.decode_video`), JPEG-encoded (if
   so) in the worker and cached as `DATA_DIR/decode_cache/<dataset>-k<K>-s<S>-r<R>-<encoding>/
   <video_id>.npz`. A re-run reuses every cache entry whose source file is unchanged,
   so an interrupted prepare finishes where it stopped. Missing, empty, unreadable,
   corrupt or crashing videos are skipped; every skip (and every video kept after a
   midway decoding failure) is a JSON line in `DATA_DIR/prepare_report.jsonl` with its
   reason.
2. Write: a TFDS builder (`ps_jax.data.builders`) writes the cached frames into
   `DATA_DIR/<dataset>[/<config>]/1.0.0/` (ArrayRecord), atomically. The cache is then
   deleted unless --keep_cache. A finished dataset is never rewritten: a re-run only
   checks that its settings match (use another --out_dir to prepare other settings).

Splits: MSR-VTT `train` (9k or 7k list minus a seeded --holdout_size hold-out, default
1,000 videos: the same gallery size as the 1k-A test), `val` (the hold-out),
`train_full` (the whole list) and `test` (1k-A); LSMDC and ActivityNet Captions likewise
with their tests (the 1,000-clip public test; val_1 paragraphs); MSVD, DiDeMo and
moving_shapes `train` / `val` / `test` (DiDeMo's `train` only when `train_data.json` is
in --anno_dir).

Every dataset has a named protocol (`ps_jax.data.protocols`) pinning its split counts:
the summary lists each split whose annotations or prepared videos differ from it
("activitynet/val1-paragraph test: 4913 videos, the protocol has 4916 (missing 3)").

`runner="beam"` (`--runner beam`) runs phase 1's decode tasks and phase 2's write as
Apache Beam pipelines (`beam_jobs`); the dataset, the hold-out and the report are the
same as the local path's.

`decode_cache/` needs as much disk as the dataset, and TFDS stages the write in a
temporary directory beside it.

moving_shapes needs no --video_dir / --anno_dir: its clips are rendered in memory
(`--shapes_size demo|tiny`, `--seed`); given both, it decodes the .mp4 files written
by `python -m ps_jax.data.moving_shapes` like any other dataset.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import shutil
import time

import tqdm

from ps_jax.data import annotations as anno_lib
from ps_jax.data import beam_jobs
from ps_jax.data import builders
from ps_jax.data import decoding
from ps_jax.data import frame_store
from ps_jax.data import moving_shapes
from ps_jax.data import sources

DATASETS = ("msrvtt", "msvd", "lsmdc", "activitynet", "didemo", "moving_shapes")
DEFAULT_HOLDOUT = {"msrvtt": 1000, "lsmdc": 1000, "activitynet": 1000}
DEFAULT_SHORT_SIDE = 224  # the official compress step's short side
ENCODING_CHOICES = ("auto",) + frame_store.ENCODINGS
REPORT_FILE = "prepare_report.jsonl"
SUMMARY_FILE = "prepare_summary.json"
CACHE_DIR = "decode_cache"
RUNNERS = ("local", "beam")


class PrepareError(ValueError):
  """Bad arguments or inputs; the message names the flag or file."""


@dataclasses.dataclass
class PrepareSummary:
  """Outcome of one prepare run (also written to DATA_DIR/prepare_summary.json)."""
  dataset: str
  version_dir: str
  written: dict[str, int]
  skipped: int
  skipped_by_reason: dict[str, int]
  partial: int
  reused: int
  decoded: int
  report_path: str
  seconds: float
  already_prepared: bool = False
  protocol: str | None = None
  protocol_differences: list[str] = dataclasses.field(default_factory=list)

  def line(self) -> str:
    total = sum(self.written.values())
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped_by_reason.items()))
    state = "already prepared, " if self.already_prepared else ""
    return (f"prepare {self.dataset}: {state}written {total} videos "
            f"({', '.join(f'{k} {v}' for k, v in self.written.items())}), skipped "
            f"{self.skipped}{f' ({reasons})' if reasons else ''}, partial {self.partial}, "
            f"decoded {self.decoded}, reused {self.reused} from cache in "
            f"{self.seconds:.1f}s -> {self.version_dir} (report: {self.report_path})")

  def protocol_lines(self) -> list[str]:
    """The protocol check: one line when every pinned count agrees, else one per
    difference."""
    if self.protocol is None:
      return []
    if not self.protocol_differences:
      return [f"protocol {self.protocol}: every split has the protocol's counts"]
    return [f"protocol {self.protocol} differs: {d}" for d in self.protocol_differences]


# ----------------------------------------------------------------------------- inputs


def _check_args(dataset, out_dir, video_dir, anno_dir, storage, num_workers, holdout_size,
                shapes_size):
  if dataset not in DATASETS:
    raise PrepareError(f"--dataset {dataset!r} is not one of {DATASETS}")
  if not out_dir:
    raise PrepareError("--out_dir is required")
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise PrepareError(f"--out_dir {out_dir!r} exists and is not a directory")
  needs_files = dataset != "moving_shapes" or video_dir is not None or anno_dir is not None
  if needs_files:
    for flag, value in (("--video_dir", video_dir), ("--anno_dir", anno_dir)):
      if value is None:
        raise PrepareError(f"{flag} is required for --dataset {dataset}"
                           + (" (moving_shapes takes both or neither)"
                              if dataset == "moving_shapes" else ""))
      if not os.path.isdir(value):
        raise PrepareError(f"{flag} {value!r} is not a directory")
  elif storage["fps"] is not None:
    raise PrepareError("--fps re-times video files; moving_shapes rendered in memory has "
                       "none (give --video_dir and --anno_dir)")
  max_frames, short_side, fps = storage["max_frames"], storage["short_side"], storage["fps"]
  if max_frames is not None and max_frames < 1:
    raise PrepareError(f"--max_frames (--frames_per_video) must be >= 1, got {max_frames}")
  if short_side is not None and short_side < 1:
    raise PrepareError(f"--short_side must be >= 1, got {short_side}")
  if fps is not None and not fps > 0:
    raise PrepareError(f"--fps must be > 0, got {fps}")
  if storage["encoding"] not in frame_store.ENCODINGS:
    raise PrepareError(f"--encoding {storage['encoding']!r} is not one of {ENCODING_CHOICES}")
  if not 1 <= storage.get("jpeg_quality", frame_store.DEFAULT_JPEG_QUALITY) <= 100:
    raise PrepareError(f"--jpeg_quality must be in 1..100, got {storage['jpeg_quality']}")
  if num_workers < 0:
    raise PrepareError(f"--num_workers must be >= 0, got {num_workers}")
  if holdout_size is not None and holdout_size < 0:
    raise PrepareError(f"--holdout_size must be >= 0, got {holdout_size}")
  if shapes_size not in moving_shapes.SIZES:
    raise PrepareError(f"--shapes_size {shapes_size!r} is not one of "
                       f"{sorted(moving_shapes.SIZES)}")


def _storage(dataset, max_frames, frames_per_video, short_side, fps, encoding,
             jpeg_quality) -> dict:
  """What each record stores (recorded as the dataset's settings); resolves "auto"."""
  if frames_per_video is not None:
    if max_frames is not None and max_frames != frames_per_video:
      raise PrepareError(f"--frames_per_video {frames_per_video} (the old name of "
                         f"--max_frames) contradicts --max_frames {max_frames}")
    max_frames = frames_per_video
  if short_side == "auto":
    short_side = None if dataset == "moving_shapes" else DEFAULT_SHORT_SIDE
  if encoding == "auto":
    encoding = "raw" if dataset == "moving_shapes" else "jpeg"
  storage = {"max_frames": max_frames, "short_side": short_side, "fps": fps,
             "encoding": encoding}
  return storage | ({"jpeg_quality": jpeg_quality} if encoding == "jpeg" else {})


def _resolve_args(dataset, split_protocol, holdout_size):
  if dataset != "msrvtt" and split_protocol is not None:
    raise PrepareError("--split_protocol applies to --dataset msrvtt only")
  split_protocol = split_protocol or "9k"
  if split_protocol not in anno_lib.MSRVTT_TRAIN_LISTS:
    raise PrepareError(f"--split_protocol {split_protocol!r} is not one of "
                       f"{sorted(anno_lib.MSRVTT_TRAIN_LISTS)}")
  if holdout_size is not None and dataset not in DEFAULT_HOLDOUT:
    raise PrepareError(f"--holdout_size applies to {sorted(DEFAULT_HOLDOUT)} only "
                       f"({dataset} has its own validation list or split)")
  if holdout_size is None:
    holdout_size = DEFAULT_HOLDOUT.get(dataset, 0)
  return split_protocol, holdout_size


def _already_prepared(version_dir, source, dataset, report_path, summary_path, start):
  existing = builders.read_index(version_dir)
  if existing.get("settings") != source.settings:
    raise PrepareError(
        f"--out_dir already holds {version_dir} prepared with settings "
        f"{existing.get('settings')}, not {source.settings}; use another --out_dir or "
        "delete that directory")
  written = {s: len(p["video_ids"]) for s, p in existing["physical"].items()}
  for name, text in source.extra_files.items():
    path = os.path.join(version_dir, name)
    if not os.path.exists(path):  # a sidecar added since: the records are not touched
      with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
      os.replace(path + ".tmp", path)
  summary = PrepareSummary(dataset, version_dir, written, 0, {}, 0, 0, 0, report_path,
                           time.time() - start, already_prepared=True)
  if os.path.isfile(summary_path):
    with open(summary_path, encoding="utf-8") as f:
      previous = json.load(f)
    summary = dataclasses.replace(summary, skipped=previous.get("skipped", 0),
                                  skipped_by_reason=previous.get("skipped_by_reason", {}),
                                  partial=previous.get("partial", 0),
                                  protocol=previous.get("protocol"),
                                  protocol_differences=previous.get("protocol_differences",
                                                                    []))
  return summary


class _Report:
  """The JSONL report plus counters; every entry is flushed at once."""

  def __init__(self, path: str):
    self.path = path
    self._file = open(path, "w", encoding="utf-8")
    self.skipped = collections.Counter()
    self.counts = collections.Counter()

  def log(self, entry: dict):
    self._file.write(json.dumps(entry) + "\n")
    self._file.flush()

  def skip(self, video_id, split, path, reason, detail):
    self.skipped[reason] += 1
    self.log({"video_id": video_id, "split": split, "path": path, "status": "skipped",
              "reason": reason, "detail": detail})

  def partial(self, video_id, split, path, detail):
    self.counts["partial"] += 1
    self.log({"video_id": video_id, "split": split, "path": path, "status": "partial",
              "reason": "decode_problem", "detail": detail})

  def close(self):
    self._file.close()


def _beam_options(runner: str, beam_options):
  """None for the local runner; else parsed Beam PipelineOptions (PrepareError if bad)."""
  if runner not in RUNNERS:
    raise PrepareError(f"--runner {runner!r} is not one of {RUNNERS}")
  if runner == "local":
    if beam_options:
      raise PrepareError("--beam_options is given but --runner is local")
    return None
  try:
    return beam_jobs.pipeline_options(beam_options)
  except (beam_jobs.BeamUnavailableError, ValueError) as e:
    raise PrepareError(str(e)) from e


def _decode_phase(source, video_dir, cache_dir, storage, num_workers, report: _Report,
                  progress: bool, beam_options=None) -> set[str]:
  """Looks videos up, reuses valid cache entries, decodes the rest. Returns usable ids."""
  ok_ids: set[str] = set()
  tasks, first_split = [], {}
  files = decoding.index_video_files(video_dir) if video_dir is not None else {}
  for split, videos in source.physical.items():
    for v in videos:
      if v.video_id in first_split:
        continue
      first_split[v.video_id] = split
      if not v.captions:
        report.skip(v.video_id, split, None, "no_captions", "the annotations give no caption")
        continue
      if source.render is not None:
        ok_ids.add(v.video_id)
        continue
      path = decoding.find_video(files, v.video_id)
      if path is None:
        report.skip(v.video_id, split, None, "missing",
                    f"no file named {v.video_id}.<video extension> under {video_dir}")
        continue
      cache_path = decoding.cache_path(cache_dir, v.video_id)
      meta = decoding.read_cache_meta(cache_path) if os.path.exists(cache_path) else None
      if meta is not None and meta.get("source") == decoding.source_stamp(path):
        ok_ids.add(v.video_id)
        report.counts["reused"] += 1
        if meta.get("warnings"):
          report.partial(v.video_id, split, path, "; ".join(meta["warnings"]) + " (cached)")
        continue
      tasks.append({"video_id": v.video_id, "path": path, "cache_path": cache_path,
                    "frames_per_video": storage["max_frames"],
                    "short_side": storage["short_side"], "fps": storage["fps"],
                    "encoding": storage["encoding"],
                    "jpeg_quality": storage.get("jpeg_quality"),
                    "threads": 0 if num_workers == 0 else 1})

  bar = tqdm.tqdm(total=len(tasks), unit="video", desc=f"decode {source.name}",
                  disable=not progress or not tasks, dynamic_ncols=True)

  def on_result(task, result):
    bar.update(1)
    split = first_split[task["video_id"]]
    if result["status"] == "skipped":
      report.skip(task["video_id"], split, task["path"], result["reason"], result["detail"])
      return
    report.counts["decoded"] += 1
    ok_ids.add(task["video_id"])
    if result["status"] == "partial":
      report.partial(task["video_id"], split, task["path"], result["detail"])

  try:
    if beam_options is None:
      decoding.run_tasks(tasks, decoding.decode_to_cache, num_workers, on_result)
    else:
      beam_jobs.run_tasks(tasks, decoding.decode_to_cache, on_result, options=beam_options,
                          temp_root=cache_dir)
  finally:
    bar.close()
  return ok_ids


def prepare(dataset: str, *, out_dir: str, video_dir: str | None = None,
            anno_dir: str | None = None, split_protocol: str | None = None,
            max_frames: int | None = None, short_side: int | str | None = "auto",
            fps: float | None = None, encoding: str = "auto",
            jpeg_quality: int = frame_store.DEFAULT_JPEG_QUALITY,
            frames_per_video: int | None = None,
            num_workers: int = 0, holdout_size: int | None = None, holdout_seed: int = 0,
            keep_cache: bool = False, shapes_size: str = "demo", seed: int = 0,
            progress: bool = True, runner: str = "local",
            beam_options=None) -> PrepareSummary:
  """Decodes a dataset's videos and writes the TFDS ArrayRecord dataset (see module doc).

  Args:
    dataset: "msrvtt", "msvd", "lsmdc" or "moving_shapes".
    out_dir: TFDS data_dir receiving the dataset, the report and the decode cache.
    video_dir: searched recursively for `<video_id>.<ext>`.
    anno_dir: directory with the dataset's annotation files (`annotations` module).
    split_protocol: MSR-VTT training list, "9k" (default) or "7k".
    max_frames: K frames kept per video (evenly spread); None keeps every frame.
    short_side: stored short side in pixels; None keeps the source size; "auto":
      DEFAULT_SHORT_SIDE (224) for real datasets, the native size for moving_shapes.
    fps: re-time every video to this frame rate first; None keeps the file's frames.
    encoding: "raw", "jpeg" or "auto" (raw for moving_shapes, JPEG otherwise).
    jpeg_quality: JPEG quality (1..100) of encoding "jpeg".
    frames_per_video: the old name of max_frames.
    num_workers: decoding processes (0: decode in this process).
    holdout_size: validation hold-out of training videos (MSR-VTT / LSMDC; default
      DEFAULT_HOLDOUT); 0 disables it.
    holdout_seed: seed of the hold-out choice.
    keep_cache: keep `decode_cache/` after a successful write.
    shapes_size, seed: moving_shapes size preset and seed (rendered in memory).
    progress: show tqdm progress bars.
    runner: "local" (this process and its decoding pool) or "beam": the decode phase and
      the write phase each run as an Apache Beam pipeline (`beam_jobs`); the dataset,
      its records' order, the hold-out and the report are the same as the local path's.
    beam_options: Beam pipeline arguments for runner "beam" (a string or list, e.g.
      "--runner=DirectRunner --direct_num_workers=2"; default: Beam's DirectRunner).
      num_workers does not apply to it (the runner's own options size it).

  Returns:
    PrepareSummary. Raises PrepareError for bad arguments (naming the flag) and when
    no video at all could be prepared.
  """
  start = time.time()
  split_protocol, holdout_size = _resolve_args(dataset, split_protocol, holdout_size)
  storage = _storage(dataset, max_frames, frames_per_video, short_side, fps, encoding,
                     jpeg_quality)
  _check_args(dataset, out_dir, video_dir, anno_dir, storage, num_workers, holdout_size,
              shapes_size)
  beam_options = _beam_options(runner, beam_options)
  try:
    source = sources.load_source(dataset, anno_dir, video_dir, split_protocol,
                                 holdout_size, holdout_seed, storage, shapes_size, seed,
                                 DEFAULT_HOLDOUT)
  except sources.SourceError as e:
    raise PrepareError(str(e)) from e
  except (anno_lib.AnnotationError, ValueError) as e:
    raise PrepareError(f"--anno_dir: {e}") from e

  os.makedirs(out_dir, exist_ok=True)
  version_dir = builders.dataset_version_dir(out_dir, dataset, source.config)
  report_path = os.path.join(out_dir, REPORT_FILE)
  summary_path = os.path.join(out_dir, SUMMARY_FILE)
  if os.path.isfile(os.path.join(version_dir, "dataset_info.json")):
    return _already_prepared(version_dir, source, dataset, report_path, summary_path, start)

  cache_dir = os.path.join(out_dir, CACHE_DIR,
                           decoding.cache_dir_name(dataset, source.config, storage))
  os.makedirs(cache_dir, exist_ok=True)
  report = _Report(report_path)
  try:
    for dropped in source.dropped:
      for video_id in dropped.video_ids:  # left out by the protocol itself, not skipped
        report.log({"video_id": video_id, "split": dropped.split, "path": None,
                    "status": "not_annotated",
                    "detail": f"listed in {dropped.list_file} without annotations (the "
                              "official loader leaves it out too)"})
    ok_ids = _decode_phase(source, video_dir, cache_dir, storage, num_workers, report,
                           progress, beam_options)
    plan: dict[str, list[builders.PlannedVideo]] = {}
    for split, videos in source.physical.items():
      entries = []
      for i, v in enumerate(videos):
        if v.video_id not in ok_ids:
          continue
        if source.render is not None:
          load = decoding.RenderedLoader(functools.partial(source.render, split, i),
                                         storage["max_frames"], storage["short_side"])
        else:
          load = decoding.CachedLoader(decoding.cache_path(cache_dir, v.video_id))
        entries.append(builders.PlannedVideo(v.video_id, v.captions, load))
      if not entries:
        report.log({"split": split, "status": "split_empty",
                    "detail": f"no video of split {split!r} could be prepared; not written"})
      plan[split] = entries
    if not any(plan.values()):
      raise PrepareError(f"No video of {dataset} could be prepared (skipped: "
                         f"{dict(report.skipped)}); see {report_path}")
    builders.write_dataset(out_dir, dataset, plan, config=source.config,
                           settings=source.settings, holdout_ids=source.holdout_ids,
                           extra_files=source.extra_files, encoding=storage["encoding"],
                           jpeg_quality=storage.get("jpeg_quality",
                                                    frame_store.DEFAULT_JPEG_QUALITY),
                           progress=progress, beam_options=beam_options)
  finally:
    report.close()

  protocol, differences = sources.protocol_differences(source, plan)
  differences += sources.moment_differences(source, plan)
  summary = PrepareSummary(dataset=dataset, version_dir=version_dir,
                           written={s: len(v) for s, v in plan.items() if v},
                           skipped=sum(report.skipped.values()),
                           skipped_by_reason=dict(report.skipped),
                           partial=report.counts["partial"], reused=report.counts["reused"],
                           decoded=report.counts["decoded"], report_path=report_path,
                           seconds=time.time() - start, protocol=protocol,
                           protocol_differences=differences)
  with open(summary_path, "w", encoding="utf-8") as f:
    json.dump(dataclasses.asdict(summary), f, indent=1)
  if not keep_cache:
    shutil.rmtree(cache_dir, ignore_errors=True)
    root = os.path.join(out_dir, CACHE_DIR)
    if os.path.isdir(root) and not os.listdir(root):
      os.rmdir(root)
  return summary
