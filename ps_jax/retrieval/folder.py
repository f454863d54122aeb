"""An index of a folder of one's own video files, kept in step with the folder.

Layer: jobs (imports retrieval.build, retrieval.embedding, retrieval.sources,
retrieval.store, data.decoding).

`sync_video_dir(out, video_dir, model_path=...)` brings the index at `out` in line with
the files under `video_dir`, and is what every run does, first or not:

- A file is known by its id (file stem), path, size and mtime (`os.stat`): those of
  every indexed row and of every file that could not be decoded are committed with the
  rows, in the index's `sync.json` (`ps_jax.retrieval.store.SYNC_FILE`). Hashing the
  content would catch a file rewritten with the same size and mtime, at the cost of
  reading every byte of the library on each run; the stat is what rsync and backup tools
  trust by default, and it is what is used here.
- Rows whose file is gone, moved or changed are removed (one commit), then the new and
  changed files are embedded in id order; files that failed before are retried only if
  their size or mtime changed.
- The build commits every `commit_every` videos or `commit_seconds` seconds, whichever
  comes first, at the end of a global batch: a SIGKILL loses at most the interval in
  flight, and the same command continues where the last commit left off. What was
  committed is always a prefix of the id-ordered work, in whole batches, so an
  interrupted and continued build has the ids, rows and bits of an uninterrupted one
  (per-video embeddings do not depend on the other videos of a batch).
- The index's model fingerprint, frames and folder are checked as for `--append`: an
  index built by another model, or of another folder, is never mixed in.

`watch_video_dir` repeats the sync whenever the folder's listing or a file's stat
changes. `ps_jax.retrieval.progress.Progress` is what a page or a bar shows: videos
done and to do, videos per second, time left, recent problems.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import threading
import time
from typing import Callable, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from ps_jax import checkpoints, reporting
from ps_jax.models.clip import ClipConfig
from ps_jax.data import decoding
from ps_jax.retrieval import build, embedding, store
from ps_jax.retrieval import windows as windows_lib
from ps_jax.retrieval.embedding import Skipped
from ps_jax.retrieval.progress import Progress
from ps_jax.retrieval.model import IndexModel
from ps_jax.retrieval.sources import (DEFAULT_FRAMES_PER_VIDEO, DEFAULT_SHORT_SIDE,
                                      IndexBuildError, files_source)

# Commit every 256 videos or 60 s: at the ~3 videos/s of ViT-B/32 on a laptop CPU a
# kill loses at most a minute of work, and one commit (a rewrite of the rows and
# thumbnails) stays a small share of the interval up to ~100k videos.
DEFAULT_COMMIT_EVERY = 256
DEFAULT_COMMIT_SECONDS = 60.0
DEFAULT_WATCH_SECONDS = 10.0


def _stamp(path: str) -> Optional[dict]:
  """{"path", "size", "mtime_ns"} of a file, or None when it is gone."""
  try:
    st = os.stat(path)
  except OSError:
    return None
  return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def list_folder(video_dir: str) -> dict:
  """{id: stamp} of the video files under `video_dir` (`decoding.index_video_files`)."""
  stamps = {}
  for video_id, path in decoding.index_video_files(video_dir).items():
    stamp = _stamp(path)
    if stamp is not None:
      stamps[video_id] = stamp
  return stamps


def _same(a: Optional[dict], b: Optional[dict]) -> bool:
  return bool(a and b) and all(a.get(k) == b.get(k) for k in ("path", "size", "mtime_ns"))


@dataclasses.dataclass
class Plan:
  """What one sync does: `remove` rows, embed `todo` (ids, sorted); the state kept."""
  remove: list
  todo: list
  kept_rows: dict
  kept_skips: dict


def plan_sync(index: Optional[store.Index], state: Optional[dict], folder: dict,
              sources: Optional[list] = None, row_videos: Optional[list] = None) -> Plan:
  """The work to bring `index` (None: none yet) with its sync `state` in line with
  `folder` ({id: stamp}), video by video (`row_videos`: the video of each row, default
  the row ids). Rows of an index that recorded no stamps (built before they were kept)
  stand for their file while its recorded `sources` path is still there."""
  state = state or {"rows": {}, "skipped": {}}
  ids = row_videos if row_videos is not None else (index.ids if index is not None else [])
  rows, remove = {}, []
  for row, video_id in enumerate(ids):
    if video_id in rows or video_id in remove:
      continue  # another window of a video already planned
    recorded = state["rows"].get(video_id)
    now = folder.get(video_id)
    if recorded is None and now is not None and sources is not None and (
        sources[row] and os.path.abspath(sources[row]) == now["path"]):
      recorded = now  # an index from before stamps were kept
    if _same(recorded, now):
      rows[video_id] = recorded
    else:
      remove.append(video_id)
  skips = {video_id: skip for video_id, skip in state["skipped"].items()
           if _same(skip, folder.get(video_id)) and video_id not in rows}
  todo = sorted(video_id for video_id in folder if video_id not in rows
                and video_id not in skips)
  return Plan(remove, todo, rows, skips)


def folder_info(video_dir: str, frames_per_video: int, short_side: Optional[int],
                window: Optional[float] = None, stride: Optional[float] = None,
                window_fps: Optional[float] = None) -> dict:
  """The index metadata's "data" of a folder decoded this way (the window keys only for
  a windowed index: the stride defaults to half the window, the rate to 3 frames per
  second); IndexBuildError naming the flag that is out of range."""
  info = {"kind": "video_dir", "video_dir": os.path.abspath(video_dir),
          "frames_per_video": frames_per_video, "short_side": short_side}
  if window is None:
    if stride is not None:
      raise IndexBuildError("--stride is for --window: give the window length too")
    return info
  window_fps = windows_lib.DEFAULT_FPS if window_fps is None else window_fps
  try:
    stride = windows_lib.check(window, stride, window_fps)
  except windows_lib.WindowError as e:
    raise IndexBuildError(str(e)) from e
  info.update(window=float(window), stride=float(stride), window_fps=float(window_fps))
  return info


def _check_same_folder(out: str, recorded: dict, want: dict) -> None:
  data = recorded.get("data") or {}
  for key in ("window", "stride", "window_fps"):
    want.setdefault(key, None)
  for key, value in want.items():
    if data.get(key) != value:
      flag = {"kind": "video_dir", "video_dir": "video_dir"}.get(key, key)
      raise IndexBuildError(
          f"--out {out!r} holds an index of {data.get('kind')} {data.get('video_dir') or ''}"
          f" with {key}={data.get(key)!r}, not {key}={value!r} (--{flag}): pass another "
          "--out, or --overwrite to replace it")


def open_existing(out: str, info: dict, overwrite: bool) -> Optional[store.Index]:
  """The index at `out` to update (None: none, or `overwrite`), checked to be an index
  of the folder decoded as `info` (`folder_info`) says (IndexBuildError naming the flag
  otherwise)."""
  if overwrite or not os.path.exists(os.path.join(out, store.META_FILE)):
    return None
  existing = store.load_index(out, mmap=True, check_norms=False)
  _check_same_folder(out, existing.meta.get("metadata", {}), dict(info))
  return existing


def load_model(existing: Optional[store.Index], model_path: Optional[str],
               load_kwargs: Optional[dict]) -> IndexModel:
  """The model `model_path` (+ `load_kwargs`), default the one `existing` records."""
  recorded = existing.meta.get("metadata", {}) if existing is not None else {}
  path = model_path or recorded.get("model_path")
  if not path:
    raise IndexBuildError("--model is required" + (
        " (the index records no model path)" if existing is not None else ""))
  kwargs = load_kwargs if load_kwargs is not None else recorded.get("load_model_kwargs", {})
  return IndexModel.load(path, kwargs)


def check_model(out: str, existing: Optional[store.Index], imodel: IndexModel) -> None:
  """FingerprintMismatchError unless `imodel` built `existing` (or there is none)."""
  if existing is not None and imodel.fingerprint != existing.fingerprint:
    recorded = existing.meta.get("metadata", {})
    raise store.FingerprintMismatchError(
        f"--out {out!r} was built by model {existing.fingerprint} "
        f"({recorded.get('model_path') or 'unknown path'}), but --model "
        f"{imodel.path or '(in memory)'} is {imodel.fingerprint}; embeddings of two models "
        "are not comparable: pass another --out, or --overwrite to replace it")


def model_load_kwargs(model: Optional[str], num_prompts: int, clip_config: Optional[str],
                      model_dtype: Optional[str]) -> Optional[dict]:
  """`ps_jax.load_model` kwargs of the command-line flags --num_prompts (a HF directory or
  .pth; a workdir records its own), --clip_config (.pth only) and --model_dtype; None
  without --model (the index's own)."""
  if model is None:
    return None
  kwargs = {}
  if not checkpoints.has_model_file(model):
    kwargs["num_prompts"] = num_prompts
  if clip_config:
    if not model.endswith((".pth", ".pt", ".bin")):
      raise IndexBuildError("--clip_config is only for a .pth --model")
    kwargs["clip_config"] = ClipConfig.from_hf(clip_config).to_hf_dict()
  if model_dtype:
    kwargs["dtype"] = model_dtype
  return kwargs


def sync_video_dir(out: str, video_dir: str, imodel: Optional[IndexModel] = None, *,
                   model_path: Optional[str] = None, load_kwargs: Optional[dict] = None,
                   frames_per_video: int = DEFAULT_FRAMES_PER_VIDEO,
                   short_side: Optional[int] = DEFAULT_SHORT_SIDE,
                   num_frames: Optional[int] = None, image_size: Optional[int] = None,
                   max_len: Optional[int] = None, tokenizer: Optional[str] = None,
                   dtype: str = "float16", overwrite: bool = False,
                   commit_every: int = DEFAULT_COMMIT_EVERY,
                   commit_seconds: float = DEFAULT_COMMIT_SECONDS,
                   batch_size: Optional[int] = None, mesh=None,
                   num_workers: Optional[int] = None, progress_bar: bool = True,
                   progress: Optional[Progress] = None,
                   on_commit: Optional[Callable[[], None]] = None,
                   window: Optional[float] = None, stride: Optional[float] = None,
                   window_fps: Optional[float] = None) -> build.IndexSummary:
  """Brings the index at `out` in line with the video files under `video_dir` (module
  docstring): creates it, continues an interrupted build, or updates it.

  Args:
    out: index directory; video_dir: the folder (recursive; id = file stem).
    imodel / model_path (+ load_kwargs): the model (default: the index's).
    frames_per_video, short_side: decoding (`sources.video_dir_source`).
    num_frames, image_size, max_len, tokenizer, dtype: as `build.build_index`.
    overwrite: replace an index of another folder or model at `out`.
    commit_every, commit_seconds: commit after this many videos or seconds.
    batch_size, mesh, num_workers, progress_bar: as `embedding.embed_source`.
    progress: updated as the build goes; on_commit: called (process 0) after each commit.
    window, stride, window_fps: index windows of time (`ps_jax.retrieval.windows`)
      instead of whole videos; the index keeps them (another value is refused).

  Returns:
    IndexSummary of this pass (added, removed, skipped, rows now).
  """
  if commit_every < 1:
    raise IndexBuildError(f"--commit_every must be >= 1 video, got {commit_every}")
  if not commit_seconds > 0:
    raise IndexBuildError(f"--commit_seconds must be > 0, got {commit_seconds}")
  if not os.path.isdir(video_dir):
    raise IndexBuildError(f"--video_dir {video_dir!r} is not a directory")
  if frames_per_video < 1:
    raise IndexBuildError(f"--frames_per_video must be >= 1, got {frames_per_video}")
  if short_side is not None and short_side < 1:
    raise IndexBuildError(f"--short_side must be >= 1 (or 0 for the native size), got "
                          f"{short_side}")
  info = folder_info(video_dir, frames_per_video, short_side, window, stride, window_fps)
  stride = info.get("stride")
  progress = progress or Progress()
  progress.update(state="listing")
  existing = open_existing(out, info, overwrite)
  state = store.load_sync(out) if existing is not None else None
  recorded = existing.meta.get("metadata", {}) if existing is not None else {}
  imodel = imodel or load_model(existing, model_path, load_kwargs)
  check_model(out, existing, imodel)
  num_frames, image_size, max_len, tokenizer = build.resolve_settings(
      imodel, recorded, num_frames=num_frames, image_size=image_size, max_len=max_len,
      tokenizer=tokenizer)
  folder = list_folder(video_dir)
  if not folder and existing is None:
    raise IndexBuildError(f"--video_dir {video_dir!r} holds no video file (extensions "
                          f"{', '.join(decoding.VIDEO_EXTENSIONS)})")
  media = store.load_media(out, len(existing)) if existing is not None else None
  row_videos = None
  if media is not None and media.windows is not None:
    row_videos = [media.window(r)[0] if media.window(r) else video_id
                  for r, video_id in enumerate(existing.ids)]
  plan = plan_sync(existing, state, folder, media.sources if media else None, row_videos)
  if jax.process_count() > 1:  # every process has planned before process 0 commits
    multihost_utils.sync_global_devices("ps_jax.sync_video_dir planned")
  writer = jax.process_index() == 0
  sync_state = {"rows": dict(plan.kept_rows), "skipped": dict(plan.kept_skips)}
  count = len(existing) if existing is not None else 0
  stale_skips = state is not None and len(plan.kept_skips) != len(state["skipped"])
  if existing is not None and (plan.remove or stale_skips or state is None):
    gone = set(plan.remove)
    rows_gone = [i for r, i in enumerate(existing.ids)
                 if (row_videos[r] if row_videos else i) in gone]
    if writer:
      store.remove_from_index(out, rows_gone, sync=sync_state,
                              reason="files removed or changed under the folder")
      if on_commit is not None:
        on_commit()
    count -= len(rows_gone)
  progress.update(files=len(folder), rows=count)
  source = files_source({i: folder[i]["path"] for i in plan.todo}, info,
                        num_frames, max(imodel.model.config.num_prompts, 1))
  pending = {"ids": [], "emb": [], "jpeg": [], "src": [], "win": [], "skipped": [],
             "partial": []}
  added, skipped, partial = 0, [], []

  def skip(video_id: str, reason: str, detail: str) -> None:
    if video_id in sync_state["skipped"]:
      return  # another window of the same video
    s = Skipped(video_id, folder[video_id]["path"], reason, detail)
    pending["skipped"].append(s)
    skipped.append(s)
    sync_state["skipped"][video_id] = {**folder[video_id], "reason": reason, "detail": detail}
    progress.problem(video_id, reason, detail)

  if window is None:
    positions, spans = list(range(len(source.ids))), None
  else:
    rows, failed = windows_lib.plan_rows(source.paths, window, stride, num_workers or 4)
    for pos, error in failed.items():
      skip(source.ids[pos], error.reason, error.detail)
    positions, spans = [pos for pos, _ in rows], [span for _, span in rows]
  left = collections.Counter(source.ids[pos] for pos in positions)  # rows to go per video
  reporting.say(
      f"{out}: {count} rows indexed, {len(plan.todo)} videos to index"
      + (f" ({len(positions)} windows of {window:g} s every {stride:g} s)" if window else "")
      + f", {len(plan.remove)} removed, {len(plan.kept_skips)} unreadable and unchanged "
      f"(of {len(folder)} files under {video_dir}); {num_frames} frames of {image_size} px "
      f"with {imodel.path or 'an in-memory model'}")
  progress.start(len(positions))
  has_index = existing is not None
  start = last_commit = time.monotonic()

  def commit() -> None:
    nonlocal has_index, last_commit, count
    p = pending
    if writer:
      emb = (np.stack(p["emb"]).astype(np.float32) if p["emb"] else
             np.zeros((0, imodel.model.clip.projection_dim), np.float32))
      thumbs = [j or None for j in p["jpeg"]]
      win = p["win"] if window is not None else None
      if has_index:
        store.append_to_index(out, p["ids"], emb, imodel.fingerprint,
                              source=source.describe(), thumbnails=thumbs,
                              sources=p["src"], sync=sync_state, windows=win)
      else:
        store.write_index(out, p["ids"], emb, imodel.fingerprint,
                          build._metadata(imodel, source, num_frames, image_size,  # pylint: disable=protected-access
                                          max_len, tokenizer),
                          dtype, source=source.describe(), overwrite=overwrite,
                          thumbnails=thumbs, sources=p["src"], sync=sync_state, windows=win)
        if overwrite and os.path.exists(os.path.join(out, build.REPORT_FILE)):
          os.remove(os.path.join(out, build.REPORT_FILE))  # the replaced index's
      build._write_report(out, p["skipped"], p["partial"], build._now(),  # pylint: disable=protected-access
                          {s.video_id: folder[s.video_id] for s in p["skipped"]})
      if on_commit is not None:
        on_commit()
    has_index = True
    count += len(p["ids"])
    for key in p:
      p[key] = []
    last_commit = time.monotonic()
    progress.update(rows=count, commits=progress.snapshot()["commits"] + 1)

  if window is not None and pending["skipped"] and not positions:
    commit()  # no video has a window: record why, so they are retried only once changed
  batches = () if not positions else embedding.embed_batches(
      imodel, source, positions, mesh=mesh, batch_size=batch_size, num_frames=num_frames,
      image_size=image_size, num_workers=num_workers, progress=progress_bar,
      on_video=progress.video, spans=spans)
  for batch in batches:
    for slot, emb, jpeg in batch.done:
      video_id = source.ids[positions[slot]]
      if spans is None:
        pending["ids"].append(video_id)
      else:
        pending["ids"].append(windows_lib.row_id(video_id, *spans[slot]))
        pending["win"].append((video_id, *spans[slot]))
      pending["emb"].append(emb)
      pending["jpeg"].append(jpeg)
      pending["src"].append(folder[video_id]["path"])
      left[video_id] -= 1
      if not left[video_id] and video_id not in sync_state["skipped"]:
        sync_state["rows"][video_id] = folder[video_id]  # all its rows are in
    for slot, s in batch.skipped:
      left[s.video_id] -= 1
      skip(s.video_id, s.reason, s.detail)
    pending["partial"] += batch.partial
    added += len(batch.done)
    partial += batch.partial
    due = (len(pending["ids"]) + len(pending["skipped"]) >= commit_every
           or time.monotonic() - last_commit >= commit_seconds
           or batch.end == len(positions))
    if due:
      commit()
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("ps_jax.sync_video_dir written")
  seconds = time.monotonic() - start
  summary = build.IndexSummary(out, added, count, skipped, partial, len(plan.kept_rows),
                               seconds, (added + len(skipped)) / max(seconds, 1e-9),
                               removed=len(plan.remove),
                               unchanged_skips=len(plan.kept_skips))
  progress.update(state="done", rows=count, message=summary.line())
  return summary


def folder_signature(video_dir: str) -> tuple:
  """What `watch_video_dir` compares: every video file's id, path, size and mtime."""
  return tuple(sorted((i, s["path"], s["size"], s["mtime_ns"])
                      for i, s in list_folder(video_dir).items()))


def watch_video_dir(sync: Callable[[], object], video_dir: str,
                    interval: float = DEFAULT_WATCH_SECONDS,
                    stop: Optional[threading.Event] = None,
                    on_error: Optional[Callable[[Exception], None]] = None) -> None:
  """Runs `sync()` now and again whenever `folder_signature(video_dir)` changes (looked
  at every `interval` seconds), until `stop` is set. An IndexBuildError of one pass
  goes to `on_error` (default: printed) and the watch goes on."""
  stop = stop or threading.Event()
  last = None
  while not stop.is_set():
    now = folder_signature(video_dir) if os.path.isdir(video_dir) else None
    if now != last:
      try:
        sync()
        last = now
      except IndexBuildError as e:
        last = now
        (on_error or (lambda err: reporting.say(f"error: {err}")))(e)
    stop.wait(interval)
