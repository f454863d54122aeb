"""Search service benchmark: latency and throughput of `python -m ps_jax.serve` on loopback.

Builds an index of N random unit embeddings (default 100k) recorded as embedded by the
given model (a trained workdir: the demo's by default), starts the real server as a
user does (`python -m ps_jax.serve --index ...`), and measures from this process:

- start-up: command start to the first answered /healthz (model load, compile, warm-up);
- 1 client: --requests sequential GET /api/search (k=10, varied captions) on one
  keep-alive connection: p50 / p99 latency and queries/s;
- C clients (--clients, default 8) in threads, each --requests requests in a bounded
  loop: the same figures, plus device calls per request from /healthz (batching);
- the CLI: one `python -m ps_jax.search --index ... --query ...` run, whole command.

Prints a markdown table.

  python -m ps_jax.main --config configs/demo.py --workdir /tmp/ps_jax_demo   # the model
  python benchmarks/bench_serve.py --model /tmp/ps_jax_demo --size 100k
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from bench_search import parse_size, random_unit  # noqa: E402  pylint: disable=wrong-import-position

from ps_jax.data import moving_shapes  # noqa: E402  pylint: disable=wrong-import-position
from ps_jax.retrieval import store  # noqa: E402  pylint: disable=wrong-import-position
from ps_jax.retrieval.model import IndexModel  # noqa: E402  pylint: disable=wrong-import-position


def queries(n: int, seed: int = 0) -> list[str]:
  """n captions in moving_shapes' language (colours x kinds x events, paraphrased)."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    colour = str(rng.choice(list(moving_shapes.COLOURS)))
    kind = str(rng.choice(moving_shapes.KINDS))
    event = str(rng.choice(moving_shapes.EVENTS))
    options = moving_shapes.caption_options([colour], [kind], [event])
    out.append(options[int(rng.integers(len(options)))])
  return out


def write_random_index(out: str, model_path: str, size: int, seed: int) -> int:
  """An index of `size` random rows that search attributes to `model_path`; its dim."""
  imodel = IndexModel.load(model_path)
  dim = imodel.model.clip.projection_dim
  d = imodel.defaults
  metadata = {"model_path": imodel.path, "load_model_kwargs": imodel.load_kwargs,
              "tokenizer": d["tokenizer"], "max_len": d["max_len"],
              "num_frames": d["num_frames"], "image_size": d["image_size"]}
  store.write_index(out, [f"video{i:07d}" for i in range(size)],
                    random_unit(size, dim, seed), imodel.fingerprint, metadata,
                    source=f"bench_serve: {size} random rows")
  return dim


def start_server(index: str, port: int, max_batch: int):
  start = time.perf_counter()
  proc = subprocess.Popen([sys.executable, "-m", "ps_jax.serve", "--index", index, "--port",
                           str(port), "--max_batch", str(max_batch)], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  while True:
    try:
      conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
      conn.request("GET", "/healthz")
      if conn.getresponse().status == 200:
        return proc, time.perf_counter() - start
    except OSError:
      pass
    if proc.poll() is not None:
      raise SystemExit(f"ps_jax.serve exited:\n{proc.stdout.read()}")
    time.sleep(0.1)


def health(port: int) -> dict:
  conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
  conn.request("GET", "/healthz")
  return json.loads(conn.getresponse().read())


def client(port: int, texts: list[str], k: int, latencies: list) -> None:
  """Sequential requests on one keep-alive connection; appends seconds per request."""
  conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
  for text in texts:
    start = time.perf_counter()
    conn.request("GET", f"/api/search?q={urllib.parse.quote(text)}&k={k}")
    response = conn.getresponse()
    body = response.read()
    latencies.append(time.perf_counter() - start)
    if response.status != 200 or len(json.loads(body)["results"]) != k:
      raise SystemExit(f"bad answer {response.status}: {body[:200]!r}")
  conn.close()


def run_clients(port: int, num_clients: int, requests: int, k: int, seed: int) -> dict:
  texts = queries(num_clients * requests, seed)
  per_client = [[] for _ in range(num_clients)]
  before = health(port)
  threads = [threading.Thread(target=client, args=(port, texts[i::num_clients], k,
                                                   per_client[i]))
             for i in range(num_clients)]
  start = time.perf_counter()
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  wall = time.perf_counter() - start
  after = health(port)
  lat = np.concatenate([np.asarray(x) for x in per_client]) * 1e3
  calls = after["device_calls"] - before["device_calls"]
  done = after["requests"] - before["requests"]
  return {"clients": num_clients, "requests": len(lat), "p50_ms": float(np.percentile(lat, 50)),
          "p99_ms": float(np.percentile(lat, 99)), "qps": len(lat) / wall,
          "requests_per_call": done / max(calls, 1)}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="/tmp/ps_jax_demo",
                      help="a trained ps_jax workdir (default: the demo's)")
  parser.add_argument("--size", type=parse_size, default=parse_size("100k"))
  parser.add_argument("--requests", type=int, default=200, help="requests per client")
  parser.add_argument("--clients", type=int, default=8)
  parser.add_argument("--k", type=int, default=10)
  parser.add_argument("--max_batch", type=int, default=32)
  parser.add_argument("--port", type=int, default=8791)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if not os.path.isdir(args.model):
    parser.error(f"--model {args.model!r} is not a directory: train the demo first "
                 "(python -m ps_jax.main --config configs/demo.py --workdir /tmp/ps_jax_demo)")
  with tempfile.TemporaryDirectory() as tmp:
    index = os.path.join(tmp, "index")
    dim = write_random_index(index, args.model, args.size, args.seed)
    proc, startup = start_server(index, args.port, args.max_batch)
    try:
      run_clients(args.port, 1, 20, args.k, args.seed + 1)  # connection and page-cache warm
      rows = [run_clients(args.port, 1, args.requests, args.k, args.seed + 2),
              run_clients(args.port, args.clients, args.requests, args.k, args.seed + 3)]
    finally:
      proc.terminate()
      proc.wait(timeout=60)
    start = time.perf_counter()
    cli = subprocess.run([sys.executable, "-m", "ps_jax.search", "--index", index, "--query",
                          queries(1, args.seed)[0], "--top_k", str(args.k)], cwd=REPO,
                         capture_output=True, text=True, check=False)
    cli_s = time.perf_counter() - start
    if cli.returncode:
      raise SystemExit(f"ps_jax.search failed:\n{cli.stderr[-2000:]}")
  print(f"# bench_serve: {args.size} videos x {dim} dims, k={args.k}, model {args.model}, "
        f"{platform.node()} ({os.cpu_count()} CPUs), server start-up {startup:.1f} s")
  print("| clients | requests | p50 latency | p99 latency | queries/s | requests per device call |")
  print("|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['clients']} | {r['requests']} | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | "
          f"{r['qps']:.1f} | {r['requests_per_call']:.2f} |")
  print(f"| CLI (`python -m ps_jax.search`, one query) | 1 | {cli_s * 1e3:.0f} ms | | "
        f"{1 / cli_s:.2f} | |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
