"""Command line: `python -m ps_jax.main --config configs/<name>.py --workdir DIR`.

Modes: train (periodic validation, final test of the selected checkpoint), eval (a
workdir checkpoint, or config.model.init_from zero-shot; with config.moments.protocol
the moment protocol instead, `ps_jax.moment_eval`), index (embed every video
of a split once into a search index, `ps_jax.index_videos`; then `python -m
ps_jax.search --index <workdir>/index_test --query "..."`) and compile (the run's
programs compiled for a TPU slice on this machine, `--config.compile.topology=v5p-128`:
memory per chip, FLOPs, an estimated step time; exits 1 when a program does not fit).
Config fields are overridden with `--config.batch_size=64`-style flags. On several
hosts run the same command on every host: `jax.distributed.initialize()` is called
first (auto-detected on TPU VMs and SLURM, or from the --coordinator_address /
--num_processes / --process_id flags or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID environment variables).
launch/ has the scripts that start it on a TPU pod, a SLURM cluster or one machine.

Layer: front end (thin: flags, then `train`, `evaluate`, `moment_eval`,
`retrieval.build` or `compile_check`).
"""

import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

import jax

from ps_jax import aot, checkpoints, compile_check, distributed, evaluate, experiment
from ps_jax import moment_eval, runtime, train
from ps_jax.data import builders
from ps_jax.retrieval import build
from ps_jax.retrieval.model import ModelLoadError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, metrics.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "index", "compile"], "What to run.")
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if _MODE.value == "compile":
    # Compile-only TPU devices come from libtpu's topology; nothing runs on a backend
    # but the CPU (no TPU is looked for on this machine).
    jax.config.update("jax_platforms", "cpu")
    absl_logging.set_verbosity(absl_logging.WARNING)
    try:
      compile_check.run_check(config, _WORKDIR.value)
    except (aot.CompileCheckError, experiment.ConfigError) as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    except aot.DoesNotFit as e:
      print(f"does not fit: {e}", file=sys.stderr)
      sys.exit(1)
    return
  if config.get("retain_host_memory", False):
    # Before the first computation: XLA's runtime starts its threads on first use.
    runtime.retain_freed_memory()
  try:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                           force=_DISTRIBUTED.value)
  except distributed.DistributedError as e:
    raise app.UsageError(f"{e} --nodistributed runs a single process.") from e
  # Our own progress goes to stdout; keep library INFO chatter (orbax, grain) out of it.
  absl_logging.set_verbosity(absl_logging.WARNING)
  try:
    moments = bool(config.get("moments", {}).get("protocol"))
    if _MODE.value == "train":
      train.train_and_evaluate(config, _WORKDIR.value)
      if moments:  # the selected checkpoint on the moment protocol too
        moment_eval.evaluate_moments(config, _WORKDIR.value)
    elif _MODE.value == "eval":
      if moments:
        moment_eval.evaluate_moments(config, _WORKDIR.value)
      else:
        evaluate.evaluate_only(config, _WORKDIR.value)
    else:
      build.index_from_config(config, _WORKDIR.value, split=_INDEX_SPLIT.value,
                              out=_INDEX_DIR.value, append=_INDEX_APPEND.value)
  except (experiment.ConfigError, builders.DatasetNotFoundError, builders.SplitNotFoundError,
          build.IndexBuildError, ModelLoadError, checkpoints.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
