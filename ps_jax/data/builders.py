"""TFDS builders (ArrayRecord) for prepared video-text datasets, and reading them back.

On disk a prepared dataset is a TFDS dataset directory `DATA_DIR/<name>[/<config>]/
<version>/` written by a `tfds.core.GeneratorBasedBuilder` with
`file_format="array_record"` (no TensorFlow needed to write or read). One record per
video:

  video_id           str
  captions           str[num_captions]   every caption of the video
  frames             uint8[K, H, W, 3]   encoding "raw": the pixels, no codec
  jpeg, jpeg_offsets uint8[N], int64[K+1] encoding "jpeg": one JPEG file per frame
  frame_indices      int32[K]            index of each kept frame in the source video
  num_source_frames  int32               frames of the source video (n)

(`frame_store` describes and decodes the two encodings.) Records are written in
annotation order (`disable_shuffling`), so record i is the i-th written video of its
split. Next to the TFDS files, `ps_jax_index.json` holds every split's video ids and
captions (so the training pipeline can enumerate (video, caption) pairs without reading
frames), the frame encoding and the virtual splits: for MSR-VTT and LSMDC
`train` is the official training set minus a seeded hold-out, `val` is the hold-out and
`train_full` the whole official training set. `write_dataset` writes such a directory
(the prepare step's write phase).

Index format 2 (now) samples frames on `num_source_frames`; format 1 (datasets written
before it: raw frames only) samples among the K stored frames, as it did then.

Layer: data (imports `frame_store`).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import shutil
import tempfile
from typing import Callable, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import tqdm_utils

from ps_jax.data import beam_jobs
from ps_jax.data import frame_store

INDEX_FILE = "ps_jax_index.json"
INDEX_FORMAT = 2
READABLE_FORMATS = (1, 2)  # 1: sample among the stored frames (before the source count)
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")


def features(encoding: str = "raw") -> tfds.features.FeaturesDict:
  """The TFDS feature spec of one video record (see the module docstring)."""
  if encoding not in frame_store.ENCODINGS:
    raise ValueError(f"frame encoding {encoding!r} is not one of {frame_store.ENCODINGS}")
  if encoding == "raw":
    frames = {"frames": tfds.features.Tensor(shape=(None, None, None, 3), dtype=np.uint8,
                                             encoding=tfds.features.Encoding.BYTES)}
  else:
    frames = {"jpeg": tfds.features.Tensor(shape=(None,), dtype=np.uint8,
                                           encoding=tfds.features.Encoding.BYTES),
              "jpeg_offsets": tfds.features.Tensor(shape=(None,), dtype=np.int64)}
  return tfds.features.FeaturesDict({
      "video_id": tfds.features.Text(),
      "captions": tfds.features.Sequence(tfds.features.Text()),
      **frames,
      "frame_indices": tfds.features.Tensor(shape=(None,), dtype=np.int32),
      "num_source_frames": tfds.features.Tensor(shape=(), dtype=np.int32),
  })


@dataclasses.dataclass
class PlannedVideo:
  """A video to write: ids and captions now, frames on demand.

  `load()` returns (frames, frame_indices int32[K], num_source_frames): frames are
  uint8[K, H, W, 3] or a `frame_store.JpegFrames`, stored in the dataset's encoding.
  """
  video_id: str
  captions: tuple[str, ...]
  load: Callable[[], tuple[np.ndarray, np.ndarray, int]]


@dataclasses.dataclass(frozen=True)
class _RecordMaker:
  """PlannedVideo -> the feature dict of its record (picklable, for Beam workers)."""
  encoding: str
  jpeg_quality: int

  def __call__(self, video: PlannedVideo) -> dict:
    frames, frame_indices, num_source_frames = video.load()
    return {"video_id": video.video_id, "captions": list(video.captions),
            **frame_store.record_fields(frames, self.encoding, self.jpeg_quality),
            "frame_indices": np.asarray(frame_indices, np.int32),
            "num_source_frames": np.int32(num_source_frames)}


class _LocalDatasetInfo(tfds.core.DatasetInfo):
  """DatasetInfo of a locally prepared dataset: nothing to fetch from the TFDS bucket."""

  def initialize_from_bucket(self) -> None:
    # The base class makes a temporary directory (never removed) before looking there.
    pass


class _VideoTextBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes planned videos per split; `plan` maps physical split -> PlannedVideo list.

  With `beam=True` each split's examples are a Beam PTransform (TFDS then writes with
  its Beam writer, on the runner of the download config's `beam_options`).
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Pre-decoded uint8 frames and all captions per video."}
  DESCRIPTION = "Video-text retrieval dataset prepared by ps_jax.data.prepare."

  def __init__(self, *, plan: Mapping[str, Sequence[PlannedVideo]] | None = None,
               index: dict | None = None, extra_files: Mapping[str, str] | None = None,
               encoding: str = "raw", jpeg_quality: int = frame_store.DEFAULT_JPEG_QUALITY,
               beam: bool = False, **kwargs):
    self._plan = plan or {}
    self._beam = beam
    self._index = index
    self._extra_files = dict(extra_files or {})
    self._encoding, self._jpeg_quality = encoding, jpeg_quality
    super().__init__(file_format="array_record", **kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # No checksums or metadata files live beside this code; TFDS's lookup of them would
    # need the optional `importlib_resources` package.
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    return _LocalDatasetInfo(builder=self, description=self.DESCRIPTION,
                             features=features(self._encoding), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in self._plan}

  def _generate_examples(self, split):
    make = _RecordMaker(self._encoding, self._jpeg_quality)
    if self._beam:
      return beam_jobs.examples(self._plan[split], make)
    return ((i, make(video)) for i, video in enumerate(self._plan[split]))

  # TFDS announces "Downloading and preparing dataset ..." here; nothing is downloaded:
  # every record comes from local files (or is rendered in memory).
  def _log_download_bytes(self) -> None:
    print(f"writing {self.name}/{self.builder_config_name or 'default'} from local files "
          f"to {self.data_dir} (nothing is downloaded)", flush=True)

  def _log_download_done(self) -> None:
    print(f"{self.name}: prepared in {self.data_dir}", flush=True)

  def _download_and_prepare(self, dl_manager, download_config):
    super()._download_and_prepare(dl_manager, download_config)
    # self.data_dir is TFDS's incomplete directory here: renamed atomically when done.
    files = dict(self._extra_files)
    if self._index is not None:
      files[INDEX_FILE] = json.dumps(self._index)
    for name, text in files.items():
      with open(os.path.join(self.data_dir, name), "w", encoding="utf-8") as f:
        f.write(text)


class Msrvtt(_VideoTextBuilder, skip_registration=True):
  """MSR-VTT: config 9k or 7k training videos; test = 1k-A."""
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="9k"), tfds.core.BuilderConfig(name="7k")]


class Msvd(_VideoTextBuilder, skip_registration=True):
  """MSVD: train / val / test lists, all captions."""


class Lsmdc(_VideoTextBuilder, skip_registration=True):
  """LSMDC: training clips / 1,000-clip public test, one caption per clip."""


class Activitynet(_VideoTextBuilder, skip_registration=True):
  """ActivityNet Captions: one paragraph per video (train / val_1 test)."""


class Didemo(_VideoTextBuilder, skip_registration=True):
  """DiDeMo: one paragraph per video (train when given / val / test)."""


class MovingShapes(_VideoTextBuilder, skip_registration=True):
  """moving_shapes synthetic benchmark; config = a size preset of
  `moving_shapes.SIZES` or "custom" (decoded from its .mp4 files)."""
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n) for n in ("demo", "tiny", "custom")]


class Synthetic(_VideoTextBuilder, skip_registration=True):
  """Any video-text data made in memory (tests, benchmarks, custom data)."""


BUILDERS = {"msrvtt": Msrvtt, "msvd": Msvd, "lsmdc": Lsmdc, "activitynet": Activitynet,
            "didemo": Didemo, "moving_shapes": MovingShapes, "synthetic": Synthetic}


# ----------------------------------------------------------------------------- reading


class DatasetNotFoundError(FileNotFoundError):
  """No prepared dataset where asked; the message lists what is there."""


class SplitNotFoundError(ValueError):
  """A prepared dataset lacks the split asked for; the message lists the ones it has."""


def _versions(path: str) -> list[str]:
  if not os.path.isdir(path):
    return []
  found = [d for d in os.listdir(path) if _VERSION_RE.match(d)
           and os.path.isfile(os.path.join(path, d, "dataset_info.json"))]
  return sorted(found, key=lambda v: tuple(int(x) for x in v.split(".")))


def dataset_dir(data_dir: str, dataset_name: str) -> str:
  """Directory of the newest complete version of `dataset_name` under `data_dir`.

  Args:
    data_dir: the prepare step's `--out_dir`.
    dataset_name: "msrvtt/9k", "msvd", "lsmdc", "moving_shapes/demo", ...; a name
      without config works when exactly one config has been prepared.
  """
  base = os.path.join(data_dir, *dataset_name.split("/"))
  versions = _versions(base)
  if versions:
    return os.path.join(base, versions[-1])
  configs = sorted(c for c in (os.listdir(base) if os.path.isdir(base) else [])
                   if _versions(os.path.join(base, c)))
  if len(configs) == 1:
    return os.path.join(base, configs[0], _versions(os.path.join(base, configs[0]))[-1])
  if configs:
    raise DatasetNotFoundError(
        f"{base!r} holds several prepared configs {configs}: name one, e.g. "
        f"'{dataset_name}/{configs[0]}'")
  present = sorted(os.listdir(data_dir)) if os.path.isdir(data_dir) else []
  raise DatasetNotFoundError(
      f"No prepared dataset {dataset_name!r} in data_dir {data_dir!r} (it holds "
      f"{present}); run `python -m ps_jax.data.prepare --dataset ... --out_dir "
      f"{data_dir}` first")


def read_index(version_dir: str) -> dict:
  """Reads `ps_jax_index.json` of a prepared dataset version directory."""
  path = os.path.join(version_dir, INDEX_FILE)
  try:
    with open(path, encoding="utf-8") as f:
      index = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise DatasetNotFoundError(f"{path!r} is missing or unreadable ({e}); was this "
                               "directory written by ps_jax.data.prepare?") from e
  if index.get("format") not in READABLE_FORMATS:
    raise ValueError(f"{path!r} has index format {index.get('format')}, expected one of "
                     f"{READABLE_FORMATS}")
  return index


@dataclasses.dataclass
class SplitData:
  """One (possibly virtual) split of a prepared dataset.

  Attributes:
    version_dir: the TFDS dataset directory.
    split: requested split name; physical_split: the TFDS split it reads.
    records: int64[V] record index (in the physical split) of each video.
    video_ids: V ids; captions: V caption tuples (same order as `records`).
    index: the whole `ps_jax_index.json`.
  """
  version_dir: str
  split: str
  physical_split: str
  records: np.ndarray
  video_ids: list[str]
  captions: list[tuple[str, ...]]
  index: dict

  @property
  def num_videos(self) -> int:
    return len(self.video_ids)

  @property
  def sample_on_source(self) -> bool:
    """Whether sampling uses `num_source_frames` (index format >= 2) or the stored K."""
    return self.index["format"] >= 2

  @property
  def encoding(self) -> str:
    """The records' frame encoding, "raw" or "jpeg" (format 1 datasets are raw)."""
    return self.index.get("frames", {}).get("encoding", "raw")

  def open_source(self):
    """The TFDS ArrayRecord data source of the physical split (random access by record)."""
    builder = tfds.builder_from_directory(self.version_dir)
    return builder.as_data_source(split=self.physical_split)


