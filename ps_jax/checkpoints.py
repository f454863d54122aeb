"""orbax checkpoints of a training run: state + data iterator, last K + best, any mesh.

Layer: formats (no ps_jax imports besides `fileio`). The workdir may be a local path or
a URL (orbax writes through etils.epath / TensorStore).

Layout of a workdir:
  ps_jax_model.json      the model description (what `ps_jax.load_model(workdir)` reads)
  checkpoints/<step>/    {"state": params, opt_state, step, rng[, ema_params],
                          "data": grain iterator state (one file per process),
                          "metrics": {"val_t2v_R@1": ...} when the step was validated}

Checkpoint selection has one rule, `select_best`, used both to choose the checkpoint
that is tested / loaded and to decide which checkpoint is preserved on disk: the
largest selection score; on a tie the earliest step (a later checkpoint must be
strictly better, as in the official code). The score of an evaluated step is its t2v
R@1 on the selection split (validation, or test under the official protocol), averaged
with the previous evaluations' over a window of `config.select_window` (1: the step's
own value; official: 5). Every evaluated step is saved with its score, and the selected
one is never deleted, so the choice over the checkpoints on disk is the argmax over the
whole evaluation history, also across restarts (every checkpoint carries the raw
values of the open window, so a resumed run continues the same moving average).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as managers

from ps_jax import fileio

MODEL_FILE = "ps_jax_model.json"
SCORE = "selection_score"      # what select_best maximises
BEST_METRIC = "val_t2v_R@1"    # the score's key in checkpoints written before SCORE
RECENT = "recent_t2v_R@1"      # the raw values of the open window, oldest first


class CheckpointError(ValueError):
  """A checkpoint that cannot be used as asked (the message says why and what to do)."""


def _metric(metrics: Optional[dict]) -> Optional[float]:
  for key in (SCORE, BEST_METRIC):
    if metrics and key in metrics:
      return float(metrics[key])
  return None


def evaluated_metrics(recent: Sequence[float], value: float, window: int,
                      split: str) -> dict:
  """Checkpoint metrics of an evaluated step.

  Args:
    recent: raw t2v R@1 of the previous evaluations (oldest first, any length).
    value: this step's raw t2v R@1 on `split`.
    window: moving-average window (>= 1).
    split: the selection split's name.

  Returns:
    {SCORE: mean of the last `window` raw values including `value` (fewer at the
    start, as the official code's deque), "t2v_R@1": value, "window", "split",
    RECENT: the last window - 1 raw values the next evaluation averages with}.
  """
  kept = ([float(v) for v in recent] + [float(value)])[-window:]
  return {SCORE: sum(kept) / len(kept), "t2v_R@1": float(value), "window": int(window),
          "split": split, RECENT: kept[-(window - 1):] if window > 1 else []}


def select_best(history: Sequence[tuple[int, float]]) -> Optional[tuple[int, float]]:
  """(step, value) with the largest value; ties go to the earliest step. None if empty.

  history: (step, validation metric) pairs in any order.
  """
  best = None
  for step, value in sorted(history):
    if best is None or value > best[1]:
      best = (step, value)
  return best


@dataclasses.dataclass(frozen=True)
class Selection:
  """The checkpoint a workdir stands for.

  step: the checkpoint step; value: its selection score (t2v R@1 on `split`, a moving
  average over `window` evaluations), None when no checkpoint was evaluated (then
  `step` is the latest); num_validated: evaluated checkpoints on disk it was chosen
  from.
  """
  step: int
  value: Optional[float]
  num_validated: int
  split: str = "val"
  window: int = 1

  def describe(self) -> str:
    if self.value is None:
      return f"step {self.step} (the latest; no checkpoint has a selection metric)"
    what = (f"moving average of {self.window} evaluations of {self.split} t2v R@1"
            if self.window > 1 else f"{self.split} t2v R@1")
    return (f"step {self.step} (best {what} {self.value:.1f}, earliest on ties, "
            f"of {self.num_validated} evaluated checkpoints kept)")


class _KeepSelected:
  """orbax preservation policy: keeps the checkpoint `select_best` chooses."""

  def should_preserve(self, checkpoints, *, context) -> list[bool]:
    del context
    best = select_best([(c.step, _metric(c.metrics)) for c in checkpoints
                        if _metric(c.metrics) is not None])
    return [best is not None and c.step == best[0] for c in checkpoints]


class Checkpointer:
  """CheckpointManager for training: async saves, keeps the last `keep` steps plus the
  selected one (`select_best` over the validation metrics saved with the checkpoints),
  restores onto any mesh. Checkpoints are written to a temporary directory and renamed
  when complete; temporary directories left by a killed run are removed on start."""

  def __init__(self, workdir: str, keep: int = 2, async_save: bool = True,
               read_only: bool = False):
    self.directory = fileio.join(fileio.absolute(workdir), "checkpoints")
    policy = managers.AnyPreservationPolicy([managers.LatestN(n=keep), _KeepSelected()])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=None if read_only else policy,
        best_fn=_metric, best_mode="max",  # makes orbax write and read step metrics
        enable_async_checkpointing=async_save, create=not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only)
    self.manager = ocp.CheckpointManager(self.directory, item_names=("state", "data"),
                                         options=options)
    # orbax removes those directories on a background thread and awaits it only before
    # the next save; a process that stops earlier (an error at resume) would leave it
    # running into interpreter exit. Wait here (getattr: the future is orbax-internal).
    pending = getattr(self.manager, "_cleanup_tmp_directory_future", None)
    if pending is not None:
      pending.result()

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def validation_history(self) -> list[tuple[int, float]]:
    """(step, selection score) of every checkpoint on disk saved with one."""
    history = []
    for step in self.manager.all_steps():
      value = _metric(self.manager.metrics(step))
      if value is not None:
        history.append((step, value))
    return history

  def recent_values(self, step: int) -> list[float]:
    """The open window's raw values saved with checkpoint `step` ([] if none)."""
    metrics = self.manager.metrics(step) or {}
    return [float(v) for v in metrics.get(RECENT, [])]

  def selected(self) -> Optional[Selection]:
    """The best evaluated checkpoint (`select_best`), else the latest; None if none."""
    history = self.validation_history()
    best = select_best(history)
    if best is not None:
      metrics = self.manager.metrics(best[0]) or {}
      return Selection(best[0], best[1], len(history), str(metrics.get("split", "val")),
                       int(metrics.get("window", 1)))
    latest = self.latest_step()
    return None if latest is None else Selection(latest, None, 0)

  def save(self, step: int, state: Any, data_iterator: Any = None,
           metrics: Optional[dict] = None, force: bool = False) -> bool:
    """Starts an (async) save of `state` and the data iterator's position."""
    args = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return self.manager.save(step, args=ocp.args.Composite(**args), metrics=metrics or {},
                             force=force)

  def restore(self, step: int, abstract_state: Any, data_iterator: Any = None):
    """Restores `state` with the shardings of `abstract_state` (a tree of
    jax.ShapeDtypeStruct with `.sharding`), so a run can resume on another mesh; the
    data iterator is restored in place. Returns the state."""
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      self._check_data_processes(step)
      args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    return restored["state"]

  def _check_data_processes(self, step: int) -> None:
    """Each process's input pipeline saved its own position (`process_<i>-of-<n>.json`):
    a run can only continue it with the same number of processes."""
    data_dir = fileio.join(self.directory, str(step), "data")
    saved = sorted(n for n in fileio.listdir(data_dir) if n.startswith("process_"))
    mine = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    if mine not in saved:
      counts = sorted({n.rsplit("-of-", 1)[-1].removesuffix(".json") for n in saved})
      raise CheckpointError(
          f"checkpoint {step} in {self.directory!r} holds the data pipeline positions of "
          f"{' or '.join(counts) or 'no'} processes ({', '.join(saved[:4])}), but this run "
          f"has {jax.process_count()}: each process reads its own share of the data, so "
          "the position cannot be re-split: resume with "
          f"{' or '.join(counts) or 'the same number of'} processes.")

  def restore_params(self, step: int, abstract_params: Any, key: str = "params"):
    """Only the parameters (or `ema_params`) of checkpoint `step`, placed like
    `abstract_params`; the optimizer state is not read into memory."""
    target = {key: abstract_params}
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    path = fileio.as_path(fileio.join(self.directory, str(step), "state"))
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
  fileio.makedirs(workdir)
  fileio.write_json(fileio.join(workdir, MODEL_FILE), description, sort_keys=True)


def read_model_file(workdir: str) -> dict:
  path = fileio.join(workdir, MODEL_FILE)
  try:
    return fileio.read_json(path)
  except (OSError, ValueError) as e:
    raise ValueError(f"Cannot read {path!r}: {e}") from e


def has_model_file(workdir: str) -> bool:
  """Whether `workdir` is a ps_jax training workdir (holds `ps_jax_model.json`)."""
  return fileio.exists(fileio.join(workdir, MODEL_FILE))


def selected_checkpoint(workdir: str) -> Optional[Selection]:
  """The checkpoint `load_model(workdir)` loads (see `Checkpointer.selected`)."""
  ckpt = Checkpointer(workdir, async_save=False, read_only=True)
  try:
    return ckpt.selected()
  finally:
    ckpt.close()
