"""What a run tells its user: progress lines, TensorBoard scalars, history.jsonl, the plot.

Layer: foundation (imports only `fileio`). Only process 0 prints and writes.

  writer = MetricWriter(workdir, start_step)
  writer.write_scalars(step, {"loss": 0.3, "lr_new": 1e-5})        # TensorBoard + history
  writer.write_record(step, eval_record, kind="eval")              # a nested history row
  writer.flush(); writer.close(); plot_history(workdir)

history.jsonl has one JSON row per event: {"step", "kind": "train" | "eval" | "test",
...}. A resumed run first drops the rows of the steps it repeats (`truncate_history`),
so a killed and resumed run ends with the history of an uninterrupted one.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
from typing import Any, Mapping, Optional

import jax
import tqdm

from ps_jax import fileio

HISTORY_FILE = "history.jsonl"
TENSORBOARD_DIR = "tensorboard"
PLOT_FILE = "training_curves.png"


def say(message: str) -> None:
  """A progress line for the user, from process 0 only."""
  if jax.process_index() == 0:
    print(message, flush=True)


def read_history(path: str) -> list[dict]:
  """The rows of a history.jsonl; a line cut short by a killed process is skipped."""
  if not fileio.exists(path):
    return []
  rows = []
  for line in fileio.read_text(path).splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return rows


def truncate_history(path: str, step: int) -> None:
  """Keeps the training and validation rows of steps <= `step` (atomically)."""
  if not fileio.exists(path):
    return
  keep = [r for r in read_history(path) if r["step"] <= step and r["kind"] != "test"]
  fileio.write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


class MetricWriter:
  """TensorBoard scalars and history.jsonl rows of one run (process 0 only).

  On a URL workdir the TensorBoard event files are written to a local staging
  directory and copied to `<workdir>/tensorboard` on every `flush`, and history rows
  are appended on `flush` (an object store has no appends).
  """

  def __init__(self, workdir: str, start_step: int = 0):
    """Opens the writers; rows and events of steps after `start_step` (left by a killed
    run that is resumed from `start_step`) are dropped."""
    self.active = jax.process_index() == 0
    self.history_path = fileio.join(workdir, HISTORY_FILE)
    self._tb_dir = fileio.join(workdir, TENSORBOARD_DIR)
    self._pending: list[str] = []
    self._remote = fileio.is_url(workdir)
    self._tb = None
    if not self.active:
      return
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top  (heavy)
    truncate_history(self.history_path, start_step)
    logdir = self._tb_dir
    if self._remote:
      logdir = tempfile.mkdtemp(prefix="ps_jax_tensorboard_")
      for name in fileio.listdir(self._tb_dir):  # earlier runs' events
        with open(os.path.join(logdir, name), "wb") as f:
          f.write(fileio.as_path(fileio.join(self._tb_dir, name)).read_bytes())
    self._staging = logdir
    self._tb = SummaryWriter(logdir, purge_step=start_step + 1)

  def write_scalars(self, step: int, scalars: Mapping[str, float], prefix: str = "train",
                    kind: Optional[str] = "train") -> None:
    """Scalars as TensorBoard `<prefix>/<name>` and (unless kind is None) one history
    row {"step", "kind", **scalars}."""
    if not self.active:
      return
    values = {k: float(v) for k, v in scalars.items()}
    for key, value in values.items():
      self._tb.add_scalar(f"{prefix}/{key}", value, step)
    if kind is not None:
      self._row({"step": step, "kind": kind, **values})

  def write_record(self, step: int, record: Mapping[str, Any], kind: str) -> None:
    """A nested history row {"step", "kind", **record} (an evaluation's metrics)."""
    if self.active:
      self._row({"step": step, "kind": kind, **record})

  def _row(self, row: dict) -> None:
    self._pending.append(json.dumps(row) + "\n")
    if not self._remote:
      self.flush()

  def flush(self) -> None:
    if not self.active:
      return
    if self._pending:
      fileio.append_text(self.history_path, "".join(self._pending))
      self._pending = []
    self._tb.flush()
    if self._remote:
      fileio.makedirs(self._tb_dir)
      for name in os.listdir(self._staging):
        with open(os.path.join(self._staging, name), "rb") as f:
          fileio.write_bytes(fileio.join(self._tb_dir, name), f.read())

  def close(self) -> None:
    if self.active:
      self.flush()
      self._tb.close()
      if self._remote:
        shutil.rmtree(self._staging, ignore_errors=True)


class TrainProgress:
  """The training progress bar (process 0): steps, loss terms, learning rate, videos/s."""

  def __init__(self, total_steps: int, start_step: int, batch_size: int):
    self.batch_size = batch_size
    self.last_time, self.last_step = time.perf_counter(), start_step
    self.bar = None
    if jax.process_index() == 0:
      self.bar = tqdm.tqdm(total=total_steps, initial=start_step, desc="train",
                           dynamic_ncols=True, mininterval=1.0)

  def advance(self, n: int = 1) -> None:
    if self.bar is not None:
      self.bar.update(n)

  def rate(self, step: int) -> float:
    """Videos per second since the previous call."""
    now = time.perf_counter()
    rate = (step - self.last_step) * self.batch_size / max(now - self.last_time, 1e-9)
    self.last_time, self.last_step = now, step
    return rate

  def show(self, scalars: Mapping[str, float]) -> None:
    if self.bar is None:
      return
    shown = {"loss": "loss", "con": "loss_contrastive", "cap": "loss_caption",
             "lr": "lr_new", "vid/s": "videos_per_s"}
    self.bar.set_postfix({k: (f"{scalars[v]:.1e}" if k == "lr" else
                              f"{scalars[v]:.1f}" if k == "vid/s" else f"{scalars[v]:.3f}")
                          for k, v in shown.items() if v in scalars}, refresh=False)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


def plot_history(workdir: str) -> Optional[str]:
  """Writes `<workdir>/training_curves.png` from history.jsonl: losses, learning rates,
  validation R@1 (and twin accuracy) and the final test of the selected checkpoint."""
  path = fileio.join(workdir, HISTORY_FILE)
  if jax.process_index() != 0 or not fileio.exists(path):
    return None
  import matplotlib  # pylint: disable=g-import-not-at-top  (heavy, plotting only)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  rows = read_history(path)
  train = {r["step"]: r for r in rows if r["kind"] == "train"}
  evals = [r for r in rows if r["kind"] == "eval"]
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  steps = sorted(train)
  for key in ("loss", "loss_contrastive", "loss_caption"):
    if steps and key in train[steps[0]]:
      axes[0].plot(steps, [train[s][key] for s in steps], label=key)
  axes[0].set(title="training loss", xlabel="step")
  for key in ("lr_clip", "lr_new"):
    if steps and key in train[steps[0]]:
      axes[1].plot(steps, [train[s][key] for s in steps], label=key)
  axes[1].set(title="learning rate", xlabel="step", yscale="log")
  for split in sorted({r["split"] for r in evals}):
    pts = [(r["step"], r["t2v"]["R@1"], r.get("twin_acc")) for r in evals if r["split"] == split]
    axes[2].plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{split} t2v R@1")
    if all(p[2] is not None for p in pts):
      axes[2].plot([p[0] for p in pts], [p[2] for p in pts], "s--", label=f"{split} twin acc")
  for r in rows:
    if r["kind"] == "test":  # the final test, at the selected checkpoint's step
      axes[2].plot([r["step"]], [r["t2v"]["R@1"]], "*", markersize=14,
                   label=f"{r['split']} t2v R@1, selected step {r['step']}")
  axes[2].set(title="retrieval (%)", xlabel="step")
  for ax in axes:
    if ax.get_legend_handles_labels()[0]:
      ax.legend()
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=100)
  plt.close(fig)
  out = fileio.join(workdir, PLOT_FILE)
  fileio.write_bytes(out, buffer.getvalue())
  return out