def load_split(data_dir: str, dataset_name: str, split: str) -> SplitData:
  """Resolves a split name ("train", "val", "test", "train_full") of a prepared dataset."""
  version_dir = dataset_dir(data_dir, dataset_name)
  index = read_index(version_dir)
  splits = index["splits"]
  if split not in splits:
    hint = (" (DiDeMo's training split is written when --anno_dir holds your "
            "train_data.json)" if index.get("dataset") == "didemo" and split == "train"
            else "")
    raise SplitNotFoundError(f"Split {split!r} not in {version_dir!r}; available: "
                             f"{sorted(splits)}{hint}")
  spec = splits[split]
  physical = index["physical"][spec["source"]]
  records = (np.arange(len(physical["video_ids"]), dtype=np.int64)
             if spec["records"] is None else np.asarray(spec["records"], np.int64))
  return SplitData(version_dir=version_dir, split=split, physical_split=spec["source"],
                   records=records,
                   video_ids=[physical["video_ids"][r] for r in records],
                   captions=[tuple(physical["captions"][r]) for r in records],
                   index=index)


# ----------------------------------------------------------------------------- writing


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
                      str(BUILDERS[dataset].VERSION))


def write_dataset(out_dir: str, dataset: str,
                  videos: Mapping[str, Sequence[PlannedVideo]], *,
                  config: str | None = None, settings: dict | None = None,
                  holdout_ids: Sequence[str] | None = None,
                  extra_files: Mapping[str, str] | None = None,
                  encoding: str = "raw",
                  jpeg_quality: int = frame_store.DEFAULT_JPEG_QUALITY,
                  progress: bool = True, beam_options=None) -> str:
  """Writes videos as a TFDS ArrayRecord dataset plus its `ps_jax_index.json`.

  This is the prepare step's write phase; it also serves datasets made in memory
  (dataset "synthetic").

  Args:
    out_dir: TFDS data_dir.
    dataset: a key of `BUILDERS`.
    videos: physical split -> PlannedVideo list (record order); empty splits are left out.
    config: builder config name (e.g. "9k"), None for builders without configs.
    settings: recorded in the index; a later prepare with other settings refuses to
      reuse the directory.
    holdout_ids: training video ids held out for validation (see `virtual_splits`).
    extra_files: {file name: text} written next to the dataset (e.g. vocab.json).
    encoding: frame encoding of the records, "raw" or "jpeg" (`frame_store`); frames
      that `load()` gives in the other form are converted.
    jpeg_quality: quality of frames encoded here (JpegFrames are stored as they are).
    progress: show TFDS's progress bars.
    beam_options: None writes in this process; else Beam `PipelineOptions` (see
      `beam_jobs.pipeline_options`): the records are made and written by a Beam pipeline
      (same records, same order; the shard files may be cut differently).

  Returns:
    The dataset version directory.
  """
  features(encoding)  # checks the encoding
  plan = {split: list(v) for split, v in videos.items() if v}
  if not plan:
    raise ValueError(f"Nothing to write for {dataset}: every split is empty")
  written = {split: [v.video_id for v in items] for split, items in plan.items()}
  index = {"format": INDEX_FORMAT, "dataset": dataset, "config": config,
           "settings": settings or {},
           "frames": {"encoding": encoding,
                      **({"jpeg_quality": jpeg_quality} if encoding == "jpeg" else {})},
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
    builder = BUILDERS[dataset](data_dir=out_dir, config=config, plan=plan, index=index,
                                extra_files=extra_files, encoding=encoding,
                                jpeg_quality=jpeg_quality, beam=beam_options is not None)
    builder.download_and_prepare(
        download_dir=download_dir,
        download_config=tfds.download.DownloadConfig(try_download_gcs=False,
                                                     beam_options=beam_options))
  finally:
    tqdm_utils.display_progress_bar(bars)
    shutil.rmtree(download_dir, ignore_errors=True)
  return version_dir
