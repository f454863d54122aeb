"""Command line: text-to-video search over an index built by `ps_jax.index_videos`.

  python -m ps_jax.search --index DIR --query "a man is singing" --top_k 5
  python -m ps_jax.search --index DIR --queries_file queries.txt --top_k 10 [--approx]
  python -m ps_jax.search --index DIR --query_embeddings queries.npy --top_k 5
  python -m ps_jax.search --index SHARDS --query "..." --coordinator_address H:P \
      --num_processes N --process_id I       (every host; SHARDS: ps_jax.shard_index)

The index records the model that embedded its videos and its tokenizer; they are loaded
again, the model's fingerprint is checked against the index's (another model is
refused) and the queries are embedded with its `encode_text`. Output: a `# query: ...`
header per query, then `rank<TAB>score<TAB>video_id` lines, best first.

`--index` may also be a shard directory (`python -m ps_jax.shard_index`). In a
multi-host run (the same command on every host, `jax.distributed` as in `ps_jax.main`)
the rows are split over every device of every host and each host reads only its own
rows (`HostShardedSearcher`); process 0's queries are answered and process 0 prints.

Layer: front end (imports the library `ps_jax.retrieval`: `TextSearcher`, `Searcher`,
`topk`).
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Callable, Optional, Sequence

import jax
import numpy as np

from ps_jax import distributed, sharding
from ps_jax.retrieval import moments, shards, store
from ps_jax.retrieval.hosts import HostShardedSearcher
from ps_jax.retrieval.model import ModelLoadError
from ps_jax.retrieval.query import QueryEncoderError, query_encoder
from ps_jax.retrieval.topk import STORAGE_DTYPES, Searcher, format_results

EmbedFn = Callable[[Sequence[str]], np.ndarray]


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m ps_jax.search", description="Text-to-video search over a ps_jax index.")
  parser.add_argument("--index", required=True, help="index directory (ps_jax.index_videos) "
                      "or shard directory (ps_jax.shard_index)")
  parser.add_argument("--query", action="append", default=[], help="a text query (repeatable)")
  parser.add_argument("--queries_file", help="text file, one query per line")
  parser.add_argument("--query_embeddings",
                      help=".npy float[Q, E] of already computed query embeddings")
  parser.add_argument("--top_k", type=int, default=10)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--approx", action="store_true",
                      help="approximate top-k (jax.lax.approx_max_k; exact on CPU)")
  parser.add_argument("--recall_target", type=float, default=0.95)
  parser.add_argument("--dtype", choices=STORAGE_DTYPES, default=None,
                      help="on-device storage dtype (default by platform)")
  parser.add_argument("--model", help="the model that built the index, where the index's "
                      "recorded path no longer finds it (its fingerprint must match)")
  parser.add_argument("--tokenizer", help="tokenizer for the queries (default: the index's)")
  parser.add_argument("--coordinator_address", help="host:port of process 0 (multi-host)")
  parser.add_argument("--num_processes", type=int, help="number of processes (multi-host)")
  parser.add_argument("--process_id", type=int, help="this process's index (multi-host)")
  return parser


_PRINT_CHUNK = 4096  # text queries answered (and printed) per round


def main(argv: Optional[Sequence[str]] = None, embed_queries: Optional[EmbedFn] = None) -> int:
  """Command-line entry point.

  Args:
    argv: arguments without the program name (default sys.argv[1:]).
    embed_queries: texts -> float32[Q, E] query embeddings; default: the text encoder
      of the model recorded in the index (`TextSearcher`).

  Returns:
    The exit status (2: bad flags, a corrupt index or a model that does not match it).
  """
  parser = _parser()
  args = parser.parse_args(argv)
  texts = list(args.query)
  if args.queries_file:
    try:
      with open(args.queries_file, encoding="utf-8") as f:
        texts += [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
      parser.error(f"--queries_file {args.queries_file!r}: {e}")
  if bool(texts) == bool(args.query_embeddings):
    parser.error("give text queries (--query / --queries_file) or --query_embeddings, "
                 "not both and not neither")
  try:
    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
  except distributed.DistributedError as e:
    parser.error(str(e))

  def emit(text: str) -> None:
    if jax.process_index() == 0:  # one process prints
      print(text, flush=True)

  try:
    if args.top_k < 1:
      parser.error(f"--top_k must be >= 1, got {args.top_k}")
    mesh = sharding.make_mesh()
    windows, fmt = None, format_results
    if jax.process_count() > 1 or shards.is_shard_dir(args.index):
      index = shards.RowSource.open(args.index)  # each process reads its own rows
      searcher = HostShardedSearcher(index, dtype=args.dtype, mesh=mesh,
                                     batch_size=args.batch_size)
    else:
      index = store.load_index(args.index)
      searcher = Searcher(index.embeddings, index.ids, dtype=args.dtype, mesh=mesh,
                          batch_size=args.batch_size)
      windows = store.load_media(args.index, len(index)).windows
    top_k = min(args.top_k, len(index))  # a small index answers with all its videos
    search = functools.partial(searcher.search_ids, k=top_k, approx=args.approx,
                               recall_target=args.recall_target)
    if windows is not None:  # distinct moments, printed with their start and end
      search = functools.partial(_moments, searcher, windows, top_k, args)
      fmt = _format_moments
    if args.query_embeddings:
      query_emb = np.load(args.query_embeddings, allow_pickle=False)
      labels = [f"{args.query_embeddings}[{i}]"
                for i in range(np.atleast_2d(query_emb).shape[0])]
      emit(fmt(labels, search(query_emb)))
      return 0
    if embed_queries is None:
      try:
        embed_queries = query_encoder(index, model=args.model, tokenizer=args.tokenizer,
                                      mesh=mesh, batch_size=args.batch_size,
                                      where=f"index {args.index!r}")
      except (QueryEncoderError, ModelLoadError) as e:
        parser.error(str(e))
    for start in range(0, len(texts), _PRINT_CHUNK):
      chunk = texts[start:start + _PRINT_CHUNK]
      query_emb = np.asarray(embed_queries(chunk), np.float32)
      if query_emb.ndim != 2 or query_emb.shape[0] != len(chunk):
        raise ValueError(f"embed_queries returned shape {query_emb.shape} for {len(chunk)} "
                         "texts; expected [Q, E]")
      emit(fmt(chunk, search(query_emb)))
  except (store.IndexFormatError, store.FingerprintMismatchError,
          FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


def _moments(searcher, windows, k: int, args, query_emb) -> list:
  """Per query, k distinct moments (`moments.distinct`): [(id, score, window)]."""
  scores, rows = searcher.search(query_emb, moments.fetch_k(k, len(windows), True),
                                 approx=args.approx, recall_target=args.recall_target)
  return [[(searcher.ids[r], s, windows[r]) for r, s in moments.distinct(
      [(int(r), float(s)) for s, r in zip(scores[q], rows[q])], windows, k)]
          for q in range(len(scores))]


def _format_moments(labels, results) -> str:
  """`format_results` with each moment's video, start and end (seconds) after its id."""
  lines = []
  for label, hits in zip(labels, results):
    lines.append(f"# query: {label}")
    for rank, (row_id, score, w) in enumerate(hits, 1):
      when = f"\t{w[0]}\t{w[1]:.3f}\t{w[2]:.3f}" if w is not None else ""
      lines.append(f"{rank}\t{score:.4f}\t{row_id}{when}")
  return "\n".join(lines)


if __name__ == "__main__":
  sys.exit(main())
