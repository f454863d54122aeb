"""Command line: `python -m ps_jax.main --config configs/<name>.py --workdir DIR`.

Modes: train (periodic validation, final test of the selected checkpoint), eval (a
workdir checkpoint, or config.model.init_from zero-shot) and index (embed every video
of a split once into a search index, `ps_jax.index_videos`; then `python -m
ps_jax.search --index <workdir>/index_test --query "..."`). Config fields are overridden
with `--config.batch_size=64`-style flags. On several hosts run the same command on
every host: `jax.distributed.initialize()` is called first (auto-detected on TPU VMs
and SLURM, or from the --coordinator_address / --num_processes / --process_id flags).
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


def _want_distributed() -> bool:
  if _DISTRIBUTED.value is not None:
    return _DISTRIBUTED.value
  if _COORDINATOR.value or (_NUM_PROCESSES.value or 1) > 1:
    return True
  env = os.environ
  return ("SLURM_NTASKS" in env and int(env["SLURM_NTASKS"]) > 1) or (
      "TPU_WORKER_HOSTNAMES" in env and "," in env["TPU_WORKER_HOSTNAMES"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  import jax  # pylint: disable=g-import-not-at-top

  if _want_distributed():
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  # Our own progress goes to stdout; keep library INFO chatter (orbax, grain) out of it.
  absl_logging.set_verbosity(absl_logging.WARNING)
  from ps_jax import train  # pylint: disable=g-import-not-at-top

  config = _CONFIG.value
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
  except ValueError as e:
    if "config" in str(e) or "does not exist" in str(e):
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    raise


if __name__ == "__main__":
  app.run(main)
