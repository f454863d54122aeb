"""Workdir files on a URL: what a run writes besides orbax's arrays goes through epath.

The bucket is fsspec's in-memory filesystem registered for gs:// (no network): the same
code path etils.epath takes for Cloud Storage (its fsspec backend), minus the wire.
"""

import json

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from ps_jax import checkpoints, fileio, metrics, reporting


class _MemoryBucket(MemoryFileSystem):
  """fsspec's memory filesystem answering to gs:// (epath passes GCS-only options)."""
  protocol = ("gs", "gcs")

  def __init__(self, *args, finalize_on_close=None, **kwargs):
    del finalize_on_close
    super().__init__(*args, **kwargs)


@pytest.fixture
def bucket():
  for name in ("gs", "gcs"):
    fsspec.register_implementation(name, _MemoryBucket, clobber=True)
  MemoryFileSystem.store.clear()
  MemoryFileSystem.pseudo_dirs[:] = [""]
  yield "gs://ps-jax-test-bucket/run"
  MemoryFileSystem.store.clear()


def _objects():
  return sorted(k for k in MemoryFileSystem.store)


def test_atomic_writes_appends_and_listing_on_a_bucket(bucket):
  path = fileio.join(bucket, "a", "b.json")
  assert path == bucket + "/a/b.json"
  fileio.makedirs(fileio.join(bucket, "a"))
  fileio.write_json(path, {"x": 1})
  fileio.write_json(path, {"x": 2})
  assert fileio.read_json(path) == {"x": 2}
  assert [k for k in _objects() if k.endswith(".json")] == [path]
  log = fileio.join(bucket, "log.txt")
  fileio.append_text(log, "1\n")
  fileio.append_text(log, "2\n")
  assert fileio.read_text(log) == "1\n2\n"
  assert fileio.listdir(bucket) == ["a", "log.txt"]
  assert fileio.absolute(bucket) == bucket and fileio.is_url(bucket)


def test_history_tensorboard_and_plot_of_a_run_in_a_bucket(bucket):
  writer = reporting.MetricWriter(bucket, 0)
  for step in (1, 2, 3):
    writer.write_scalars(step, {"loss": 1.0 / step, "lr_new": 1e-3})
    if step == 2:
      writer.write_record(2, {"split": "val", "t2v": {"R@1": 10.0}}, kind="eval")
  writer.flush()
  writer.close()
  history = fileio.join(bucket, reporting.HISTORY_FILE)
  rows = reporting.read_history(history)
  assert [(r["step"], r["kind"]) for r in rows] == [(1, "train"), (2, "train"), (2, "eval"),
                                                    (3, "train")]
  events = fileio.listdir(fileio.join(bucket, reporting.TENSORBOARD_DIR))
  assert len(events) == 1 and events[0].startswith("events.out.tfevents")
  assert reporting.plot_history(bucket) == fileio.join(bucket, reporting.PLOT_FILE)
  assert fileio.as_path(fileio.join(bucket, reporting.PLOT_FILE)).read_bytes()[:4] == b"\x89PNG"

  resumed = reporting.MetricWriter(bucket, 2)  # a restart from the checkpoint of step 2
  assert [r["step"] for r in reporting.read_history(history)] == [1, 2, 2]
  resumed.write_scalars(3, {"loss": 0.3})
  resumed.close()
  assert [r["step"] for r in reporting.read_history(history)] == [1, 2, 2, 3]


def test_model_file_and_metrics_in_a_bucket(bucket):
  assert not checkpoints.has_model_file(bucket)
  checkpoints.write_model_file(bucket, {"clip": {}, "options": {"num_prompts": 4}})
  assert checkpoints.has_model_file(bucket)
  assert checkpoints.read_model_file(bucket)["options"] == {"num_prompts": 4}
  m = {"R@1": 50.0, "R@5": 100.0, "R@10": 100.0, "R@50": 100.0, "MdR": 1.5, "MnR": 1.5}
  path = fileio.join(bucket, "eval", "metrics.json")
  record = metrics.write_metrics_json(path, 7, 2, 2, {"t2v": m, "v2t": m})
  assert json.loads(fileio.read_text(path)) == record
  assert checkpoints.Checkpointer(bucket, async_save=False, read_only=True).directory == (
      bucket + "/checkpoints")  # handed to orbax as a URL, not made into a local path


def test_local_writes_leave_no_temporary_files(tmp_path):
  path = str(tmp_path / "m.json")
  fileio.write_json(path, [1, 2])
  fileio.write_json(path, [3])
  assert fileio.read_json(path) == [3]
  assert fileio.listdir(str(tmp_path)) == ["m.json"]
