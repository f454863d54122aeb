"""Top-k inner-product search of query embeddings over a video index, exact or approximate.

Layer: foundation (jax and `sharding` only). Exact search returns, per query, the k
highest scores with a deterministic tie rule: a higher score first, then a lower row
index first (numpy's stable argsort of -scores). The index can be sharded by rows over
every axis of a device mesh: each shard computes its exact top-k and the k x num_shards
candidates are merged with the same rule, so sharded and unsharded results are
identical. Scores accumulate in float32; with float16 / bfloat16 storage the queries
are rounded to the storage dtype before the product.

  searcher = Searcher(embeddings, ids)          # rows on all devices
  searcher.search_ids(query_embeddings, k=10)   # [[(video_id, cosine), ...], ...]

Beyond one host: `ps_jax.retrieval.hosts.HostShardedSearcher`, on the same functions.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ps_jax import sharding
from ps_jax.retrieval import store

# Storage dtype when none is given: float32 on CPU (XLA:CPU half-precision matmuls are ~10x
# slower than float32 ones), half precision where the matrix units are built for it.
DEFAULT_DTYPES = {"cpu": "float32", "gpu": "float16", "cuda": "float16", "rocm": "float16",
                  "tpu": "bfloat16"}
STORAGE_DTYPES = ("float32", "float16", "bfloat16")


def _shard_map(f, mesh: Mesh, in_specs, out_specs):
  """`jax.shard_map`, or the older `jax.experimental.shard_map.shard_map` where it lacks."""
  if hasattr(jax, "shard_map"):
    return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
  from jax.experimental.shard_map import shard_map  # pylint: disable=g-import-not-at-top
  return shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)


def _scores(queries: jax.Array, rows: jax.Array) -> jax.Array:
  """float32[B, R] inner products of queries [B, E] with rows [R, E], float32 accumulation."""
  dims = (((1,), (1,)), ((), ()))
  if rows.dtype == jnp.float32:
    s = jax.lax.dot_general(queries.astype(jnp.float32), rows, dims,
                            precision=jax.lax.Precision.HIGHEST)
  else:
    s = jax.lax.dot_general(queries.astype(rows.dtype), rows, dims,
                            preferred_element_type=jnp.float32)
  # -0.0 -> +0.0: the sort behind top_k orders -0.0 below +0.0, numpy ties them.
  return jnp.where(s == 0, jnp.zeros_like(s), s)


def _select(scores: jax.Array, k: int, approx: bool, recall_target: float):
  if approx:
    return jax.lax.approx_max_k(scores, k, recall_target=recall_target)
  return jax.lax.top_k(scores, k)


def _merge(best_s, best_i, new_s, new_i, k: int):
  """Top-k of two candidate lists; `best` must hold the lower indices on equal scores."""
  s = jnp.concatenate([best_s, new_s], axis=1)
  i = jnp.concatenate([best_i, new_i], axis=1)
  s, pos = jax.lax.top_k(s, k)
  return s, jnp.take_along_axis(i, pos, axis=1)


def _local_topk(queries, rows, k: int, offset, n_valid: int, block_rows: Optional[int],
                approx: bool, recall_target: float):
  """Top-k over rows[R, E] whose global indices are offset + [0, R); >= n_valid is padding.

  With `block_rows` < R (R a multiple of it), the rows are scanned block by block keeping
  a running top-k, which bounds the score buffer to [B, block_rows].
  """
  num_rows = rows.shape[0]
  k = min(k, num_rows)
  if block_rows is None or block_rows >= num_rows:
    global_idx = offset + jnp.arange(num_rows, dtype=jnp.int32)
    s = jnp.where(global_idx[None, :] < n_valid, _scores(queries, rows), -jnp.inf)
    s, pos = _select(s, k, approx, recall_target)
    return s, (offset + pos).astype(jnp.int32)
  num_blocks = num_rows // block_rows
  blocks = rows.reshape(num_blocks, block_rows, rows.shape[1])
  batch = queries.shape[0]

  def body(carry, xs):
    block, b = xs
    s, i = _local_topk(queries, block, k, offset + b * block_rows, n_valid, None, approx,
                       recall_target)
    return _merge(*carry, s, i, k), None

  init = (jnp.full((batch, k), -jnp.inf, jnp.float32),
          jnp.full((batch, k), jnp.iinfo(jnp.int32).max, jnp.int32))
  (s, i), _ = jax.lax.scan(body, init, (blocks, jnp.arange(num_blocks, dtype=jnp.int32)))
  return s, i


def _check_k(k: int, n: int) -> None:
  if not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"k must be a positive integer, got {k!r}")
  if k > n:
    raise ValueError(f"k = {k} exceeds the index size {n}")


@functools.partial(jax.jit, static_argnames=("k", "approx", "recall_target", "block_rows"))
def _topk_jit(queries, index, k, approx, recall_target, block_rows):
  return _local_topk(queries, index, k, jnp.int32(0), index.shape[0], block_rows, approx,
                     recall_target)


def topk(queries, index, k: int, *, approx: bool = False, recall_target: float = 0.95,
         block_rows: Optional[int] = None) -> tuple[jax.Array, jax.Array]:
  """Top-k inner products on one device (or wherever jit places the inputs).

  Args:
    queries: float[Q, E] query embeddings.
    index: float32 / float16 / bfloat16 [N, E] index rows (L2-normalised for cosine).
    k: results per query, 1 <= k <= N.
    approx: use `jax.lax.approx_max_k` (exact scores on CPU; faster, approximate on TPU;
      equal scores come in no guaranteed order here, `Searcher` sorts them by index).
    recall_target: expected recall of the approximate mode.
    block_rows: scan the index in blocks of this many rows (must divide N) to bound the
      [Q, block_rows] score buffer; None scores all N rows at once.

  Returns:
    (scores float32[Q, k], indices int32[Q, k]), by descending score, then ascending index.
  """
  queries = jnp.asarray(queries)
  index = jnp.asarray(index)
  if queries.ndim != 2 or index.ndim != 2 or queries.shape[1] != index.shape[1]:
    raise ValueError(f"Expected queries [Q, E] and index [N, E], got {queries.shape} and "
                     f"{index.shape}")
  _check_k(k, index.shape[0])
  if block_rows is not None and block_rows < index.shape[0] and index.shape[0] % block_rows:
    raise ValueError(f"block_rows = {block_rows} must divide the index size {index.shape[0]}")
  return _topk_jit(queries, index, int(k), bool(approx), float(recall_target), block_rows)


# ----------------------------------------------------------------------------- sharded


def _row_axes(mesh: Mesh) -> tuple[str, ...]:
  """Index rows are split over every axis of the mesh (major to minor)."""
  return tuple(mesh.axis_names)


def _num_shards(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in _row_axes(mesh)]))


def _layout(n: int, num_shards: int, block_rows: Optional[int]) -> tuple[int, Optional[int]]:
  """(padded row count, effective block_rows) for n rows over num_shards shards."""
  per_shard = -(-n // num_shards)
  if block_rows is not None:
    if block_rows < 1:
      raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    if block_rows < per_shard:
      return -(-per_shard // block_rows) * block_rows * num_shards, block_rows
  return per_shard * num_shards, None


def default_dtype(mesh: Mesh) -> str:
  """The storage dtype used when none is given, by the platform of the mesh's devices."""
  platform = mesh.devices.flat[0].platform
  return DEFAULT_DTYPES.get(platform, "float32")


