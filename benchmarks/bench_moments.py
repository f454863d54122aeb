"""Moment retrieval in long synthetic videos: windowed indexes of the demo models, scored
as the moment-retrieval literature scores Charades-STA and ActivityNet Captions.

  python benchmarks/bench_moments.py --root /tmp/ps_jax_seeds \
      --results benchmarks/RESULTS_moments.md

Models: ROOT/<config>/seed<S> for every --configs and --seeds, the workdirs that
`benchmarks/run_seeds.py --root ROOT` trains (train them first; a workdir without a model
is an error, not a skip).

Corpus (--work/corpus, rebuilt only when its settings change): --videos long videos of
--events events each. An event is one clip of the test split of moving_shapes
(`moving_shapes.iter_clips(SIZES[--size], "test")`: one shape moving left / right / up /
down, growing or shrinking), its frames stretched by repeating frames to a seeded
length of --event_s x U(1 - --event_jitter, 1 + --event_jitter) seconds at --fps (12
frames -> 4 s at 12 fps: each frame 4 times), so that no window grid has an event's
boundaries on it, the events
concatenated with known start and end times and written as H.264 .mp4
(`ps_jax.data.video.write_video`). Every clip is in the corpus with its time-reversed
twin (the same frames in reverse order, the opposite event): in the first half of the
videos both twins sit in the same video (in shuffled slots), in the second half they sit
in different videos. Every caption of every event is a query whose ground truth is its
event's (video, start, end).

Each model indexes the folder with the real command, `python -m ps_jax.index_videos
--model WORKDIR --video_dir DIR --out IDX --window W --stride S` (--window W:S; --sweep
tries other (W, S) on the first config's first seed). Metrics, as "R@n, IoU=m" in the
literature (Charades-STA, ActivityNet Captions): the share of queries with at least one
of their n best distinct moments at temporal IoU >= m with the ground truth,
  within video   only the windows of the query's own long video are ranked (numpy scores
                 of the index rows, best first, then `ps_jax.retrieval.moments.distinct`);
  corpus         `TextSearcher.search_moments` over the whole index: the video and the
                 moment must both be right.
"twin" is the share of queries whose top moment is their event's time-reversed twin
(IoU >= 0.5 with it; within video: over the queries whose twin is in the same video), to
read beside "own", the share whose top moment is their own event at IoU >= 0.5. A
"chance" row ranks the same windows by random scores. Per config: mean ± std
(population) and min over the seeds.

Costs, on the first config's first seed: rows and index bytes per hour of video, indexing
speed with windows vs whole videos (the same folder without --window; videos/s and x real
time from the command's own summary line, plus the process's wall time), and the p50
latency of one `search_moments` query at --latency_rows random unit rows with synthetic
windows (a `Searcher` over them behind the model's text encoder).

Timings on a machine shared with other jobs are noisy; the load averages are recorded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from typing import Optional, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import provenance  # noqa: E402
from ps_jax.data import moving_shapes  # noqa: E402
from ps_jax.data import video as video_lib  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IOUS = (0.3, 0.5, 0.7)
RANKS = (1, 5)
TWIN_IOU = 0.5
CHANCE_DRAWS = 20
CACHE_VERSION = 3  # of the cached per-model results: raise it when `evaluate` changes
_SUMMARY = re.compile(r"indexed (\d+) videos in ([\d.]+) s \(([\d.]+) videos/s\)")


# ----------------------------------------------------------------------------- corpus


def stretch(frames: np.ndarray, n: int) -> np.ndarray:
  """uint8[n, H, W, 3]: `frames` (uint8[T, H, W, 3]) with each frame repeated to fill n."""
  return frames[(np.arange(n) * len(frames)) // n]


def arrange(num_pairs_total: int, videos: int, events: int, seed: int) -> list[list[tuple]]:
  """Per video its events as (pair, twin) (twin 0 forward, 1 reversed), shuffled.

  The pairs used are a seeded choice of videos * events / 2 of the split's pairs; in the
  first videos // 2 videos both twins of a pair are in the same video, in the others the
  forward twin of split pair j is in video j mod d and its reverse in (j + d // 2) mod d
  of those d videos (the same video only when d == 1).
  """
  if events % 2 or events < 2:
    raise SystemExit(f"--events must be even and >= 2 (twins), got {events}")
  need = videos * events // 2
  if need > num_pairs_total:
    raise SystemExit(f"--videos {videos} x --events {events} needs {need} twin pairs; the "
                     f"test split has {num_pairs_total}")
  rng = np.random.default_rng([seed, 7])
  pairs = [int(p) for p in rng.permutation(num_pairs_total)[:need]]
  same = videos // 2
  diff = videos - same
  slots = [[] for _ in range(videos)]
  for i, pair in enumerate(pairs):
    if i < same * events // 2:
      slots[i // (events // 2)] += [(pair, 0), (pair, 1)]
    else:
      j = i - same * events // 2
      slots[same + j % diff].append((pair, 0))
      slots[same + (j + diff // 2) % diff].append((pair, 1))
  return [[video[k] for k in rng.permutation(len(video))] for video in slots]


def build_corpus(out_dir: str, args) -> dict:
  """Writes (or reuses) the long videos and returns the corpus manifest (module docstring)."""
  settings = {"size": args.size, "videos": args.videos, "events": args.events,
              "event_s": args.event_s, "event_jitter": args.event_jitter, "fps": args.fps,
              "corpus_seed": args.corpus_seed}
  manifest_path = os.path.join(out_dir, "corpus.json")
  video_dir = os.path.join(out_dir, "videos")
  if os.path.exists(manifest_path):
    with open(manifest_path, encoding="utf-8") as f:
      manifest = json.load(f)
    if manifest["settings"] == settings and all(
        os.path.exists(os.path.join(video_dir, v + ".mp4")) for v in manifest["videos"]):
      return manifest
    shutil.rmtree(out_dir)
  cfg = moving_shapes.SIZES[args.size]
  clips = list(moving_shapes.iter_clips(cfg, "test"))
  if not 0 <= args.event_jitter < 1:
    raise SystemExit(f"--event_jitter must be in [0, 1), got {args.event_jitter}")
  shortest = int(round(args.event_s * (1 - args.event_jitter) * args.fps))
  if shortest < cfg.num_frames:
    raise SystemExit(f"--event_s {args.event_s} (jitter {args.event_jitter}) at --fps "
                     f"{args.fps} is down to {shortest} frames, fewer than a clip's "
                     f"{cfg.num_frames}")
  os.makedirs(video_dir)
  rng = np.random.default_rng([args.corpus_seed, 11])
  events, videos, lengths = [], [], []
  for v, slots in enumerate(arrange(len(clips) // 2, args.videos, args.events,
                                    args.corpus_seed)):
    vid = f"long{v:03d}"
    parts, at = [], 0
    for pair, twin in slots:
      clip = clips[2 * pair + twin]
      seconds = args.event_s * rng.uniform(1 - args.event_jitter, 1 + args.event_jitter)
      per_event = max(int(round(seconds * args.fps)), shortest)
      parts.append(stretch(clip.frames, per_event))
      events.append({"video": vid, "start": at / args.fps,
                     "end": (at + per_event) / args.fps, "clip": clip.video_id,
                     "twin_clip": clip.twin_id, "captions": list(clip.captions),
                     "description": [list(clip.colours), list(clip.kinds),
                                     list(clip.events)]})
      at += per_event
    video_lib.write_video(os.path.join(video_dir, vid + ".mp4"), np.concatenate(parts),
                          fps=args.fps)
    videos.append(vid)
    lengths.append(at / args.fps)
  by_clip = {e["clip"]: i for i, e in enumerate(events)}
  for e in events:
    e["twin"] = by_clip[e["twin_clip"]]
  manifest = {"settings": settings, "videos": videos, "events": events,
              "video_lengths": lengths, "video_s": float(np.mean(lengths))}
  with open(manifest_path, "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=1)
  return manifest


def corpus_digest(manifest: dict) -> str:
  return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]


def queries(manifest: dict) -> list[tuple[str, int]]:
  """(caption, event index) for every caption of every event."""
  return [(c, i) for i, e in enumerate(manifest["events"]) for c in e["captions"]]


# ----------------------------------------------------------------------------- metrics


def iou(a: tuple[float, float], b: tuple[float, float]) -> float:
  """Temporal IoU of two [start, end) spans (seconds)."""
  inter = min(a[1], b[1]) - max(a[0], b[0])
  if inter <= 0:
    return 0.0
  return inter / (max(a[1], b[1]) - min(a[0], b[0]))


def _span(e: dict) -> tuple[float, float]:
  return (e["start"], e["end"])


def score_moments(found: Sequence[Sequence[tuple]], targets: Sequence[dict]) -> dict:
  """R@n IoU=m (percent) of Q ranked lists of (video, start, end) against Q target events."""
  out = {}
  for n in RANKS:
    for m in IOUS:
      hit = [any(v == t["video"] and iou((s, e), _span(t)) >= m for v, s, e in ms[:n])
             for ms, t in zip(found, targets)]
      out[f"R@{n} IoU={m}"] = 100.0 * float(np.mean(hit)) if hit else float("nan")
  return out


def score_any(found: Sequence[Sequence[tuple]], target_lists: Sequence[Sequence[dict]],
              m: float = TWIN_IOU) -> dict:
  """R@n at IoU >= m (percent) where any event of a query's list counts (the events its
  description fits)."""
  return {f"R@{n}": 100.0 * float(np.mean([
      any(v == t["video"] and iou((s, e), _span(t)) >= m for v, s, e in ms[:n] for t in ts)
      for ms, ts in zip(found, target_lists)])) for n in RANKS}


def top_is(found: Sequence[Sequence[tuple]], targets: Sequence[dict]) -> float:
  """Percent of lists whose first moment is in the target's video at IoU >= TWIN_IOU."""
  hit = [bool(ms) and ms[0][0] == t["video"] and iou(ms[0][1:], _span(t)) >= TWIN_IOU
         for ms, t in zip(found, targets)]
  return 100.0 * float(np.mean(hit)) if hit else float("nan")


