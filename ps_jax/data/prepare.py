"""Prepare step: decode videos once with PyAV and write a TFDS ArrayRecord dataset.

  python -m ps_jax.data.prepare --dataset {msrvtt,msvd,lsmdc,moving_shapes} \
      --video_dir VIDEOS --anno_dir ANNOTATIONS --out_dir DATA_DIR \
      [--split_protocol 9k|7k] [--frames_per_video 32] [--short_side 256] [--num_workers N]

Two phases, both restartable:

1. Decode: every video listed by the annotations is looked up (recursively, by file
   stem) in --video_dir, decoded (`ps_jax.data.video.decode_video`: K evenly spread
   frames, short side resized) and cached as `DATA_DIR/decode_cache/<dataset>-k<K>-s<S>/
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
`train_full` (the whole list) and `test` (1k-A); LSMDC likewise with its 1,000-clip
test; MSVD and moving_shapes `train` / `val` / `test`. `decode_cache/` needs as much
disk as the dataset, and TFDS stages the write in a temporary directory beside it.

moving_shapes needs no --video_dir / --anno_dir: its clips are rendered in memory
(`--shapes_size demo|tiny`, `--seed`); given both, it decodes the .mp4 files written
by `python -m ps_jax.data.moving_shapes` like any other dataset.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import glob
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import urllib.parse
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import tqdm

from ps_jax.data import annotations as anno_lib
from ps_jax.data import builders
from ps_jax.data import moving_shapes
from ps_jax.data import sampling
from ps_jax.data import video as video_lib

DATASETS = ("msrvtt", "msvd", "lsmdc", "moving_shapes")
DEFAULT_HOLDOUT = {"msrvtt": 1000, "lsmdc": 1000}
DEFAULT_SHORT_SIDE = 256
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg",
                    ".flv", ".wmv", ".3gp", ".ts", ".ogv")
REPORT_FILE = "prepare_report.jsonl"
SUMMARY_FILE = "prepare_summary.json"
CACHE_DIR = "decode_cache"
MAX_DECODE_ATTEMPTS = 2  # a video whose decoding killed the process this often is skipped


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

  def line(self) -> str:
    total = sum(self.written.values())
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped_by_reason.items()))
    state = "already prepared, " if self.already_prepared else ""
    return (f"prepare {self.dataset}: {state}written {total} videos "
            f"({', '.join(f'{k} {v}' for k, v in self.written.items())}), skipped "
            f"{self.skipped}{f' ({reasons})' if reasons else ''}, partial {self.partial}, "
            f"decoded {self.decoded}, reused {self.reused} from cache in "
            f"{self.seconds:.1f}s -> {self.version_dir} (report: {self.report_path})")


# ----------------------------------------------------------------------------- inputs


@dataclasses.dataclass
class _Source:
  """What to prepare: physical splits, virtual split rules, config name, settings."""
  name: str
  config: str | None
  physical: dict[str, list[anno_lib.VideoCaptions]]
  holdout_ids: list[str] | None
  settings: dict
  render: Callable[[str, int], np.ndarray] | None = None  # moving_shapes in memory
  extra_files: dict[str, str] = dataclasses.field(default_factory=dict)


def _load_source(dataset, anno_dir, video_dir, split_protocol, holdout_size, holdout_seed,
                 frames_per_video, short_side, shapes_size, seed) -> _Source:
  settings = {"frames_per_video": frames_per_video, "short_side": short_side}
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
      return _Source(dataset, shapes_size, physical, None, settings, render, extra)
    splits = moving_shapes.read_annotations(anno_dir)
    physical = {s: [anno_lib.VideoCaptions(v, c) for v, c in items]
                for s, items in splits.items() if items}
    settings |= {"source": "files"}
    return _Source(dataset, "custom", physical, None, settings, None, extra)
  if dataset == "msrvtt":
    physical = anno_lib.msrvtt_splits(anno_dir, split_protocol)
    config = split_protocol
    settings["split_protocol"] = split_protocol
  elif dataset == "msvd":
    physical = anno_lib.msvd_splits(anno_dir)
    config = None
  else:
    physical = anno_lib.lsmdc_splits(anno_dir)
    config = None
  holdout_ids = None
  if dataset in DEFAULT_HOLDOUT:
    train_ids = [v.video_id for v in physical["train"]]
    if holdout_size > len(train_ids):
      raise PrepareError(f"--holdout_size {holdout_size} exceeds the {len(train_ids)} "
                         f"training videos of {dataset}")
    holdout_ids = anno_lib.holdout_split(train_ids, holdout_size, holdout_seed)[1]
    settings |= {"holdout_size": holdout_size, "holdout_seed": holdout_seed}
  return _Source(dataset, config, physical, holdout_ids, settings)


def index_video_files(video_dir: str) -> dict[str, str]:
  """{file stem: path} of every video file under `video_dir` (recursive).

  When a stem occurs more than once, the extension earliest in VIDEO_EXTENSIONS wins,
  then the lexicographically first path.
  """
  found: dict[str, tuple[int, str]] = {}
  for root, dirs, files in os.walk(video_dir):
    dirs.sort()
    for name in sorted(files):
      stem, ext = os.path.splitext(name)
      ext = ext.lower()
      if ext not in VIDEO_EXTENSIONS:
        continue
      rank = (VIDEO_EXTENSIONS.index(ext), os.path.join(root, name))
      if stem not in found or rank < found[stem]:
        found[stem] = rank
  return {stem: path for stem, (_, path) in found.items()}


# ----------------------------------------------------------------------------- decode cache


def _cache_path(cache_dir: str, video_id: str) -> str:
  return os.path.join(cache_dir, urllib.parse.quote(video_id, safe="-_.") + ".npz")


def _source_stamp(path: str) -> dict:
  st = os.stat(path)
  return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read_cache_meta(cache_path: str) -> dict | None:
  try:
    with np.load(cache_path, allow_pickle=False) as data:
      return json.loads(str(data["meta"]))
  except (OSError, ValueError, KeyError):
    return None


def _load_cached(cache_path: str) -> tuple[np.ndarray, np.ndarray, int]:
  with np.load(cache_path, allow_pickle=False) as data:
    meta = json.loads(str(data["meta"]))
    return data["frames"], data["frame_indices"], int(meta["num_source_frames"])


def _decode_to_cache(task: dict) -> dict:
  """Decodes one video into its cache file. Runs in worker processes; never raises.

  An `.attempts` marker counts decodes that never returned (the process died inside
  the decoder); after MAX_DECODE_ATTEMPTS such deaths the video is skipped.
  """
  marker = task["cache_path"] + ".attempts"
  result = {"video_id": task["video_id"], "path": task["path"]}
  attempts = 0
  if os.path.exists(marker):
    try:
      with open(marker) as f:
        attempts = int(f.read().strip() or 0)
    except (OSError, ValueError):
      attempts = 1
  if attempts >= MAX_DECODE_ATTEMPTS:
    return result | {"status": "skipped", "reason": "decoder_crashed",
                     "detail": f"decoding killed the process {attempts} times"}
  with open(marker, "w") as f:
    f.write(str(attempts + 1))
  try:
    decoded = video_lib.decode_video(task["path"], num_frames=task["frames_per_video"],
                                     short_side=task["short_side"],
                                     threads=task["threads"])
    meta = {"num_source_frames": decoded.num_source_frames, "fps": decoded.fps,
            "rotation": decoded.rotation, "warnings": decoded.warnings,
            "source": _source_stamp(task["path"]),
            "frames_per_video": task["frames_per_video"], "short_side": task["short_side"]}
    tmp = task["cache_path"] + f".tmp{os.getpid()}.npz"
    np.savez(tmp, frames=decoded.frames, frame_indices=decoded.frame_indices,
             meta=np.array(json.dumps(meta)))
    os.replace(tmp, task["cache_path"])
    result |= {"status": "partial" if decoded.warnings else "ok",
               "num_frames": int(decoded.frames.shape[0])}
    if decoded.warnings:
      result |= {"reason": "decode_problem", "detail": "; ".join(decoded.warnings)}
  except video_lib.VideoError as e:
    result |= {"status": "skipped", "reason": e.reason, "detail": e.detail}
  except Exception as e:  # pylint: disable=broad-except
    result |= {"status": "skipped", "reason": "error", "detail": f"{type(e).__name__}: {e}"}
  finally:
    if os.path.exists(marker):
      os.remove(marker)
  return result


def run_tasks(tasks: Sequence[dict], fn: Callable[[dict], dict], num_workers: int,
              on_result: Callable[[dict, dict], None]) -> None:
  """Runs fn(task) for every task, calling on_result(task, result) as results arrive.

  With num_workers > 0, tasks run in a pool of spawned processes, at most 2 per worker
  in flight. If a worker process dies (a decoder crash), the tasks in flight are run
  again one at a time; the one that kills its process alone gets the result
  {"status": "skipped", "reason": "decoder_crashed"}, and the pool is restarted.
  """
  if num_workers <= 0:
    for task in tasks:
      on_result(task, fn(task))
    return
  ctx = multiprocessing.get_context("spawn")
  pending = collections.deque(tasks)
  suspects = collections.deque()
  pool = None
  in_flight: dict[concurrent.futures.Future, dict] = {}
  try:
    while pending or suspects or in_flight:
      if pool is None:
        pool = concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=ctx)
      if suspects:  # isolate: one suspect alone in the pool
        if not in_flight:
          task = suspects.popleft()
          in_flight[pool.submit(fn, task)] = task
      else:
        while pending and len(in_flight) < 2 * num_workers:
          task = pending.popleft()
          in_flight[pool.submit(fn, task)] = task
      done, _ = concurrent.futures.wait(list(in_flight),
                                        return_when=concurrent.futures.FIRST_COMPLETED)
      broken = False
      for fut in done:
        task = in_flight.pop(fut)
        try:
          result = fut.result()
        except concurrent.futures.process.BrokenProcessPool:
          broken = True
          if task.get("_isolated"):  # it ran alone: it killed the process
            on_result(task, {"video_id": task["video_id"], "path": task["path"],
                             "status": "skipped", "reason": "decoder_crashed",
                             "detail": "the decoding process died on this file"})
          else:
            suspects.append(task | {"_isolated": True})
          continue
        on_result(task, result)
      if broken:
        suspects.extend(t | {"_isolated": True} for t in in_flight.values())
        in_flight.clear()
        pool.shutdown(wait=False, cancel_futures=True)
        pool = None
  finally:
    if pool is not None:
      pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------- prepare


def _check_args(dataset, out_dir, video_dir, anno_dir, frames_per_video, short_side,
                num_workers, holdout_size, shapes_size):
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
  if frames_per_video < 1:
    raise PrepareError(f"--frames_per_video must be >= 1, got {frames_per_video}")
  if short_side is not None and short_side < 1:
    raise PrepareError(f"--short_side must be >= 1, got {short_side}")
  if num_workers < 0:
    raise PrepareError(f"--num_workers must be >= 0, got {num_workers}")
  if holdout_size is not None and holdout_size < 0:
    raise PrepareError(f"--holdout_size must be >= 0, got {holdout_size}")
  if shapes_size not in moving_shapes.SIZES:
    raise PrepareError(f"--shapes_size {shapes_size!r} is not one of "
                       f"{sorted(moving_shapes.SIZES)}")


def virtual_splits(written: Mapping[str, Sequence[str]],
                   holdout_ids: Sequence[str] | None) -> dict:
  """Split name -> {"source": physical split, "records": record indices or None (all)}.

  With a hold-out (MSR-VTT, LSMDC): "train" = training videos not held out, "val" =
  held-out ones, "train_full" = all training videos. Otherwise one entry per split.
  """
  splits = {s: {"source": s, "records": None} for s in written}
  if holdout_ids is not None and "train" in written:
    held = set(holdout_ids)
    train = written["train"]
    splits["train_full"] = {"source": "train", "records": None}
    if held:
      splits["train"] = {"source": "train",
                         "records": [i for i, v in enumerate(train) if v not in held]}
      splits["val"] = {"source": "train",
                       "records": [i for i, v in enumerate(train) if v in held]}
  return splits


def dataset_version_dir(out_dir: str, dataset: str, config: str | None) -> str:
  """Where `write_dataset` puts a dataset: out_dir/<dataset>[/<config>]/<version>."""
  return os.path.join(out_dir, dataset, *([config] if config else []),
                      str(builders.BUILDERS[dataset].VERSION))


def write_dataset(out_dir: str, dataset: str,
                  videos: Mapping[str, Sequence[builders.PlannedVideo]], *,
                  config: str | None = None, settings: dict | None = None,
                  holdout_ids: Sequence[str] | None = None,
                  extra_files: Mapping[str, str] | None = None,
                  progress: bool = True) -> str:
  """Writes videos as a TFDS ArrayRecord dataset plus its `ps_jax_index.json`.

  This is the prepare step's write phase; it also serves datasets made in memory
  (dataset "synthetic").

  Args:
    out_dir: TFDS data_dir.
    dataset: a key of `builders.BUILDERS`.
    videos: physical split -> PlannedVideo list (record order); empty splits are left out.
    config: builder config name (e.g. "9k"), None for builders without configs.
    settings: recorded in the index; a later prepare with other settings refuses to
      reuse the directory.
    holdout_ids: training video ids held out for validation (see `virtual_splits`).
    extra_files: {file name: text} written next to the dataset (e.g. vocab.json).
    progress: show TFDS's progress bars.

  Returns:
    The dataset version directory.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top

  plan = {split: list(v) for split, v in videos.items() if v}
  if not plan:
    raise PrepareError(f"Nothing to write for {dataset}: every split is empty")
  written = {split: [v.video_id for v in items] for split, items in plan.items()}
  index = {"format": builders.INDEX_FORMAT, "dataset": dataset, "config": config,
           "settings": settings or {},
           "physical": {split: {"video_ids": written[split],
                                "captions": [list(v.captions) for v in items]}
                        for split, items in plan.items()},
           "splits": virtual_splits(written, holdout_ids)}
  version_dir = dataset_version_dir(out_dir, dataset, config)
  for stale in glob.glob(os.path.join(os.path.dirname(version_dir), "incomplete.*")):
    shutil.rmtree(stale, ignore_errors=True)  # left by a killed write
  os.makedirs(out_dir, exist_ok=True)
  download_dir = tempfile.mkdtemp(prefix="tfds_downloads_", dir=out_dir)
  bars = tqdm_utils._active  # pylint: disable=protected-access
  tqdm_utils.display_progress_bar(progress and bars)
  try:
    builder = builders.BUILDERS[dataset](data_dir=out_dir, config=config, plan=plan,
                                         index=index, extra_files=extra_files)
    builder.download_and_prepare(
        download_dir=download_dir,
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  finally:
    tqdm_utils.display_progress_bar(bars)
    shutil.rmtree(download_dir, ignore_errors=True)
  return version_dir


def _resolve_args(dataset, split_protocol, short_side, holdout_size):
  if short_side == "auto":
    short_side = None if dataset == "moving_shapes" else DEFAULT_SHORT_SIDE
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
  return split_protocol, short_side, holdout_size


def _already_prepared(version_dir, source, dataset, report_path, summary_path, start):
  existing = builders.read_index(version_dir)
  if existing.get("settings") != source.settings:
    raise PrepareError(
        f"--out_dir already holds {version_dir} prepared with settings "
        f"{existing.get('settings')}, not {source.settings}; use another --out_dir or "
        "delete that directory")
  written = {s: len(p["video_ids"]) for s, p in existing["physical"].items()}
  summary = PrepareSummary(dataset, version_dir, written, 0, {}, 0, 0, 0, report_path,
                           time.time() - start, already_prepared=True)
  if os.path.isfile(summary_path):
    with open(summary_path, encoding="utf-8") as f:
      previous = json.load(f)
    summary = dataclasses.replace(summary, skipped=previous.get("skipped", 0),
                                  skipped_by_reason=previous.get("skipped_by_reason", {}),
                                  partial=previous.get("partial", 0))
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


def _decode_phase(source, video_dir, cache_dir, frames_per_video, short_side, num_workers,
                  report: _Report, progress: bool) -> set[str]:
  """Looks videos up, reuses valid cache entries, decodes the rest. Returns usable ids."""
  ok_ids: set[str] = set()
  tasks, first_split = [], {}
  files = index_video_files(video_dir) if video_dir is not None else {}
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
      path = files.get(v.video_id)
      if path is None:
        report.skip(v.video_id, split, None, "missing",
                    f"no file named {v.video_id}.<video extension> under {video_dir}")
        continue
      cache_path = _cache_path(cache_dir, v.video_id)
      meta = _read_cache_meta(cache_path) if os.path.exists(cache_path) else None
      if meta is not None and meta.get("source") == _source_stamp(path):
        ok_ids.add(v.video_id)
        report.counts["reused"] += 1
        if meta.get("warnings"):
          report.partial(v.video_id, split, path, "; ".join(meta["warnings"]) + " (cached)")
        continue
      tasks.append({"video_id": v.video_id, "path": path, "cache_path": cache_path,
                    "frames_per_video": frames_per_video, "short_side": short_side,
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
    run_tasks(tasks, _decode_to_cache, num_workers, on_result)
  finally:
    bar.close()
  return ok_ids


def prepare(dataset: str, *, out_dir: str, video_dir: str | None = None,
            anno_dir: str | None = None, split_protocol: str | None = None,
            frames_per_video: int = 32, short_side: int | str | None = "auto",
            num_workers: int = 0, holdout_size: int | None = None, holdout_seed: int = 0,
            keep_cache: bool = False, shapes_size: str = "demo", seed: int = 0,
            progress: bool = True) -> PrepareSummary:
  """Decodes a dataset's videos and writes the TFDS ArrayRecord dataset (see module doc).

  Args:
    dataset: "msrvtt", "msvd", "lsmdc" or "moving_shapes".
    out_dir: TFDS data_dir receiving the dataset, the report and the decode cache.
    video_dir: searched recursively for `<video_id>.<ext>`.
    anno_dir: directory with the dataset's annotation files (`annotations` module).
    split_protocol: MSR-VTT training list, "9k" (default) or "7k".
    frames_per_video: K frames kept per video (evenly spread).
    short_side: stored short side in pixels; None keeps the source size; "auto":
      DEFAULT_SHORT_SIDE (256) for real datasets, the native size for moving_shapes.
    num_workers: decoding processes (0: decode in this process).
    holdout_size: validation hold-out of training videos (MSR-VTT / LSMDC; default
      DEFAULT_HOLDOUT); 0 disables it.
    holdout_seed: seed of the hold-out choice.
    keep_cache: keep `decode_cache/` after a successful write.
    shapes_size, seed: moving_shapes size preset and seed (rendered in memory).
    progress: show tqdm progress bars.

  Returns:
    PrepareSummary. Raises PrepareError for bad arguments (naming the flag) and when
    no video at all could be prepared.
  """
  start = time.time()
  split_protocol, short_side, holdout_size = _resolve_args(dataset, split_protocol,
                                                           short_side, holdout_size)
  _check_args(dataset, out_dir, video_dir, anno_dir, frames_per_video, short_side,
              num_workers, holdout_size, shapes_size)
  try:
    source = _load_source(dataset, anno_dir, video_dir, split_protocol, holdout_size,
                          holdout_seed, frames_per_video, short_side, shapes_size, seed)
  except (anno_lib.AnnotationError, ValueError) as e:
    if isinstance(e, PrepareError):
      raise
    raise PrepareError(f"--anno_dir: {e}") from e

  os.makedirs(out_dir, exist_ok=True)
  version_dir = dataset_version_dir(out_dir, dataset, source.config)
  report_path = os.path.join(out_dir, REPORT_FILE)
  summary_path = os.path.join(out_dir, SUMMARY_FILE)
  if os.path.isfile(os.path.join(version_dir, "dataset_info.json")):
    return _already_prepared(version_dir, source, dataset, report_path, summary_path, start)

  cache_dir = os.path.join(out_dir, CACHE_DIR,
                           f"{dataset}{'-' + source.config if source.config else ''}"
                           f"-k{frames_per_video}-s{short_side or 'native'}")
  os.makedirs(cache_dir, exist_ok=True)
  report = _Report(report_path)
  try:
    ok_ids = _decode_phase(source, video_dir, cache_dir, frames_per_video, short_side,
                           num_workers, report, progress)
    plan: dict[str, list[builders.PlannedVideo]] = {}
    for split, videos in source.physical.items():
      entries = []
      for i, v in enumerate(videos):
        if v.video_id not in ok_ids:
          continue
        if source.render is not None:
          load = _RenderedLoader(source.render, split, i, frames_per_video, short_side)
        else:
          load = _CachedLoader(_cache_path(cache_dir, v.video_id))
        entries.append(builders.PlannedVideo(v.video_id, v.captions, load))
      if not entries:
        report.log({"split": split, "status": "split_empty",
                    "detail": f"no video of split {split!r} could be prepared; not written"})
      plan[split] = entries
    if not any(plan.values()):
      raise PrepareError(f"No video of {dataset} could be prepared (skipped: "
                         f"{dict(report.skipped)}); see {report_path}")
    write_dataset(out_dir, dataset, plan, config=source.config, settings=source.settings,
                  holdout_ids=source.holdout_ids, extra_files=source.extra_files,
                  progress=progress)
  finally:
    report.close()

  summary = PrepareSummary(dataset=dataset, version_dir=version_dir,
                           written={s: len(v) for s, v in plan.items() if v},
                           skipped=sum(report.skipped.values()),
                           skipped_by_reason=dict(report.skipped),
                           partial=report.counts["partial"], reused=report.counts["reused"],
                           decoded=report.counts["decoded"], report_path=report_path,
                           seconds=time.time() - start)
  with open(summary_path, "w", encoding="utf-8") as f:
    json.dump(dataclasses.asdict(summary), f, indent=1)
  if not keep_cache:
    shutil.rmtree(cache_dir, ignore_errors=True)
    root = os.path.join(out_dir, CACHE_DIR)
    if os.path.isdir(root) and not os.listdir(root):
      os.rmdir(root)
  return summary


class _CachedLoader:
  """PlannedVideo.load for a cached decode."""

  def __init__(self, cache_path: str):
    self.cache_path = cache_path

  def __call__(self):
    return _load_cached(self.cache_path)


class _RenderedLoader:
  """PlannedVideo.load for a moving_shapes clip rendered in memory."""

  def __init__(self, render, split, i, frames_per_video, short_side):
    self.render, self.split, self.i = render, split, i
    self.frames_per_video, self.short_side = frames_per_video, short_side

  def __call__(self):
    frames = self.render(self.split, self.i)
    keep = sampling.even_indices(len(frames), self.frames_per_video)
    kept = frames[keep]
    if self.short_side is not None:
      kept = np.stack([video_lib.resize_short_side(f, self.short_side) for f in kept])
    return kept, keep.astype(np.int32), len(frames)


# ----------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m ps_jax.data.prepare",
      description="Decode videos once and write a TFDS ArrayRecord dataset.")
  p.add_argument("--dataset", required=True, choices=DATASETS)
  p.add_argument("--video_dir", help="directory searched recursively for <video_id>.<ext>")
  p.add_argument("--anno_dir", help="directory with the annotation files")
  p.add_argument("--out_dir", required=True, help="TFDS data_dir to write")
  p.add_argument("--split_protocol", default=None, choices=sorted(anno_lib.MSRVTT_TRAIN_LISTS),
                 help="MSR-VTT training list (default 9k)")
  p.add_argument("--frames_per_video", type=int, default=32)
  p.add_argument("--short_side", type=int, default=None,
                 help=f"stored short side (default {DEFAULT_SHORT_SIDE}; moving_shapes: "
                 "native size)")
  p.add_argument("--num_workers", type=int, default=0, help="decoding processes")
  p.add_argument("--holdout_size", type=int, default=None,
                 help=f"validation hold-out of training videos (default {DEFAULT_HOLDOUT})")
  p.add_argument("--holdout_seed", type=int, default=0)
  p.add_argument("--keep_cache", action="store_true")
  p.add_argument("--shapes_size", default="demo", choices=sorted(moving_shapes.SIZES))
  p.add_argument("--seed", type=int, default=0, help="moving_shapes seed")
  p.add_argument("--no_progress", action="store_true")
  return p


def main(argv: Iterable[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  short_side = "auto" if args.short_side is None else args.short_side
  try:
    summary = prepare(args.dataset, out_dir=args.out_dir, video_dir=args.video_dir,
                      anno_dir=args.anno_dir, split_protocol=args.split_protocol,
                      frames_per_video=args.frames_per_video, short_side=short_side,
                      num_workers=args.num_workers, holdout_size=args.holdout_size,
                      holdout_seed=args.holdout_seed, keep_cache=args.keep_cache,
                      shapes_size=args.shapes_size, seed=args.seed,
                      progress=not args.no_progress)
  except PrepareError as e:
    parser.error(str(e))
  print(summary.line())
  return 0


if __name__ == "__main__":
  sys.exit(main())