def place_rows(read_rows: Callable[[int, int], np.ndarray], n: int, dim: int, mesh: Mesh, *,
               dtype: Optional[str] = None,
               block_rows: Optional[int] = None) -> tuple[jax.Array, int, Optional[int]]:
  """Index rows on the mesh, sharded by rows, padded to a whole number of shards.

  Args:
    read_rows: (start, stop) -> the real rows [start, min(stop, n)) as a host array;
      called once per device of this process, for that device's rows only (on several
      hosts each process thus reads only its own rows).
    n, dim: the number of real rows and their width.
    mesh: rows are split evenly over all its devices (all of its axes).
    dtype: storage dtype ("float32", "float16", "bfloat16"; default `default_dtype(mesh)`).
    block_rows: per-shard scan block (see `topk`); padding makes it divide the shard size.

  Returns:
    (rows dtype[N_pad, E] sharded over the mesh's axes, n, the effective block_rows to
    pass to `sharded_topk`). Padding rows are zeros and score -inf in search.
  """
  dtype = dtype or default_dtype(mesh)
  if dtype not in STORAGE_DTYPES:
    raise ValueError(f"dtype must be one of {STORAGE_DTYPES}, got {dtype!r}")
  n_pad, block_rows = _layout(n, _num_shards(mesh), block_rows)
  np_dtype = jnp.dtype(dtype)

  def load(idx):
    start, stop = idx[0].start or 0, n_pad if idx[0].stop is None else idx[0].stop
    block = np.zeros((stop - start, dim), np_dtype)
    if start < n:
      real = read_rows(start, min(stop, n))
      block[:real.shape[0]] = real
    return block

  rows = jax.make_array_from_callback((n_pad, dim),
                                      NamedSharding(mesh, P(_row_axes(mesh), None)), load)
  return rows, n, block_rows