def mean_top_iou(found, targets) -> float:
  return 100.0 * float(np.mean([iou(ms[0][1:], _span(t)) if ms and ms[0][0] == t["video"]
                                else 0.0 for ms, t in zip(found, targets)]))


def ranked_moments(scores: np.ndarray, rows: np.ndarray, windows: Sequence, k: int,
                   distinct) -> list[tuple]:
  """The k best distinct moments (video, start, end) among `rows` by `scores` (float[N]),
  ties to the lower row as `Searcher.search` breaks them."""
  order = rows[np.argsort(-scores[rows], kind="stable")]
  hits = distinct([(int(r), float(scores[r])) for r in order], windows, k)
  return [tuple(windows[r]) for r, _ in hits]


def evaluate(scores: np.ndarray, windows: Sequence, manifest: dict, qs, k: int,
             corpus_found: Optional[list] = None) -> dict:
  """Every metric of one model (or of random `scores`): float[Q, N] query-row scores.

  `corpus_found`: the corpus-wide lists from `search_moments`; None ranks with `scores`.
  """
  from ps_jax.retrieval import moments  # pylint: disable=import-outside-toplevel
  events = manifest["events"]
  rows_of = {}
  for r, w in enumerate(windows):
    rows_of.setdefault(w[0], []).append(r)
  rows_of = {v: np.asarray(rs) for v, rs in rows_of.items()}
  all_rows = np.arange(len(windows))
  within, exhaustive = [], []
  for q, (_, i) in enumerate(qs):
    within.append(ranked_moments(scores[q], rows_of[events[i]["video"]], windows, k,
                                 moments.distinct))
    exhaustive.append(ranked_moments(scores[q], all_rows, windows, k, moments.distinct))
  corpus = exhaustive if corpus_found is None else corpus_found
  own = [events[i] for _, i in qs]
  twin = [events[events[i]["twin"]] for _, i in qs]
  same = [q for q, (_, i) in enumerate(qs) if events[events[i]["twin"]]["video"]
          == events[i]["video"]]
  described = {}
  for e in events:
    described.setdefault(json.dumps(e["description"]), []).append(e)
  alike = [described[json.dumps(events[i]["description"])] for _, i in qs]
  out = {"within": score_moments(within, own), "corpus": score_moments(corpus, own),
         "corpus any": score_any(corpus, alike),
         "within mIoU": mean_top_iou(within, own),
         "twin corpus": top_is(corpus, twin), "own corpus": top_is(corpus, own),
         "twin within": top_is([within[q] for q in same], [twin[q] for q in same]),
         "own within": top_is([within[q] for q in same], [own[q] for q in same]),
         "same-video twin queries": len(same)}
  if corpus_found is not None:
    out["short lists"] = sum(len(f) < k for f in corpus_found)
    out["differ from exhaustive"] = sum(
        [tuple(round(x, 3) if isinstance(x, float) else x for x in m) for m in a]
        != [tuple(round(x, 3) if isinstance(x, float) else x for x in m) for m in b]
        for a, b in zip(corpus_found, exhaustive))
    out["exhaustive corpus"] = score_moments(exhaustive, own)
  return out


