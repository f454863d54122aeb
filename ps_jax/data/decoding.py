"""Decoding videos into a cache of frames, in worker processes that may crash.

Layer: data (imports `video`, `frame_store`, `sampling`). `decode_to_cache` decodes one
video (all frames or K evenly spread ones, optionally re-timed to a frame rate, short
side resized) into `<cache>/<video_id>.npz`, raw or JPEG-encoded there in the worker;
`run_tasks` runs such tasks in a pool of spawned processes and isolates a file whose
decoder kills its process.
`index_video_files` finds the video files of a directory tree by file stem.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import multiprocessing
import os
import urllib.parse
from typing import Callable, Sequence

import numpy as np

from ps_jax.data import frame_store, sampling
from ps_jax.data import video as video_lib

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg",
                    ".flv", ".wmv", ".3gp", ".ts", ".ogv")
MAX_DECODE_ATTEMPTS = 2  # a video whose decoding killed the process this often is skipped


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


def find_video(files: dict[str, str], video_id: str) -> str | None:
  """The file of `video_id` in an `index_video_files` result: the file whose stem is the
  id (`<id>.mp4`, also when the id itself ends in an extension, as DiDeMo's
  "<name>.m4v" converted to "<name>.m4v.mp4"), else, for an id that is a file name with
  a video extension, that file ("<name>.m4v" as downloaded)."""
  if video_id in files:
    return files[video_id]
  stem, ext = os.path.splitext(video_id)
  path = files.get(stem) if ext.lower() in VIDEO_EXTENSIONS else None
  return path if path is not None and os.path.basename(path) == video_id else None


def cache_path(cache_dir: str, video_id: str) -> str:
  return os.path.join(cache_dir, urllib.parse.quote(video_id, safe="-_.") + ".npz")


def source_stamp(path: str) -> dict:
  st = os.stat(path)
  return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def read_cache_meta(cache_path: str) -> dict | None:
  try:
    with np.load(cache_path, allow_pickle=False) as data:
      return json.loads(str(data["meta"]))
  except (OSError, ValueError, KeyError):
    return None


def load_cached(cache_path: str):
  """(frames uint8[K, H, W, 3] or frame_store.JpegFrames, frame_indices int32[K], n)."""
  with np.load(cache_path, allow_pickle=False) as data:
    meta = json.loads(str(data["meta"]))
    if "jpeg" in data:
      frames = frame_store.JpegFrames(data["jpeg"], data["jpeg_offsets"])
    else:
      frames = data["frames"]
    return frames, data["frame_indices"], int(meta["num_source_frames"])


def decode_to_cache(task: dict) -> dict:
  """Decodes one video into its cache file. Runs in worker processes; never raises.

  task: {"video_id", "path", "cache_path", "frames_per_video" (K or None: all),
  "short_side", "threads", and optionally "fps" (None), "encoding" ("raw"),
  "jpeg_quality"}. An `.attempts` marker counts decodes that never returned (the
  process died inside the decoder); after MAX_DECODE_ATTEMPTS such deaths the video is
  skipped.
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
                                     threads=task["threads"], fps=task.get("fps"))
    encoding = task.get("encoding", "raw")
    quality = task.get("jpeg_quality", frame_store.DEFAULT_JPEG_QUALITY)
    meta = {"num_source_frames": decoded.num_source_frames, "fps": decoded.fps,
            "rotation": decoded.rotation, "warnings": decoded.warnings,
            "source": source_stamp(task["path"]),
            "frames_per_video": task["frames_per_video"], "short_side": task["short_side"],
            "retime_fps": task.get("fps"), "encoding": encoding}
    tmp = task["cache_path"] + f".tmp{os.getpid()}.npz"
    np.savez(tmp, **frame_store.record_fields(decoded.frames, encoding, quality),
             frame_indices=decoded.frame_indices, meta=np.array(json.dumps(meta)))
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


class CachedLoader:
  """PlannedVideo.load for a cached decode."""

  def __init__(self, cache_path: str):
    self.cache_path = cache_path

  def __call__(self):
    return load_cached(self.cache_path)


class RenderedLoader:
  """PlannedVideo.load for frames made in memory (moving_shapes): all or K evenly spread
  frames, short side resized."""

  def __init__(self, render: Callable[[], np.ndarray], max_frames: int | None,
               short_side: int | None):
    self.render, self.max_frames, self.short_side = render, max_frames, short_side

  def __call__(self):
    frames = self.render()
    keep = (np.arange(len(frames)) if self.max_frames is None
            else sampling.even_indices(len(frames), self.max_frames))
    kept = frames[keep]
    if self.short_side is not None:
      kept = np.stack([video_lib.resize_short_side(f, self.short_side) for f in kept])
    return kept, keep.astype(np.int32), len(frames)


def cache_dir_name(dataset: str, config: str | None, storage: dict) -> str:
  """The decode cache's subdirectory: the dataset and every setting changing a decode."""
  enc = storage["encoding"] + str(storage.get("jpeg_quality", ""))
  return (f"{dataset}{'-' + config if config else ''}-k{storage['max_frames'] or 'all'}"
          f"-s{storage['short_side'] or 'native'}-r{storage['fps'] or 'src'}-{enc}")