def shard_index(embeddings, mesh: Mesh, *, dtype: Optional[str] = None,
                block_rows: Optional[int] = None) -> tuple[jax.Array, int, Optional[int]]:
  """`place_rows` of an in-memory float[N, E] host (or device) array."""
  x = np.asarray(embeddings)
  if x.ndim != 2 or x.shape[0] == 0:
    raise ValueError(f"embeddings must be a non-empty [N, E] array, got shape {x.shape}")
  return place_rows(lambda start, stop: x[start:stop], x.shape[0], x.shape[1], mesh,
                    dtype=dtype, block_rows=block_rows)


@functools.partial(jax.jit, static_argnames=("k", "mesh", "n_valid", "approx",
                                             "recall_target", "block_rows"))
def _sharded_topk_jit(queries, rows, k, mesh, n_valid, approx, recall_target, block_rows):
  axes = _row_axes(mesh)
  per_shard = rows.shape[0] // _num_shards(mesh)

  def local(q, shard):
    offset = jax.lax.axis_index(axes).astype(jnp.int32) * per_shard
    return _local_topk(q, shard, k, offset, n_valid, block_rows, approx, recall_target)

  # Candidates of shard j land in columns [j * k', (j + 1) * k'), shards in row order, so
  # top_k's lower-position-first rule on equal scores is the lower-index-first rule.
  s, i = _shard_map(local, mesh, in_specs=(P(), P(axes, None)),
                    out_specs=(P(None, axes), P(None, axes)))(queries, rows)
  if approx:
    # approx_max_k orders equal scores arbitrarily: sort the candidates by (-score, index).
    neg, i = jax.lax.sort((-s, i), dimension=1, num_keys=2)
    s, i = -neg[:, :k], i[:, :k]
  else:
    s, pos = jax.lax.top_k(s, k)
    i = jnp.take_along_axis(i, pos, axis=1)
  # Replicated results: every process of a multi-host run can read them.
  return jax.lax.with_sharding_constraint((s, i), NamedSharding(mesh, P()))


def lower_sharded_topk(mesh: Mesh, n: int, dim: int, num_queries: int, k: int, *,
                       dtype: Optional[str] = None, approx: bool = False,
                       recall_target: float = 0.95, block_rows: Optional[int] = None):
  """`sharded_topk` lowered from shapes alone (nothing placed): `num_queries` replicated
  float32 queries against n rows of `dim` laid out by `place_rows` on `mesh` (which may
  hold compile-only devices, e.g. a TPU slice for an ahead-of-time check)."""
  _check_k(k, n)
  dtype = dtype or default_dtype(mesh)
  n_pad, block_rows = _layout(n, _num_shards(mesh), block_rows)
  rows = jax.ShapeDtypeStruct((n_pad, dim), jnp.dtype(dtype),
                              sharding=NamedSharding(mesh, P(_row_axes(mesh), None)))
  queries = jax.ShapeDtypeStruct((num_queries, dim), jnp.float32,
                                 sharding=NamedSharding(mesh, P()))
  return _sharded_topk_jit.lower(queries, rows, k=int(k), mesh=mesh, n_valid=int(n),
                                 approx=bool(approx), recall_target=float(recall_target),
                                 block_rows=block_rows)


