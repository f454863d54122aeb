"""Search over an index sharded across two processes (4 CPU devices each, jax.distributed
on loopback) returns exactly what one process over the whole index returns: from query
embeddings, and from text queries through the documented command line."""

import json
import os
import sys

import numpy as np
import pytest

from ps_jax import index_videos
from ps_jax.data import prepare
from ps_jax.retrieval import shards, store
from multihost_search_check import TEXT_QUERIES
from test_multihost import cpu_env, free_port, run_together

HERE = os.path.dirname(os.path.abspath(__file__))
CHECK = os.path.join(HERE, "multihost_search_check.py")
NUM_ROWS, DIM = 1001, 32  # 1001 rows: padded to 1008 = 8 x 126 on the mesh


def _index_rows():
  """Unit rows drawn from 40 distinct vectors: many exact ties at every rank."""
  rng = np.random.default_rng(0)
  base = rng.normal(size=(40, DIM)).astype(np.float32)
  return base[rng.integers(0, 40, NUM_ROWS)]


def _text_index(out, clip_dir):
  """A real index of moving_shapes/tiny's 16 training clips (`ps_jax.index_videos`, a
  tiny random CLIP, the benchmark's word tokenizer recorded for the queries) and its 4
  row shards. Plain CLIP (num_prompts=0): every weight comes from the file, so the
  fingerprint the index records does not depend on the XLA flags of the processes."""
  data = str(out / "data")
  prepare.prepare("moving_shapes", out_dir=data, shapes_size="tiny", progress=False)
  assert index_videos.main(["--model", clip_dir, "--num_prompts", "0", "--num_frames", "2",
                            "--dataset_dir", data, "--dataset", "moving_shapes/tiny",
                            "--split", "train", "--tokenizer", "moving_shapes",
                            "--out", str(out / "text_index"), "--no_progress"]) == 0
  shards.write_shards(str(out / "text_index"), str(out / "text_shards"), num_shards=4)


@pytest.fixture(scope="module")
def results(tmp_path_factory, hf_clip_dirs):
  out = tmp_path_factory.mktemp("multihost_search")
  _text_index(out, hf_clip_dirs["a"])
  ids = [f"video{i:04d}" for i in range(NUM_ROWS)]
  store.write_index(str(out / "index"), ids, _index_rows(), "sha256:" + "0" * 64,
                    dtype="float32")
  meta = shards.write_shards(str(out / "index"), str(out / "shards"), num_shards=4)
  port = str(free_port())
  common = ["--index", str(out / "index"), "--shards", str(out / "shards"), "--out", str(out),
            "--text_index", str(out / "text_index"), "--text_shards", str(out / "text_shards")]
  workers = [([sys.executable, CHECK, "worker", "--port", port, "--process_id", str(i)]
              + common, cpu_env(4)) for i in range(2)]
  ref = ([sys.executable, CHECK, "reference"] + common, cpu_env(8))
  run_together(workers + [ref], str(out), 300)
  got = {name: json.loads((out / f"{name}.json").read_text())
         for name in ("reference", "worker0", "worker1")}
  return got, meta


def test_two_hosts_return_exactly_the_single_process_top_k(results):
  got, _ = results
  ref = got["reference"]
  rows = np.asarray(ref["rows"])
  scores = np.asarray(ref["scores"])
  assert rows.shape == (37, 25)
  # Ties are present and ordered by row: equal scores, ascending rows.
  tied = (scores[:, 1:] == scores[:, :-1])
  assert tied.sum() > 100 and (rows[:, 1:][tied] > rows[:, :-1][tied]).all()
  for name in ("worker0", "worker1"):
    assert got[name]["rows"] == ref["rows"], name
    assert got[name]["scores"] == ref["scores"], name  # bit for bit
    assert got[name]["ids"] == ref["ids"] and got[name]["hit_scores"] == ref["hit_scores"]
  assert ref["ids"][0][0] == f"video{rows[0, 0]:04d}"


def test_each_host_reads_only_its_rows(results):
  got, meta = results
  bounds = [(s["start"], s["start"] + s["count"]) for s in meta["shards"]]
  assert bounds == [(0, 251), (251, 501), (501, 751), (751, 1001)]
  # 8 devices x 126 rows: host 0 holds rows [0, 504), host 1 [504, 1008) (7 padding).
  assert got["worker0"]["local_rows"] == [[126 * d, 126 * (d + 1)] for d in range(4)]
  assert got["worker1"]["local_rows"] == [[126 * d, 126 * (d + 1)] for d in range(4, 8)]
  name = "embeddings-{:05d}-of-00004.npy".format
  assert got["worker0"]["embedding_files"] == [name(0), name(1), name(2)]
  assert got["worker1"]["embedding_files"] == [name(2), name(3)]


def test_search_command_on_two_hosts_prints_once(results):
  got, _ = results
  ref = got["reference"]["cli"]
  assert ref["status"] == 0 and ref["stdout"].count("# query") == 3
  worker0 = got["worker0"]["cli"]
  assert worker0["status"] == 0  # same hits, scores and text (the query file's name aside):
  assert worker0["stdout"].replace("queries_worker0", "queries_reference") == ref["stdout"]
  assert got["worker1"]["cli"] == {"status": 0, "stdout": ""}  # process 0 prints


def test_text_search_command_on_two_hosts_prints_the_single_process_results(results):
  """`python -m ps_jax.search --index SHARDS --query ... --queries_file ...
  --coordinator_address ... --num_processes 2 --process_id I` on both processes: process
  0 prints what one process prints over the whole index, text for text; process 1 prints
  nothing."""
  got, _ = results
  ref, worker0 = got["reference"]["text_cli"], got["worker0"]["text_cli"]
  assert ref["status"] == 0 and worker0 == ref
  assert got["worker1"]["text_cli"] == {"status": 0, "stdout": ""}
  blocks = ref["stdout"].strip().split("# query: ")[1:]
  assert [b.splitlines()[0] for b in blocks] == list(TEXT_QUERIES)
  scores = []
  for block in blocks:
    rows = [line.split("\t") for line in block.splitlines()[1:]]
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "5"]
    assert all(r[2].startswith("train000") for r in rows)
    scores.append([float(r[1]) for r in rows])
  assert all(a >= b for s in scores for a, b in zip(s, s[1:]))
  assert len({tuple(s) for s in scores}) == 3  # each text reached the encoder
