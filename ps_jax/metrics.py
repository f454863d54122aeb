"""Retrieval metrics over text and video embeddings: similarity, ranks, R@K, MdR, MnR, DSL.

Layer: foundation (pure numpy; the one file helper is `fileio`).

Protocol (the one of the Prompt Switch / X-Pool / CLIP4Clip evaluation code):
- t2v: every caption (row of the T x V similarity matrix) ranks all V videos.
- v2t: every video ranks the V caption groups, a group (the captions of one video) scoring
  its best caption. With one caption per video (MSR-VTT 1k-A, LSMDC) this is plain ranking
  of the captions; with several (MSVD: 27,763 captions, 670 videos) it is the official
  multi-sentence protocol, where a video's rank is the rank of its best-ranked caption
  among the other videos' best captions.
- Ties are ranked pessimistically: the rank of the true match is the number of candidates
  that score >= its score (itself included), so a constant similarity matrix gets rank V
  for every query, never rank 1. Ranks are 1-based.
- DSL (dual softmax, Cheng et al. 2021 "CAMoE") is a post-processing step that uses the
  whole test set at once; its numbers are always reported separately and labelled "dsl".

Ranks are computed by counting with chunked comparisons (about 16M entries at a time).
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import numpy as np

from ps_jax import fileio

RECALL_KS = (1, 5, 10, 50)
METRIC_KEYS = tuple(f"R@{k}" for k in RECALL_KS) + ("MdR", "MnR")
DIRECTIONS = ("t2v", "v2t")
DSL_TEMPERATURE = 100.0
# Score entries compared at once when counting ranks (rows per chunk = this // columns).
_CHUNK_ELEMENTS = 1 << 24

Metrics = dict[str, dict[str, float]]


def _as_2d_float(name: str, x, dtype=None) -> np.ndarray:
  """`x` as a 2-D float array of `dtype` (default: its own, at least float32)."""
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"{name} must be 2-D, got shape {x.shape}")
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"{name} must be floating point, got dtype {x.dtype}")
  return x.astype(dtype or np.promote_types(x.dtype, np.float32), copy=False)


def l2_normalize(x, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
  """L2-normalises `x` (float[..., E]) along `axis`; returns float32 of the same shape."""
  x = np.asarray(x, np.float32)
  norm = np.linalg.norm(x, axis=axis, keepdims=True)
  return x / np.maximum(norm, eps)


def similarity(text_emb, video_emb) -> np.ndarray:
  """Cosine similarity of every text to every video.

  Args:
    text_emb: float[T, E] text embeddings (normalised here, need not be already).
    video_emb: float[V, E] video embeddings (normalised here).

  Returns:
    float32[T, V] cosine similarities.
  """
  text_emb = _as_2d_float("text_emb", text_emb, np.float32)
  video_emb = _as_2d_float("video_emb", video_emb, np.float32)
  if text_emb.shape[1] != video_emb.shape[1]:
    raise ValueError(f"Embedding dims differ: text_emb {text_emb.shape} vs "
                     f"video_emb {video_emb.shape}")
  return l2_normalize(text_emb) @ l2_normalize(video_emb).T


def _check_inputs(sim, text_to_video) -> tuple[np.ndarray, np.ndarray]:
  """Validates a similarity matrix and its caption -> video assignment."""
  sim = _as_2d_float("sim", sim)
  t2v = np.asarray(text_to_video)
  num_texts, num_videos = sim.shape
  if t2v.ndim != 1 or t2v.shape[0] != num_texts:
    raise ValueError(f"text_to_video must have shape [T] = [{num_texts}] (one video index per "
                     f"row of sim {sim.shape}), got shape {t2v.shape}")
  if num_texts == 0 or num_videos == 0:
    raise ValueError(f"sim must be non-empty, got shape {sim.shape}")
  if not np.issubdtype(t2v.dtype, np.integer):
    raise ValueError(f"text_to_video must hold integer video indices, got dtype {t2v.dtype}")
  bad = np.flatnonzero((t2v < 0) | (t2v >= num_videos))
  if bad.size:
    raise ValueError(f"text_to_video[{bad[0]}] = {t2v[bad[0]]} is out of range [0, "
                     f"{num_videos}) ({bad.size} out-of-range entries)")
  counts = np.bincount(t2v, minlength=num_videos)
  empty = np.flatnonzero(counts == 0)
  if empty.size:
    raise ValueError(f"Video {empty[0]} has no caption in text_to_video ({empty.size} videos "
                     "without captions); every column of sim needs at least one caption")
  if not np.isfinite(sim).all():
    row, col = np.argwhere(~np.isfinite(sim))[0]
    raise ValueError(f"sim has non-finite values, e.g. sim[{row}, {col}] = {sim[row, col]}")
  return sim, t2v.astype(np.int64)


def _pessimistic_ranks(scores: np.ndarray, true_idx: np.ndarray) -> np.ndarray:
  """int64[Q] 1-based ranks: per row, the count of entries >= the true entry's score."""
  ranks = np.empty(scores.shape[0], np.int64)
  chunk = max(1, _CHUNK_ELEMENTS // max(scores.shape[1], 1))
  for start in range(0, scores.shape[0], chunk):
    block = scores[start:start + chunk]
    true = block[np.arange(block.shape[0]), true_idx[start:start + chunk]]
    ranks[start:start + chunk] = np.count_nonzero(block >= true[:, None], axis=1)
  return ranks


def group_max(sim, text_to_video) -> np.ndarray:
  """Best caption score of every caption group for every video.

  Args:
    sim: float[T, V] similarities; text_to_video: int[T] video index of each caption.

  Returns:
    float32[V, V] where out[g, v] = max over captions t of video g of sim[t, v].
  """
  sim, t2v = _check_inputs(sim, text_to_video)
  order = np.argsort(t2v, kind="stable")
  starts = np.searchsorted(t2v[order], np.arange(sim.shape[1]))
  return np.maximum.reduceat(sim[order], starts, axis=0)


def text_to_video_ranks(sim, text_to_video) -> np.ndarray:
  """int64[T] rank of each caption's video among all V videos (1 = best, ties pessimistic)."""
  sim, t2v = _check_inputs(sim, text_to_video)
  return _pessimistic_ranks(sim, t2v)


def video_to_text_ranks(sim, text_to_video) -> np.ndarray:
  """int64[V] rank of each video's caption group among all V groups (ties pessimistic).

  A group scores its best caption (see `group_max`); with one caption per video this is
  the rank of the video's caption among all captions.
  """
  groups = group_max(sim, text_to_video)  # [group, video]
  return _pessimistic_ranks(np.ascontiguousarray(groups.T), np.arange(groups.shape[0]))


def metrics_from_ranks(ranks) -> dict[str, float]:
  """R@1/5/10/50 (percent), median rank and mean rank of int[Q] 1-based ranks."""
  ranks = np.asarray(ranks)
  if ranks.ndim != 1 or ranks.size == 0:
    raise ValueError(f"ranks must be a non-empty 1-D array, got shape {ranks.shape}")
  out = {f"R@{k}": float(100.0 * np.mean(ranks <= k)) for k in RECALL_KS}
  out["MdR"] = float(np.median(ranks))
  out["MnR"] = float(np.mean(ranks))
  return out


def retrieval_metrics(sim, text_to_video) -> Metrics:
  """Text-to-video and video-to-text retrieval metrics of a similarity matrix.

  Args:
    sim: float[T, V] text x video similarities (T captions, V videos).
    text_to_video: int[T], the index in [0, V) of each caption's video; every video needs
      at least one caption.

  Returns:
    {"t2v": {"R@1", "R@5", "R@10", "R@50", "MdR", "MnR"}, "v2t": {...}}, recalls in percent,
    ranks 1-based, ties ranked pessimistically (see the module docstring).
  """
  return {"t2v": metrics_from_ranks(text_to_video_ranks(sim, text_to_video)),
          "v2t": metrics_from_ranks(video_to_text_ranks(sim, text_to_video))}


def dual_softmax(sim, temperature: float = DSL_TEMPERATURE, axis: int = 0) -> np.ndarray:
  """Dual-softmax (DSL) re-weighting: sim * softmax(temperature * sim, axis).

  Post-processing only: it needs every query of the test set at once. For text-to-video
  ranking (along rows) the prior is a softmax over texts (axis=0); for video-to-text
  ranking (along columns) it is a softmax over videos (axis=1).

  Args:
    sim: float[T, V] similarities.
    temperature: inverse temperature of the softmax (100 in the DSL paper).
    axis: the axis the softmax normalises over, the one NOT being ranked.

  Returns:
    float64[T, V] re-weighted similarities (float64 so that priors as small as e^-200,
    cosines 2 apart at temperature 100, do not underflow to ties at zero).
  """
  sim = _as_2d_float("sim", sim, np.float64)
  logits = temperature * sim
  logits = logits - logits.max(axis=axis, keepdims=True)
  prior = np.exp(logits)
  prior /= prior.sum(axis=axis, keepdims=True)
  return sim * prior


def dsl_retrieval_metrics(sim, text_to_video, temperature: float = DSL_TEMPERATURE) -> Metrics:
  """`retrieval_metrics` after DSL post-processing (label the result "dsl" when reporting).

  t2v ranks `dual_softmax(sim, axis=0)`; v2t ranks `dual_softmax(sim, axis=1)` with the same
  caption-group protocol as `retrieval_metrics`.

  Args:
    sim: float[T, V]; text_to_video: int[T]; temperature: DSL inverse temperature.

  Returns:
    {"t2v": {...}, "v2t": {...}} with the keys of `retrieval_metrics`.
  """
  sim, t2v = _check_inputs(sim, text_to_video)
  return {"t2v": metrics_from_ranks(text_to_video_ranks(dual_softmax(sim, temperature, 0), t2v)),
          "v2t": metrics_from_ranks(video_to_text_ranks(dual_softmax(sim, temperature, 1), t2v))}


def evaluate(text_emb, video_emb, text_to_video, *, dsl: bool = False,
             temperature: float = DSL_TEMPERATURE) -> tuple[Metrics, Optional[Metrics]]:
  """Similarity + metrics in one call.

  Args:
    text_emb: float[T, E]; video_emb: float[V, E]; text_to_video: int[T].
    dsl: also compute the DSL post-processed metrics.

  Returns:
    (metrics, dsl_metrics or None), each as returned by `retrieval_metrics`.
  """
  sim = similarity(text_emb, video_emb)
  metrics = retrieval_metrics(sim, text_to_video)
  return metrics, (dsl_retrieval_metrics(sim, text_to_video, temperature) if dsl else None)


def _check_metrics(name: str, metrics: Mapping) -> None:
  for direction in DIRECTIONS:
    if direction not in metrics:
      raise ValueError(f"{name} lacks the {direction!r} entry; has {sorted(metrics)}")
    missing = [k for k in METRIC_KEYS if k not in metrics[direction]]
    if missing:
      raise ValueError(f"{name}[{direction!r}] lacks {missing}")


def format_table(metrics: Mapping, dsl_metrics: Optional[Mapping] = None) -> str:
  """A fixed-width text table, one line per direction (DSL lines labelled as such)."""
  _check_metrics("metrics", metrics)
  rows = [(d, metrics[d]) for d in DIRECTIONS]
  if dsl_metrics is not None:
    _check_metrics("dsl_metrics", dsl_metrics)
    rows += [(f"{d} (DSL post-proc.)", dsl_metrics[d]) for d in DIRECTIONS]
  width = max(len(label) for label, _ in rows)
  header = f"{'':<{width}}" + "".join(f"{k:>8}" for k in METRIC_KEYS)
  lines = [header]
  for label, values in rows:
    lines.append(f"{label:<{width}}" + "".join(f"{values[k]:>8.1f}" for k in METRIC_KEYS))
  return "\n".join(lines)


def format_reference(metrics: Mapping, reference: Mapping) -> str:
  """Our metrics beside published ones: per direction with reference numbers, a line
  "ours" and a line with the source's values ("-" where it gives none).

  Args:
    metrics: {"t2v": {...}, "v2t": {...}} (ours).
    reference: {"source": str, "t2v": {key: value}, "v2t": {...}} (any subset of keys).
  """
  _check_metrics("metrics", metrics)
  source = reference.get("source") or "published"
  rows = []
  for d in DIRECTIONS:
    theirs = dict(reference.get(d) or {})
    if not theirs:
      continue
    rows.append((f"{d} ours", [f"{metrics[d][k]:.1f}" for k in METRIC_KEYS]))
    rows.append((f"{d} {source}",
                 [f"{theirs[k]:.1f}" if k in theirs else "-" for k in METRIC_KEYS]))
  if not rows:
    return ""
  width = max(len(label) for label, _ in rows)
  lines = [f"{'':<{width}}" + "".join(f"{k:>8}" for k in METRIC_KEYS)]
  lines += [f"{label:<{width}}" + "".join(f"{v:>8}" for v in values)
            for label, values in rows]
  return "\n".join(lines)


def _clean(direction_metrics: Mapping) -> dict[str, float]:
  out = {}
  for k in METRIC_KEYS:
    value = float(direction_metrics[k])
    if not math.isfinite(value):
      raise ValueError(f"Metric {k} is not finite: {value}")
    out[k] = value
  return out


def metrics_to_json(step: int, num_videos: int, num_texts: int, metrics: Mapping,
                    dsl_metrics: Optional[Mapping] = None) -> dict:
  """The metrics record written after an evaluation.

  Returns:
    {"step": N, "num_videos": V, "num_texts": T, "t2v": {"R@1", "R@5", "R@10", "R@50",
    "MdR", "MnR"}, "v2t": {...}} plus "dsl": {"t2v": {...}, "v2t": {...}} when
    `dsl_metrics` is given. Values are plain ints and floats.
  """
  _check_metrics("metrics", metrics)
  record = {"step": int(step), "num_videos": int(num_videos), "num_texts": int(num_texts)}
  for d in DIRECTIONS:
    record[d] = _clean(metrics[d])
  if dsl_metrics is not None:
    _check_metrics("dsl_metrics", dsl_metrics)
    record["dsl"] = {d: _clean(dsl_metrics[d]) for d in DIRECTIONS}
  return record


def write_metrics_json(path: str, step: int, num_videos: int, num_texts: int,
                       metrics: Mapping, dsl_metrics: Optional[Mapping] = None) -> dict:
  """Writes `metrics_to_json(...)` to `path` atomically (`fileio.write_json`).

  Returns:
    The record written.
  """
  record = metrics_to_json(step, num_videos, num_texts, metrics, dsl_metrics)
  fileio.makedirs(fileio.as_path(path).parent)
  fileio.write_json(path, record)
  return record


# ----------------------------------------------------------------------------- moments
# Moment retrieval (a sentence -> the span of time of a video it describes), in the form
# of the temporal grounding literature: R@n at IoU m is the percent of queries with at
# least one of their n best moments at temporal IoU >= m with the ground truth (and, over
# a corpus, in the right video); mIoU the mean IoU of the best moment.

MOMENT_RANKS = (1, 5)
MOMENT_IOUS = (0.3, 0.5, 0.7)

Moment = tuple  # (video id, start seconds, end seconds)


def temporal_iou(a: tuple[float, float], b: tuple[float, float]) -> float:
  """IoU of two [start, end] spans of time (0 when they do not overlap)."""
  inter = min(a[1], b[1]) - max(a[0], b[0])
  if inter <= 0:
    return 0.0
  return inter / (max(a[1], b[1]) - min(a[0], b[0]))


def moment_recalls(found, targets, ranks=MOMENT_RANKS, ious=MOMENT_IOUS) -> dict[str, float]:
  """{"R@n IoU=m": percent} of Q ranked lists of moments against Q target moments.

  Args:
    found: Q lists of (video, start, end), best first (fewer than n count as misses).
    targets: Q (video, start, end) ground truths.
  """
  if len(found) != len(targets):
    raise ValueError(f"{len(found)} ranked lists for {len(targets)} targets")
  if not targets:
    raise ValueError("no moment queries to score")
  out = {}
  for n in ranks:
    for m in ious:
      hit = [any(v == t[0] and temporal_iou((s, e), t[1:]) >= m for v, s, e in f[:n])
             for f, t in zip(found, targets)]
      out[f"R@{n} IoU={m}"] = 100.0 * float(np.mean(hit))
  return out


def mean_top_iou(found, targets) -> float:
  """mIoU (percent): the IoU of each list's first moment with its target (0 when the
  list is empty or its first moment is in another video)."""
  return 100.0 * float(np.mean([
      temporal_iou(f[0][1:], t[1:]) if f and f[0][0] == t[0] else 0.0
      for f, t in zip(found, targets)]))
