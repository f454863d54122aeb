"""Multi-host training on one machine: 2 processes x 4 fake CPU devices == 1 x 8 devices.

The processes join with `jax.distributed.initialize` on loopback and run cross-process
CPU collectives (gloo); each feeds only its own rows of every batch. See
multihost_train_check.py for what each process does.
"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CHECK = os.path.join(HERE, "multihost_train_check.py")
TIMEOUT_S = 600  # the whole module; on an idle 2-core machine it takes about a minute


def free_port() -> int:
  """A TCP port nobody listens on right now (the coordinator binds it next)."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def cpu_env(devices: int) -> dict:
  """`devices` fake CPU devices; LLVM optimisation off halves compile time (both sides
  of every comparison run with the same flags)."""
  return {**os.environ, "JAX_PLATFORMS": "cpu",
          "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} "
                       "--xla_backend_optimization_level=0"}


def tail(path: str, chars: int = 3000) -> str:
  with open(path, encoding="utf-8", errors="replace") as f:
    return f.read()[-chars:]


def run_together(commands, log_dir, timeout):
  """Starts every (command, env) at once and waits for all; fails (stopping the others)
  as soon as one exits non-zero or the time is up, showing each process's stderr.
  Returns each process's stdout."""
  procs, logs = [], []
  for i, (cmd, env) in enumerate(commands):
    out, err = (os.path.join(log_dir, f"proc{i}.{x}") for x in ("out", "err"))
    with open(out, "w") as fo, open(err, "w") as fe:
      procs.append(subprocess.Popen(cmd, env=env, stdout=fo, stderr=fe, text=True))
    logs.append((out, err))
  deadline = time.monotonic() + timeout
  try:
    while any(p.poll() is None for p in procs):
      if any(p.poll() not in (None, 0) for p in procs) or time.monotonic() > deadline:
        break
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  report = "\n".join(f"--- {' '.join(commands[i][0][1:])}: exit {p.returncode}\n"
                     f"{tail(logs[i][1])}" for i, p in enumerate(procs))
  assert all(p.returncode == 0 for p in procs), report
  return [tail(out, 100000) for out, _ in logs]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  """Two workers (4 devices each) and the 1 x 8-device reference, run concurrently."""
  from ps_jax.data import prepare  # pylint: disable=g-import-not-at-top
  out = str(tmp_path_factory.mktemp("multihost"))
  data = os.path.join(out, "data")
  prepare.prepare("moving_shapes", out_dir=data, shapes_size="tiny", progress=False)
  port = str(free_port())
  workers = [([sys.executable, CHECK, "worker", "--out", out, "--data", data, "--port", port,
               "--num_processes", "2", "--process_id", str(i)], cpu_env(4)) for i in range(2)]
  ref = ([sys.executable, CHECK, "reference", "--out", out, "--data", data], cpu_env(8))
  stdout = run_together(workers + [ref], out, TIMEOUT_S)[-1]
  line = next(l for l in stdout.splitlines() if l.startswith("RESULT "))
  return json.loads(line[len("RESULT "):])


def test_two_processes_train_like_one(result):
  """Same parameters, optimizer state and losses as one process with 8 devices."""
  assert result["params"] < 1e-5, result
  assert result["opt_state"] < 1e-5, result
  assert result["step_and_rng"] == 0, result
  assert result["loss_diff"] < 1e-5, result


def test_checkpoint_of_two_processes_restores_on_one(result):
  """Saved by both hosts together (async), restored by one process on its own mesh."""
  assert result["checkpoint_steps"] == [result["steps"]], result
  assert result["restored_vs_workers"] == 0, result
  assert result["restored_params_only"] == 0, result
  assert result["restored_vs_reference"] < 1e-5, result


def test_embeddings_gathered_across_processes_in_order(result):
  """Every process gets all video / caption embeddings, row i = item i, although the
  mesh interleaves the two hosts' devices."""
  for p in ("0", "1"):
    assert result["embeddings"][p]["videos"] < 1e-5, result
    assert result["embeddings"][p]["texts"] < 1e-5, result


def test_real_eval_pipeline_batches_gathered_in_video_order(result):
  """`make_eval_data` on each process (its own slots of every global batch, the last
  batch padded) -> `embed_videos`: row i is video i on both processes, equal to one
  process reading the whole split."""
  for p in ("0", "1"):
    got = result["embeddings"][p]
    assert got["pipeline_train_rows"] == list(range(16)), got
    assert got["pipeline_val_rows"] == list(range(4)), got
    assert got["pipeline_train"] < 1e-5 and got["pipeline_val"] < 1e-5, got


@pytest.mark.parametrize("args,env,message", [
    (["--coordinator_address", "localhost:1"], {},
     "Number of processes must be defined. Outside SLURM and Cloud TPU VMs"),
    ([], {"JAX_NUM_PROCESSES": "two"},
     "JAX_NUM_PROCESSES='two' (the default of --num_processes) is not a valid int"),
])
def test_main_names_the_flag_or_variable_of_a_bad_distributed_setup(tmp_path, args, env,
                                                                     message):
  argv = [sys.executable, "-m", "ps_jax.main", "--config",
          os.path.join(os.path.dirname(HERE), "configs", "demo.py"),
          "--workdir", str(tmp_path / "run")] + args
  proc = subprocess.run(argv, env={**cpu_env(1), **env}, capture_output=True, text=True,
                        timeout=120, cwd=str(tmp_path))
  assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
  assert not os.path.exists(tmp_path / "run")  # failed before writing anything
