"""Building an index: embed every video of a source once and write it.

Layer: jobs (imports experiment assembly, retrieval.embedding, retrieval.model, sources
and store). The videos are embedded on all devices and hosts
(`ps_jax.retrieval.embedding`), and process 0 writes the index
(`ps_jax.retrieval.store`): ids, L2-normalised embeddings, the model fingerprint and the
metadata that search needs to embed text queries later (model path, tokenizer, caption
length, frames, image size). A video that cannot be decoded is skipped and reported
(stderr and `INDEX/index_report.jsonl`); it never stops the run.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import os
from typing import Optional, Sequence

import jax
from jax.experimental import multihost_utils

import ps_jax
from ps_jax import checkpoints, experiment, reporting
from ps_jax.data import tokenizers
from ps_jax.retrieval import store
from ps_jax.retrieval import windows as windows_lib
from ps_jax.retrieval.embedding import Skipped, embed_source
from ps_jax.retrieval.model import IndexModel, load_tokenizer, model_description
from ps_jax.retrieval.sources import IndexBuildError, VideoSource, dataset_source

REPORT_FILE = "index_report.jsonl"


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
  removed: int = 0
  unchanged_skips: int = 0

  def line(self) -> str:
    reasons = collections.Counter(s.reason for s in self.skipped)
    why = f" ({', '.join(f'{k} {v}' for k, v in sorted(reasons.items()))})" if reasons else ""
    already = f", {self.already_indexed} already indexed" if self.already_indexed else ""
    removed = f", {self.removed} removed" if self.removed else ""
    unchanged = (f", {self.unchanged_skips} unreadable before and unchanged"
                 if self.unchanged_skips else "")
    return (f"indexed {self.added} videos in {self.seconds:.1f} s "
            f"({self.videos_per_s:.1f} videos/s), skipped {len(self.skipped)}{why}, "
            f"partial {len(self.partial)}{already}{removed}{unchanged} -> {self.out} "
            f"({self.count} videos)")


def _settings(name: str, given, recorded, default):
  """A setting's value: the index's recorded one on append (a different --flag is refused)."""
  if recorded is not None:
    if given is not None and given != recorded:
      raise IndexBuildError(f"--{name} {given!r} differs from the index's {recorded!r}: "
                            "embeddings of one index must be computed the same way")
    return recorded
  return default if given is None else given


def _write_report(out: str, skipped: Sequence[Skipped], partial, run: str,
                  stamps: Optional[dict] = None) -> None:
  """Appends the skipped and partial videos to out/REPORT_FILE (with each skipped
  file's size and mtime_ns where `stamps` has them)."""
  if not skipped and not partial:
    return
  with open(os.path.join(out, REPORT_FILE), "a", encoding="utf-8") as f:
    for s in skipped:
      stamp = (stamps or {}).get(s.video_id, {})
      f.write(json.dumps({"run": run, "status": "skipped", **dataclasses.asdict(s),
                          **{k: stamp[k] for k in ("size", "mtime_ns") if k in stamp}})
              + "\n")
    for video_id, warnings in partial:
      f.write(json.dumps({"run": run, "status": "partial", "video_id": video_id,
                          "detail": "; ".join(warnings)}) + "\n")


def build_index(out: str, source: VideoSource, imodel: Optional[IndexModel] = None, *,
                model_path: Optional[str] = None, load_kwargs: Optional[dict] = None,
                append: bool = False, overwrite: bool = False,
                num_frames: Optional[int] = None, image_size: Optional[int] = None,
                max_len: Optional[int] = None, tokenizer: Optional[str] = None,
                dtype: str = "float16", batch_size: Optional[int] = None, mesh=None,
                num_workers: Optional[int] = None, progress: bool = True,
                scales: Optional[Sequence[tuple[float, float]]] = None) -> IndexSummary:
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
    scales: [(window, stride)] seconds: index every video as windows of time at each
      scale (`windows_lib.spans_multi`; needs `source.duration`), one row per window;
      None: one row per video. A windowed index is built whole (no append).

  Returns:
    IndexSummary (process 0 writes; every process returns the same counts; with
    `scales` its `added` counts windows).
  """
  if scales is not None and (append or source.duration is None):
    raise IndexBuildError("windows of time (config.moments.windows) " + (
        "are indexed whole, not appended to an index" if append else
        f"need each video's duration, which {source.describe()} cannot tell"))
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
  num_frames, image_size, max_len, tokenizer = resolve_settings(
      imodel, recorded, num_frames=num_frames, image_size=image_size, max_len=max_len,
      tokenizer=tokenizer)
  known = set(existing.ids) if existing is not None else set()
  positions = [i for i, video_id in enumerate(source.ids) if video_id not in known]
  already = len(source.ids) - len(positions)
  name = imodel.path or "an in-memory model"
  reporting.say(f"indexing {len(positions)} videos ({source.describe()}"
                + (f"; {already} already indexed" if already else "") + f") with {name}: "
                f"{num_frames} frames of {image_size} px, on {jax.device_count()} devices "
                f"({jax.process_count()} processes)")
  source = source.narrowed(num_frames, max(imodel.model.config.num_prompts, 1))
  spans, no_duration = None, []
  if scales is not None:
    positions, spans, no_duration = _plan_windows(source, positions, scales, num_workers)
    if no_duration and not positions:
      raise IndexBuildError(f"no video of {source.describe()} has a duration to place "
                            f"windows in ({no_duration[0].video_id}: "
                            f"{no_duration[0].detail}); nothing was written")
    reporting.say(f"{len(positions)} windows at scales "
                  + ", ".join(f"{w:g}:{st:g} s" for w, st in scales))
  result = embed_source(imodel, source, positions, mesh=mesh, batch_size=batch_size,
                        num_frames=num_frames, image_size=image_size,
                        num_workers=num_workers, progress=progress, spans=spans)
  result.skipped[:0] = no_duration
  run = _now()
  count = len(existing) if existing is not None else 0
  if jax.process_index() == 0:
    if result.ids:
      pos = {video_id: i for i, video_id in enumerate(source.ids)}
      videos = [w[0] for w in result.windows] if result.windows else result.ids
      files = ([os.path.abspath(source.paths[pos[i]]) for i in videos]
               if source.paths else None)
      info = source.describe()
      if existing is None:
        store.write_index(out, result.ids, result.embeddings, imodel.fingerprint,
                          _metadata(imodel, source, num_frames, image_size, max_len,
                                    tokenizer, scales), dtype, source=info,
                          overwrite=overwrite, thumbnails=result.thumbnails, sources=files,
                          windows=result.windows)
        if os.path.exists(os.path.join(out, REPORT_FILE)):  # the replaced index's
          os.remove(os.path.join(out, REPORT_FILE))
      else:
        store.append_to_index(out, result.ids, result.embeddings, imodel.fingerprint,
                              source=source.describe(), thumbnails=result.thumbnails,
                              sources=files)
    if os.path.isdir(out):
      _write_report(out, result.skipped, result.partial, run)
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


def _plan_windows(source: VideoSource, positions: Sequence[int], scales, workers):
  """(positions, spans, skipped): each video's position once per window of it, the
  windows, and the videos whose duration could not be told (`Skipped`)."""
  rows, failed = windows_lib.plan_spans(len(positions), lambda j: source.duration(
      positions[j]), scales, workers or 4)
  skipped = [Skipped(source.ids[positions[j]], None, e.reason, e.detail)
             for j, e in sorted(failed.items())]
  return [positions[j] for j, _ in rows], [span for _, span in rows], skipped


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _metadata(imodel: IndexModel, source: VideoSource, num_frames: int, image_size: int,
              max_len: int, tokenizer: str, scales=None) -> dict:
  """meta.json's "metadata" of a new index: what search needs to embed queries (and
  the window scales of a windowed one)."""
  data = dict(source.info)
  if scales is not None:
    data["scales"] = [list(s) for s in scales]
  return {"model_path": imodel.path, "load_model_kwargs": imodel.load_kwargs,
          "model": model_description(imodel.model), "tokenizer": tokenizer,
          "max_len": max_len, "num_frames": num_frames, "image_size": image_size,
          "num_prompts": imodel.model.config.num_prompts, "frame_sampling": "uniform",
          "data": data, "ps_jax_version": ps_jax.__version__}


def resolve_settings(imodel: IndexModel, recorded: dict, *, num_frames=None,
                     image_size=None, max_len=None, tokenizer=None) -> tuple:
  """(num_frames, image_size, max_len, tokenizer) of a build: those given, else the
  index's `recorded` metadata (a different value given is refused), else the model's
  defaults; checked against the model."""
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
  return num_frames, image_size, max_len, tokenizer


def config_scales(config) -> Optional[list[tuple[float, float]]]:
  """config.moments.windows as [(window, stride)] seconds; None when empty."""
  text = config.get("moments", {}).get("windows", "")
  try:
    return windows_lib.parse_scales(text, "config.moments.windows") if text else None
  except windows_lib.WindowError as e:
    raise experiment.ConfigError(str(e)) from None


def config_model(config, workdir: str) -> tuple[str, dict]:
  """(model path, load kwargs) of a run: the workdir's selected checkpoint, else
  config.model.init_from (zero-shot)."""
  if checkpoints.has_model_file(workdir) and checkpoints.selected_checkpoint(workdir):
    return workdir, {}
  if config.model.init_from:
    model_path, kwargs = config.model.init_from, experiment.model_options(config)
    if not os.path.isdir(model_path):
      tok = experiment.build_tokenizer(config)
      kwargs["clip_config"] = experiment.clip_config_from(config, tok).to_hf_dict()
    return model_path, kwargs
  raise IndexBuildError(f"needs a checkpoint in {workdir!r} or config.model.init_from "
                        "(HF CLIP weights or a .pth)")


def index_from_config(config, workdir: str, *, split: Optional[str] = None,
                      out: Optional[str] = None, append: bool = False,
                      overwrite: bool = False) -> IndexSummary:
  """`python -m ps_jax.main --mode index`: a split of the config's dataset, embedded by
  the workdir's model (its selected checkpoint; else config.model.init_from).

  Args:
    config: the experiment config; workdir: the training workdir.
    split: default config.data.test_split.
    out: default <workdir>/index_<split> (index_<split>_moments with windows).
    append: add to an existing index (videos not yet in it).
    overwrite: replace an index at `out`.
  With config.moments.windows each video is indexed as windows of time at those scales.
  """
  experiment.validate_config(config)
  scales = config_scales(config)
  split = split or config.data.test_split
  out = out or os.path.join(workdir, f"index_{split}" + ("_moments" if scales else ""))
  if not append and os.path.exists(os.path.join(out, store.META_FILE)) and not overwrite:
    raise IndexBuildError(f"{out!r} already holds an index: pass --index_append to add the "
                          "split's new videos to it, or another --index_dir")
  root = experiment.ensure_dataset(config, workdir)
  model_path, kwargs = config_model(config, workdir)
  summary = build_index(out, dataset_source(root, config.data.name, split),
                        model_path=model_path, load_kwargs=kwargs, append=append,
                        overwrite=overwrite, scales=scales,
                        num_frames=None if append else config.data.eval_num_frames,
                        image_size=None if append else config.data.image_size,
                        max_len=None if append else config.data.max_len,
                        tokenizer=None if append else tokenizers.spec_from_config(config),
                        batch_size=config.eval_batch_size)
  reporting.say(summary.line())
  return summary
