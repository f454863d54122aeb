"""Text queries over an index: the text encoder of the model that built it, and
`TextSearcher` (encode + top-k).

Layer: jobs (imports embed, retrieval.model, retrieval.topk, retrieval.store); it
depends on the index format and the model, never on the indexing job.

  searcher = TextSearcher.from_index("/data/msrvtt_test_index")
  searcher.search(["a man is cooking", "a dog runs"], k=10)
  # -> [[("video7020", 0.31), ...], [...]]
"""

from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import numpy as np
from jax.sharding import Mesh

from ps_jax import sharding
from ps_jax.embed import TextEncoder
from ps_jax.retrieval import moments, store
from ps_jax.retrieval.model import IndexModel, ModelLoadError, load_tokenizer
from ps_jax.retrieval.topk import Searcher


class QueryEncoderError(ValueError):
  """The text encoder of an index cannot be set up (no model recorded or given, ...)."""


def query_encoder(index: store.Index, *, model=None, tokenizer: Optional[str] = None,
                  max_len: Optional[int] = None, mesh: Optional[Mesh] = None,
                  batch_size: int = 64, where: str = "the index") -> TextEncoder:
  """The text encoder of the model that built `index` (`ps_jax.index_videos` metadata).

  Args:
    index: a loaded Index.
    model: None (the model path recorded in the index), another path to that model (moved
      files), or an `IndexModel`.
    tokenizer, max_len: override the recorded tokenizer spec and caption length.
    where: how to name the index in errors (its directory).

  Raises:
    QueryEncoderError: no model recorded nor given, or no tokenizer known.
    FingerprintMismatchError: the model is not the one that embedded the index's videos.
  """
  meta = index.meta.get("metadata") or {}
  if isinstance(model, IndexModel):
    imodel = model
  else:
    path = model or meta.get("model_path")
    if not path:
      raise QueryEncoderError(
          f"no text encoder is wired in: {where} records no model (meta.json has no "
          "metadata.model_path); build it with `python -m ps_jax.index_videos`, pass "
          "--model, call ps_jax.search.main(embed_queries=fn) or pass --query_embeddings")
    if not os.path.exists(path):
      raise QueryEncoderError(
          f"the model of {where}, {path!r}, does not exist" + (
              "" if model else " (meta.json metadata.model_path); pass --model with its "
              "new location"))
    imodel = IndexModel.load(path, meta.get("load_model_kwargs") or {})
  if imodel.fingerprint != index.fingerprint:
    raise store.FingerprintMismatchError(
        f"{where} was built by model {index.fingerprint} but {imodel.path or 'the given model'}"
        f" is {imodel.fingerprint}: its text embeddings do not match the index's video "
        "embeddings (was the model trained further since?); re-index with "
        "`python -m ps_jax.index_videos` or pass --model with the model that built it")
  spec = tokenizer or meta.get("tokenizer") or imodel.defaults["tokenizer"]
  if not spec:
    raise QueryEncoderError(f"{where} records no tokenizer and none is known for "
                            f"{imodel.path!r}: pass --tokenizer")
  try:
    tok = load_tokenizer(spec)
  except ModelLoadError as e:
    raise QueryEncoderError(f"the tokenizer of {where} cannot be loaded: {e}") from e
  return TextEncoder(imodel.model, imodel.params, tok,
                     max_len or meta.get("max_len") or imodel.defaults["max_len"],
                     mesh=mesh, batch_size=batch_size)


class TextSearcher:
  """Text-to-video search: a `Searcher` over an index plus the text encoder of its model.

    searcher = TextSearcher.from_index("/data/msrvtt_test_index")
    searcher.search(["a man is cooking", "a dog runs"], k=10)
    # -> [[("video7020", 0.31), ...], [...]]
  """

  def __init__(self, searcher: Searcher, encoder: TextEncoder,
               windows: Optional[Sequence] = None):
    """`windows`: per row (video id, start, end) or None, of a windowed index."""
    if searcher.ids is None:
      raise ValueError("TextSearcher needs a Searcher built with ids")
    if searcher.dim != encoder.dim:
      raise ValueError(f"the index has dim {searcher.dim}, the text encoder {encoder.dim}")
    self.searcher, self.encoder, self.windows = searcher, encoder, windows

  @classmethod
  def from_index(cls, index: Union[store.Index, str], *, model=None,
                 tokenizer: Optional[str] = None, max_len: Optional[int] = None,
                 mesh: Optional[Mesh] = None, batch_size: int = 64,
                 dtype: Optional[str] = None,
                 block_rows: Optional[int] = None) -> "TextSearcher":
    """Loads an index (directory or Index), its model and tokenizer; see `query_encoder`.

    The rows go on the devices of `mesh` (default all) sharded by rows, in `dtype`
    (default by platform); `batch_size` queries are encoded and searched per call.
    """
    where = f"index {index!r}" if isinstance(index, str) else "the index"
    windows = None
    if isinstance(index, str):
      path, index = index, store.load_index(index)
      windows = store.load_media(path, len(index)).windows
    mesh = mesh if mesh is not None else sharding.make_mesh()
    encoder = query_encoder(index, model=model, tokenizer=tokenizer, max_len=max_len,
                            mesh=mesh, batch_size=batch_size, where=where)
    searcher = Searcher(index.embeddings, index.ids, dtype=dtype, mesh=mesh,
                        batch_size=batch_size, block_rows=block_rows)
    return cls(searcher, encoder, windows)

  @property
  def ids(self) -> list[str]:
    return self.searcher.ids

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    """float32[Q, E] query embeddings."""
    return self.encoder(texts)

  def search(self, texts: Union[str, Sequence[str]], k: int, *, approx: bool = False,
             recall_target: float = 0.95) -> list[list[tuple[str, float]]]:
    """Q lists of (video id, cosine score), best first (ties: lower row first).

    Args:
      texts: Q query strings (or one string).
      k: results per query, 1 <= k <= N.
      approx: approximate per-shard top-k (`jax.lax.approx_max_k`; exact on CPU).
    """
    return self.searcher.search_ids(self.embed(texts), k, approx=approx,
                                    recall_target=recall_target)

  def search_moments(self, texts: Union[str, Sequence[str]], k: int) -> list[list[dict]]:
    """Q lists of k distinct moments ({"id", "video", "start", "end", "score"}, best
    first; `ps_jax.retrieval.moments.distinct`): of a windowed index its windows, with
    start and end in seconds; of whole videos the rows (start = end = None)."""
    queries = self.embed(texts)
    n = len(self.ids)
    scores, rows = self.searcher.search(queries, moments.fetch_k(k, n, self.windows is not None))
    out = []
    for q in range(len(queries)):
      hits = moments.distinct([(int(r), float(s)) for s, r in zip(scores[q], rows[q])],
                              self.windows, k)
      out.append([_moment(self.ids[r], s, self.windows[r] if self.windows else None)
                  for r, s in hits])
    return out


def _moment(row_id: str, score: float, window) -> dict:
  if window is None:
    return {"id": row_id, "video": row_id, "start": None, "end": None, "score": score}
  return {"id": row_id, "video": window[0], "start": float(window[1]),
          "end": float(window[2]), "score": score}
