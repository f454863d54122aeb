"""The evaluation pipeline: every video of a split once, in padded global batches, plus
all its captions.

Layer: data (imports `builders`, `protocols`, `reading`, `transforms`). Each video is
sampled with the `uniform` scheme (F = C * P) on its source frame count, and only the
sampled frames are decoded, resized (torch bicubic, short side; none when already S)
and centre-cropped:

  {"frames": uint8[b, F, S, S, 3], "video_index": int32[b], "mask": bool[b]}

(padding rows: mask False, video_index -1, zero frames) plus all captions as arrays
`input_ids int32[T, L]`, `attention_mask int32[T, L]`, `text_to_video int32[T]`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import numpy as np

from ps_jax.data import builders, protocols, reading, transforms


class _EvalVideos(grain.MapDataset):
  """Local slot k -> {"record", "video_index", "mask"} of this process's eval slots."""

  def __init__(self, records: np.ndarray, global_batch_size: int, shard_index: int,
               shard_count: int):
    super().__init__()
    self._records = records
    self._g = global_batch_size
    self._local = global_batch_size // shard_count
    self._offset = shard_index * self._local
    self.num_batches = -(-len(records) // global_batch_size)

  def __len__(self) -> int:
    return self.num_batches * self._local

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range [0, {len(self)})")
    t, slot = divmod(int(index), self._local)
    v = t * self._g + self._offset + slot
    if v < len(self._records):
      return {"record": int(self._records[v]), "video_index": np.int32(v),
              "mask": np.bool_(True)}
    return {"record": -1, "video_index": np.int32(-1), "mask": np.bool_(False)}


class _EvalFrames(grain.transforms.Map):
  """Reads, samples (`uniform`) and resizes + centre-crops; zero frames for padding."""

  def __init__(self, frames: reading.StoredFrames, num_frames: int, num_prompts: int, image_size: int):
    self.frames = frames
    self.sample = transforms.SampleFrames(num_frames, num_prompts, "uniform")
    self.crop = transforms.ResizeCenterCrop(image_size)
    self.shape = (num_frames, image_size, image_size, 3)

  def map(self, element: dict[str, Any]) -> dict[str, Any]:
    if element["record"] < 0:
      frames = np.zeros(self.shape, np.uint8)
    else:
      e = self.crop.map(self.sample.map({"video": self.frames(element["record"])}))
      frames = e["frames"]
    return {"frames": frames, "video_index": element["video_index"],
            "mask": element["mask"]}


@dataclasses.dataclass
class EvalData:
  """Evaluation videos (per-process batches) and all captions of a split.

  Attributes:
    videos: grain IterDataset of {"frames": uint8[b, F, S, S, 3], "video_index":
      int32[b], "mask": bool[b]}; iterating it again starts over.
    num_videos: V; num_batches: global batches (the last one padded).
    local_batch_size: b.
    video_ids: V ids, position = video_index.
    captions: T caption strings (all captions of every video, video by video).
    input_ids, attention_mask: int32[T, L]; text_to_video: int32[T] video_index of
      each caption.
    counts: the split's videos and queries against its dataset's named protocol
      (`protocols.CountCheck`; its `label` goes beside every table).
  """
  videos: grain.IterDataset
  num_videos: int
  num_batches: int
  local_batch_size: int
  video_ids: list[str]
  captions: list[str]
  input_ids: np.ndarray
  attention_mask: np.ndarray
  text_to_video: np.ndarray
  counts: protocols.CountCheck | None = None

  def __iter__(self):
    return iter(self.videos)


def make_eval_data(data_dir: str, dataset_name: str, split: str, *, tokenizer,
                   global_batch_size: int, num_frames: int, num_prompts: int,
                   image_size: int, max_len: int, worker_count: int = 0,
                   shard_index: int | None = None, shard_count: int | None = None,
                   read_threads: int = 1, prefetch_batches: int = 2) -> EvalData:
  """Evaluation data: every video of the split once, plus all its captions.

  Args:
    data_dir, dataset_name, split: as for `make_train_loader` ("val", "test", ...).
    tokenizer, max_len: caption tokenization (L).
    global_batch_size: G videos per global batch (padded at the end).
    num_frames: F = C * P (`uniform` sampling); num_prompts: P.
    image_size: S (torch-bicubic short-side resize to S unless already S, centre crop
      S x S: the official Resize + CenterCrop).
    worker_count, shard_index, shard_count, read_threads, prefetch_batches: as for
      `make_train_loader`.

  Returns:
    EvalData (see its docstring for the layouts).
  """
  shard_index, shard_count = reading.resolve_shards(shard_index, shard_count)
  reading.check_common(global_batch_size, shard_count, num_frames, num_prompts, image_size, max_len)
  split_data = builders.load_split(data_dir, dataset_name, split)
  if split_data.num_videos == 0:
    raise ValueError(f"Split {split!r} of {split_data.version_dir!r} has no video")
  videos = _EvalVideos(split_data.records, global_batch_size, shard_index, shard_count)
  local = global_batch_size // shard_count
  ds = (videos.map(_EvalFrames(reading.StoredFrames(split_data), num_frames, num_prompts, image_size))
        .batch(local, drop_remainder=True))
  captions = [c for caps in split_data.captions for c in caps]
  text_to_video = np.asarray([i for i, caps in enumerate(split_data.captions)
                              for _ in caps], np.int32)
  ids, mask = tokenizer(captions, max_len)
  index = split_data.index
  counts = protocols.check(protocols.dataset_name(index.get("dataset"), index.get("config")),
                           split, split_data.physical_split, split_data.num_videos,
                           len(captions),
                           held_out=index["splits"][split]["records"] is not None)
  return EvalData(videos=reading.to_iter(ds, worker_count, read_threads, prefetch_batches),
                  num_videos=split_data.num_videos, num_batches=videos.num_batches,
                  local_batch_size=local, video_ids=list(split_data.video_ids),
                  captions=captions, input_ids=np.asarray(ids, np.int32),
                  attention_mask=np.asarray(mask, np.int32), text_to_video=text_to_video,
                  counts=counts)
