"""Tests for ps_jax.retrieval.topk and the search CLI: exact top-k vs numpy (with ties), sharding over 8 CPU devices, CLI."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from ps_jax import search as search_cli
from ps_jax.retrieval import store as index_lib
from ps_jax.retrieval import topk as search

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quantised(shape, seed):
  """Multiples of 1/4 in [-1/2, 1/2]: exact in float16/bfloat16, exact dot products, many ties."""
  return (np.random.default_rng(seed).integers(-2, 3, shape) / 4).astype(np.float32)


def _numpy_topk(queries, rows, k):
  scores = queries.astype(np.float32) @ rows.astype(np.float32).T
  order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(scores, order, axis=1), order


@pytest.mark.parametrize("block_rows", [None, 100])
def test_topk_matches_numpy_with_ties(block_rows):
  rows, queries = _quantised((1000, 16), 0), _quantised((37, 16), 1)
  want_s, want_i = _numpy_topk(queries, rows, 20)
  assert (np.diff(want_s, axis=1) == 0).mean() > 0.5  # Ties are the common case here.
  s, i = search.topk(queries, rows, 20, block_rows=block_rows)
  assert s.dtype == np.float32 and i.dtype == np.int32 and s.shape == (37, 20)
  np.testing.assert_array_equal(np.asarray(i), want_i)
  np.testing.assert_array_equal(np.asarray(s), want_s)
  # approx_max_k lowers to an exact top-k off TPU: this checks the approximate mode's
  # plumbing, not its recall (README says so).
  assert jax.default_backend() != "tpu"
  s, _ = search.topk(queries, rows, 20, approx=True)
  np.testing.assert_array_equal(np.asarray(s), want_s)


def test_topk_matches_numpy_on_random_data():
  rng = np.random.default_rng(2)
  rows = rng.standard_normal((500, 32)).astype(np.float32)
  queries = rng.standard_normal((9, 32)).astype(np.float32)
  want_s, want_i = _numpy_topk(queries, rows, 10)
  s, i = search.topk(queries, rows, 10)
  np.testing.assert_array_equal(np.asarray(i), want_i)
  np.testing.assert_allclose(np.asarray(s), want_s, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_searcher_storage_dtypes(dtype):
  rows, queries = _quantised((300, 16), 3), _quantised((70, 16), 4)
  searcher = search.Searcher(rows, dtype=dtype, batch_size=32, block_rows=64)
  assert searcher.dtype == dtype and searcher.size == 300
  s, i = searcher.search(queries, 15, normalize=False)
  want_s, want_i = _numpy_topk(queries, rows, 15)
  np.testing.assert_array_equal(i, want_i)
  np.testing.assert_array_equal(s, want_s)


def test_searcher_ids_normalisation_and_errors():
  rows = np.eye(4, 8, dtype=np.float32)
  searcher = search.Searcher(rows, ["a", "b", "c", "d"], batch_size=4)
  query = np.zeros(8, np.float32)
  query[[1, 2]] = [3.0, 4.0]
  hits = searcher.search_ids(query, 3)[0]
  assert [h[0] for h in hits] == ["c", "b", "a"]
  np.testing.assert_allclose([h[1] for h in hits], [0.8, 0.6, 0.0], atol=1e-6)
  with pytest.raises(ValueError, match="exceeds the index size 4"):
    searcher.search(query, 5)
  with pytest.raises(ValueError, match=r"must be \[Q, 8\]"):
    searcher.search(np.ones((2, 3)), 1)
  with pytest.raises(ValueError, match="query 1 has non-finite"):
    searcher.search(np.stack([query, query * np.nan]), 1)


_SHARDED_SCRIPT = textwrap.dedent("""
    import jax
    import numpy as np
    from ps_jax.retrieval import topk as search
    assert jax.device_count() == 8, jax.devices()

    def quantised(shape, seed):
      return (np.random.default_rng(seed).integers(-2, 3, shape) / 4).astype(np.float32)

    # (rows, k, block_rows): padding, k above the rows of one shard, scanned blocks.
    # 37 queries in batches of 32: one full batch and one padded to 8.
    for n, k, block_rows in [(1001, 20, None), (13, 5, None), (1001, 30, 16), (400, 50, None)]:
      rows, queries = quantised((n, 16), n), quantised((37, 16), k)
      scores = queries @ rows.T
      want_i = np.argsort(-scores, axis=1, kind="stable")[:, :k]
      want_s = np.take_along_axis(scores, want_i, axis=1)
      searcher = search.Searcher(rows, batch_size=32, block_rows=block_rows)
      assert len(searcher.rows.sharding.device_set) == 8
      assert searcher.rows.shape[0] % 8 == 0 and searcher.rows.shape[0] >= n
      s, i = searcher.search(queries, k, normalize=False)
      np.testing.assert_array_equal(i, want_i)
      np.testing.assert_array_equal(s, want_s)
      np.testing.assert_array_equal(i, np.asarray(search.topk(queries, rows, k)[1]))
      if n == 400:  # k = the 50 rows of a shard.
        s, i = searcher.search(queries, k, normalize=False, approx=True)
        np.testing.assert_array_equal(s, want_s)
    print("SHARDED_OK")
""")


def test_sharded_over_8_cpu_devices_equals_unsharded():
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8")
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  proc = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and "SHARDED_OK" in proc.stdout, proc.stdout + proc.stderr


@pytest.fixture
def index_dir(tmp_path):
  path = os.path.join(tmp_path, "index")
  rows = np.eye(5, 8, dtype=np.float32)
  index_lib.write_index(path, [f"video{i}" for i in range(5)], rows, "fp")
  return path


def _result_ids(text):
  return [line.split("\t")[2] for line in text.splitlines() if not line.startswith("#")]


def test_cli_with_query_embeddings(index_dir, tmp_path, capsys):
  queries = np.zeros((2, 8), np.float32)
  queries[0, [3, 1]] = [2.0, 1.0]
  queries[1, 4] = 1.0
  path = os.path.join(tmp_path, "q.npy")
  np.save(path, queries)
  assert search_cli.main(["--index", index_dir, "--query_embeddings", path, "--top_k", "2"]) == 0
  out = capsys.readouterr().out
  assert _result_ids(out) == ["video3", "video1", "video4", "video0"]
  assert "1\t0.8944\tvideo3" in out


def test_cli_with_text_queries_and_hook(index_dir, tmp_path, capsys):
  queries_file = os.path.join(tmp_path, "queries.txt")
  with open(queries_file, "w") as f:
    f.write("second\n\n")

  def embed_queries(texts):  # A stand-in encoder: text i -> axis of its word.
    axes = {"first": 0, "second": 1, "third": 2}
    return np.eye(8, dtype=np.float32)[[axes[t] for t in texts]]

  argv = ["--index", index_dir, "--query", "third", "--queries_file", queries_file,
          "--top_k", "1", "--batch_size", "1", "--approx"]
  assert search_cli.main(argv, embed_queries=embed_queries) == 0
  out = capsys.readouterr().out
  assert _result_ids(out) == ["video2", "video1"] and "# query: third" in out
  with pytest.raises(SystemExit) as e:
    search_cli.main(["--index", index_dir, "--query", "x"])
  assert e.value.code == 2
  assert "no text encoder is wired in" in capsys.readouterr().err
