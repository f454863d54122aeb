"""Top-k search benchmark: ps_jax Searcher (exact, approx) vs numpy brute force vs faiss-cpu.

Indexes of N random L2-normalised embeddings (default 10k, 100k and 1M rows of dim 512);
for each method it measures the latency of one query and of a batch of 64 queries (p50 and
p95, host arrays in and out, so including transfers) and the throughput of batches of 64.
Recall is that of each method's top-k ids against numpy's exact top-k on one batch.
faiss (IndexFlatIP, exact) is used when `faiss` imports (`pip install faiss-cpu`), and
skipped with a note otherwise. Prints a markdown table.

  python benchmarks/bench_search.py --sizes 10k,100k,1M
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

from ps_jax import sharding  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from ps_jax.retrieval import topk  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def parse_size(text: str) -> int:
  """'10k' -> 10_000, '1M' -> 1_000_000, '2500' -> 2500."""
  text = text.strip()
  scale = {"k": 1_000, "K": 1_000, "m": 1_000_000, "M": 1_000_000}.get(text[-1:], 1)
  number = text[:-1] if scale != 1 else text
  try:
    value = int(float(number) * scale)
  except ValueError:
    raise argparse.ArgumentTypeError(f"Bad size {text!r}: use e.g. 10k, 100k, 1M") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"Size must be >= 1, got {text!r}")
  return value


def random_unit(n: int, dim: int, seed: int, chunk: int = 100_000) -> np.ndarray:
  """float32[n, dim] random rows of unit L2 norm, generated in chunks."""
  rng = np.random.default_rng(seed)
  out = np.empty((n, dim), np.float32)
  for start in range(0, n, chunk):
    block = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
    block /= np.linalg.norm(block, axis=1, keepdims=True)
    out[start:start + block.shape[0]] = block
  return out


def numpy_search(rows: np.ndarray):
  """Brute force: one float32 matmul, argpartition, then a sort of the k candidates."""

  def run(queries: np.ndarray, k: int):
    scores = queries @ rows.T
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    return np.take_along_axis(part_scores, order, 1), np.take_along_axis(part, order, 1)

  return run


def faiss_search(rows: np.ndarray):
  import faiss  # pylint: disable=g-import-not-at-top
  index = faiss.IndexFlatIP(rows.shape[1])
  index.add(rows)

  def run(queries: np.ndarray, k: int):
    return index.search(np.ascontiguousarray(queries), k)

  return run


def searcher_search(searcher: topk.Searcher, approx: bool):

  def run(queries: np.ndarray, k: int):
    return searcher.search(queries, k, approx=approx)

  return run


def time_calls(fn, query_sets, k: int, budget_s: float, min_calls: int, max_calls: int):
  """Per-call latencies in seconds, cycling over query_sets, after two warm-up calls."""
  for queries in query_sets[:2]:
    fn(queries, k)
  times = []
  start = time.perf_counter()
  while len(times) < max_calls and (len(times) < min_calls or
                                    time.perf_counter() - start < budget_s):
    queries = query_sets[len(times) % len(query_sets)]
    t0 = time.perf_counter()
    fn(queries, k)
    times.append(time.perf_counter() - t0)
  return np.asarray(times)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
  hits = sum(len(set(f.tolist()) & set(e.tolist())) for f, e in zip(found, exact))
  return hits / exact.size


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="10k,100k,1M",
                      help="comma-separated index sizes, e.g. 10k,100k,1M")
  parser.add_argument("--dim", type=int, default=512)
  parser.add_argument("--k", type=int, default=10)
  parser.add_argument("--batch", type=int, default=64, help="queries per batch")
  parser.add_argument("--dtypes", default="",
                      help="comma-separated Searcher storage dtypes (default: the platform's, "
                           "see ps_jax.retrieval.topk.DEFAULT_DTYPES)")
  parser.add_argument("--budget_s", type=float, default=2.0,
                      help="time spent per measurement (at least --min_calls calls)")
  parser.add_argument("--min_calls", type=int, default=5)
  parser.add_argument("--max_calls", type=int, default=200)
  parser.add_argument("--recall_target", type=float, default=0.95)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  try:
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
  except argparse.ArgumentTypeError as e:
    parser.error(f"--sizes: {e}")
  mesh = sharding.make_mesh()
  dtypes = [d for d in args.dtypes.split(",") if d] or [topk.default_dtype(mesh)]

  try:
    import faiss  # pylint: disable=g-import-not-at-top
    faiss_note = f"faiss {faiss.__version__} IndexFlatIP, {faiss.omp_get_max_threads()} threads"
  except ImportError:
    faiss = None
    faiss_note = "faiss not importable (pip install faiss-cpu): skipped"

  queries = random_unit(16 * args.batch, args.dim, args.seed + 1)
  singles = [queries[i:i + 1] for i in range(64)]
  batches = [queries[i * args.batch:(i + 1) * args.batch] for i in range(16)]
  rows_out = []
  t_start = time.perf_counter()
  for n in sizes:
    rows = random_unit(n, args.dim, args.seed)
    exact_ids = numpy_search(rows)(batches[0], args.k)[1]
    methods = []
    for dtype in dtypes:
      searcher = topk.Searcher(rows, dtype=dtype, mesh=mesh, batch_size=args.batch)
      methods.append((f"ps_jax exact ({dtype})", searcher_search(searcher, False), searcher))
      methods.append((f"ps_jax approx ({dtype}, recall_target {args.recall_target})",
                      searcher_search(searcher, True), searcher))
    methods.append(("numpy matmul + argpartition (float32)", numpy_search(rows), None))
    if faiss is not None:
      methods.append(("faiss IndexFlatIP (float32)", faiss_search(rows), None))
    for name, fn, _ in methods:
      single = time_calls(fn, singles, args.k, args.budget_s, args.min_calls, args.max_calls)
      batch = time_calls(fn, batches, args.k, args.budget_s, args.min_calls, args.max_calls)
      rows_out.append((n, name, *np.percentile(single, [50, 95]) * 1e3,
                       *np.percentile(batch, [50, 95]) * 1e3,
                       args.batch * len(batch) / batch.sum(),
                       recall(fn(batches[0], args.k)[1], exact_ids)))
      print(f"  done N={n:,} {name} ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr)
    del methods, rows, fn
    gc.collect()

  print(f"Top-{args.k} search, dim {args.dim}, random unit vectors; jax {jax.__version__} on "
        f"{jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()}); "
        f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}); "
        f"{faiss_note}.\n")
  print(f"| N | method | 1 query p50 (ms) | 1 query p95 (ms) | {args.batch} queries p50 (ms) "
        f"| {args.batch} queries p95 (ms) | queries/s (batches of {args.batch}) "
        f"| recall@{args.k} vs numpy |")
  print("|---:|---|---:|---:|---:|---:|---:|---:|")
  for n, name, s50, s95, b50, b95, qps, rec in rows_out:
    print(f"| {n:,} | {name} | {s50:.2f} | {s95:.2f} | {b50:.3f} | {b95:.3f} | {qps:,.0f} "
          f"| {rec:.3f} |")
  print(f"\nTotal time {time.perf_counter() - t_start:.0f} s.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