def _replicated(x: np.ndarray, mesh: Mesh) -> jax.Array:
  """x (the same value on every process) replicated on every device of the mesh."""
  return jax.make_array_from_callback(x.shape, NamedSharding(mesh, P()), lambda idx: x[idx])


def sharded_topk(queries, rows: jax.Array, k: int, *, mesh: Mesh, n_valid: int,
                 approx: bool = False, recall_target: float = 0.95,
                 block_rows: Optional[int] = None) -> tuple[jax.Array, jax.Array]:
  """Exact (or approximate) top-k over an index sharded by rows (see `shard_index`).

  Args:
    queries: float[Q, E], replicated to every shard.
    rows: [N_pad, E] from `shard_index`; rows >= n_valid are padding.
    k: results per query, 1 <= k <= n_valid.
    mesh: the mesh the rows are sharded over (all its axes).
    n_valid: the number of real rows N.
    approx, recall_target: per-shard `jax.lax.approx_max_k`; the merge then sorts the
      candidates by (-score, index), though which of several candidates tied at the k-th
      score make the cut is not guaranteed.
    block_rows: per-shard scan block, as returned by `shard_index`.

  Returns:
    (scores float32[Q, k], indices int32[Q, k] into the N real rows), identical to `topk`
    on the unsharded rows in exact mode.
  """
  _check_k(k, n_valid)
  num_shards = _num_shards(mesh)
  if rows.shape[0] % num_shards:
    raise ValueError(f"rows has {rows.shape[0]} rows, not a multiple of the {num_shards} "
                     "shards of the mesh; build it with shard_index")
  if jax.process_count() > 1:
    queries = _replicated(np.asarray(queries, np.float32), mesh)
  else:
    queries = jnp.asarray(queries, jnp.float32)
  return _sharded_topk_jit(queries, rows, int(k), mesh, int(n_valid), bool(approx),
                           float(recall_target), block_rows)


# ----------------------------------------------------------------------------- Searcher


def _normalize_queries(query_emb, dim: int, normalize: bool) -> np.ndarray:
  q = np.asarray(query_emb)
  if q.ndim == 1:
    q = q[None]
  if q.ndim != 2 or q.shape[1] != dim:
    raise ValueError(f"query embeddings must be [Q, {dim}], got shape {np.shape(query_emb)}")
  q = q.astype(np.float32)
  if not np.isfinite(q).all():
    raise ValueError(f"query {np.argwhere(~np.isfinite(q))[0][0]} has non-finite values")
  if normalize:
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    if (norms == 0).any():
      raise ValueError(f"query {np.flatnonzero(norms[:, 0] == 0)[0]} is all zeros")
    q = q / norms
  return q


