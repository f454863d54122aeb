"""Index shards: writing, reading by row range, and search over them on one process."""

import json
import os

import numpy as np
import pytest

from ps_jax import search, shard_index
from ps_jax.retrieval import hosts, shards, store, topk

FP = "sha256:" + "1" * 64


def _index(path, n=23, dim=8, dtype="float16"):
  rng = np.random.default_rng(n)
  ids = [f"v{i:03d}" for i in range(n)]
  store.write_index(str(path), ids, rng.normal(size=(n, dim)), FP, dtype=dtype)
  return store.load_index(str(path))


def test_shard_bounds_cover_the_rows_in_order():
  assert shards.shard_bounds(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]
  assert shards.shard_bounds(8, 8) == [(i, i + 1) for i in range(8)]


def test_rows_and_ids_by_range_read_only_the_overlapping_files(tmp_path):
  index = _index(tmp_path / "index")
  meta = shards.write_shards(str(tmp_path / "index"), str(tmp_path / "s"), 4)
  assert [(s["start"], s["count"]) for s in meta["shards"]] == [(0, 6), (6, 6), (12, 6),
                                                               (18, 5)]
  assert meta["fingerprint"] == FP and meta["index_meta"] == index.meta
  assert sorted(os.listdir(tmp_path / "s")) == sorted(
      ["shards.json"] + [f"{k}-{i:05d}-of-00004.{e}" for i in range(4)
                         for k, e in (("embeddings", "npy"), ("ids", "json"))])
  source = shards.RowSource.open(str(tmp_path / "s"))
  assert (source.count, source.dim, source.dtype, len(source)) == (23, 8, "float16", 23)
  assert source.meta == index.meta and source.fingerprint == FP
  np.testing.assert_array_equal(source.rows(5, 13), index.embeddings[5:13])
  assert source.files_opened == {f"embeddings-0000{i}-of-00004.npy" for i in range(3)}
  np.testing.assert_array_equal(source.rows(20, 30), index.embeddings[20:])  # clipped
  assert source.rows(23, 30).shape == (0, 8)
  assert source.ids_of([0, 22, 6]) == ["v000", "v022", "v006"]
  assert "ids-00002-of-00004.json" not in source.files_opened
  with pytest.raises(IndexError, match="row 23 is outside the index's 23 rows"):
    source.ids_of([23])
  # An index directory reads the same way (memory-mapped).
  plain = shards.RowSource.open(str(tmp_path / "index"))
  np.testing.assert_array_equal(plain.rows(5, 13), index.embeddings[5:13])
  assert plain.ids_of([22]) == ["v022"] and plain.meta == index.meta


def test_write_shards_refuses_bad_requests_and_writes_nothing(tmp_path):
  _index(tmp_path / "index")
  with pytest.raises(ValueError, match=r"num_shards must be in 1..23"):
    shards.write_shards(str(tmp_path / "index"), str(tmp_path / "s"), 24)
  assert not (tmp_path / "s").exists()
  assert sorted(os.listdir(tmp_path)) == ["index"]  # no staging directory left
  shards.write_shards(str(tmp_path / "index"), str(tmp_path / "s"), 2)
  with pytest.raises(FileExistsError, match="already exists"):
    shards.write_shards(str(tmp_path / "index"), str(tmp_path / "s"), 2)


def test_damaged_shards_are_named(tmp_path):
  _index(tmp_path / "index")
  shards.write_shards(str(tmp_path / "index"), str(tmp_path / "s"), 2)
  layout = json.loads((tmp_path / "s" / "shards.json").read_text())
  layout["count"] = 24
  (tmp_path / "s" / "shards.json").write_text(json.dumps(layout))
  with pytest.raises(store.IndexFormatError, match="the shards hold 23 rows, count is 24"):
    shards.RowSource.open(str(tmp_path / "s"))
  layout["count"] = 23
  (tmp_path / "s" / "shards.json").write_text(json.dumps(layout))
  emb = tmp_path / "s" / "embeddings-00001-of-00002.npy"
  np.save(emb, np.zeros((3, 8), np.float16))
  source = shards.RowSource.open(str(tmp_path / "s"))
  with pytest.raises(store.IndexFormatError, match=r"embeddings-00001-of-00002.npy' holds "
                     r"float16\[3, 8\]; shards.json says float16\[11, 8\]"):
    source.rows(0, 23)


@pytest.mark.parametrize("block_rows", [None, 4])
def test_host_sharded_searcher_on_one_process_equals_searcher(tmp_path, block_rows):
  index = _index(tmp_path / "index", n=50)
  shards.write_shards(str(tmp_path / "index"), str(tmp_path / "s"), 3)
  queries = np.random.default_rng(1).normal(size=(9, 8)).astype(np.float32)
  want = topk.Searcher(index.embeddings, index.ids, batch_size=4,
                       block_rows=block_rows).search_ids(queries, 7)
  for path in (tmp_path / "s", tmp_path / "index"):
    got = hosts.HostShardedSearcher(str(path), batch_size=4, block_rows=block_rows)
    assert got.search_ids(queries, 7) == want


def test_shard_command_then_search_command(tmp_path, capsys):
  _index(tmp_path / "index", n=30)
  assert shard_index.main(["--index", str(tmp_path / "index"), "--out", str(tmp_path / "s"),
                           "--num_shards", "4"]) == 0
  assert "wrote 30 rows of" in capsys.readouterr().out
  np.save(tmp_path / "q.npy", np.random.default_rng(2).normal(size=(2, 8)))
  outputs = []
  for path in ("index", "s"):
    assert search.main(["--index", str(tmp_path / path), "--query_embeddings",
                        str(tmp_path / "q.npy"), "--top_k", "5"]) == 0
    outputs.append(capsys.readouterr().out)
  assert outputs[0] == outputs[1] and outputs[0].count("\n") == 12
  assert shard_index.main(["--index", str(tmp_path / "index"), "--out", str(tmp_path / "s"),
                           "--num_shards", "4"]) == 2
  assert "already exists" in capsys.readouterr().err
