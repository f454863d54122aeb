"""Tests for ps_jax.retrieval.store: round trip, append, refusals, corrupt files, interrupted commits."""

import json
import os

import numpy as np
import pytest

from ps_jax.retrieval import fingerprint
from ps_jax.retrieval import store as ix

FP = "sha256:" + "ab" * 32


def _rows(n, dim=8, seed=0):
  return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def _unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def index_dir(tmp_path):
  path = os.path.join(tmp_path, "index")
  ix.write_index(path, ["v0", "v1", "v2"], _rows(3), FP, metadata={"split": "test"},
                 source="msrvtt 1k-A")
  return path


def test_round_trip_float16(index_dir):
  index = ix.load_index(index_dir)
  assert index.ids == ["v0", "v1", "v2"] and len(index) == 3 and index.dim == 8
  assert index.embeddings.dtype == np.float16 and index.embeddings.shape == (3, 8)
  np.testing.assert_allclose(index.embeddings.astype(np.float32), _unit(_rows(3)), atol=1e-3)
  meta = index.meta
  assert meta["fingerprint"] == FP and index.fingerprint == FP
  assert (meta["format_version"], meta["dim"], meta["dtype"], meta["count"]) == (
      1, 8, "float16", 3)
  assert meta["source"] == "msrvtt 1k-A" and meta["metadata"] == {"split": "test"}
  assert meta["created"].endswith("+00:00") and meta["appends"] == []
  assert sorted(os.listdir(index_dir)) == ["embeddings.npy", "ids.json", "meta.json",
                                           "sources.json", "thumbnails.bin",
                                           "thumbnails.npy"]


def test_round_trip_float32_and_mmap(tmp_path):
  path = os.path.join(tmp_path, "i32")
  ix.write_index(path, ["a", "b"], _rows(2) * 7.0, FP, dtype="float32")
  index = ix.load_index(path, mmap=True)
  assert isinstance(index.embeddings, np.memmap) and index.embeddings.dtype == np.float32
  np.testing.assert_allclose(index.embeddings, _unit(_rows(2)), rtol=1e-6)


def test_write_refusals(tmp_path, index_dir):
  with pytest.raises(FileExistsError, match="already holds an index"):
    ix.write_index(index_dir, ["x"], _rows(1), FP)
  ix.write_index(index_dir, ["x"], _rows(1), FP, overwrite=True)
  assert ix.load_index(index_dir).ids == ["x"]
  path = os.path.join(tmp_path, "other")
  with pytest.raises(ValueError, match="Duplicate id 'a'"):
    ix.write_index(path, ["a", "b", "a"], _rows(3), FP)
  with pytest.raises(ValueError, match="3 rows but 2 ids"):
    ix.write_index(path, ["a", "b"], _rows(3), FP)
  with pytest.raises(ValueError, match="row 1 is all zeros"):
    ix.write_index(path, ["a", "b"], np.array([[1.0, 0.0], [0.0, 0.0]]), FP)
  with pytest.raises(ValueError, match="dtype"):
    ix.write_index(path, ["a"], _rows(1), FP, dtype="int8")
  assert not os.path.exists(os.path.join(path, "meta.json"))


def test_append(index_dir):
  meta = ix.append_to_index(index_dir, ["v3", "v4"], _rows(2, seed=1), FP, source="batch 2")
  index = ix.load_index(index_dir)
  assert index.ids == ["v0", "v1", "v2", "v3", "v4"] and meta["count"] == 5
  assert index.meta == meta and meta["appends"][0]["count"] == 2
  assert meta["appends"][0]["source"] == "batch 2"
  expected = np.concatenate([_unit(_rows(3)), _unit(_rows(2, seed=1))])
  np.testing.assert_allclose(index.embeddings.astype(np.float32), expected, atol=1e-3)
  assert sorted(os.listdir(index_dir)) == ["embeddings.npy", "ids.json", "meta.json",
                                           "sources.json", "thumbnails.bin",
                                           "thumbnails.npy"]


def test_append_refuses_other_fingerprint(index_dir):
  other = "sha256:" + "cd" * 32
  with pytest.raises(ix.FingerprintMismatchError) as e:
    ix.append_to_index(index_dir, ["v3"], _rows(1), other)
  assert FP in str(e.value) and other in str(e.value)
  assert ix.load_index(index_dir).ids == ["v0", "v1", "v2"]


def test_append_refuses_duplicates_and_wrong_dim(index_dir):
  with pytest.raises(ValueError, match="already in .*'v1'"):
    ix.append_to_index(index_dir, ["v9", "v1"], _rows(2), FP)
  with pytest.raises(ValueError, match="Duplicate id 'v9'"):
    ix.append_to_index(index_dir, ["v9", "v9"], _rows(2), FP)
  with pytest.raises(ValueError, match="dim 4, the index has dim 8"):
    ix.append_to_index(index_dir, ["v9"], _rows(1, dim=4), FP)
  assert ix.load_index(index_dir).ids == ["v0", "v1", "v2"]


