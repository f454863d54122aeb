"""Reading a prepared dataset inside grain pipelines: frames of a record, shards, checks.

Layer: data (imports `builders`, `frame_store`). Shared by the training pipeline
(`pipeline`) and the evaluation pipeline (`eval_pipeline`). A record is read whole (its
encoded frames) and wrapped as a `frame_store.StoredVideo`; frames are decoded later,
only those sampled.
"""

from __future__ import annotations

import threading
from typing import Any

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import flags

from ps_jax.data import builders, frame_store


def resolve_shards(shard_index, shard_count):
  """(shard_index, shard_count), defaulting to this process and the process count."""
  if shard_index is None or shard_count is None:
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} not in [0, shard_count={shard_count})")
  return int(shard_index), int(shard_count)


class StoredFrames:
  """Reads records of a split as StoredVideo; opens the TFDS data source lazily per process."""

  def __init__(self, split: builders.SplitData):
    self.version_dir, self.physical_split = split.version_dir, split.physical_split
    self.sample_on_source = split.sample_on_source
    self._source = None
    self._lock = threading.Lock()

  def __getstate__(self):
    return {"version_dir": self.version_dir, "physical_split": self.physical_split,
            "sample_on_source": self.sample_on_source}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._source = None
    self._lock = threading.Lock()

  def __call__(self, record: int) -> frame_store.StoredVideo:
    if self._source is None:
      with self._lock:
        if self._source is None:
          builder = tfds.builder_from_directory(self.version_dir)
          self._source = builder.as_data_source(split=self.physical_split)
    return frame_store.StoredVideo.from_record(self._source[int(record)],
                                               self.sample_on_source)


class ReadFrames(grain.transforms.Map):
  """element["record"] -> element["video"], the record's `frame_store.StoredVideo`."""

  def __init__(self, frames: StoredFrames):
    self.frames = frames

  def map(self, element: dict[str, Any]) -> dict[str, Any]:
    return element | {"video": self.frames(element["record"])}


def check_common(global_batch_size, shard_count, num_frames, num_prompts, image_size,
                  max_len):
  """Raises ValueError for sizes a pipeline cannot produce."""
  if global_batch_size < 1 or global_batch_size % shard_count:
    raise ValueError(f"global_batch_size ({global_batch_size}) must be a positive multiple "
                     f"of shard_count ({shard_count})")
  if num_prompts < 1 or num_frames < 1 or num_frames % num_prompts:
    raise ValueError(f"num_frames ({num_frames}) must be a positive multiple of "
                     f"num_prompts ({num_prompts})")
  if image_size < 1:
    raise ValueError(f"image_size must be >= 1, got {image_size}")
  if max_len < 2:
    raise ValueError(f"max_len must be >= 2 (BOS and EOS), got {max_len}")


def to_iter(ds: grain.MapDataset, worker_count: int, read_threads: int,
             prefetch_batches: int) -> grain.IterDataset:
  """The MapDataset as an IterDataset: `read_threads` readers, `worker_count` processes."""
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                            prefetch_buffer_size=prefetch_batches))
  if worker_count > 0:
    if not flags.FLAGS.is_parsed():
      # grain 0.2.x reads its absl flags when starting workers; outside an absl app
      # nothing parses them, so take their defaults.
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=prefetch_batches))
  return it
