"""Where the videos of an index come from: a prepared dataset split or a directory of files.

Layer: data access for retrieval (imports data.builders, data.decoding, data.video,
data.sampling, data.transforms, data.frame_store, retrieval.windows). A `VideoSource` lists ids and loads one video's frames
on demand (from several threads); `eval_clip` turns them into what evaluation feeds the
model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import threading
from typing import Callable, Optional, Union

import numpy as np

from ps_jax.data import builders, decoding, frame_store, sampling, transforms
from ps_jax.data import video as video_lib
from ps_jax.retrieval import windows as windows_lib

DEFAULT_FRAMES_PER_VIDEO = 32   # as ps_jax.data.prepare
DEFAULT_SHORT_SIDE = 224        # as ps_jax.data.prepare for real datasets


class IndexBuildError(ValueError):
  """Bad arguments or inputs for building an index; the message names the flag or file."""


@dataclasses.dataclass
class SpreadFrames:
  """Some of the K evenly spread frames of a video file: those `eval_clip` takes.

  Attributes:
    frames: uint8[M, H, W, 3], the frames at `positions`.
    positions: int64[M] strictly increasing positions among the K.
    num_spread: K (fewer than asked of a short video: min(frames_per_video, n)).
    num_frames, num_prompts: the F and P they were chosen for.
  """
  frames: np.ndarray
  positions: np.ndarray
  num_spread: int
  num_frames: int
  num_prompts: int

  def take(self, positions: np.ndarray) -> np.ndarray:
    """uint8[len(positions), H, W, 3]: the frames at these positions among the K."""
    where = np.minimum(np.searchsorted(self.positions, positions), len(self.positions) - 1)
    if not np.array_equal(self.positions[where], positions):
      raise ValueError(f"frames were decoded for num_frames={self.num_frames}, num_prompts="
                       f"{self.num_prompts} (positions {self.positions.tolist()} of "
                       f"{self.num_spread}), not for positions {np.asarray(positions).tolist()}")
    return self.frames[where]


@dataclasses.dataclass
class Loaded:
  """One video: frames uint8[K, H, W, 3] (decoded from a file), those of them that
  `eval_clip` takes (`SpreadFrames`) or the stored video of a prepared record (frames
  decoded when sampled), and problems worked around."""
  frames: Union[np.ndarray, SpreadFrames, frame_store.StoredVideo]
  warnings: list[str]


@dataclasses.dataclass
class VideoSource:
  """Videos to index.

  Attributes:
    ids: V unique video ids, in index order.
    load: position in `ids` -> Loaded; raises `ps_jax.data.video.VideoError` (or any
      exception) for a video that cannot be used. Called from several threads.
    paths: V file paths (raw videos) or None.
    info: JSON-able description stored in the index metadata ("kind" and its fields).
    for_clip: None, or (F, P) -> the same source loading only what `eval_clip(..., F, P,
      S)` takes (the same clips, decoded faster).
    load_windows: None, or (position, [(start, end)], F, P, S) -> (clips uint8[F, S, S,
      3] of those windows of the video, warnings), its frames decoded once
      (`ps_jax.retrieval.windows`).
    duration: None, or position -> seconds of the video (raises VideoError when it
      cannot be told), where windows go.
  """
  ids: list[str]
  load: Callable[[int], Loaded]
  paths: Optional[list[str]]
  info: dict
  for_clip: Optional[Callable[[int, int], "VideoSource"]] = None
  load_windows: Optional[Callable] = None
  duration: Optional[Callable[[int], float]] = None

  def narrowed(self, num_frames: int, num_prompts: int) -> "VideoSource":
    """The source to embed F = `num_frames` frames of P = `num_prompts` with."""
    return self if self.for_clip is None else self.for_clip(num_frames, num_prompts)

  def describe(self) -> str:
    if self.info["kind"] == "dataset":
      return (f"{self.info['dataset']} split {self.info['split']} from "
              f"{self.info['dataset_dir']}")
    return f"video files under {self.info['video_dir']}"


def dataset_source(dataset_dir: str, dataset: str, split: str) -> VideoSource:
  """The videos of a prepared dataset split (`ps_jax.data.prepare`), frames as stored."""
  if not os.path.isdir(dataset_dir):
    raise IndexBuildError(f"--dataset_dir {dataset_dir!r} is not a directory")
  try:
    split_data = builders.load_split(dataset_dir, dataset, split)
  except builders.DatasetNotFoundError as e:
    raise IndexBuildError(f"--dataset {dataset!r}: {e}") from e
  except ValueError as e:
    raise IndexBuildError(f"--split {split!r}: {e}") from e
  lock = threading.Lock()
  opened = []

  def load(i: int) -> Loaded:
    if not opened:
      with lock:
        if not opened:
          opened.append(split_data.open_source())
    record = opened[0][int(split_data.records[i])]
    return Loaded(frame_store.StoredVideo.from_record(record, split_data.sample_on_source), [])

  info = {"kind": "dataset", "dataset_dir": os.path.abspath(dataset_dir), "dataset": dataset,
          "split": split, "version_dir": split_data.version_dir}
  fps = split_data.index.get("settings", {}).get("fps")

  @functools.lru_cache(maxsize=1)
  def annotated() -> dict:
    """video id -> seconds of the annotations (moments.json), read on first use."""
    return {v: m["duration"] for videos in read_moments(split_data.version_dir).values()
            for v, m in videos.items()}

  def rate(i: int, video: frame_store.StoredVideo) -> float:
    """Source frames per second of video i: the prepared --fps, else its frames over its
    annotated duration."""
    if fps:
      return float(fps)
    video_id, known = split_data.video_ids[i], annotated()
    if video_id not in known:
      raise windows_lib.NoDurationError(
          f"{split_data.version_dir} [{video_id}]", "the dataset was prepared without "
          "--fps and no annotation gives this video's duration, so windows of time cannot "
          "be placed in it: prepare it with --fps 3")
    return video.num_source_frames / known[video_id]

  def duration(i: int) -> float:
    video = load(i).frames
    return video.num_source_frames / rate(i, video)

  def load_windows(i: int, spans, f: int, p: int, image_size: int):
    video = load(i).frames
    picks = windows_lib.window_frames(video.num_source_frames, spans, rate(i, video), f, p)
    return [transforms.resize_center_crop(
        video.take(sampling.nearest_stored(idx, video.frame_indices)), image_size)
            for idx in picks], []

  return VideoSource(list(split_data.video_ids), load, None, info,
                     load_windows=load_windows, duration=duration)


def read_moments(version_dir: str) -> dict:
  """{split: {video_id: {"duration", "sentences", "spans"}}} of a prepared dataset's
  moments.json (`ps_jax.data.sources.moments_file`), {} without one."""
  path = os.path.join(version_dir, "moments.json")
  if not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)["splits"]


def video_dir_source(video_dir: str, frames_per_video: int = DEFAULT_FRAMES_PER_VIDEO,
                     short_side: Optional[int] = DEFAULT_SHORT_SIDE, *,
                     num_frames: Optional[int] = None,
                     num_prompts: Optional[int] = None) -> VideoSource:
  """Raw video files under `video_dir` (recursive), id = file stem, sorted by id.

  Each video is decoded with `ps_jax.data.video.decode_video`: `frames_per_video` evenly
  spread frames, short side resized to `short_side` (None: native size), seeking where
  that decodes fewer frames (the same frames, bit for bit). Given the F = `num_frames`
  and P = `num_prompts` the index is built with, only the frames `eval_clip` takes of
  those are decoded (`load` returns them as `SpreadFrames`): `eval_clip(frames, F, P, S)`
  is then the clip it makes of all `frames_per_video` frames, bit for bit.
  """
  if not os.path.isdir(video_dir):
    raise IndexBuildError(f"--video_dir {video_dir!r} is not a directory")
  if frames_per_video < 1:
    raise IndexBuildError(f"--frames_per_video must be >= 1, got {frames_per_video}")
  if short_side is not None and short_side < 1:
    raise IndexBuildError(f"--short_side must be >= 1 (or 0 for the native size), got "
                          f"{short_side}")
  if (num_frames is None) != (num_prompts is None):
    raise IndexBuildError(f"num_frames ({num_frames}) and num_prompts ({num_prompts}) go "
                          "together: give both or neither")
  if num_frames is not None and (num_prompts < 1 or num_frames < 1
                                 or num_frames % num_prompts):
    raise IndexBuildError(f"--num_frames ({num_frames}) must be a positive multiple of the "
                          f"model's num_prompts ({num_prompts})")
  files = decoding.index_video_files(video_dir)
  if not files:
    raise IndexBuildError(f"--video_dir {video_dir!r} holds no video file (extensions "
                          f"{', '.join(decoding.VIDEO_EXTENSIONS)})")
  info = {"kind": "video_dir", "video_dir": os.path.abspath(video_dir),
          "frames_per_video": frames_per_video, "short_side": short_side}
  return files_source(files, info, num_frames, num_prompts)


def files_source(files: dict, info: dict, num_frames: Optional[int] = None,
                 num_prompts: Optional[int] = None) -> VideoSource:
  """The video files `files` ({id: path}), sorted by id, decoded as `info` says
  ("frames_per_video", "short_side"; see `video_dir_source`; windows at "window_fps"
  frames per second)."""
  ids = sorted(files)
  paths = [files[i] for i in ids]
  frames_per_video, short_side = info["frames_per_video"], info["short_side"]

  def used(spread: int) -> np.ndarray:  # positions among the K that eval_clip takes
    return sampling.sample_frame_indices(spread, num_frames, num_prompts, "uniform")

  def load(i: int) -> Loaded:
    decoded = video_lib.decode_video(paths[i], num_frames=frames_per_video,
                                     short_side=short_side, threads=1, seek=True,
                                     keep_only=used if num_frames is not None else None)
    if num_frames is None:
      return Loaded(decoded.frames, list(decoded.warnings))
    return Loaded(SpreadFrames(decoded.frames, decoded.positions, decoded.num_spread,
                               num_frames, num_prompts), list(decoded.warnings))

  def load_windows(i: int, spans, f: int, p: int, image_size: int):
    clips, warnings, _ = windows_lib.decode_windows(
        paths[i], spans, num_frames=f, num_prompts=p, image_size=image_size,
        short_side=short_side, fps=info.get("window_fps") or windows_lib.DEFAULT_FPS)
    return clips, warnings

  if num_frames is not None:
    return VideoSource(ids, load, paths, info, load_windows=load_windows)
  return VideoSource(ids, load, paths, info,
                     lambda f, p: files_source(files, info, num_frames=f, num_prompts=p),
                     load_windows)


def eval_clip(frames: Union[np.ndarray, SpreadFrames, frame_store.StoredVideo],
              num_frames: int, num_prompts: int, image_size: int) -> np.ndarray:
  """What evaluation feeds the model: uint8[K, H, W, 3] -> uint8[F, S, S, 3].

  `uniform` chunked sampling of F frames (of a stored video: on its source frame count,
  as the evaluation pipeline; of `SpreadFrames`: on their K, as of all K frames), then a
  bicubic short-side resize to S and a centre crop
  (`ps_jax.data.transforms.resize_center_crop`).
  """
  if isinstance(frames, frame_store.StoredVideo):
    clip = frame_store.sample_clip(frames, num_frames, num_prompts, "uniform")
    return transforms.resize_center_crop(clip, image_size)
  if isinstance(frames, SpreadFrames):
    idx = sampling.sample_frame_indices(frames.num_spread, num_frames, num_prompts, "uniform")
    return transforms.resize_center_crop(frames.take(idx), image_size)
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
    raise ValueError(f"frames must be uint8[K>0, H, W, 3], got {frames.dtype}{frames.shape}")
  idx = sampling.sample_frame_indices(len(frames), num_frames, num_prompts, "uniform")
  return transforms.resize_center_crop(frames[idx], image_size)