def test_crash_before_commit_point_keeps_old_index(index_dir, monkeypatch):
  def crash(path, names):
    raise RuntimeError("power cut")

  monkeypatch.setattr(ix, "_commit", crash)
  with pytest.raises(RuntimeError):
    ix.append_to_index(index_dir, ["v3"], _rows(1), FP)
  assert os.path.exists(os.path.join(index_dir, "embeddings.npy.new"))
  assert ix.load_index(index_dir).ids == ["v0", "v1", "v2"]
  monkeypatch.undo()
  ix.append_to_index(index_dir, ["v3"], _rows(1), FP)
  assert ix.load_index(index_dir).ids == ["v0", "v1", "v2", "v3"]
  assert sorted(os.listdir(index_dir)) == ["embeddings.npy", "ids.json", "meta.json",
                                           "sources.json", "thumbnails.bin",
                                           "thumbnails.npy"]


def test_crash_after_commit_point_reads_new_index(index_dir, monkeypatch):
  def crash_mid_rename(path, names):
    open(os.path.join(path, ix.COMMIT_MARKER), "w").close()
    os.replace(os.path.join(path, "ids.json.new"), os.path.join(path, "ids.json"))
    raise RuntimeError("power cut")

  monkeypatch.setattr(ix, "_commit", crash_mid_rename)
  with pytest.raises(RuntimeError):
    ix.append_to_index(index_dir, ["v3"], _rows(1), FP)
  index = ix.load_index(index_dir)  # ids.json is new, the other two still .new.
  assert index.ids == ["v0", "v1", "v2", "v3"] and index.embeddings.shape == (4, 8)
  monkeypatch.undo()
  ix.append_to_index(index_dir, ["v4"], _rows(1), FP)  # Finishes the commit first.
  assert ix.load_index(index_dir).ids == ["v0", "v1", "v2", "v3", "v4"]
  assert sorted(os.listdir(index_dir)) == ["embeddings.npy", "ids.json", "meta.json",
                                           "sources.json", "thumbnails.bin",
                                           "thumbnails.npy"]


def test_corrupt_embeddings_named(index_dir):
  emb = os.path.join(index_dir, "embeddings.npy")
  with open(emb, "wb") as f:
    f.write(b"this is not a numpy file at all")
  with pytest.raises(ix.IndexFormatError, match="embeddings.npy.*not a valid .npy"):
    ix.load_index(index_dir)


def test_truncated_embeddings_named(index_dir):
  emb = os.path.join(index_dir, "embeddings.npy")
  size = os.path.getsize(emb)
  with open(emb, "r+b") as f:
    f.truncate(size - 10)
  with pytest.raises(ix.IndexFormatError, match=r"embeddings.npy' is \d+ bytes.*truncated"):
    ix.load_index(index_dir)


def test_truncated_meta_named(index_dir):
  meta = os.path.join(index_dir, "meta.json")
  with open(meta) as f:
    text = f.read()
  with open(meta, "w") as f:
    f.write(text[:len(text) // 2])
  with pytest.raises(ix.IndexFormatError, match="meta.json' is not valid JSON"):
    ix.load_index(index_dir)


def test_missing_and_inconsistent_files_named(index_dir):
  ids = os.path.join(index_dir, "ids.json")
  with open(ids, "w") as f:
    json.dump(["v0", "v1"], f)
  with pytest.raises(ix.IndexFormatError, match="ids.json' has 2 ids but meta.json count is 3"):
    ix.load_index(index_dir)
  os.unlink(ids)
  with pytest.raises(ix.IndexFormatError, match="ids.json' is missing"):
    ix.load_index(index_dir)


def test_wrong_dim_and_unnormalised_rows_named(index_dir):
  emb = os.path.join(index_dir, "embeddings.npy")
  np.save(emb, np.ones((3, 4), np.float16))
  with pytest.raises(ix.IndexFormatError, match=r"embeddings.npy' has shape \(3, 4\)"):
    ix.load_index(index_dir)
  rows = _unit(_rows(3)).astype(np.float16)
  rows[2] *= 2
  np.save(emb, rows)
  with pytest.raises(ix.IndexFormatError, match="embeddings.npy' row 2 .id 'v2'. has norm 2"):
    ix.load_index(index_dir)
  assert ix.load_index(index_dir, check_norms=False).embeddings.shape == (3, 8)


def test_fingerprint_params():
  params = {"b": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)},
            "a": np.ones(2, np.float16)}
  config = {"width": 8, "layers": [1, 2], "name": "vit"}
  fp = fingerprint.fingerprint_params(config, params)
  assert fp.startswith("sha256:") and len(fp) == len("sha256:") + 64
  reordered = {"a": np.ones(2, np.float16),
               "b": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}}
  assert fingerprint.fingerprint_params({"name": "vit", "layers": [1, 2], "width": 8}, reordered) == fp
  changed = {"a": np.ones(2, np.float16), "b": {"w": np.arange(6, dtype=np.float32).reshape(3, 2)}}
  assert fingerprint.fingerprint_params(config, changed) != fp  # Same bytes, other shape.
  assert fingerprint.fingerprint_params({**config, "width": 9}, params) != fp
  assert fingerprint.fingerprint_params(config, {**params, "a": np.ones(2, np.float32)}) != fp
