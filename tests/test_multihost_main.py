"""The real trainer on two hosts: `launch/local.sh` starting `python -m ps_jax.main`.

Two processes x 2 fake CPU devices (joined by jax.distributed on loopback) train
tests/configs/tiny.py, stop after step 3 (`config.stop_after_steps`) and are launched
again, which resumes each process's data pipeline from its own saved position. The
result must equal one process with the same 4 devices trained without a stop; a run
that tries to continue the two-process checkpoint with one process is refused with a
message and changes nothing on disk. Every file each process of the two-process launches
writes is recorded (tests/write_audit), so the run's own files are known to come from
process 0 alone.
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import ps_jax
from ps_jax import reporting
from test_multihost import cpu_env, free_port
from train_fixtures import REPO, TINY_CONFIG

LOCAL = os.path.join(REPO, "launch", "local.sh")
WRITE_AUDIT = os.path.join(REPO, "tests", "write_audit")
TIMEOUT_S = 900


def _two_processes(workdir, data_root, *flags, write_log):
  """launch/local.sh, each process recording the files it writes into `write_log`."""
  cmd = ["bash", LOCAL, "--num_processes", "2", "--devices_per_process", "2", "--port",
         str(free_port()), "--python", sys.executable, "--", "--config", TINY_CONFIG,
         "--workdir", workdir, f"--config.data.dir={data_root}", *flags]
  env = cpu_env(2)
  env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"  # local.sh adds the devices
  os.makedirs(write_log)
  env["PS_JAX_WRITE_LOG"] = write_log
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [WRITE_AUDIT, env.get("PYTHONPATH")]))
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _one_process(workdir, data_root):
  cmd = [sys.executable, "-m", "ps_jax.main", "--config", TINY_CONFIG, "--workdir", workdir,
         f"--config.data.dir={data_root}"]
  return subprocess.Popen(cmd, cwd=REPO, env=cpu_env(4), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _finish(*procs):
  out = []
  try:
    for p in procs:
      stdout, stderr = p.communicate(timeout=TIMEOUT_S)
      out.append((p.returncode, stdout, stderr))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return out


def _files(directory):
  """{relative path: bytes} of every file under `directory`."""
  found = {}
  for root, _, names in os.walk(directory):
    for n in names:
      path = os.path.join(root, n)
      with open(path, "rb") as f:
        found[os.path.relpath(path, directory)] = f.read()
  return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  from ps_jax.data import prepare  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("multihost_main")
  data = str(root / "data")
  prepare.prepare("moving_shapes", out_dir=data, shapes_size="tiny", progress=False)
  two, one, other = (str(root / n) for n in ("two", "one", "other"))
  writes = {n: str(root / f"writes_{n}") for n in ("stopped", "resumed")}
  first, reference = _finish(_two_processes(two, data, "--config.stop_after_steps=3",
                                            write_log=writes["stopped"]),
                             _one_process(one, data))
  assert first[0] == 0, first[2][-3000:]
  assert reference[0] == 0, reference[2][-3000:]
  stopped = {"history": reporting.read_history(os.path.join(two, "history.jsonl")),
             "checkpoints": sorted(os.listdir(os.path.join(two, "checkpoints")))}
  shutil.copytree(two, other)
  before = _files(os.path.join(other, "checkpoints"))
  resumed, refused = _finish(_two_processes(two, data, write_log=writes["resumed"]),
                             _one_process(other, data))
  return {"two": two, "one": one, "other": other, "stopped": stopped, "resumed": resumed,
          "refused": refused, "other_checkpoints_before": before, "writes": writes}


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.json")) as f:
    return json.load(f)


def test_two_processes_resume_and_end_like_one_process(runs):
  rc, _, stderr = runs["resumed"]
  assert rc == 0, stderr[-3000:]
  with open(os.path.join(runs["two"], "logs", "process_0.log")) as f:
    assert "resuming from step 3" in f.read()
  assert runs["stopped"]["checkpoints"] == ["2", "3"]
  two, one = _metrics(runs["two"]), _metrics(runs["one"])
  assert two["step"] == one["step"] and two["selection"] == one["selection"]
  for d in ("t2v", "v2t"):
    for k, v in one[d].items():
      assert two[d][k] == pytest.approx(v, abs=1e-6), (d, k)
  step = one["step"]
  got = jax.device_get(ps_jax.api.load_model_dir(runs["two"], step=step)[1])
  want = jax.device_get(ps_jax.api.load_model_dir(runs["one"], step=step)[1])
  diff = max(float(np.max(np.abs(a - b))) for a, b in zip(
      jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True))
  assert diff < 1e-5


def test_process_zero_alone_writes_the_logs(runs):
  """history, TensorBoard and the result table come from process 0 only, and the resumed
  launch continues the history without repeating a step."""
  two = reporting.read_history(os.path.join(runs["two"], "history.jsonl"))
  one = reporting.read_history(os.path.join(runs["one"], "history.jsonl"))
  key = lambda rows: [(r["step"], r["kind"]) for r in rows]
  assert key(two) == key(one) and len(set(key(two))) == len(two)
  assert key(runs["stopped"]["history"]) == [k for k in key(one)
                                             if k[0] <= 3 and k[1] != "test"]
  for rows in (two, one):
    for r in rows:
      r.pop("videos_per_s", None)
  for a, b in zip(two, one):
    assert a.keys() == b.keys()
    for k in a:
      if isinstance(a[k], float):
        assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (a["step"], k)
  events = lambda w: [n for n in os.listdir(os.path.join(w, "tensorboard"))
                      if n.startswith("events.")]
  assert len(events(runs["two"])) == 2 and len(events(runs["one"])) == 1  # one per launch
  logs = {i: open(os.path.join(runs["two"], "logs", f"process_{i}.log")).read()
          for i in (0, 1)}
  assert "test split, step" in logs[0] and "test split" not in logs[1]


def _written(write_log, workdir):
  """{process label: {path under `workdir`: events}} of one launch's write records."""
  out = {}
  for name in os.listdir(write_log):
    with open(os.path.join(write_log, name), encoding="utf-8") as f:
      for line in f:
        label, event, path = line.rstrip("\n").split("\t")
        if path.startswith(workdir + os.sep):
          out.setdefault(label, {}).setdefault(os.path.relpath(path, workdir), set()).add(event)
  return out