def chance(windows: Sequence, manifest: dict, qs, k: int, seed: int = 0) -> dict:
  """The metrics of random scores, averaged over CHANCE_DRAWS draws."""
  rng = np.random.default_rng(seed)
  draws = [evaluate(rng.random((len(qs), len(windows))), windows, manifest, qs, k)
           for _ in range(CHANCE_DRAWS)]
  return {key: ({m: float(np.mean([d[key][m] for d in draws])) for m in draws[0][key]}
                if isinstance(draws[0][key], dict)
                else float(np.mean([d[key] for d in draws]))) for key in draws[0]}


def ambiguous(manifest: dict) -> int:
  """Events whose (colours, kinds, events) description another event of the corpus shares."""
  keys = [json.dumps(e["description"]) for e in manifest["events"]]
  return sum(keys.count(k) > 1 for k in keys)


# ----------------------------------------------------------------------------- indexing


def run_index(model: str, video_dir: str, out: str, window: Optional[tuple[float, float]],
              extra: Sequence[str]) -> dict:
  """One fresh `python -m ps_jax.index_videos` (--overwrite); its wall time and summary."""
  cmd = [sys.executable, "-m", "ps_jax.index_videos", "--model", model, "--video_dir",
         video_dir, "--out", out, "--overwrite", "--no_progress", *extra]
  if window is not None:
    cmd += ["--window", f"{window[0]:g}", "--stride", f"{window[1]:g}"]
  start = time.perf_counter()
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
  wall = time.perf_counter() - start
  if proc.returncode != 0:
    raise SystemExit(f"index_videos failed ({proc.returncode}): {shlex.join(cmd)}\n"
                     f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
  found = _SUMMARY.search(proc.stdout)
  if not found:
    raise SystemExit(f"no summary line in the output of {shlex.join(cmd)}:\n{proc.stdout}")
  return {"command": shlex.join(["python", *cmd[1:]]), "wall_s": wall,
          "videos": int(found.group(1)), "seconds": float(found.group(2)),
          "line": found.group(0)}


def dir_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path)
             for f in files)


def model_key(workdir: str) -> str:
  """What identifies a trained model for the result cache: its metrics.json, else its
  files' names, sizes and mtimes."""
  metrics = os.path.join(workdir, "metrics.json")
  if os.path.exists(metrics):
    with open(metrics, "rb") as f:
      return hashlib.sha256(f.read()).hexdigest()[:16]
  listing = sorted((os.path.relpath(os.path.join(d, f), workdir),
                    os.path.getsize(os.path.join(d, f)),
                    int(os.path.getmtime(os.path.join(d, f))))
                   for d, _, files in os.walk(workdir) for f in files)
  return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]