class Searcher:
  """An index held on device (sharded over a device mesh) answering top-k queries.

  Scores are inner products of L2-normalised queries with the stored rows, i.e. cosines
  for an `Index` (whose rows are normalised). Queries run in batches of `batch_size`; a
  last, smaller batch is padded to a power of two so that few shapes get compiled.
  """

  def __init__(self, embeddings, ids: Optional[Sequence[str]] = None, *,
               dtype: Optional[str] = None, mesh: Optional[Mesh] = None,
               batch_size: int = 64, block_rows: Optional[int] = None):
    """Puts the index on device.

    Args:
      embeddings: float[N, E] index rows.
      ids: N ids for `search_ids` (default: none, `search` only).
      dtype: storage dtype ("float32", "float16", "bfloat16"); default by platform
        (`DEFAULT_DTYPES`).
      mesh: mesh to shard the rows over (all its axes); default all devices
        (`sharding.make_mesh()`).
      batch_size: queries per device call.
      block_rows: per-shard scan block bounding the score buffer to [batch, block_rows].
    """
    self._place(functools.partial(shard_index, embeddings), mesh, batch_size, dtype=dtype,
                block_rows=block_rows)
    self.ids = None if ids is None else list(ids)
    if self.ids is not None and len(self.ids) != self.size:
      raise ValueError(f"{len(self.ids)} ids for {self.size} index rows")

  def _place(self, place: Callable[..., tuple[jax.Array, int, Optional[int]]],
             mesh: Optional[Mesh], batch_size: int, **place_kwargs) -> None:
    """Sets the rows (`place(mesh, **place_kwargs)`: `shard_index` or `place_rows`), the
    mesh and the query batch size."""
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    self.mesh = mesh if mesh is not None else sharding.make_mesh()
    self.rows, self.size, self.block_rows = place(self.mesh, **place_kwargs)
    self.dim = int(self.rows.shape[1])
    self.dtype = str(self.rows.dtype)
    self.batch_size = int(batch_size)

  @classmethod
  def from_index(cls, index: Union[store.Index, str], **kwargs) -> "Searcher":
    """A Searcher over an `Index` or an index directory (kwargs as for the constructor)."""
    if isinstance(index, str):
      index = store.load_index(index)
    return cls(index.embeddings, index.ids, **kwargs)

  def _bucket(self, n: int) -> int:
    return min(self.batch_size, 1 << max(n - 1, 0).bit_length())

  def search(self, query_emb, k: int, *, approx: bool = False, recall_target: float = 0.95,
             normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows for each query.

    Args:
      query_emb: float[Q, E] (or float[E]) query embeddings.
      k: results per query, 1 <= k <= N.
      approx: approximate per-shard selection (`jax.lax.approx_max_k`).
      recall_target: its expected recall.
      normalize: L2-normalise the queries first (in float32, on the host).

    Returns:
      (scores float32[Q, k], indices int32[Q, k]) numpy arrays, by descending score then
      ascending index.
    """
    q = _normalize_queries(query_emb, self.dim, normalize)
    _check_k(k, self.size)
    pending = []
    for start in range(0, q.shape[0], self.batch_size):
      batch = q[start:start + self.batch_size]
      padded = self._bucket(batch.shape[0])
      if padded != batch.shape[0]:
        batch = np.concatenate([batch, np.zeros((padded - batch.shape[0], self.dim),
                                                np.float32)])
      out = sharded_topk(batch, self.rows, k, mesh=self.mesh, n_valid=self.size,
                         approx=approx, recall_target=recall_target,
                         block_rows=self.block_rows)
      pending.append((out, min(self.batch_size, q.shape[0] - start)))
    if not pending:
      return np.zeros((0, k), np.float32), np.zeros((0, k), np.int32)
    scores = np.concatenate([np.asarray(s)[:n] for (s, _), n in pending])
    indices = np.concatenate([np.asarray(i)[:n] for (_, i), n in pending])
    return scores, indices

  def search_ids(self, query_emb, k: int, **kwargs) -> list[list[tuple[str, float]]]:
    """Like `search`, as one list of (id, score) per query, best first."""
    if self.ids is None:
      raise ValueError("This Searcher was built without ids; use search()")
    scores, indices = self.search(query_emb, k, **kwargs)
    return [[(self.ids[j], float(s)) for s, j in zip(row_s, row_i)]
            for row_s, row_i in zip(scores, indices)]


def search_embeddings(index: Union[store.Index, str], query_emb, k: int, *,
                      batch_size: int = 64, approx: bool = False, recall_target: float = 0.95,
                      dtype: Optional[str] = None) -> list[list[tuple[str, float]]]:
  """Searches an index (or index directory) with already computed query embeddings.

  Args:
    index: an `Index` or its directory.
    query_emb: float[Q, E] query embeddings (normalised here).
    k: results per query.

  Returns:
    Q lists of (video id, cosine score), best first.
  """
  searcher = Searcher.from_index(index, batch_size=batch_size, dtype=dtype)
  return searcher.search_ids(query_emb, k, approx=approx, recall_target=recall_target)


def format_results(labels: Sequence[str], results: Sequence[Sequence[tuple[str, float]]]) -> str:
  """Text output: a `# query` header per query, then `rank<TAB>score<TAB>id` lines."""
  lines = []
  for label, hits in zip(labels, results):
    lines.append(f"# query: {label}")
    lines += [f"{rank}\t{score:.4f}\t{video_id}" for rank, (video_id, score) in
              enumerate(hits, 1)]
  return "\n".join(lines)


