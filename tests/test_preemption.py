"""Preemption: `kill -9` a real training process anywhere, run the same command again,
and the run finishes exactly like an uninterrupted one (bit-exact on CPU)."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import ps_jax
from ps_jax import checkpoints, reporting
from train_fixtures import REPO, TINY_CONFIG

# 12 steps; validation at 4, 8, 12; checkpoints at 3, 4, 6, 8, 9, 12 (keep the latest
# and the selected one).
RUN_FLAGS = ("--config.num_train_steps=12", "--config.eval_every_steps=4",
             "--config.checkpoint.every_steps=3", "--config.checkpoint.keep=1")
TMP_SUFFIX = ".orbax-checkpoint-tmp"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  from ps_jax.data import prepare  # pylint: disable=g-import-not-at-top
  root = str(tmp_path_factory.mktemp("shapes"))
  prepare.prepare("moving_shapes", out_dir=root, shapes_size="tiny", progress=False)
  return root


def _command(workdir, data_root):
  return [sys.executable, "-m", "ps_jax.main", "--config", TINY_CONFIG, "--workdir", workdir,
          f"--config.data.dir={data_root}", *RUN_FLAGS]


def _run_to_end(workdir, data_root, log):
  with open(log, "w") as out:
    proc = subprocess.run(_command(workdir, data_root), cwd=REPO, stdout=out,
                          stderr=subprocess.STDOUT, timeout=900, check=False)
  with open(log) as f:
    text = f.read()
  assert proc.returncode == 0, text[-3000:]
  return text


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
  """The uninterrupted run, as a real process."""
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  _run_to_end(workdir, data_root, workdir + ".log")
  return workdir


def _history(workdir):
  return reporting.read_history(os.path.join(workdir, "history.jsonl"))


def _steps(workdir, kind):
  return {r["step"] for r in _history(workdir) if r["kind"] == kind}


def _tmp_checkpoints(workdir):
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(n for n in os.listdir(directory) if TMP_SUFFIX in n)


# Kill points: a condition on the workdir, polled every millisecond.
def _mid_training(workdir):
  """Between checkpoints: step 7 is logged, the process is in step 8's work."""
  return 7 in _steps(workdir, "train") and not _tmp_checkpoints(workdir)


def _async_save_in_flight(workdir):
  """A checkpoint after the first one is being written (its temporary directory)."""
  return any(int(n.split(".")[0]) >= 4 for n in _tmp_checkpoints(workdir))


def _during_validation(workdir):
  """Step 8 is trained and logged, its validation has not been logged yet."""
  return 8 in _steps(workdir, "train") and 8 not in _steps(workdir, "eval")


KILL_POINTS = {"mid_training": _mid_training, "async_save": _async_save_in_flight,
               "validation": _during_validation}


def _start_and_kill(workdir, data_root, condition, log):
  """Starts the run, SIGKILLs it as soon as `condition(workdir)` holds; returns the
  temporary checkpoint directories present right after the kill."""
  with open(log, "w") as out:
    proc = subprocess.Popen(_command(workdir, data_root), cwd=REPO, stdout=out,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    try:
      while not condition(workdir):
        assert proc.poll() is None, f"the run ended before the kill point: {open(log).read()}"
        assert time.monotonic() < deadline, "kill point not reached in 600 s"
        time.sleep(0.001)
      proc.send_signal(signal.SIGKILL)
    finally:
      proc.wait()
  assert proc.returncode == -signal.SIGKILL
  return _tmp_checkpoints(workdir)


def _restore(workdir, step):
  return jax.device_get(ps_jax.api.load_model_dir(workdir, step=step)[1])


def _without_timing(rows):
  return [{k: v for k, v in r.items() if k != "videos_per_s"} for r in rows]


@pytest.mark.parametrize("kill_point", sorted(KILL_POINTS))
def test_sigkill_then_the_same_command_equals_the_uninterrupted_run(
    kill_point, data_root, reference, tmp_path):
  workdir = str(tmp_path / "run")
  left = _start_and_kill(workdir, data_root, KILL_POINTS[kill_point],
                         str(tmp_path / "killed.log"))
  finished = checkpoints.Checkpointer(workdir, async_save=False, read_only=True)
  resume_step = finished.latest_step()
  finished.close()
  assert not os.path.exists(os.path.join(workdir, "metrics.json"))
  if kill_point == "async_save":
    assert left, "killed after the save had finished"
    assert all(int(n.split(".")[0]) > (resume_step or 0) for n in left)
  if kill_point == "validation":
    assert 8 not in _steps(workdir, "eval")

  log = _run_to_end(workdir, data_root, str(tmp_path / "resumed.log"))
  if resume_step is not None:
    assert f"resuming from step {resume_step} " in log
  assert not _tmp_checkpoints(workdir)  # the killed write was removed, never restored

  with open(os.path.join(reference, "metrics.json")) as f:
    expected = json.load(f)
  with open(os.path.join(workdir, "metrics.json")) as f:
    assert json.load(f) == expected
  for step in sorted({12, expected["step"]}):
    for a, b in zip(jax.tree_util.tree_leaves(_restore(reference, step)),
                    jax.tree_util.tree_leaves(_restore(workdir, step)), strict=True):
      np.testing.assert_array_equal(a, b)
  assert _without_timing(_history(workdir)) == _without_timing(_history(reference))


def test_a_bad_config_value_stops_before_any_work(tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "ps_jax.main", "--config", TINY_CONFIG, "--workdir",
       str(workdir), "--config.batch_size=-3"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 2
  assert "error: config.batch_size=-3 must be a positive number" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not workdir.exists()  # nothing rendered, nothing written