def measure_model(workdir: str, index_dir: str, window: tuple[float, float], manifest: dict,
                  video_dir: str, args, cache_file: str) -> dict:
  """Indexes the corpus with `workdir` at `window` and scores it (cached in cache_file)."""
  key = {"version": CACHE_VERSION, "corpus": corpus_digest(manifest), "window": list(window), "model": workdir,
         "model_key": model_key(workdir), "index_args": args.index_args, "k": args.k}
  if os.path.exists(cache_file) and not args.fresh:
    with open(cache_file, encoding="utf-8") as f:
      cached = json.load(f)
    if cached["key"] == key:
      print(f"  reused {cache_file}", flush=True)
      return cached
  from ps_jax.retrieval.query import TextSearcher  # pylint: disable=import-outside-toplevel
  from ps_jax.retrieval import store  # pylint: disable=import-outside-toplevel
  built = run_index(workdir, video_dir, index_dir, window, shlex.split(args.index_args))
  print(f"  {built['line']} (process {built['wall_s']:.1f} s)", flush=True)
  searcher = TextSearcher.from_index(index_dir)
  qs = queries(manifest)
  texts = [t for t, _ in qs]
  start = time.perf_counter()
  found = searcher.search_moments(texts, args.k)
  search_s = time.perf_counter() - start
  corpus_found = [[(m["video"], m["start"], m["end"]) for m in f] for f in found]
  emb = np.asarray(store.load_index(index_dir).embeddings, np.float32)
  qemb = np.asarray(searcher.embed(texts), np.float32)
  qemb /= np.linalg.norm(qemb, axis=1, keepdims=True)
  scores = qemb @ emb.T
  windows = [tuple(w) for w in searcher.windows]
  result = evaluate(scores, windows, manifest, qs, args.k, corpus_found)
  result.update(key=key, index=built, measured_now=True, rows=len(windows), index_bytes=dir_bytes(index_dir),
                search_s=search_s, queries=len(qs))
  metrics_file = os.path.join(workdir, "metrics.json")
  if os.path.exists(metrics_file):
    with open(metrics_file, encoding="utf-8") as f:
      record = json.load(f)
    result["trained"] = {"t2v_R@1": record["t2v"]["R@1"], "twin_acc": record.get("twin_acc")}
  with open(cache_file, "w", encoding="utf-8") as f:
    json.dump({**result, "measured_now": False}, f, indent=1)
  return result


# ----------------------------------------------------------------------------- latency


def latency(index_dir: str, rows: int, window: tuple[float, float], video_s: float,
            calls: int, k: int, texts: Sequence[str]) -> dict:
  """p50 / p95 ms of one search_moments query at `rows` random unit rows whose synthetic
  windows are those of videos of `video_s` seconds, behind the model of `index_dir`."""
  from ps_jax.retrieval import moments, windows as windows_lib  # pylint: disable=import-outside-toplevel
  from ps_jax.retrieval.query import TextSearcher  # pylint: disable=import-outside-toplevel
  from ps_jax.retrieval.topk import Searcher  # pylint: disable=import-outside-toplevel
  real = TextSearcher.from_index(index_dir)
  rng = np.random.default_rng(0)
  emb = rng.standard_normal((rows, real.searcher.dim), dtype=np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  spans = windows_lib.spans(video_s, *window)
  wins = [(f"v{r // len(spans):07d}", *spans[r % len(spans)]) for r in range(rows)]
  ids = [windows_lib.row_id(*w) for w in wins]
  searcher = TextSearcher(Searcher(emb, ids), real.encoder, wins)
  del emb
  times = {"search_moments": [], "text encoder": [], "Searcher.search": [], "distinct": []}
  fetch = moments.fetch_k(k, rows, True)
  for call in range(calls + 1):  # the first call compiles
    text = [texts[call % len(texts)]]
    t0 = time.perf_counter()
    searcher.search_moments(text, k)
    t1 = time.perf_counter()
    q = searcher.embed(text)
    t2 = time.perf_counter()
    scores, found = searcher.searcher.search(q, fetch)
    t3 = time.perf_counter()
    moments.distinct([(int(r), float(s)) for s, r in zip(scores[0], found[0])], wins, k)
    t4 = time.perf_counter()
    if call:
      for name, (a, b) in (("search_moments", (t0, t1)), ("text encoder", (t1, t2)),
                           ("Searcher.search", (t2, t3)), ("distinct", (t3, t4))):
        times[name].append(1e3 * (b - a))
  return {"rows": rows, "dim": int(real.searcher.dim), "dtype": searcher.searcher.dtype,
          "k": k, "fetch": fetch, "calls": calls,
          **{name: {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95))}
             for name, v in times.items()}}


# ----------------------------------------------------------------------------- tables


def _stat(values: Sequence[float]) -> str:
  v = np.asarray(values, np.float64)
  if len(v) == 1:
    return f"{v[0]:.1f}"
  return f"{v.mean():.1f} ± {v.std():.1f} (min {v.min():.1f})"


METRIC_COLUMNS = [f"R@{n} IoU={m}" for n in RANKS for m in IOUS]


def _get(result: dict, path: str) -> float:
  """result["a"]["b"] for path "a/b"."""
  for part in path.split("/"):
    result = result[part]
  return result


def metric_table(kind: str, runs: dict, chance_row: dict,
                 extra: Sequence[tuple[str, str]] = ()) -> list[str]:
  """`extra`: (column title, result path) columns after the R@n IoU=m ones."""
  head = "| config | seeds | " + " | ".join(METRIC_COLUMNS + [t for t, _ in extra]) + " |"
  rows = [head, "|---|---:|" + "---:|" * (len(METRIC_COLUMNS) + len(extra))]
  for name, results in runs.items():
    cells = [_stat([r[kind][c] for r in results]) for c in METRIC_COLUMNS]
    cells += [_stat([_get(r, path) for r in results]) for _, path in extra]
    rows.append(f"| `{name}` | {len(results)} | " + " | ".join(cells) + " |")
  cells = [f"{chance_row[kind][c]:.1f}" for c in METRIC_COLUMNS]
  cells += [f"{_get(chance_row, path):.1f}" for _, path in extra]
  rows.append("| chance (random scores) | - | " + " | ".join(cells) + " |")
  return rows


