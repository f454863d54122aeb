"""Roles of the multi-host search test, each run as its own process (test_multihost_search.py).

  worker:    one of 2 processes, 4 CPU devices each. First runs the documented multi-host
             search command on --text_shards (text queries, `--query` and
             `--queries_file`, through the index's model and tokenizer;
             `--coordinator_address`, `--num_processes 2` and `--process_id` join the
             processes with jax.distributed on loopback). Then builds a
             HostShardedSearcher over --shards (each process reads only the shard files
             of its own rows), answers the queries (process 1 passes other values:
             process 0's are broadcast) and writes the scores, rows, ids, the files it
             opened and what the commands printed to --out.
  reference: one process with 8 devices over the whole index directories (`Searcher`).
"""

import argparse
import contextlib
import io
import json
import os
import sys

import jax
import numpy as np

K = 25
BATCH = 16  # 37 queries: two full batches and one padded
TEXT_QUERIES = ("a red circle moves left", "the blue square rises", "a green triangle shrinks")


def queries(dim: int) -> np.ndarray:
  return np.random.default_rng(7).normal(size=(37, dim)).astype(np.float32)


def run_cli(search, argv) -> dict:
  """{"status", "stdout"} of `python -m ps_jax.search` with `argv`, run in this process."""
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    status = search.main(argv)
  return {"status": status, "stdout": printed.getvalue()}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("role", choices=("worker", "reference"))
  parser.add_argument("--index", required=True)
  parser.add_argument("--shards", required=True)
  parser.add_argument("--text_index", required=True)
  parser.add_argument("--text_shards", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--port")
  parser.add_argument("--process_id", type=int, default=0)
  args = parser.parse_args()
  from ps_jax import search  # pylint: disable=g-import-not-at-top
  from ps_jax.retrieval import hosts, store, topk  # pylint: disable=g-import-not-at-top
  name = "reference" if args.role == "reference" else f"worker{args.process_id}"
  text_file = os.path.join(args.out, f"text_queries_{name}.txt")
  with open(text_file, "w", encoding="utf-8") as f:
    f.write("\n".join(TEXT_QUERIES[1:]) + "\n")
  text_command = ["--index", args.text_index if args.role == "reference" else args.text_shards,
                  "--query", TEXT_QUERIES[0], "--queries_file", text_file, "--top_k", "5"]
  if args.role == "worker":  # the documented multi-host command; it joins the processes
    text_command += ["--coordinator_address", f"localhost:{args.port}", "--num_processes",
                     "2", "--process_id", str(args.process_id)]
  text_cli = run_cli(search, text_command)
  index = store.load_index(args.index)
  q = queries(index.dim)
  if args.role == "reference":
    assert jax.device_count() == 8 and jax.process_count() == 1
    searcher = topk.Searcher(index.embeddings, index.ids, batch_size=BATCH)
    files = []
  else:
    assert jax.process_count() == 2 and jax.process_index() == args.process_id
    assert jax.device_count() == 8 and jax.local_device_count() == 4
    searcher = hosts.HostShardedSearcher(args.shards, batch_size=BATCH)
    files = sorted(searcher.source.files_opened)  # before any id lookup
    if args.process_id == 1:
      q = -q  # ignored: process 0's queries are broadcast
  scores, rows = searcher.search(q, K)
  hits = searcher.search_ids(q, K)
  result = {"scores": np.asarray(scores).tolist(), "rows": np.asarray(rows).tolist(),
            "ids": [[h[0] for h in row] for row in hits],
            "hit_scores": [[h[1] for h in row] for row in hits],
            "embedding_files": files,
            "local_rows": [[int(s.index[0].start or 0), int(s.index[0].stop)]
                           for s in searcher.rows.addressable_shards]}
  # The command line: the workers search the shard directory, the reference the index.
  qfile = os.path.join(args.out, f"queries_{name}.npy")
  np.save(qfile, q[:3])
  result["cli"] = run_cli(search, ["--index", args.index if args.role == "reference"
                                   else args.shards, "--query_embeddings", qfile,
                                   "--top_k", "4"])
  result["text_cli"] = text_cli
  with open(os.path.join(args.out, name + ".json"), "w", encoding="utf-8") as f:
    json.dump(result, f)
  print("DONE", name)
  sys.stdout.flush()


if __name__ == "__main__":
  main()
