"""Moment retrieval on a dataset's moment protocol: a sentence -> the span of time it
describes (`--mode eval` with config.moments.protocol, e.g. "activitynet/moments").

Layer: jobs (imports retrieval.build, retrieval.query, retrieval.store, metrics,
protocols, reporting). Every video of the split is indexed as windows of time at the
scales of config.moments.windows (`<workdir>/index_<split>_moments`, reused while the
model and the windows are unchanged); every sentence of the protocol whose video is in
the index is a query, its ground truth the [start, end] seconds the annotation gives:

- within video (temporal grounding): the windows of the query's own video are ranked,
  overlapping windows suppressed (`ps_jax.retrieval.moments.distinct`);
- corpus (video corpus moment retrieval): `TextSearcher.search_moments` over every
  window of the split; a moment counts only in the right video.

Metrics (`ps_jax.metrics`): R@1 and R@5 at IoU 0.3 / 0.5 / 0.7 and mIoU of the top
moment; written to `<workdir>/metrics_moments.json` with the counts against the
protocol and printed as a table. A window can only match a sentence as well as its
span allows: `oracle` reports the best IoU any window of the grid reaches with each
ground truth (the ceiling of R@n IoU=m for these windows, whatever the model).
"""

from __future__ import annotations

import os
from typing import Optional

import jax
import numpy as np

from ps_jax import experiment, fileio, metrics, reporting
from ps_jax.data import builders, protocols
from ps_jax.retrieval import build, store
from ps_jax.retrieval import moments as moments_lib
from ps_jax.retrieval.model import IndexModel
from ps_jax.retrieval.query import TextSearcher
from ps_jax.retrieval.sources import dataset_source, read_moments

METRICS_FILE = "metrics_moments.json"
K = max(metrics.MOMENT_RANKS)


def moment_protocol(config) -> protocols.Protocol:
  """config.moments.protocol, checked against the dataset (raises ConfigError)."""
  name = config.moments.protocol
  options = [p.name for p in protocols.moment_protocols(config.data.name)]
  protocol = protocols.PROTOCOLS.get(name)
  if protocol is None or protocol.kind != "moments" or protocol.dataset != config.data.name:
    raise experiment.ConfigError(
        f"config.moments.protocol {name!r} is not a moment protocol of dataset "
        f"{config.data.name!r} (" + (f"choose from {options}" if options else
                                     "it has none") + ")")
  if not config.moments.windows:
    raise experiment.ConfigError("config.moments.protocol needs config.moments.windows "
                                 "(the window scales to rank, e.g. '16:8,32:16')")
  return protocol


def split_queries(annotations: dict, video_ids) -> list[tuple[str, str, float, float]]:
  """[(video, sentence, start, end)] of the videos `video_ids` (in their order), from
  moments.json's {video: {"sentences", "spans"}} of one split."""
  out = []
  for video in video_ids:
    entry = annotations.get(video)
    for sentence, (start, end) in zip(entry["sentences"], entry["spans"]) if entry else ():
      out.append((video, sentence, float(start), float(end)))
  return out


def within_video(text_emb: np.ndarray, row_emb: np.ndarray, windows, query_videos,
                 k: int = K) -> list[list[tuple]]:
  """Each query's k best distinct moments among the windows of its own video.

  Args:
    text_emb: float32[Q, E] query embeddings; row_emb: float32[N, E] window embeddings.
    windows: N (video, start, end); query_videos: Q video ids.
  Returns:
    Q lists of (video, start, end), best first (ties to the lower row).
  """
  rows_of: dict[str, list[int]] = {}
  for r, w in enumerate(windows):
    rows_of.setdefault(w[0], []).append(r)
  out = []
  for q, video in enumerate(query_videos):
    rows = np.asarray(rows_of.get(video, []), np.int64)
    scores = row_emb[rows] @ text_emb[q]
    order = rows[np.argsort(-scores, kind="stable")]
    hits = moments_lib.distinct([(int(r), 0.0) for r in order], windows, k)
    out.append([tuple(windows[r]) for r, _ in hits])
  return out


def oracle_iou(windows, targets) -> np.ndarray:
  """float[Q]: the best IoU any window of the target's video reaches with it."""
  spans_of: dict[str, list] = {}
  for video, start, end in windows:
    spans_of.setdefault(video, []).append((start, end))
  return np.array([max((metrics.temporal_iou(s, t[1:]) for s in spans_of.get(t[0], ())),
                       default=0.0) for t in targets])


def score(within, corpus, targets, windows) -> dict:
  """The metrics of one evaluation: {"within": {...}, "corpus": {...}, "oracle": {...}}."""
  oracle = oracle_iou(windows, targets)
  return {
      "within": {**metrics.moment_recalls(within, targets),
                 "mIoU": metrics.mean_top_iou(within, targets)},
      "corpus": {**metrics.moment_recalls(corpus, targets),
                 "mIoU": metrics.mean_top_iou(corpus, targets)},
      "oracle": {**{f"IoU={m}": 100.0 * float(np.mean(oracle >= m))
                    for m in metrics.MOMENT_IOUS},
                 "mIoU": 100.0 * float(oracle.mean())}}