def order_table(runs: dict, chance_row: dict) -> list[str]:
  cols = [("twin corpus", "top moment = twin event (corpus)"),
          ("own corpus", "top moment = own event (corpus)"),
          ("twin within", "twin in the same video: top = twin"),
          ("own within", "twin in the same video: top = own")]
  rows = ["| config | seeds | " + " | ".join(c for _, c in cols) + " |",
          "|---|---:|" + "---:|" * len(cols)]
  for name, results in runs.items():
    rows.append(f"| `{name}` | {len(results)} | "
                + " | ".join(_stat([r[key] for r in results]) for key, _ in cols) + " |")
  rows.append("| chance (random scores) | - | "
              + " | ".join(f"{chance_row[key]:.1f}" for key, _ in cols) + " |")
  return rows


def seed_table(runs: dict, seeds: Sequence[int]) -> list[str]:
  rows = ["| config | seed | within R@1 IoU=0.5 | within R@1 IoU=0.7 | corpus R@1 IoU=0.5 | "
          "corpus R@5 IoU=0.5 | twin (corpus) | demo test t2v R@1 | demo twin accuracy |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for name, results in runs.items():
    for seed, r in zip(seeds, results):
      t = r.get("trained") or {}
      t2v = "-" if t.get("t2v_R@1") is None else f"{t['t2v_R@1']:.1f}"
      acc = "-" if t.get("twin_acc") is None else f"{t['twin_acc']:.1f}%"
      rows.append(f"| `{name}` | {seed} | {r['within']['R@1 IoU=0.5']:.1f} | "
                  f"{r['within']['R@1 IoU=0.7']:.1f} | {r['corpus']['R@1 IoU=0.5']:.1f} | "
                  f"{r['corpus']['R@5 IoU=0.5']:.1f} | {r['twin corpus']:.1f} | {t2v} | {acc} |")
  return rows


def worst_phase_iou(window: float, stride: float, event: float, steps: int = 400) -> float:
  """The best IoU any window of an endless W/S grid reaches with an event of `event`
  seconds, at the event's worst position against the grid."""
  worst = 1.0
  for phase in np.linspace(0.0, stride, steps, endpoint=False):
    first = int(np.floor((phase - window) / stride))
    best = max(iou((k * stride, k * stride + window), (phase, phase + event))
               for k in range(first, first + int(np.ceil((window + event) / stride)) + 2))
    worst = min(worst, best)
  return worst


def sweep_table(sweep: dict, chances: dict, video_hours: float, event_s: float) -> list[str]:
  rows = ["| W s | S s | rows | rows per hour | within R@1 IoU=0.5 | within R@1 IoU=0.7 | "
          "within R@5 IoU=0.7 | within mIoU | corpus R@1 IoU=0.5 | corpus R@1 IoU=0.7 | "
          "corpus R@5 IoU=0.5 | twin (corpus) | chance within R@1 IoU=0.5 | "
          "best IoU, worst phase | index s |",
          "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for (w, s), r in sweep.items():
    c = chances[(w, s)]
    rows.append(f"| {w:g} | {s:g} | {r['rows']} | {r['rows'] / video_hours:,.0f} | "
                f"{r['within']['R@1 IoU=0.5']:.1f} | {r['within']['R@1 IoU=0.7']:.1f} | "
                f"{r['within']['R@5 IoU=0.7']:.1f} | {r['within mIoU']:.1f} | "
                f"{r['corpus']['R@1 IoU=0.5']:.1f} | {r['corpus']['R@1 IoU=0.7']:.1f} | "
                f"{r['corpus']['R@5 IoU=0.5']:.1f} | {r['twin corpus']:.1f} | "
                f"{c['within']['R@1 IoU=0.5']:.1f} | {worst_phase_iou(w, s, event_s):.2f} | "
                f"{r['index']['seconds']:.1f} |")
  return rows


def cost_table(costs: dict) -> list[str]:
  rows = ["| index | videos | rows | rows per hour of video | index bytes | "
          "index bytes per hour of video | embedding bytes per hour | videos/s | "
          "x real time | command's own s | process wall s |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for name, c in costs.items():
    hours = c["video_s"] / 3600
    speed = (f"{c['videos'] / c['seconds']:.2f} | {c['video_s'] / c['seconds']:.1f}x"
             if c["seconds"] > 0 else "n/a | n/a")
    rows.append(f"| {name} | {c['videos']} | {c['rows']:,} | {c['rows'] / hours:,.0f} | "
                f"{c['bytes']:,} | {c['bytes'] / hours:,.0f} | "
                f"{c['embedding_bytes'] / hours:,.0f} | {speed} | {c['seconds']:.1f} | "
                f"{c['wall_s']:.1f} |")
  return rows


def latency_table(lat: dict) -> list[str]:
  names = ("search_moments", "text encoder", "Searcher.search", "distinct")
  rows = ["| rows | dim | dtype | k (rows fetched) | calls | "
          + " | ".join(f"{n} p50 ms" for n in names) + " | search_moments p95 ms |",
          "|---:|---:|---|---:|---:|" + "---:|" * (len(names) + 1)]
  rows.append(f"| {lat['rows']:,} | {lat['dim']} | {lat['dtype']} | {lat['k']} "
              f"({lat['fetch']}) | {lat['calls']} | "
              + " | ".join(f"{lat[n]['p50']:.2f}" for n in names)
              + f" | {lat['search_moments']['p95']:.2f} |")
  return rows


# ----------------------------------------------------------------------------- main


def parse_window(text: str) -> tuple[float, float]:
  try:
    w, s = (float(x) for x in text.split(":"))
  except ValueError:
    raise SystemExit(f"a window is W:S seconds (e.g. 4:2), got {text!r}") from None
  return (w, s)


def config_name(text: str) -> str:
  return os.path.splitext(os.path.basename(text))[0]


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--root", required=True, help="run_seeds.py's --root: ROOT/<config>/seed<S>")
  p.add_argument("--configs", default="demo,demo_noswitch,demo_meanpool",
                 help="config names (or files) under ROOT")
  p.add_argument("--seeds", default="0,1,2,3,4")
  p.add_argument("--work", default="/tmp/ps_jax_moments",
                 help="corpus, indexes and cached results go here")
  p.add_argument("--size", default="demo", choices=sorted(moving_shapes.SIZES),
                 help="moving_shapes size whose test split makes the events")
  p.add_argument("--videos", type=int, default=20)
  p.add_argument("--events", type=int, default=8, help="events per long video (even)")
  p.add_argument("--event_s", type=float, default=4.0, help="mean seconds per event")
  p.add_argument("--event_jitter", type=float, default=0.5, help="each event lasts "
                 "event_s x U(1 - jitter, 1 + jitter) seconds (seeded; 0: all event_s), so "
                 "its boundaries sit on no window grid")
  p.add_argument("--fps", type=int, default=12, help="frame rate of the long videos")
  p.add_argument("--corpus_seed", type=int, default=0)
  p.add_argument("--window", default="4:2", help="W:S seconds of every model's index")
  p.add_argument("--sweep", default="4:2,4:1,2:1,3:1.5,6:3,8:4",
                 help="W:S settings tried on the first config's first seed ('' for none)")
  p.add_argument("--k", type=int, default=max(RANKS), help="moments per query")
  p.add_argument("--latency_rows", type=int, default=1_000_000)
  p.add_argument("--latency_calls", type=int, default=30)
  p.add_argument("--no_costs", action="store_true", help="skip the cost tables")
  p.add_argument("--cost_copies", type=int, default=5, help="also index a folder of this "
                 "many copies of the corpus, to time the videos beyond the first pass's "
                 "fixed costs (0 or 1: no)")
  p.add_argument("--index_args", default="", help="extra index_videos flags, one string "
                 "(e.g. --index_args='--num_prompts 2' for a model that is no workdir)")
  p.add_argument("--fresh", action="store_true", help="ignore cached results")
  p.add_argument("--results", default="", help="write the tables to this markdown file")
  return p


def copy_folder(video_dir: str, out_dir: str, copies: int) -> int:
  """`copies` copies of every video of video_dir in out_dir (c<k>_<name>); the count."""
  os.makedirs(out_dir, exist_ok=True)
  names = sorted(os.listdir(video_dir))
  for k in range(copies):
    for name in names:
      dst = os.path.join(out_dir, f"c{k}_{name}")
      if not os.path.exists(dst):
        shutil.copyfile(os.path.join(video_dir, name), dst)
  return copies * len(names)


def measure_costs(workdir: str, main_res: dict, video_dir: str, work: str,
                  model: tuple[str, int], window: tuple[float, float], manifest: dict,
                  args) -> dict:
  """Rows, bytes and indexing speed of windows vs whole videos, on the corpus and (with
  --cost_copies) on a folder of that many copies of it; every build fresh."""
  extra = shlex.split(args.index_args)
  n = len(manifest["videos"])
  costs = {}

  def add(label, out, built, videos, rows):
    costs[label] = {"videos": videos, "video_s": videos * manifest["video_s"], "rows": rows,
                    "bytes": dir_bytes(out),
                    "embedding_bytes": os.path.getsize(os.path.join(out, "embeddings.npy")),
                    "seconds": built["seconds"], "wall_s": built["wall_s"]}
    print(f"{label}: {built['line']} (process {built['wall_s']:.1f} s)", flush=True)

  name = f"windows W={window[0]:g} s, S={window[1]:g} s"
  out = index_path(work, model, window)
  built = main_res["index"] if main_res.get("measured_now") else run_index(
      workdir, video_dir, out, window, extra)
  add(f"{name}, {n} videos", out, built, n, main_res["rows"])
  out = os.path.join(work, "index", f"{model[0]}-seed{model[1]}-whole")
  add(f"whole videos, {n} videos", out, run_index(workdir, video_dir, out, None, extra), n, n)
  if args.cost_copies > 1:
    many_dir = os.path.join(work, f"corpus_x{args.cost_copies}")
    many = copy_folder(video_dir, many_dir, args.cost_copies)
    for label, w, tag in ((name, window, f"w{window[0]:g}-s{window[1]:g}"),
                          ("whole videos", None, "whole")):
      out = os.path.join(work, "index", f"{model[0]}-seed{model[1]}-x{args.cost_copies}-{tag}")
      built = run_index(workdir, many_dir, out, w, extra)
      rows = len(store_ids(out))
      add(f"{label}, {many} videos", out, built, many, rows)
      small = costs[f"{label}, {n} videos"]
      big = costs[f"{label}, {many} videos"]
      seconds = big["seconds"] - small["seconds"]
      costs[f"{label}: the {many - n} videos more (difference)"] = {
          "videos": many - n, "video_s": (many - n) * manifest["video_s"],
          "rows": big["rows"] - small["rows"], "bytes": big["bytes"] - small["bytes"],
          "embedding_bytes": big["embedding_bytes"] - small["embedding_bytes"],
          "seconds": seconds, "wall_s": big["wall_s"] - small["wall_s"]}
  return costs


def store_ids(path: str) -> list[str]:
  from ps_jax.retrieval import store  # pylint: disable=import-outside-toplevel
  return store.load_index(path).ids


def index_path(work: str, model: tuple[str, int], w: tuple[float, float]) -> str:
  return os.path.join(work, "index", f"{model[0]}-seed{model[1]}-w{w[0]:g}-s{w[1]:g}")


def window_list(work: str, model: tuple[str, int], w: tuple[float, float]) -> list[tuple]:
  """The (video, start, end) of every row of an index built here."""
  from ps_jax.retrieval import store  # pylint: disable=import-outside-toplevel
  path = index_path(work, model, w)
  return [tuple(x) for x in store.load_media(path, len(store.load_index(path))).windows]


def report(args, manifest, runs, seeds, window, sweep, chances, costs, lat, video_s_total,
           first) -> list[str]:
  events = manifest["events"]
  qs = queries(manifest)
  same = sum(events[e["twin"]]["video"] == e["video"] for e in events) // 2
  main_chance = chances[window]
  r0 = runs[first[0]][0]
  lines = [
      "## Corpus and protocol", "",
      f"{len(manifest['videos'])} long videos of {args.events} events each, "
      f"{manifest['video_s']:.1f} s per video on average, {video_s_total:.1f} s "
      f"({video_s_total / 3600:.3f} h) in all; an event is one clip of the moving_shapes "
      f"`{args.size}` test split ({moving_shapes.SIZES[args.size].num_frames} frames) "
      f"stretched by repeating frames to {args.event_s:g} s x U(1 - {args.event_jitter:g}, "
      f"1 + {args.event_jitter:g}) (seeded) at {args.fps} fps, written as "
      f"H.264 .mp4. {len(events) // 2} twin pairs (a clip and its time reversal): {same} "
      f"with both twins in one video, {len(events) // 2 - same} across two videos. "
      f"{len(qs)} queries (every caption of every event). {ambiguous(manifest)} of the "
      f"{len(events)} events share their description (colour, shape, event) with another "
      "event of the corpus, so their captions fit two moments equally well and only one "
      "counts.", "",
      f"Every model's index: `python -m ps_jax.index_videos --model ROOT/<config>/seed<S> "
      f"--video_dir VIDEOS --out IDX --window {window[0]:g} --stride {window[1]:g}` "
      f"({r0['rows']} rows). R@n IoU=m: percent of queries with at least one of their n "
      "best distinct moments at temporal IoU >= m with their event. Within video: only the "
      "windows of the query's own long video are ranked; corpus: "
      "`TextSearcher.search_moments` over the whole index, video and moment both right. "
      "mIoU: mean IoU of the top moment (within video). Cells: mean ± std (population) "
      f"(min) over seeds {','.join(map(str, seeds))}; chance: the same windows ranked by "
      f"random scores ({CHANCE_DRAWS} draws).", "",
      "### Within the query's own video", "",
      *metric_table("within", runs, main_chance, [("mIoU", "within mIoU")]), "",
      "### Over the whole corpus", "",
      f"The last two columns count a moment of any event whose description (colour, "
      f"shape, event) the query's event shares, at IoU >= {TWIN_IOU}.", "",
      *metric_table("corpus", runs, main_chance,
                    [(f"R@{n} IoU={TWIN_IOU}, any event so described", f"corpus any/R@{n}")
                     for n in RANKS]), "",
      "### Order: the time-reversed twin", "",
      f"Percent of queries whose top moment is the twin event (IoU >= {TWIN_IOU} with it) "
      f"and, beside it, their own event; within video over the "
      f"{r0['same-video twin queries']} queries whose twin is in the same video.", "",
      *order_table(runs, main_chance), "",
      "### Per seed", "",
      "The last two columns are the model's own test metrics (metrics.json of its "
      "workdir: the demo's 160-clip test, docs/demo.md).", "",
      *seed_table(runs, seeds), ""]
  short = {name: [r["short lists"] for r in results] for name, results in runs.items()}
  differ = {name: [r["differ from exhaustive"] for r in results]
            for name, results in runs.items()}
  lines += [f"search_moments against an exhaustive ranking of every row through the same "
            f"`moments.distinct`: lists with fewer than k={args.k} moments per seed "
            + "; ".join(f"`{n}` {v}" for n, v in short.items())
            + "; lists that differ " + "; ".join(f"`{n}` {v}" for n, v in differ.items())
            + f" (of {len(qs)} per seed).", ""]
  if sweep:
    lines += [f"### Window and stride (`{first[0]}`, seed {first[1]})", "",
              f"Events last {args.event_s * (1 - args.event_jitter):g} to "
              f"{args.event_s * (1 + args.event_jitter):g} s and start anywhere, as in "
              f"recorded video. \"best IoU, worst phase\": the best IoU any window of the "
              f"grid reaches with a {args.event_s:g}-s event placed anywhere against it. "
              "The tables above used "
              f"--window {window[0]:g} --stride {window[1]:g}.", "",
              *sweep_table(sweep, chances, video_s_total / 3600, args.event_s), ""]
    sweep_short = {w: r["short lists"] for w, r in sweep.items()}
    lines += ["search_moments lists with fewer than k moments: "
              + ", ".join(f"W={w:g} S={s:g}: {n}" for (w, s), n in sweep_short.items())
              + f" (of {len(qs)}).", ""]
  if costs:
    lines += [f"### Costs (`{first[0]}`, seed {first[1]})", "",
              "Every build fresh (`--overwrite`), one after another. Index bytes: "
              "everything in the index directory (embeddings in float16, ids, windows, "
              "thumbnails, sync state); embedding bytes: embeddings.npy alone. videos/s "
              "(video files per second) and x real time (seconds of video per second) use "
              "X of the command's own summary line, `indexed N videos in X s` (with "
              "--window its N counts windows, not files); the process wall time adds "
              "Python and JAX start-up. A first pass's X includes fixed costs (model load, "
              "compilation), so the difference rows time the videos a larger folder "
              "adds.", "",
              *cost_table(costs), ""]
  if lat:
    lines += [f"### Query latency at {lat['rows']:,} window rows", "",
              f"One query per call (a caption of the corpus), k={lat['k']} distinct moments, "
              f"random unit rows with synthetic windows (W={window[0]:g} s, "
              f"S={window[1]:g} s over {manifest['video_s']:g}-s videos) in a `Searcher` "
              "behind the model's text encoder; the parts timed separately after each "
              "search_moments call.", "",
              *latency_table(lat), ""]
  return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = _parser().parse_args(argv)
  made_by = provenance.record("bench_moments.py", argv)
  load_start = os.getloadavg()
  t_start = time.perf_counter()
  if args.k < max(RANKS):
    raise SystemExit(f"--k must be >= {max(RANKS)}")
  configs = [config_name(c) for c in args.configs.split(",") if c]
  seeds = [int(s) for s in args.seeds.split(",")]
  window = parse_window(args.window)
  sweep_windows = [parse_window(w) for w in args.sweep.split(",") if w]
  work = os.path.abspath(args.work)
  manifest = build_corpus(os.path.join(work, "corpus"), args)
  video_dir = os.path.join(work, "corpus", "videos")
  qs = queries(manifest)
  n_videos = len(manifest["videos"])
  video_s_total = n_videos * manifest["video_s"]
  print(f"corpus: {n_videos} videos x {args.events} events of ~{args.event_s:g} s at "
        f"{args.fps} fps ({video_s_total:g} s), {len(qs)} queries", flush=True)
  workdirs = {}
  for name in configs:
    for seed in seeds:
      wd = os.path.join(os.path.abspath(args.root), name, f"seed{seed}")
      if not os.path.isdir(wd) or not os.listdir(wd):
        raise SystemExit(f"no model at {wd}: train it with benchmarks/run_seeds.py --root "
                         f"{args.root} first")
      workdirs[(name, seed)] = wd
  os.makedirs(os.path.join(work, "results"), exist_ok=True)

  def measure(name: str, seed: int, w: tuple[float, float]) -> dict:
    tag = f"{name}-seed{seed}-w{w[0]:g}-s{w[1]:g}"
    print(f"{tag}:", flush=True)
    return measure_model(workdirs[(name, seed)], os.path.join(work, "index", tag), w,
                         manifest, video_dir, args, os.path.join(work, "results", tag + ".json"))

  runs = {name: [measure(name, seed, window) for seed in seeds] for name in configs}
  first = (configs[0], seeds[0])
  sweep = {w: (runs[first[0]][0] if w == window else measure(*first, w))
           for w in sweep_windows}
  chances = {w: chance(window_list(work, first, w), manifest, qs, args.k)
             for w in dict.fromkeys([window, *sweep])}
  costs, lat = {}, None
  if not args.no_costs:
    costs = measure_costs(workdirs[first], runs[first[0]][0], video_dir, work, first, window,
                          manifest, args)
    print(f"latency at {args.latency_rows:,} rows ...", flush=True)
    lat = latency(index_path(work, first, window), args.latency_rows, window,
                  manifest["video_s"], args.latency_calls, 10, [t for t, _ in qs])
  lines = report(args, manifest, runs, seeds, window, sweep, chances, costs, lat,
                 video_s_total, first)
  load_end = os.getloadavg()
  import jax  # pylint: disable=import-outside-toplevel
  footer = [f"Load averages (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in load_start)} at "
            f"the start, {', '.join(f'{x:.2f}' for x in load_end)} at the end; "
            f"{time.perf_counter() - t_start:.0f} s wall in all. jax {jax.__version__}, "
            f"Python {platform.python_version()}, {platform.machine()}, "
            f"{os.cpu_count()} CPUs."]
  print("\n".join(lines + [""] + footer))
  if args.results:
    head = ["# Moments inside long videos (benchmarks/bench_moments.py)", "",
            f"`{made_by['command']}`", "", provenance.commit_line(made_by), "", *footer, ""]
    with open(args.results, "w", encoding="utf-8") as f:
      f.write("\n".join(head + lines) + "\n")
    print(f"wrote {args.results}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