def test_only_process_zero_writes_metrics_json_and_the_run_files(runs):
  """In both launches process 1 writes nothing in the workdir outside checkpoints/ (where
  it saves its own shards and data position, which shows its writes are recorded);
  process 0 puts metrics.json in place at the end, and the history, TensorBoard events and
  the plot."""
  for launch, log in runs["writes"].items():
    written = _written(log, runs["two"])
    assert set(written) == {"0", "1"}, (launch, sorted(written))
    outside = sorted(p for p in written["1"] if not p.startswith("checkpoints" + os.sep))
    assert outside == [], (launch, outside)
    assert any(p.endswith("process_1-of-2.json") for p in written["1"]), (launch, written["1"])
    assert not any("metrics.json" in p for p in written["1"])
  final = _written(runs["writes"]["resumed"], runs["two"])["0"]
  assert "os.rename" in final["metrics.json"]
  assert {"history.jsonl", "training_curves.png"} <= set(final)
  assert any(p.startswith(os.path.join("tensorboard", "events.")) for p in final)


def test_another_process_count_cannot_continue_the_data_pipeline(runs):
  rc, _, stderr = runs["refused"]
  assert rc == 2 and "Traceback" not in stderr, stderr[-3000:]
  assert ("holds the data pipeline positions of 2 processes (process_0-of-2.json, "
          "process_1-of-2.json), but this run has 1") in stderr
  assert "resume with 2 processes" in stderr
  after = _files(os.path.join(runs["other"], "checkpoints"))
  assert after == runs["other_checkpoints_before"]  # nothing lost or rewritten