def _index(config, workdir: str, out: str, split: str, scales) -> IndexModel:
  """Builds the windowed index at `out` unless it holds one of this model and these
  windows and frame settings already; returns the model."""
  model_path, kwargs = build.config_model(config, workdir)
  imodel = IndexModel.load(model_path, kwargs)
  if os.path.exists(os.path.join(out, store.META_FILE)):
    existing = store.load_index(out, mmap=True, check_norms=False)
    meta = existing.meta.get("metadata", {})
    if (existing.fingerprint == imodel.fingerprint
        and meta.get("data", {}).get("scales") == [list(s) for s in scales]
        and meta.get("num_frames") == config.data.eval_num_frames
        and meta.get("image_size") == config.data.image_size):
      reporting.say(f"moments: reusing the windowed index {out} ({len(existing)} rows)")
      return imodel
  build.index_from_config(config, workdir, split=split, out=out, overwrite=True)
  return imodel


def evaluate_moments(config, workdir: str, *, split: Optional[str] = None) -> dict:
  """Ranks the windows of `split` (default config.data.test_split) for every sentence of
  config.moments.protocol; writes and returns the metrics_moments.json record."""
  experiment.validate_config(config)
  protocol = moment_protocol(config)
  scales = build.config_scales(config)
  split = split or config.data.test_split
  root = experiment.ensure_dataset(config, workdir)
  split_data = builders.load_split(root, config.data.name, split)
  annotations = read_moments(split_data.version_dir)
  if not annotations:
    raise experiment.ConfigError(
        f"{split_data.version_dir} has no moments.json: prepare {config.data.name} again "
        "(python -m ps_jax.data.prepare writes it beside the frames)")
  by_video = {v: m for videos in annotations.values() for v, m in videos.items()}
  out = os.path.join(workdir, f"index_{split}_moments")
  imodel = _index(config, workdir, out, split, scales)
  searcher = TextSearcher.from_index(out, model=imodel, batch_size=config.eval_batch_size)
  windows = [tuple(w) for w in searcher.windows]
  indexed = sorted({w[0] for w in windows})
  queries = split_queries(by_video, [v for v in split_data.video_ids if v in set(indexed)])
  if not queries:
    raise experiment.ConfigError(f"no sentence of {protocol.name} belongs to a video of "
                                 f"{out} ({len(indexed)} videos)")
  texts = [q[1] for q in queries]
  targets = [(q[0], q[2], q[3]) for q in queries]
  text_emb = np.asarray(searcher.embed(texts), np.float32)
  row_emb = np.asarray(store.load_index(out, mmap=True, check_norms=False).embeddings,
                       np.float32)  # checked by the searcher's load above
  within = within_video(text_emb, row_emb, windows, [t[0] for t in targets])
  corpus = [[(m["video"], m["start"], m["end"]) for m in ms]
            for ms in searcher.search_moments(texts, K)]
  physical = split_data.physical_split
  held_out = physical != split
  counts = protocols.CountCheck(protocol.name, split, physical, len(indexed), len(queries),
                                None if held_out else protocol.splits.get(physical),
                                held_out)
  record = {"protocol": counts.to_json(), "windows": config.moments.windows,
            "rows": len(windows), "index": out, "model": imodel.path,
            **score(within, corpus, targets, windows)}
  if jax.process_index() == 0:
    fileio.write_json(os.path.join(workdir, METRICS_FILE), record)
  reporting.say(format_table(record))
  return record


def format_table(record: dict) -> str:
  """The printed table: one line per task, R@n IoU=m and mIoU."""
  keys = [f"R@{n} IoU={m}" for n in metrics.MOMENT_RANKS for m in metrics.MOMENT_IOUS]
  head = ["", *(k.replace(" ", "/") for k in keys), "mIoU"]
  lines = [f"moments: {record['protocol']['label']}; {record['rows']} windows "
           f"({record['windows']})", "  ".join(f"{h:>13}" for h in head)]
  for task in ("within", "corpus"):
    lines.append("  ".join([f"{task:>13}", *(f"{record[task][k]:13.2f}" for k in keys),
                            f"{record[task]['mIoU']:13.2f}"]))
  o = record["oracle"]
  lines.append(f"best window of the grid (a ceiling): IoU>=0.3 {o['IoU=0.3']:.1f}%, "
               f">=0.5 {o['IoU=0.5']:.1f}%, >=0.7 {o['IoU=0.7']:.1f}%, mIoU "
               f"{o['mIoU']:.1f}")
  return "\n".join(lines)
