"""grain input pipelines over prepared (TFDS ArrayRecord) datasets: training and evaluation.

Layer: data. Training lives here; evaluation in `eval_pipeline` (re-exported here).

Training (`make_train_loader`): one example per (video, caption) pair, every pair at
most once per epoch, in a seeded per-epoch order whose global batches never hold the
same video twice (`distinct_video_batches`). Frames are sampled with the chunked `rand`
scheme (F = C * P) on the source frame count (only the sampled frames are decoded),
cropped with one RandomResizedCrop (bilinear, as torchvision on tensors) and one flip
per clip, and captions tokenized to a fixed length. Each process reads only its slice
of every global batch. Batches (b = global_batch_size / shard_count):

  {"frames": uint8[b, F, S, S, 3], "input_ids": int32[b, L], "attention_mask": int32[b, L]}

The iterator is checkpointable: `it = iter(loader)`, `state = it.get_state()` (a small
JSON-serialisable dict), and in a new process `it.set_state(state)` continues with
exactly the next batch. Same seed, same batches, whatever the worker count.

Evaluation (`make_eval_data`): each video once (`uniform` sampling, bicubic short-side
resize unless already S, centre crop), global batches padded at the end:

  {"frames": uint8[b, F, S, S, 3], "video_index": int32[b], "mask": bool[b]}

(padding rows: mask False, video_index -1, zero frames) plus all captions as arrays
`input_ids int32[T, L]`, `attention_mask int32[T, L]`, `text_to_video int32[T]`.
Frames stay uint8; `normalize_frames` applies CLIP's mean/std on host or device.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
import threading
from typing import Sequence

import grain
import numpy as np

from ps_jax.data import builders, reading, transforms
from ps_jax.data.eval_pipeline import EvalData, make_eval_data  # noqa: F401  (re-exported)
from ps_jax.data.transforms import normalize_frames  # noqa: F401  (re-exported)

_ORDER_SALT = 0x70616972  # separates the ordering stream from the augmentation streams


# ----------------------------------------------------------------------------- ordering


def batches_per_epoch(caption_counts: Sequence[int], batch_size: int) -> int:
  """Largest R such that R batches of `batch_size` distinct videos exist.

  A video with c captions can appear in at most min(c, R) of R batches, so R is the
  largest value with sum_v min(c_v, R) >= R * batch_size.
  """
  counts = np.asarray(caption_counts, np.int64)
  lo, hi = 0, int(counts.sum()) // batch_size
  while lo < hi:  # f(R) = sum(min(c, R)) - R * G is concave with f(0) = 0
    mid = (lo + hi + 1) // 2
    if np.minimum(counts, mid).sum() >= mid * batch_size:
      lo = mid
    else:
      hi = mid - 1
  return lo


def distinct_video_batches(caption_counts: Sequence[int], batch_size: int, seed: int,
                           epoch: int) -> np.ndarray:
  """Seeded order of (video, caption) pairs for one epoch, in batches of distinct videos.

  Pairs are drawn in a uniformly random order (seed, epoch) and put into the current
  batch unless its video is already there (then they wait for the next batch). A video
  whose remaining pairs equal the remaining batches is "tight" and goes into the
  current batch first; this keeps every remaining video at most one pair per remaining
  batch, so the construction never gets stuck. Before that, pairs a video cannot fit
  (more than R captions) and the N - R * G remainder are dropped, chosen at random.

  Args:
    caption_counts: c_v captions of each of the V videos.
    batch_size: G, the GLOBAL batch size.
    seed, epoch: the order is a pure function of (caption_counts, G, seed, epoch).

  Returns:
    int64[R, G, 2]: (video position, caption index) of every slot; R =
    `batches_per_epoch(caption_counts, G)`. No batch repeats a video; no pair repeats.
  """
  counts = np.asarray(caption_counts, np.int64)
  g = int(batch_size)
  r = batches_per_epoch(counts, g)
  if r == 0:
    raise ValueError(f"global batch size {g} needs at least {g} videos with captions; "
                     f"the split has {int((counts > 0).sum())}")
  rng = np.random.default_rng([seed, epoch, _ORDER_SALT])
  n = int(counts.sum())
  video_of = np.repeat(np.arange(len(counts)), counts)
  starts = np.cumsum(counts) - counts
  caption_of = np.arange(n) - np.repeat(starts, counts)
  stream = rng.permutation(n)
  # Keep each video's first min(c, R) pairs in stream order, then the first R * G.
  rank = np.empty(n, np.int64)
  order = np.argsort(video_of[stream], kind="stable")
  sorted_videos = video_of[stream][order]
  group_start = np.searchsorted(sorted_videos, sorted_videos, side="left")
  rank[order] = np.arange(n) - group_start
  stream = stream[rank < r][:r * g]

  stream_videos = video_of[stream].tolist()
  remaining = collections.Counter(stream_videos)
  by_count = collections.defaultdict(set)
  for v, c in remaining.items():
    by_count[c].add(v)
  positions = collections.defaultdict(collections.deque)
  for pos, v in enumerate(stream_videos):
    positions[v].append(pos)
  used = np.zeros(len(stream), bool)
  deferred = collections.deque()
  out = np.empty((r, g), np.int64)
  ptr = 0
  for t in range(r):
    left = r - t
    batch, members = [], set()

    def take(pos, batch=batch, members=members):
      v = stream_videos[pos]
      used[pos] = True
      batch.append(pos)
      members.add(v)
      by_count[remaining[v]].discard(v)
      remaining[v] -= 1
      by_count[remaining[v]].add(v)

    for v in sorted(by_count.get(left, ())):  # tight videos first
      q = positions[v]
      while used[q[0]]:
        q.popleft()
      take(q.popleft())
    keep = collections.deque()
    while deferred and len(batch) < g:
      pos = deferred.popleft()
      if used[pos]:
        continue
      if stream_videos[pos] in members:
        keep.append(pos)
      else:
        take(pos)
    deferred.extendleft(reversed(keep))
    while len(batch) < g:
      pos = ptr
      ptr += 1
      if used[pos]:
        continue
      if stream_videos[pos] in members:
        deferred.append(pos)
      else:
        take(pos)
    out[t] = batch
  out = rng.permuted(out, axis=1)  # slot order within a batch: random
  return np.stack([video_of[stream[out]], caption_of[stream[out]]], axis=-1)


# ----------------------------------------------------------------------------- datasets


class _TrainPairs(grain.MapDataset):
  """Local example k -> {"record", "caption", "rng"} of this process's batch slots."""

  def __init__(self, split: builders.SplitData, global_batch_size: int, shard_index: int,
               shard_count: int, seed: int, num_epochs: int | None, group_size: int = 1):
    super().__init__()
    self._records = split.records
    self._captions = split.captions
    counts = np.asarray([len(c) for c in split.captions], np.int64)
    if group_size < 1 or global_batch_size % group_size or len(counts) % group_size:
      raise ValueError(f"group_size={group_size} must divide global_batch_size="
                       f"{global_batch_size} and the {len(counts)} videos of split "
                       f"{split.split!r}")
    # Videos g*k .. g*k+g-1 form group k; groups are batched as units, so that every
    # batch holds whole groups (e.g. a clip and its time-reversed twin: hard negatives).
    self._counts = counts.reshape(-1, group_size).min(axis=1).tolist()
    self._group = group_size
    self._g = global_batch_size
    self._local = global_batch_size // shard_count
    self._offset = shard_index * self._local
    self._seed = seed
    self.steps_per_epoch = batches_per_epoch(self._counts, global_batch_size // group_size)
    if self.steps_per_epoch == 0:
      raise ValueError(f"Split {split.split!r} of {split.version_dir!r} has "
                       f"{sum(c > 0 for c in self._counts)} videos with captions, fewer "
                       f"than global_batch_size={global_batch_size}")
    per_epoch = self.steps_per_epoch * self._local
    # "Forever" is as many whole epochs as an index can count.
    self._epochs = sys.maxsize // 2 // per_epoch if num_epochs is None else num_epochs
    self._orders: dict[int, np.ndarray] = {}
    self._lock = threading.Lock()

  def __getstate__(self):
    state = self.__dict__.copy()
    state["_orders"], state["_lock"] = {}, None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return self._epochs * self.steps_per_epoch * self._local

  def _order(self, epoch: int) -> np.ndarray:
    with self._lock:
      if epoch not in self._orders:
        if len(self._orders) >= 2:
          self._orders.pop(min(self._orders))
        groups = distinct_video_batches(self._counts, self._g // self._group, self._seed,
                                        epoch)  # [R, G/g, 2]: (group, caption index)
        members = groups[..., :1] * self._group + np.arange(self._group)  # [R, G/g, g]
        captions = np.broadcast_to(groups[..., 1:], members.shape)
        self._orders[epoch] = np.stack([members, captions], -1).reshape(len(groups), -1, 2)
      return self._orders[epoch]

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range [0, {len(self)})")
    step, slot = divmod(int(index), self._local)
    epoch, t = divmod(step, self.steps_per_epoch)
    j = self._offset + slot
    video, caption = self._order(epoch)[t, j]
    return {"record": int(self._records[video]), "caption": self._captions[video][caption],
            "rng": np.random.default_rng([self._seed, epoch, t, j])}


@dataclasses.dataclass
class TrainLoader:
  """Training batches of one process (iterate it; the iterator has get/set_state).

  Attributes:
    dataset: grain IterDataset of local batches {"frames": uint8[b, F, S, S, 3],
      "input_ids": int32[b, L], "attention_mask": int32[b, L]}.
    steps_per_epoch: global batches per epoch (R).
    num_pairs: (video, caption) pairs in the split; pairs_per_epoch = R * G of them
      are used each epoch (the rest, < G plus captions beyond R of one video, are
      dropped at random, differently every epoch).
    num_videos: videos in the split.
    local_batch_size: b = global_batch_size / shard_count.
  """
  dataset: grain.IterDataset
  steps_per_epoch: int
  num_pairs: int
  pairs_per_epoch: int
  num_videos: int
  local_batch_size: int

  def __iter__(self):
    return iter(self.dataset)


def make_train_loader(data_dir: str, dataset_name: str, split: str, *, tokenizer,
                      global_batch_size: int, num_frames: int, num_prompts: int,
                      image_size: int, max_len: int, seed: int,
                      num_epochs: int | None = None, worker_count: int = 0,
                      shard_index: int | None = None, shard_count: int | None = None,
                      crop_scale: Sequence[float] = (0.5, 1.0),
                      crop_ratio: Sequence[float] = (3 / 4, 4 / 3), flip_prob: float = 0.5,
                      crop_interpolation: str = "bilinear", group_size: int = 1,
                      read_threads: int = 1, prefetch_batches: int = 2) -> TrainLoader:
  """Training pipeline over a prepared dataset.

  Args:
    data_dir: the prepare step's --out_dir.
    dataset_name: "msrvtt/9k", "msvd", "lsmdc", "moving_shapes/demo", ...
    split: "train" (MSR-VTT / LSMDC: official training set minus the hold-out),
      "train_full", "val", "test".
    tokenizer: a `ps_jax.tokenizer` tokenizer (ClipTokenizer, WordTokenizer).
    global_batch_size: G, summed over processes; a multiple of shard_count.
    num_frames: F = C * P frames per clip; num_prompts: P.
    image_size: S, output frames are S x S.
    max_len: L, caption length (EOS-padded; EOS kept when truncating).
    seed: order and augmentation seed.
    num_epochs: None repeats forever.
    worker_count: grain worker processes (0: read in this process).
    shard_index, shard_count: this process's slice of each global batch (defaults:
      jax.process_index(), jax.process_count()).
    crop_scale, crop_ratio: RandomResizedCrop ranges; flip_prob: horizontal flip
      probability (0 where captions name left/right, as in moving_shapes).
    crop_interpolation: resampling of the crop: "bilinear" (official: torch
      interpolate, no antialiasing) or "bicubic" (Pillow: ps_jax's earlier crop).
    group_size: g > 1 batches videos g*k .. g*k+g-1 of the split together (moving_shapes:
      g=2 puts every clip with its time-reversed twin, a hard negative); G % g == 0.
    read_threads, prefetch_batches: threads and batches read ahead per process.

  Returns:
    TrainLoader yielding {"frames": uint8[b, F, S, S, 3], "input_ids": int32[b, L],
    "attention_mask": int32[b, L]}, b = G / shard_count.
  """
  shard_index, shard_count = reading.resolve_shards(shard_index, shard_count)
  reading.check_common(global_batch_size, shard_count, num_frames, num_prompts, image_size, max_len)
  if crop_interpolation not in transforms.INTERPOLATIONS:
    raise ValueError(f"crop_interpolation {crop_interpolation!r} is not one of "
                     f"{transforms.INTERPOLATIONS}")
  split_data = builders.load_split(data_dir, dataset_name, split)
  pairs = _TrainPairs(split_data, global_batch_size, shard_index, shard_count, seed,
                      num_epochs, group_size)
  local = global_batch_size // shard_count
  ds = (pairs
        .map(reading.ReadFrames(reading.StoredFrames(split_data)))
        .map(transforms.SampleFrames(num_frames, num_prompts, "rand"))
        .map(transforms.RandomResizedCropFlip(image_size, crop_scale, crop_ratio, flip_prob,
                                              crop_interpolation))
        .map(transforms.TokenizeCaption(tokenizer, max_len))
        .map(transforms.SelectKeys(("frames", "input_ids", "attention_mask")))
        .batch(local, drop_remainder=True))
  num_pairs = sum(len(c) for c in split_data.captions)
  return TrainLoader(dataset=reading.to_iter(ds, worker_count, read_threads, prefetch_batches),
                     steps_per_epoch=pairs.steps_per_epoch, num_pairs=num_pairs,
                     pairs_per_epoch=pairs.steps_per_epoch * global_batch_size,
                     num_videos=split_data.num_videos, local_batch_size=local)
