"""Command line: write an index as row shards, so that each host of a multi-host search
reads only its part.

  python -m ps_jax.shard_index --index INDEX --out SHARDS --num_shards 64

SHARDS (which must not exist yet) receives `shards.json` and, per shard, its rows and
ids (`ps_jax.retrieval.shards`). Search it with `python -m ps_jax.search --index SHARDS`
on every host of a multi-host run. A good shard count is a multiple of the number of
hosts (a host then reads whole files); any count works: a host reads the files that
overlap its rows.

Layer: front end.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ps_jax.retrieval import shards, store


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m ps_jax.shard_index",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--index", required=True, help="index directory (ps_jax.index_videos)")
  parser.add_argument("--out", required=True, help="shard directory to create")
  parser.add_argument("--num_shards", type=int, required=True)
  args = parser.parse_args(argv)
  try:
    meta = shards.write_shards(args.index, args.out, args.num_shards)
  except (store.IndexFormatError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except ValueError as e:
    parser.error(f"--num_shards: {e}")
  sizes = [s["count"] for s in meta["shards"]]
  print(f"wrote {meta['count']} rows of {args.index} as {len(sizes)} shards "
        f"({min(sizes)}-{max(sizes)} rows each) to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
