"""Building an index: embed every video of a source once, on all devices and hosts.

Layer: jobs (imports experiment assembly, embed, sharding, retrieval.model, sources and
store). Every process decodes its slice of each global batch (threads), the batch is
encoded on the whole (data, fsdp) mesh, and process 0 writes the index
(`ps_jax.retrieval.store`): ids, L2-normalised embeddings, the model fingerprint and the
metadata that search needs to embed text queries later (model path, tokenizer, caption
length, frames, image size). A video that cannot be decoded is skipped and reported
(stderr and `INDEX/index_report.jsonl`); it never stops the run.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import datetime
import json
import os
import sys
import time
from typing import Optional, Sequence

import jax
import numpy as np
import tqdm
from jax.experimental import multihost_utils

import ps_jax
from ps_jax import checkpoints, embed, experiment, reporting, sharding
from ps_jax.data import tokenizers
from ps_jax.data import video as video_lib
from ps_jax.retrieval import media, store
from ps_jax.retrieval.model import IndexModel, load_tokenizer, model_description
from ps_jax.retrieval.sources import IndexBuildError, VideoSource, dataset_source, eval_clip

REPORT_FILE = "index_report.jsonl"
# Status codes of a batch slot: 0 embedded, -1 padding, > 0 a skip reason (VideoError.reason).
SKIP_REASONS = ("missing", "empty_file", "unreadable", "no_video_stream", "corrupt", "error")


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
    thumbnails: N JPEG thumbnail strips (`ps_jax.retrieval.media`) of the clips embedded.
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
  thumbnails: list = dataclasses.field(default_factory=list)


def _work(source: VideoSource, position: int, num_frames: int, num_prompts: int,
          image_size: int):
  """(clip uint8[F, S, S, 3] or None, its thumbnail strip or None, status code, warnings,
  error detail). Never raises."""
  try:
    loaded = source.load(position)
    clip = eval_clip(loaded.frames, num_frames, num_prompts, image_size)
    return clip, media.strip(clip), 0, loaded.warnings, ""
  except video_lib.VideoError as e:
    reason = e.reason if e.reason in SKIP_REASONS else "error"
    return None, None, 1 + SKIP_REASONS.index(reason), [], e.detail
  except Exception as e:  # pylint: disable=broad-except  # a bad video never stops the run
    return None, None, 1 + SKIP_REASONS.index("error"), [], f"{type(e).__name__}: {e}"


def embed_source(imodel: IndexModel, source: VideoSource, positions: Sequence[int], *,
                 mesh=None, batch_size: Optional[int] = None, num_frames: int,
                 image_size: int, num_workers: Optional[int] = None,
                 prefetch_batches: int = 2, progress: bool = True) -> EmbedResult:
  """Embeds `source` videos at `positions` on every device of every process.

  Global batch t holds positions [t*G, (t+1)*G); process p decodes b = G / processes of
  them (in `num_workers` threads, `prefetch_batches` batches ahead), the batch is
  encoded sharded over the mesh, and embeddings, statuses and positions are gathered on
  every process. Slots of videos that fail to decode hold zero frames and are dropped.
  Each clip's thumbnail strip (`media.strip`, made from the frames already decoded)
  travels with it and is JPEG-encoded once gathered.

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
  params = jax.device_put(imodel.params, sharding.replicated(mesh))
  encode_video = embed.make_encoders(imodel.model, mesh)[0]
  workers = num_workers or min(8, os.cpu_count() or 1)
  pool = concurrent.futures.ThreadPoolExecutor(max(workers, 1))

  def submit(t):
    slots = positions[t * g + lo:t * g + lo + b]
    return [pool.submit(_work, source, pos, num_frames, p, image_size) for pos in slots]

  bar = None
  if progress and jax.process_index() == 0:
    bar = tqdm.tqdm(total=len(positions), unit=" videos", desc="index", dynamic_ncols=True,
                    mininterval=1.0, file=sys.stderr)
  done, skipped, partial = [], [], []
  pending = collections.deque()
  start = time.perf_counter()
  shape = (b, num_frames, image_size, image_size, 3)
  thumb_shape = media.strip(np.zeros((num_frames, 1, 1, 3), np.uint8)).shape
  try:
    for t in range(min(prefetch_batches + 1, num_batches)):
      pending.append(submit(t))
    for t in range(num_batches):
      futures = pending.popleft()
      if t + len(pending) + 1 < num_batches:
        pending.append(submit(t + len(pending) + 1))
      frames = np.zeros(shape, np.uint8)
      thumbs = np.zeros((b, *thumb_shape), np.uint8)
      status = np.full((b,), -1, np.int32)
      where = np.full((b,), -1, np.int32)
      details = {}
      for j, fut in enumerate(futures):
        clip, thumb, code, warnings, detail = fut.result()
        where[j], status[j] = positions[t * g + lo + j], code
        if clip is not None:
          frames[j], thumbs[j] = clip, thumb
        if code:
          details[int(where[j])] = detail
        elif warnings:
          partial.append((source.ids[where[j]], warnings))
      # Status and position travel as global arrays laid out like the frames, so every
      # gathered embedding row keeps its video whatever order the mesh gives the hosts.
      batch = sharding.global_batch({"frames": frames, "status": status, "where": where,
                                     "thumbs": thumbs}, mesh)
      emb = sharding.gather(encode_video(params, batch["frames"]))
      status, where = sharding.gather(batch["status"]), sharding.gather(batch["where"])
      thumbs = sharding.gather(batch["thumbs"])
      for j in range(g):
        pos = int(where[j])
        if status[j] == 0:
          jpeg = media.encode_jpeg(thumbs[j]) if jax.process_index() == 0 else b""
          done.append((pos, emb[j], jpeg))  # process 0 writes the index
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
  ids = [source.ids[pos] for pos, _, _ in done]
  dim = imodel.model.clip.projection_dim
  embeddings = (np.stack([e for _, e, _ in done]).astype(np.float32) if done
                else np.zeros((0, dim), np.float32))
  return EmbedResult(ids, embeddings, skipped, partial, time.perf_counter() - start,
                     [jpeg for _, _, jpeg in done])


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
  has_index = os.path.exists(os.path.join(out, store.META_FILE))
  if append:
    if not has_index:
      raise IndexBuildError(f"--append: {out!r} holds no index yet (build it first, "
                            "without --append)")
    existing = store.load_index(out, mmap=True, check_norms=False)
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
    raise store.FingerprintMismatchError(
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
  reporting.say(f"indexing {len(positions)} videos ({source.describe()}"
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
      pos = {video_id: i for i, video_id in enumerate(source.ids)}
      files = ([os.path.abspath(source.paths[pos[i]]) for i in result.ids]
               if source.paths else None)
      if existing is None:
        metadata = {"model_path": imodel.path, "load_model_kwargs": imodel.load_kwargs,
                    "model": model_description(imodel.model), "tokenizer": tokenizer,
                    "max_len": max_len, "num_frames": num_frames, "image_size": image_size,
                    "num_prompts": imodel.model.config.num_prompts,
                    "frame_sampling": "uniform", "data": source.info,
                    "ps_jax_version": ps_jax.__version__}
        store.write_index(out, result.ids, result.embeddings, imodel.fingerprint,
                          metadata, dtype, source=source.describe(), overwrite=overwrite,
                          thumbnails=result.thumbnails, sources=files)
        if os.path.exists(os.path.join(out, REPORT_FILE)):  # the replaced index's
          os.remove(os.path.join(out, REPORT_FILE))
      else:
        store.append_to_index(out, result.ids, result.embeddings, imodel.fingerprint,
                              source=source.describe(), thumbnails=result.thumbnails,
                              sources=files)
    if os.path.isdir(out):
      _write_report(out, result, run)
  if jax.process_count() > 1:
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
  the workdir's model (its selected checkpoint; else config.model.init_from).

  Args:
    config: the experiment config; workdir: the training workdir.
    split: default config.data.test_split.
    out: default <workdir>/index_<split>.
    append: add to an existing index (videos not yet in it).
  """
  experiment.validate_config(config)
  split = split or config.data.test_split
  out = out or os.path.join(workdir, f"index_{split}")
  if not append and os.path.exists(os.path.join(out, store.META_FILE)):
    raise IndexBuildError(f"{out!r} already holds an index: pass --index_append to add the "
                          "split's new videos to it, or another --index_dir")
  root = experiment.ensure_dataset(config, workdir)
  if checkpoints.has_model_file(workdir) and checkpoints.selected_checkpoint(workdir):
    model_path, kwargs = workdir, {}
  elif config.model.init_from:
    model_path, kwargs = config.model.init_from, experiment.model_options(config)
    if not os.path.isdir(model_path):
      tok = experiment.build_tokenizer(config)
      kwargs["clip_config"] = experiment.clip_config_from(config, tok).to_hf_dict()
  else:
    raise IndexBuildError(f"--mode index needs a checkpoint in {workdir!r} or "
                          "config.model.init_from (HF CLIP weights or a .pth)")
  summary = build_index(out, dataset_source(root, config.data.name, split),
                        model_path=model_path, load_kwargs=kwargs, append=append,
                        num_frames=None if append else config.data.eval_num_frames,
                        image_size=None if append else config.data.image_size,
                        max_len=None if append else config.data.max_len,
                        tokenizer=None if append else tokenizers.spec_from_config(config),
                        batch_size=config.eval_batch_size)
  reporting.say(summary.line())
  return summary
