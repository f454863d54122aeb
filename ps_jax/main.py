"""Command line: `python -m ps_jax.main --config configs/<name>.py --workdir DIR`.

Modes: train (periodic validation, final test of the selected checkpoint), eval (a
workdir checkpoint, or config.model.init_from zero-shot) and index (embed every video
of a split once into a search index, `ps_jax.index_videos`; then `python -m
ps_jax.search --index <workdir>/index_test --query "..."`). Config fields are overridden
with `--config.batch_size=64`-style flags. On several hosts run the same command on
every host: `jax.distributed.initialize()` is called first (auto-detected on TPU VMs
and SLURM, or from the --coordinator_address / --num_processes / --process_id flags or
the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID environment variables).
launch/ has the scripts that start it on a TPU pod, a SLURM cluster or one machine.
"""

import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, metrics.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "index"], "What to run.")
_INDEX_SPLIT = flags.DEFINE_string("index_split", None,
                                   "--mode index: split to embed (default config.data.test_split).")
_INDEX_DIR = flags.DEFINE_string("index_dir", None,
                                 "--mode index: index directory (default <workdir>/index_<split>).")
_INDEX_APPEND = flags.DEFINE_bool("index_append", False,
                                  "--mode index: add the split's new videos to --index_dir.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 (multi-host without auto-detection).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (hosts).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", None, "Call jax.distributed.initialize() (default: when multi-host is "
    "detected from flags or the environment).")
flags.mark_flags_as_required(["config", "workdir"])


def _flag_or_env(flag, env_name: str, cast=str):
  """The flag's value, else the environment variable's, else None."""
  if flag.value is not None:
    return flag.value
  raw = os.environ.get(env_name, "")
  if not raw:
    return None
  try:
    return cast(raw)
  except ValueError:
    raise app.UsageError(f"{env_name}={raw!r} (the default of --{flag.name}) is not "
                         f"a valid {cast.__name__}") from None


def _distributed_args() -> dict:
  """coordinator_address / num_processes / process_id from flags, else environment."""
  return {"coordinator_address": _flag_or_env(_COORDINATOR, "JAX_COORDINATOR_ADDRESS"),
          "num_processes": _flag_or_env(_NUM_PROCESSES, "JAX_NUM_PROCESSES", int),
          "process_id": _flag_or_env(_PROCESS_ID, "JAX_PROCESS_ID", int)}


def _want_distributed(args: dict) -> bool:
  if _DISTRIBUTED.value is not None:
    return _DISTRIBUTED.value
  if args["coordinator_address"] or (args["num_processes"] or 1) > 1:
    return True
  env = os.environ
  return ("SLURM_NTASKS" in env and int(env["SLURM_NTASKS"]) > 1) or (
      "TPU_WORKER_HOSTNAMES" in env and "," in env["TPU_WORKER_HOSTNAMES"])


def _check_workdir(workdir: str) -> None:
  """Every host must see the same workdir as a file system path (orbax writes each
  host's shards there; logs and metrics are plain files)."""
  if "://" in workdir:
    raise app.UsageError(
        f"--workdir={workdir}: URLs are not supported yet (metrics and logs are written "
        "with local file I/O). On several hosts use a directory they all mount at the "
        "same path (NFS / Filestore, or the bucket through Cloud Storage FUSE).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  _check_workdir(_WORKDIR.value)
  config = _CONFIG.value
  if config.get("retain_host_memory", False):
    from ps_jax import runtime  # pylint: disable=g-import-not-at-top
    runtime.retain_freed_memory()  # before JAX's runtime starts its threads
  import jax  # pylint: disable=g-import-not-at-top

  args = _distributed_args()
  if _want_distributed(args):
    try:
      jax.distributed.initialize(**args)
    except (ValueError, TypeError) as e:
      raise app.UsageError(
          f"jax.distributed.initialize(): {str(e).rstrip('.')}. Outside SLURM and Cloud TPU VMs (where "
          "they are detected) give --coordinator_address=host:port, --num_processes and "
          "--process_id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); "
          "--nodistributed runs a single process.") from e
  # Our own progress goes to stdout; keep library INFO chatter (orbax, grain) out of it.
  absl_logging.set_verbosity(absl_logging.WARNING)
  from ps_jax import train  # pylint: disable=g-import-not-at-top
  from ps_jax.data import builders  # pylint: disable=g-import-not-at-top

  try:
    if _MODE.value == "train":
      train.train_and_evaluate(config, _WORKDIR.value)
    elif _MODE.value == "eval":
      train.evaluate_only(config, _WORKDIR.value)
    else:
      from ps_jax import index_videos  # pylint: disable=g-import-not-at-top
      try:
        index_videos.index_from_config(config, _WORKDIR.value, split=_INDEX_SPLIT.value,
                                       out=_INDEX_DIR.value, append=_INDEX_APPEND.value)
      except index_videos.IndexBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
  except (train.ConfigError, builders.DatasetNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
