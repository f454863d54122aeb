"""Offline video index: embed every video once, on all devices and hosts, and write an index.

  python -m ps_jax.index_videos --model PATH --dataset_dir D --dataset NAME --split S \
      --out INDEX [--append]
  python -m ps_jax.index_videos --model PATH --video_dir DIR --out INDEX [--append]
  python -m ps_jax.main --config C --workdir W --mode index   (the workdir's model)

`--model` is anything `ps_jax.load_model` reads: a ps_jax training workdir (its best
checkpoint, else the latest), a Hugging Face CLIP directory or an official `.pth`.
Videos come from a prepared dataset split (`ps_jax.data.prepare`; frames already
decoded) or from raw files under `--video_dir` (decoded with PyAV, `--frames_per_video`
evenly spread frames resized to `--short_side`, as the prepare step does; the id of a
video is its file stem). Either way each video is processed like evaluation does it:
`uniform` chunked sampling of F = C * P frames, bicubic short-side resize and centre
crop to the model's image size, CLIP normalisation, then `encode_video`.

Every process decodes its slice of each global batch (threads), the batch is encoded
on the whole (data, fsdp) mesh, and process 0 writes the index (`ps_jax.index`): ids,
L2-normalised embeddings (float16 by default), the model fingerprint and the metadata
that `ps_jax.search` needs to embed text queries later (model path, tokenizer, caption
length, frames, image size). A video that cannot be decoded is skipped and reported
(stderr and `INDEX/index_report.jsonl`); it never stops the run. `--append` adds the
videos whose id is not in the index yet (re-run it when new files arrive) and refuses
a model other than the one that built the index. On several hosts run the same command
on every host (`jax.distributed.initialize()` as in `ps_jax.main`); every process reads
the source, and with --append the index, so both must be on a shared filesystem.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import datetime
import json
import os
import sys
import threading
import time
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

from ps_jax import index as index_lib

REPORT_FILE = "index_report.jsonl"
# Status codes of a batch slot: 0 embedded, -1 padding, > 0 a skip reason (VideoError.reason).
SKIP_REASONS = ("missing", "empty_file", "unreadable", "no_video_stream", "corrupt", "error")
DEFAULT_FRAMES_PER_VIDEO = 32   # as ps_jax.data.prepare
DEFAULT_SHORT_SIDE = 256        # as ps_jax.data.prepare for real datasets
DEFAULT_MAX_LEN = 77


class IndexBuildError(ValueError):
  """Bad arguments or inputs for building an index; the message names the flag or file."""


def say(message: str) -> None:
  """Progress messages for the user, from process 0 only."""
  if jax.process_index() == 0:
    print(message, flush=True)


# ----------------------------------------------------------------------------- model


def model_description(model) -> dict:
  """What defines the computation of a PromptSwitch module (for the fingerprint).

  The CLIP architecture and the Prompt Switch options; not the `Compute` settings
  (dtype, remat, kernels), which change how, not what, is computed.
  """
  return {"clip": model.clip.to_hf_dict(), "prompt_switch": dataclasses.asdict(model.config)}


def model_fingerprint(model, params) -> str:
  """`index.fingerprint_params` over `model_description(model)` and all of `params`."""
  return index_lib.fingerprint_params(model_description(model), params)


def tokenizer_spec(model_path: str, model_file: Optional[dict] = None) -> Optional[str]:
  """How search finds the tokenizer of a model: a path, "moving_shapes", or None (unknown).

  For a training workdir (`model_file` = its ps_jax_model.json) this follows
  `train.build_tokenizer`: config.data.tokenizer, else the synthetic vocabulary, else
  the init checkpoint's directory. A HF CLIP directory with tokenizer files is its own.
  """
  if model_file is not None:
    data = model_file.get("config", {}).get("data", {})
    init = model_file.get("config", {}).get("model", {}).get("init_from", "")
    if data.get("tokenizer"):
      return os.path.abspath(data["tokenizer"])
    if str(data.get("name", "")).startswith("moving_shapes"):
      return "moving_shapes"
    if init and os.path.isdir(init):
      return os.path.abspath(init)
    return None
  if os.path.isdir(model_path) and all(
      os.path.exists(os.path.join(model_path, n)) for n in ("vocab.json", "merges.txt")):
    return os.path.abspath(model_path)
  return None


def load_tokenizer(spec: str):
  """A tokenizer from `tokenizer_spec`'s output, or a `--tokenizer` flag value.

  "moving_shapes" (or "moving_shapes/<size>") is the synthetic benchmark's word
  vocabulary; a directory holds CLIP tokenizer files; a `.json` file is a word list.
  """
  if spec.startswith("moving_shapes"):
    from ps_jax.data import moving_shapes  # pylint: disable=g-import-not-at-top
    return moving_shapes.make_tokenizer()
  from ps_jax import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  if not os.path.exists(spec):
    raise IndexBuildError(f"tokenizer {spec!r} does not exist (a directory with CLIP "
                          "tokenizer files, a word-vocabulary .json, or 'moving_shapes')")
  return tokenizer_lib.load_tokenizer(spec)


@dataclasses.dataclass
class IndexModel:
  """A model ready to embed videos or text, and how to load it again.

  Attributes:
    model: the PromptSwitch module.
    params: its float32 params (host or device arrays).
    fingerprint: `model_fingerprint(model, params)`.
    path: absolute path given to `ps_jax.load_model`, or None for an in-memory model
      (search then needs `--model`).
    load_kwargs: JSON-able keyword arguments of `ps_jax.load_model` besides the path.
    defaults: evaluation settings of the model: num_frames, image_size, max_len,
      tokenizer (a `tokenizer_spec` or None).
  """
  model: Any
  params: Any
  fingerprint: str
  path: Optional[str]
  load_kwargs: dict
  defaults: dict

  @classmethod
  def from_params(cls, model, params, *, path: Optional[str] = None,
                  load_kwargs: Optional[dict] = None, num_frames: Optional[int] = None,
                  image_size: Optional[int] = None, max_len: Optional[int] = None,
                  tokenizer: Optional[str] = None) -> "IndexModel":
    """Wraps an in-memory (model, params); defaults follow the official test recipe
    (F = 2 chunks of P frames, the vision tower's image size, 77 tokens)."""
    p = model.config.num_prompts
    defaults = {"num_frames": num_frames or (2 * p if p else 12),
                "image_size": image_size or model.clip.vision.image_size,
                "max_len": max_len or min(DEFAULT_MAX_LEN,
                                          model.clip.text.max_position_embeddings),
                "tokenizer": tokenizer}
    return cls(model, params, model_fingerprint(model, params), path, dict(load_kwargs or {}),
               defaults)

  @classmethod
  def load(cls, path: str, load_kwargs: Optional[dict] = None) -> "IndexModel":
    """`ps_jax.load_model(path, **load_kwargs)` plus the defaults a workdir records."""
    from ps_jax import api, checkpoints  # pylint: disable=g-import-not-at-top

    if not os.path.exists(path):
      raise IndexBuildError(f"--model {path!r} does not exist (a ps_jax workdir, a HF CLIP "
                            "directory or an official .pth checkpoint)")
    path = os.path.abspath(path)
    load_kwargs = dict(load_kwargs or {})
    model, params = api.load_model(path, **load_kwargs)
    model_file = None
    if os.path.exists(os.path.join(path, checkpoints.MODEL_FILE)):
      model_file = checkpoints.read_model_file(path)
    data = (model_file or {}).get("config", {}).get("data", {})
    return cls.from_params(model, params, path=path, load_kwargs=load_kwargs,
                           num_frames=data.get("eval_num_frames"),
                           image_size=data.get("image_size"), max_len=data.get("max_len"),
                           tokenizer=tokenizer_spec(path, model_file))


def text_params(params: dict) -> dict:
  """The subtree `encode_text` reads: the text tower, its projection and logit_scale."""
  return {k: params[k] for k in ("text_model", "text_projection", "logit_scale") if k in params}


# ----------------------------------------------------------------------------- sources


@dataclasses.dataclass
class Loaded:
  """One decoded video: frames uint8[K, H, W, 3] and problems worked around."""
  frames: np.ndarray
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
  """
  ids: list[str]
  load: Callable[[int], Loaded]
  paths: Optional[list[str]]
  info: dict

  def describe(self) -> str:
    if self.info["kind"] == "dataset":
      return (f"{self.info['dataset']} split {self.info['split']} from "
              f"{self.info['dataset_dir']}")
    return f"video files under {self.info['video_dir']}"


def dataset_source(dataset_dir: str, dataset: str, split: str) -> VideoSource:
  """The videos of a prepared dataset split (`ps_jax.data.prepare`), frames as stored."""
  from ps_jax.data import builders  # pylint: disable=g-import-not-at-top

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
    return Loaded(np.asarray(opened[0][int(split_data.records[i])]["frames"]), [])

  info = {"kind": "dataset", "dataset_dir": os.path.abspath(dataset_dir), "dataset": dataset,
          "split": split, "version_dir": split_data.version_dir}
  return VideoSource(list(split_data.video_ids), load, None, info)


def video_dir_source(video_dir: str, frames_per_video: int = DEFAULT_FRAMES_PER_VIDEO,
                     short_side: Optional[int] = DEFAULT_SHORT_SIDE) -> VideoSource:
  """Raw video files under `video_dir` (recursive), id = file stem, sorted by id.

  Each video is decoded with `ps_jax.data.video.decode_video`: `frames_per_video` evenly
  spread frames, short side resized to `short_side` (None: native size).
  """
  from ps_jax.data import prepare  # pylint: disable=g-import-not-at-top
  from ps_jax.data import video as video_lib  # pylint: disable=g-import-not-at-top

  if not os.path.isdir(video_dir):
    raise IndexBuildError(f"--video_dir {video_dir!r} is not a directory")
  if frames_per_video < 1:
    raise IndexBuildError(f"--frames_per_video must be >= 1, got {frames_per_video}")
  if short_side is not None and short_side < 1:
    raise IndexBuildError(f"--short_side must be >= 1 (or 0 for the native size), got "
                          f"{short_side}")
  files = prepare.index_video_files(video_dir)
  if not files:
    raise IndexBuildError(f"--video_dir {video_dir!r} holds no video file (extensions "
                          f"{', '.join(prepare.VIDEO_EXTENSIONS)})")
  ids = sorted(files)
  paths = [files[i] for i in ids]

  def load(i: int) -> Loaded:
    decoded = video_lib.decode_video(paths[i], num_frames=frames_per_video,
                                     short_side=short_side, threads=1)
    return Loaded(decoded.frames, list(decoded.warnings))

  info = {"kind": "video_dir", "video_dir": os.path.abspath(video_dir),
          "frames_per_video": frames_per_video, "short_side": short_side}
  return VideoSource(ids, load, paths, info)


def eval_clip(frames: np.ndarray, num_frames: int, num_prompts: int,
              image_size: int) -> np.ndarray:
  """What evaluation feeds the model: uint8[K, H, W, 3] -> uint8[F, S, S, 3].

  `uniform` chunked sampling of F frames, then a bicubic short-side resize to S and a
  centre crop (`ps_jax.data.transforms.resize_center_crop`).
  """
  from ps_jax.data import sampling, transforms  # pylint: disable=g-import-not-at-top

  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
    raise ValueError(f"frames must be uint8[K>0, H, W, 3], got {frames.dtype}{frames.shape}")
  idx = sampling.sample_frame_indices(len(frames), num_frames, num_prompts, "uniform")
  return transforms.resize_center_crop(frames[idx], image_size)


# ----------------------------------------------------------------------------- embedding


@dataclasses.dataclass
class Skipped:
  """A video that was not indexed: `reason` from SKIP_REASONS, `detail` the error."""
  video_id: str
  path: Optional[str]
  reason: str
  detail: str


@dataclasses.dataclass
class EmbedResult:
  """Embeddings of the videos that could be used.

  Attributes:
    ids: N ids embedded, in source order.
    embeddings: float32[N, E] L2-normalised video embeddings.
    skipped: videos that could not be decoded (on any process).
    partial: (video_id, warnings) of videos indexed despite decoding problems (those
      this process decoded).
    seconds: wall time of the embedding loop.
  """
  ids: list[str]
  embeddings: np.ndarray
  skipped: list[Skipped]
  partial: list[tuple[str, list[str]]]
  seconds: float


_ENCODERS: dict = {}


def _allgather(x) -> np.ndarray:
  """A batch-sharded global array -> the whole array, in global row order, on every process."""
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _work(source: VideoSource, position: int, num_frames: int, num_prompts: int,
          image_size: int):
  """(clip uint8[F, S, S, 3] or None, status code, warnings, error detail). Never raises."""
  from ps_jax.data import video as video_lib  # pylint: disable=g-import-not-at-top
  try:
    loaded = source.load(position)
    clip = eval_clip(loaded.frames, num_frames, num_prompts, image_size)
    return clip, 0, loaded.warnings, ""
  except video_lib.VideoError as e:
    reason = e.reason if e.reason in SKIP_REASONS else "error"
    return None, 1 + SKIP_REASONS.index(reason), [], e.detail
  except Exception as e:  # pylint: disable=broad-except  # a bad video never stops the run
    return None, 1 + SKIP_REASONS.index("error"), [], f"{type(e).__name__}: {e}"


def embed_source(imodel: IndexModel, source: VideoSource, positions: Sequence[int], *,
                 mesh=None, batch_size: Optional[int] = None, num_frames: int,
                 image_size: int, num_workers: Optional[int] = None,
                 prefetch_batches: int = 2, progress: bool = True) -> EmbedResult:
  """Embeds `source` videos at `positions` on every device of every process.

  Global batch t holds positions [t*G, (t+1)*G); process p decodes b = G / processes of
  them (in `num_workers` threads, `prefetch_batches` batches ahead), the batch is
  encoded sharded over the mesh, and embeddings, statuses and positions are gathered on
  every process. Slots of videos that fail to decode hold zero frames and are dropped.

  Args:
    imodel: the model (params are placed replicated on the mesh here).
    source: the videos; positions: which of them, in order.
    mesh: a ("data", "fsdp") mesh (default: all devices, `sharding.make_mesh()`).
    batch_size: G, a multiple of the device and process counts (default 8 per device).
    num_frames: F, a multiple of the model's prompts; image_size: S.
    num_workers: decoding threads per process (default min(8, CPUs)).
    progress: a tqdm bar in videos/s on process 0.

  Returns:
    EmbedResult with float32[N, E] embeddings of the N videos that decoded.
  """
  from ps_jax import embed, sharding  # pylint: disable=g-import-not-at-top

  mesh = mesh if mesh is not None else sharding.make_mesh()
  num_devices, num_processes = mesh.size, jax.process_count()
  g = batch_size or 8 * num_devices
  if g < 1 or g % num_devices or g % num_processes:
    raise IndexBuildError(f"--batch_size {g} must be a positive multiple of the "
                          f"{num_devices} devices and {num_processes} processes")
  p = max(imodel.model.config.num_prompts, 1)
  if num_frames < 1 or num_frames % p:
    raise IndexBuildError(f"--num_frames {num_frames} must be a positive multiple of the "
                          f"model's {p} prompts")
  positions = list(positions)
  b, lo = g // num_processes, jax.process_index() * (g // num_processes)
  num_batches = -(-len(positions) // g)
  rep = sharding.replicated(mesh)
  params = jax.device_put(imodel.params, rep)
  key = (imodel.model, mesh)
  if key not in _ENCODERS:  # one jitted function per (model, mesh): compiled once
    _ENCODERS[key] = embed.make_encoders(imodel.model, mesh, rep)[0]
  encode_video = _ENCODERS[key]
  workers = num_workers or min(8, os.cpu_count() or 1)
  pool = concurrent.futures.ThreadPoolExecutor(max(workers, 1))

  def submit(t):
    slots = positions[t * g + lo:t * g + lo + b]
    return [pool.submit(_work, source, pos, num_frames, p, image_size) for pos in slots]

  bar = None
  if progress and jax.process_index() == 0:
    import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm.tqdm(total=len(positions), unit=" videos", desc="index", dynamic_ncols=True,
                    mininterval=1.0, file=sys.stderr)
  done, skipped, partial = [], [], []
  pending = collections.deque()
  start = time.perf_counter()
  shape = (b, num_frames, image_size, image_size, 3)
  try:
    for t in range(min(prefetch_batches + 1, num_batches)):
      pending.append(submit(t))
    for t in range(num_batches):
      futures = pending.popleft()
      if t + len(pending) + 1 < num_batches:
        pending.append(submit(t + len(pending) + 1))
      frames = np.zeros(shape, np.uint8)
      status = np.full((b,), -1, np.int32)
      where = np.full((b,), -1, np.int32)
      details = {}
      for j, fut in enumerate(futures):
        clip, code, warnings, detail = fut.result()
        where[j], status[j] = positions[t * g + lo + j], code
        if clip is not None:
          frames[j] = clip
        if code:
          details[int(where[j])] = detail
        elif warnings:
          partial.append((source.ids[where[j]], warnings))
      # Status and position travel as global arrays laid out like the frames, so every
      # gathered embedding row keeps its video whatever order the mesh gives the hosts.
      batch = sharding.global_batch({"frames": frames, "status": status, "where": where},
                                    mesh)
      emb = _allgather(encode_video(params, batch["frames"]))
      status, where = _allgather(batch["status"]), _allgather(batch["where"])
      for j in range(g):
        pos = int(where[j])
        if status[j] == 0:
          done.append((pos, emb[j]))
        elif status[j] > 0:
          detail = details.get(pos, "decoded by another process: see its log")
          skip = Skipped(source.ids[pos], source.paths[pos] if source.paths else None,
                         SKIP_REASONS[status[j] - 1], detail)
          skipped.append((pos, skip))
          if pos in details:
            _warn(f"skipped {skip.video_id} ({skip.reason}): {skip.detail}", bar)
      if bar is not None:
        bar.update(int((status >= 0).sum()))
        if skipped:
          bar.set_postfix(skipped=len(skipped), refresh=False)
  finally:
    if bar is not None:
      bar.close()
    for futures in pending:
      for fut in futures:
        fut.cancel()
    pool.shutdown(wait=True)
  done.sort(key=lambda item: item[0])  # source order, whatever the mesh's row order
  skipped = [skip for _, skip in sorted(skipped, key=lambda item: item[0])]
  ids = [source.ids[pos] for pos, _ in done]
  dim = imodel.model.clip.projection_dim
  embeddings = (np.stack([e for _, e in done]).astype(np.float32) if done
                else np.zeros((0, dim), np.float32))
  return EmbedResult(ids, embeddings, skipped, partial, time.perf_counter() - start)


def _warn(message: str, bar=None) -> None:
  if bar is not None:
    bar.write(message, file=sys.stderr)
  else:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- building


@dataclasses.dataclass
class IndexSummary:
  """Outcome of `build_index`.

  Attributes:
    out: the index directory.
    added: videos embedded and written by this run; count: rows in the index now.
    skipped: videos that could not be decoded (also in out/index_report.jsonl).
    partial: videos indexed despite decoding problems.
    already_indexed: videos of the source whose id the index already held (--append).
    seconds: embedding time; videos_per_s: videos processed (added + skipped) per second.
  """
  out: str
  added: int
  count: int
  skipped: list[Skipped]
  partial: list[tuple[str, list[str]]]
  already_indexed: int
  seconds: float
  videos_per_s: float

  def line(self) -> str:
    reasons = collections.Counter(s.reason for s in self.skipped)
    why = f" ({', '.join(f'{k} {v}' for k, v in sorted(reasons.items()))})" if reasons else ""
    already = f", {self.already_indexed} already indexed" if self.already_indexed else ""
    return (f"indexed {self.added} videos in {self.seconds:.1f} s "
            f"({self.videos_per_s:.1f} videos/s), skipped {len(self.skipped)}{why}, "
            f"partial {len(self.partial)}{already} -> {self.out} ({self.count} videos)")


def _settings(name: str, given, recorded, default):
  """A setting's value: the index's recorded one on append (a different --flag is refused)."""
  if recorded is not None:
    if given is not None and given != recorded:
      raise IndexBuildError(f"--{name} {given!r} differs from the index's {recorded!r}: "
                            "embeddings of one index must be computed the same way")
    return recorded
  return default if given is None else given


def _write_report(out: str, result: EmbedResult, run: str) -> None:
  if not result.skipped and not result.partial:
    return
  with open(os.path.join(out, REPORT_FILE), "a", encoding="utf-8") as f:
    for s in result.skipped:
      f.write(json.dumps({"run": run, "status": "skipped", **dataclasses.asdict(s)}) + "\n")
    for video_id, warnings in result.partial:
      f.write(json.dumps({"run": run, "status": "partial", "video_id": video_id,
                          "detail": "; ".join(warnings)}) + "\n")


def build_index(out: str, source: VideoSource, imodel: Optional[IndexModel] = None, *,
                model_path: Optional[str] = None, load_kwargs: Optional[dict] = None,
                append: bool = False, overwrite: bool = False,
                num_frames: Optional[int] = None, image_size: Optional[int] = None,
                max_len: Optional[int] = None, tokenizer: Optional[str] = None,
                dtype: str = "float16", batch_size: Optional[int] = None, mesh=None,
                num_workers: Optional[int] = None, progress: bool = True) -> IndexSummary:
  """Embeds the videos of `source` and writes (or appends to) the index at `out`.

  Args:
    out: index directory.
    source: `dataset_source(...)` or `video_dir_source(...)`.
    imodel: the model; or give `model_path` (+ `load_kwargs`) to load it; on append
      both default to the model recorded in the index.
    append: add the videos whose id is not in the index (refuses another model);
      otherwise `out` must not hold an index unless `overwrite`.
    num_frames, image_size, max_len, tokenizer: evaluation settings; default: the
      model's (a workdir's config, else 2 x prompts frames, the vision image size, 77
      tokens); on append the index's (a different value is refused).
    dtype: storage dtype of a new index ("float16" or "float32").
    batch_size, mesh, num_workers, progress: see `embed_source`.

  Returns:
    IndexSummary (process 0 writes; every process returns the same counts).
  """
  existing = None
  has_index = os.path.exists(os.path.join(out, index_lib.META_FILE))
  if append:
    if not has_index:
      raise IndexBuildError(f"--append: {out!r} holds no index yet (build it first, "
                            "without --append)")
    existing = index_lib.load_index(out, mmap=True, check_norms=False)
  elif has_index and not overwrite:
    raise IndexBuildError(f"--out {out!r} already holds an index: pass --append to add "
                          "videos to it or --overwrite to replace it")
  recorded = existing.meta.get("metadata", {}) if existing is not None else {}
  if imodel is None:
    path = model_path or recorded.get("model_path")
    if not path:
      raise IndexBuildError("--model is required" + (
          f" (the index {out!r} records no model path)" if existing is not None else ""))
    kwargs = load_kwargs if load_kwargs is not None else recorded.get("load_model_kwargs", {})
    imodel = IndexModel.load(path, kwargs)
  if existing is not None and imodel.fingerprint != existing.fingerprint:
    raise index_lib.FingerprintMismatchError(
        f"Cannot append to {out!r}: it was built by model {existing.fingerprint} "
        f"({recorded.get('model_path') or 'unknown path'}), but --model "
        f"{imodel.path or '(in memory)'} is {imodel.fingerprint}; embeddings of two models "
        "are not comparable: build a new index with --out")
  d = imodel.defaults
  num_frames = _settings("num_frames", num_frames, recorded.get("num_frames"), d["num_frames"])
  image_size = _settings("image_size", image_size, recorded.get("image_size"), d["image_size"])
  max_len = _settings("max_len", max_len, recorded.get("max_len"), d["max_len"])
  tokenizer = _settings("tokenizer", tokenizer, recorded.get("tokenizer"), d["tokenizer"])
  if tokenizer is None:
    raise IndexBuildError(f"cannot tell which tokenizer goes with --model {imodel.path!r}, "
                          "and search needs it to embed queries: pass --tokenizer (a "
                          "directory with CLIP tokenizer files, a word-vocabulary .json, "
                          "or 'moving_shapes')")
  vocab = load_tokenizer(tokenizer).vocab_size
  if vocab > imodel.model.clip.text.vocab_size:
    raise IndexBuildError(f"--tokenizer {tokenizer!r} has {vocab} ids but the model's text "
                          f"tower only {imodel.model.clip.text.vocab_size}")
  if max_len > imodel.model.clip.text.max_position_embeddings:
    raise IndexBuildError(f"--max_len {max_len} exceeds the model's "
                          f"{imodel.model.clip.text.max_position_embeddings} text positions")

  known = set(existing.ids) if existing is not None else set()
  positions = [i for i, video_id in enumerate(source.ids) if video_id not in known]
  already = len(source.ids) - len(positions)
  name = imodel.path or "an in-memory model"
  say(f"indexing {len(positions)} videos ({source.describe()}"
      + (f"; {already} already indexed" if already else "") + f") with {name}: "
      f"{num_frames} frames of {image_size} px, on {jax.device_count()} devices "
      f"({jax.process_count()} processes)")
  result = embed_source(imodel, source, positions, mesh=mesh, batch_size=batch_size,
                        num_frames=num_frames, image_size=image_size,
                        num_workers=num_workers, progress=progress)
  run = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  count = len(existing) if existing is not None else 0
  if jax.process_index() == 0:
    if result.ids:
      if existing is None:
        from ps_jax import __version__  # pylint: disable=g-import-not-at-top
        metadata = {"model_path": imodel.path, "load_model_kwargs": imodel.load_kwargs,
                    "model": model_description(imodel.model), "tokenizer": tokenizer,
                    "max_len": max_len, "num_frames": num_frames, "image_size": image_size,
                    "num_prompts": imodel.model.config.num_prompts,
                    "frame_sampling": "uniform", "data": source.info,
                    "ps_jax_version": __version__}
        index_lib.write_index(out, result.ids, result.embeddings, imodel.fingerprint,
                              metadata, dtype, source=source.describe(), overwrite=overwrite)
        if os.path.exists(os.path.join(out, REPORT_FILE)):  # the replaced index's
          os.remove(os.path.join(out, REPORT_FILE))
      else:
        index_lib.append_to_index(out, result.ids, result.embeddings, imodel.fingerprint,
                                  source=source.describe())
    if os.path.isdir(out):
      _write_report(out, result, run)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("ps_jax.index_videos written")
  count += len(result.ids)
  processed = len(result.ids) + len(result.skipped)
  summary = IndexSummary(out, len(result.ids), count, result.skipped, result.partial, already,
                         result.seconds, processed / max(result.seconds, 1e-9))
  if not result.ids and positions:
    raise IndexBuildError(f"none of the {len(positions)} videos could be decoded; nothing "
                          f"was written to {out!r} ({summary.line()})")
  return summary


def index_from_config(config, workdir: str, *, split: Optional[str] = None,
                      out: Optional[str] = None, append: bool = False) -> IndexSummary:
  """`python -m ps_jax.main --mode index`: a split of the config's dataset, embedded by
  the workdir's model (best checkpoint, else latest; else config.model.init_from).

  Args:
    config: the experiment config; workdir: the training workdir.
    split: default config.data.test_split.
    out: default <workdir>/index_<split>.
    append: add to an existing index (videos not yet in it).
  """
  from ps_jax import checkpoints, train  # pylint: disable=g-import-not-at-top

  train.validate_config(config)
  split = split or config.data.test_split
  out = out or os.path.join(workdir, f"index_{split}")
  if not append and os.path.exists(os.path.join(out, index_lib.META_FILE)):
    raise IndexBuildError(f"{out!r} already holds an index: pass --index_append to add the "
                          "split's new videos to it, or another --index_dir")
  root = train.ensure_dataset(config, workdir)
  steps = os.path.join(workdir, "checkpoints")
  if (os.path.exists(os.path.join(workdir, checkpoints.MODEL_FILE)) and os.path.isdir(steps)
      and any(name.isdigit() for name in os.listdir(steps))):
    model_path, kwargs = workdir, {}
  elif config.model.init_from:
    model_path, kwargs = config.model.init_from, train.model_options(config)
    if not os.path.isdir(model_path):
      tok = train.build_tokenizer(config)
      kwargs["clip_config"] = train.clip_config_from(config, tok).to_hf_dict()
  else:
    raise IndexBuildError(f"--mode index needs a checkpoint in {workdir!r} or "
                          "config.model.init_from (HF CLIP weights or a .pth)")
  spec = tokenizer_spec(model_path, {"config": config.to_dict()})
  summary = build_index(out, dataset_source(root, config.data.name, split),
                        model_path=model_path, load_kwargs=kwargs, append=append,
                        num_frames=None if append else config.data.eval_num_frames,
                        image_size=None if append else config.data.image_size,
                        max_len=None if append else config.data.max_len,
                        tokenizer=None if append else spec,
                        batch_size=config.eval_batch_size)
  say(summary.line())
  return summary


# ----------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m ps_jax.index_videos",
                              description=__doc__.splitlines()[0])
  p.add_argument("--model", help="ps_jax workdir, HF CLIP directory or official .pth "
                 "(default with --append: the index's model)")
  p.add_argument("--out", required=True, help="index directory")
  p.add_argument("--append", action="store_true",
                 help="add the videos not yet in --out (same model required)")
  p.add_argument("--overwrite", action="store_true", help="replace an index at --out")
  src = p.add_argument_group("videos: a prepared dataset split, or raw files")
  src.add_argument("--dataset_dir", help="the prepare step's --out_dir")
  src.add_argument("--dataset", help="prepared dataset name, e.g. msrvtt/9k, "
                   "moving_shapes/demo")
  src.add_argument("--split", default="test", help="split of --dataset (default test)")
  src.add_argument("--video_dir", help="directory of video files (recursive; id = stem)")
  src.add_argument("--frames_per_video", type=int, default=DEFAULT_FRAMES_PER_VIDEO,
                   help="--video_dir: frames decoded per video (evenly spread)")
  src.add_argument("--short_side", type=int, default=DEFAULT_SHORT_SIDE,
                   help="--video_dir: decoded frames' short side (0: native size)")
  how = p.add_argument_group("embedding (defaults: the model's evaluation settings)")
  how.add_argument("--num_frames", type=int, help="F frames per video (uniform sampling)")
  how.add_argument("--image_size", type=int, help="frame size S after resize + centre crop")
  how.add_argument("--max_len", type=int, help="caption length for queries (stored)")
  how.add_argument("--tokenizer", help="tokenizer for queries: CLIP tokenizer directory, "
                   "word .json or 'moving_shapes' (stored)")
  how.add_argument("--num_prompts", type=int, default=6,
                   help="P for a HF directory or .pth (a workdir records its own)")
  how.add_argument("--clip_config", help="for a .pth: HF config.json or its directory")
  how.add_argument("--model_dtype", choices=("float32", "bfloat16"),
                   help="compute dtype (default: the model's; params stay float32)")
  how.add_argument("--dtype", choices=index_lib.DTYPES, default="float16",
                   help="storage dtype of a new index")
  run = p.add_argument_group("running")
  run.add_argument("--batch_size", type=int, help="global batch (default 8 per device)")
  run.add_argument("--num_workers", type=int, help="decoding threads per process")
  run.add_argument("--no_progress", action="store_true")
  run.add_argument("--coordinator_address", help="host:port of process 0 (multi-host)")
  run.add_argument("--num_processes", type=int, help="number of processes (multi-host)")
  run.add_argument("--process_id", type=int, help="this process's index (multi-host)")
  return p


def _distributed_args(args, parser) -> Optional[dict]:
  """jax.distributed.initialize() arguments (flags, else JAX_COORDINATOR_ADDRESS /
  JAX_NUM_PROCESSES / JAX_PROCESS_ID), or None on one host (as `ps_jax.main` decides)."""
  env = os.environ
  out = {"coordinator_address": args.coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
         or None, "num_processes": args.num_processes, "process_id": args.process_id}
  for key, name in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
    if out[key] is None and env.get(name):
      try:
        out[key] = int(env[name])
      except ValueError:
        parser.error(f"{name}={env[name]!r} (the default of --{key}) is not an integer")
  multi = (out["coordinator_address"] or (out["num_processes"] or 1) > 1
           or int(env.get("SLURM_NTASKS", "1") or 1) > 1
           or "," in env.get("TPU_WORKER_HOSTNAMES", ""))
  return out if multi else None


def _load_kwargs(args, parser) -> Optional[dict]:
  """load_model kwargs from the flags; None (the index's own) on --append without --model."""
  if args.model is None:
    return None
  kwargs = {}
  is_workdir = os.path.isdir(args.model) and os.path.exists(
      os.path.join(args.model, "ps_jax_model.json"))
  if not is_workdir:
    kwargs["num_prompts"] = args.num_prompts
  if args.clip_config:
    if not args.model.endswith((".pth", ".pt", ".bin")):
      parser.error("--clip_config is only for a .pth --model")
    from ps_jax.models.clip import ClipConfig  # pylint: disable=g-import-not-at-top
    kwargs["clip_config"] = ClipConfig.from_hf(args.clip_config).to_hf_dict()
  if args.model_dtype:
    kwargs["dtype"] = args.model_dtype
  return kwargs


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Command-line entry point; returns the exit status (2: bad flags or inputs)."""
  parser = _parser()
  args = parser.parse_args(argv)
  from_dataset = args.dataset_dir is not None or args.dataset is not None
  if from_dataset == (args.video_dir is not None):
    parser.error("give --dataset_dir with --dataset (and --split), or --video_dir")
  if from_dataset and not (args.dataset_dir and args.dataset):
    parser.error("--dataset_dir and --dataset go together")
  if args.model is None and not args.append:
    parser.error("--model is required (it may be left out with --append: the index's model)")
  if args.append and args.overwrite:
    parser.error("--append and --overwrite exclude each other")
  distributed = _distributed_args(args, parser)
  if distributed is not None:
    jax.distributed.initialize(**distributed)
  try:
    if from_dataset:
      source = dataset_source(args.dataset_dir, args.dataset, args.split)
    else:
      source = video_dir_source(args.video_dir, args.frames_per_video, args.short_side or None)
    summary = build_index(args.out, source, model_path=args.model,
                          load_kwargs=_load_kwargs(args, parser), append=args.append,
                          overwrite=args.overwrite, num_frames=args.num_frames,
                          image_size=args.image_size, max_len=args.max_len,
                          tokenizer=args.tokenizer, dtype=args.dtype,
                          batch_size=args.batch_size, num_workers=args.num_workers,
                          progress=not args.no_progress)
  except (IndexBuildError, index_lib.IndexFormatError, index_lib.FingerprintMismatchError,
          FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  say(summary.line())
  return 0


if __name__ == "__main__":
  sys.exit(main())
