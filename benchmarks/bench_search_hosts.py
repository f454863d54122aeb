"""Search latency over an index sharded across processes (`jax.distributed`) against one
process holding the same rows.

Writes an index of --rows random unit rows (dim --dim, float16 on disk) and its shard
directory (one shard per process), then runs each setup as separate processes on this
machine, joined over loopback like the hosts of a pod:
  one process   1 process x --devices CPU devices, `HostShardedSearcher` over the shards
  N processes   N processes x (--devices / N) devices each, each reading only its rows
Every process answers the same queries in lockstep; process 0 times each call (host
queries in, replicated results out: the broadcast, per-device top-k and cross-process
merge). Also checks that both setups return the same ids and scores. On one machine the
processes share its cores: the multi-process rows show the cost of the cross-process
broadcast and merge, not the speed-up of more hosts (which is what adds memory and
cores at scale).

  python benchmarks/bench_search_hosts.py [--rows 1M] [--dim 512] [--processes 2] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from bench_search import parse_size, random_unit  # noqa: E402
# pylint: enable=g-import-not-at-top,wrong-import-position

BATCHES = (1, 64)
K = 10


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def worker(args) -> None:
  """One process of a setup: load its rows, answer every query batch, time on process 0."""
  import jax  # pylint: disable=g-import-not-at-top
  if args.num_processes > 1:
    jax.distributed.initialize(f"localhost:{args.port}", num_processes=args.num_processes,
                               process_id=args.process_id)
  from ps_jax.retrieval import hosts  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  searcher = hosts.HostShardedSearcher(args.shards, batch_size=max(BATCHES))
  searcher.rows.block_until_ready()
  load_s = time.perf_counter() - start
  out = {"load_s": load_s, "devices": jax.device_count(), "processes": jax.process_count(),
         "latency_ms": {}, "results": {}}
  rng = np.random.default_rng(1)
  for batch in BATCHES:
    queries = [rng.normal(size=(batch, args.dim)).astype(np.float32)
               for _ in range(args.calls + 2)]
    searcher.search(queries[0], K)  # compile
    times = []
    for q in queries[1:]:
      t = time.perf_counter()
      scores, ids = searcher.search(q, K)
      times.append(time.perf_counter() - t)
    out["latency_ms"][str(batch)] = [1e3 * t for t in times]
    out["results"][str(batch)] = [np.asarray(ids).tolist(), np.asarray(scores).tolist()]
  if jax.process_index() == 0:
    with open(args.result, "w", encoding="utf-8") as f:
      json.dump(out, f)


def run_setup(script: str, shards_dir: str, processes: int, devices: int, dim: int,
              calls: int, work: str) -> dict:
  result = os.path.join(work, f"result_{processes}.json")
  port = str(_free_port())
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices // processes}"}
  procs = [subprocess.Popen([sys.executable, script, "--worker", "--shards", shards_dir,
                             "--dim", str(dim), "--calls", str(calls), "--port", port,
                             "--num_processes", str(processes), "--process_id", str(i),
                             "--result", result], env=env)
           for i in range(processes)]
  codes = [p.wait() for p in procs]
  if any(codes):
    raise SystemExit(f"a search process failed: exit codes {codes}")
  with open(result, encoding="utf-8") as f:
    return json.load(f)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", type=parse_size, default=parse_size("1M"))
  parser.add_argument("--dim", type=int, default=512)
  parser.add_argument("--processes", type=int, default=2)
  parser.add_argument("--devices", type=int, default=2,
                      help="CPU devices in all (split over the processes)")
  parser.add_argument("--calls", type=int, default=20, help="timed calls per batch size")
  parser.add_argument("--markdown", action="store_true")
  parser.add_argument("--json", help="also write the rows here")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  for name in ("--shards", "--port", "--result"):
    parser.add_argument(name, help=argparse.SUPPRESS)
  parser.add_argument("--num_processes", type=int, default=1, help=argparse.SUPPRESS)
  parser.add_argument("--process_id", type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    worker(args)
    return
  if args.devices % args.processes:
    parser.error(f"--devices {args.devices} must be a multiple of --processes "
                 f"{args.processes}")
  from ps_jax.retrieval import shards, store  # pylint: disable=g-import-not-at-top
  work = tempfile.mkdtemp(prefix="bench_search_hosts_")
  try:
    ids = [f"v{i}" for i in range(args.rows)]
    store.write_index(os.path.join(work, "index"), ids, random_unit(args.rows, args.dim, 0),
                      "sha256:" + "0" * 64)
    shards.write_shards(os.path.join(work, "index"), os.path.join(work, "shards"),
                        args.processes)
    print(f"{args.rows:,} rows x {args.dim} (float16 on disk, float32 on the CPU "
          f"devices), top-{K}, {args.devices} CPU devices in all, {os.cpu_count()} CPUs",
          flush=True)
    got = {}
    for processes in (1, args.processes):
      got[processes] = run_setup(os.path.abspath(__file__), os.path.join(work, "shards"),
                                 processes, args.devices, args.dim, args.calls, work)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  same = got[1]["results"] == got[args.processes]["results"]
  rows = []
  for processes, out in got.items():
    row = {"processes": processes, "devices": out["devices"],
           "load_s": round(out["load_s"], 2)}
    for batch in BATCHES:
      lat = np.asarray(out["latency_ms"][str(batch)])
      row[f"p50_ms_{batch}"] = round(float(np.percentile(lat, 50)), 2)
      row[f"qps_{batch}"] = round(batch * 1e3 / float(np.median(lat)), 1)
    rows.append(row)
  print()
  if args.markdown:
    print("| setup | devices | load s | 1 query p50 ms | 64 queries p50 ms | queries/s (64) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
      print(f"| {r['processes']} process{'es' if r['processes'] > 1 else ''} | "
            f"{r['devices']} | {r['load_s']} | {r['p50_ms_1']} | {r['p50_ms_64']} | "
            f"{r['qps_64']} |")
  else:
    for r in rows:
      print(r)
  print(f"same ids and scores in both setups: {same}")
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump({"rows": args.rows, "dim": args.dim, "k": K, "same_results": same,
                 "table": rows}, f, indent=1)
  if not same:
    raise SystemExit("the setups returned different results")


if __name__ == "__main__":
  main()
