"""Search over an index whose rows are spread over every host of a multi-host run.

Layer: foundation (jax, `sharding`, `topk`, `shards`). `HostShardedSearcher(path)` runs
in every process of a `jax.distributed` run: the rows are split over the devices of all
hosts, each process reads from disk only the rows of its own devices (from an index
directory or, better, from a shard directory written by `shards.write_shards`), process
0's queries are broadcast to all, each device selects its exact top-k (`topk`'s
per-shard search) and one cross-host gather and top-k merge gives every process the
same result as one process over the whole index, ties included.

  searcher = HostShardedSearcher("/shared/index_shards")   # in every process
  searcher.search_ids(query_embeddings, k=10)             # the same on every process
"""

from __future__ import annotations

import functools
from typing import Optional, Union

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from ps_jax.retrieval import shards as shards_lib
from ps_jax.retrieval import topk


class HostShardedSearcher(topk.Searcher):
  """A Searcher whose rows each process reads from disk for its own devices only.

  Made in every process of a multi-host run (after `jax.distributed.initialize`), with the
  same arguments; on one process it is a Searcher that reads its rows from a shard or
  index directory. Every process must call `search` / `search_ids` together (SPMD), with
  queries of the same shape: process 0's values are broadcast and used by all, and every
  process gets the whole result.
  """

  def __init__(self, path: Union[str, shards_lib.RowSource], *, dtype: Optional[str] = None,
               mesh: Optional[Mesh] = None, batch_size: int = 64,
               block_rows: Optional[int] = None):
    """Reads this process's rows and places them on its devices.

    Args:
      path: a shard directory (`shards.write_shards`), an index directory, or a RowSource.
      dtype, batch_size, block_rows: as for `Searcher`.
      mesh: the rows are split over all its axes; default every device of every process.
    """
    self.source = shards_lib.RowSource.open(path) if isinstance(path, str) else path
    # source.rows opens only the files holding each local device's rows.
    self._place(functools.partial(topk.place_rows, self.source.rows, self.source.count,
                                  self.source.dim), mesh, batch_size, dtype=dtype,
                block_rows=block_rows)
    self.ids = None

  def search(self, query_emb, k: int, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """As `Searcher.search`, with process 0's queries (see the class docstring)."""
    if jax.process_count() > 1:
      query_emb = multihost_utils.broadcast_one_to_all(np.asarray(query_emb, np.float32))
    return super().search(query_emb, k, **kwargs)

  def search_ids(self, query_emb, k: int, **kwargs) -> list[list[tuple[str, float]]]:
    """Like `search`, as (id, score) lists; reads only the id files of the hits."""
    scores, indices = self.search(query_emb, k, **kwargs)
    return [list(zip(self.source.ids_of(row_i), map(float, row_s)))
            for row_s, row_i in zip(scores, indices)]
