"""orbax checkpoints of a training run: state + data iterator, last K + best, any mesh.

Layout of a workdir:
  ps_jax_model.json      the model description (what `ps_jax.load_model(workdir)` reads)
  checkpoints/<step>/    {"state": params, opt_state, step, rng[, ema_params],
                          "data": grain iterator state (one file per process)}
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as managers

MODEL_FILE = "ps_jax_model.json"
BEST_METRIC = "val_t2v_R@1"


def _best_metric(metrics: dict) -> float:
  return float(metrics[BEST_METRIC])


class Checkpointer:
  """CheckpointManager for training: async saves, keeps the last `keep` steps plus the
  best by validation t2v R@1 (checkpoints saved with metrics), restores onto any mesh."""

  def __init__(self, workdir: str, keep: int = 2, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    policy = managers.AnyPreservationPolicy([
        managers.LatestN(n=keep),
        managers.BestN(get_metric_fn=_best_metric, n=1,
                       keep_checkpoints_without_metrics=False)])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, item_names=("state", "data"),
                                         options=options)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def best_step(self) -> Optional[int]:
    return self.manager.best_step()

  def save(self, step: int, state: Any, data_iterator: Any = None,
           metrics: Optional[dict] = None, force: bool = False) -> bool:
    """Starts an (async) save of `state` and the data iterator's position."""
    args = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return self.manager.save(step, args=ocp.args.Composite(**args), metrics=metrics,
                             force=force)

  def restore(self, step: int, abstract_state: Any, data_iterator: Any = None):
    """Restores `state` with the shardings of `abstract_state` (a tree of
    jax.ShapeDtypeStruct with `.sharding`), so a run can resume on another mesh; the
    data iterator is restored in place. Returns the state."""
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    return restored["state"]

  def restore_params(self, step: int, abstract_params: Any, key: str = "params"):
    """Only the parameters (or `ema_params`) of checkpoint `step`, placed like
    `abstract_params`; the optimizer state is not read into memory."""
    target = {key: abstract_params}
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    path = os.path.join(self.directory, str(step), "state")
    with ocp.PyTreeCheckpointer() as reader:
      restored = reader.restore(path, args=ocp.args.PyTreeRestore(
          item=target, restore_args=restore_args, partial_restore=True))
    return restored[key]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def write_model_file(workdir: str, description: dict) -> None:
  """Writes `ps_jax_model.json` (process 0 only): enough to rebuild the model."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, MODEL_FILE)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(description, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def read_model_file(workdir: str) -> dict:
  path = os.path.join(workdir, MODEL_FILE)
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"Cannot read {path!r}: {e}") from e


def load_model_dir(workdir: str, step: Optional[int] = None, use_ema: bool = False,
                   **overrides):
  """(model, params) of a training workdir: the best checkpoint, else the latest."""
  from ps_jax import api  # pylint: disable=g-import-not-at-top
  from ps_jax.models.clip import ClipConfig  # pylint: disable=g-import-not-at-top

  desc = read_model_file(workdir)
  clip_config = ClipConfig.from_hf(desc["clip"])
  options = {**desc["options"], **overrides}
  model = api.build_model(clip_config, **options)
  ckpt = Checkpointer(workdir, async_save=False)
  try:
    step = step if step is not None else (ckpt.best_step() or ckpt.latest_step())
    if step is None:
      raise FileNotFoundError(f"{workdir!r} has {MODEL_FILE} but no checkpoint")
    shapes = api.param_shapes(model)
    logging.info("loading step %d of %s", step, workdir)
    params = ckpt.restore_params(step, shapes, "ema_params" if use_ema else "params")
  finally:
    ckpt.close()
  return model, params
