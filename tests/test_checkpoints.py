"""Checkpoint selection: one rule for what is tested, loaded and kept on disk."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from ps_jax import checkpoints


def test_select_best_is_the_argmax_and_the_earliest_on_ties():
  history = [(8, 20.0), (2, 10.0), (6, 40.0), (4, 40.0), (10, 39.9)]
  assert checkpoints.select_best(history) == (4, 40.0)
  assert checkpoints.select_best([(3, 5.0)]) == (3, 5.0)
  assert checkpoints.select_best([]) is None


def _state(step):
  return {"w": jnp.full((3,), float(step)), "step": jnp.asarray(step, jnp.int32)}


def _save_all(ckpt, metrics_by_step):
  for step, value in metrics_by_step:
    metrics = None if value is None else {checkpoints.BEST_METRIC: value}
    ckpt.save(step, _state(step), metrics=metrics, force=True)
  ckpt.wait()


def _on_disk(workdir):
  names = os.listdir(os.path.join(workdir, "checkpoints"))
  return sorted(int(n) for n in names if n.isdigit())


def test_the_selected_checkpoint_is_kept_across_restarts(tmp_path):
  """Ties go to the earliest step both when selecting and when deleting; a restarted
  run still knows the metrics of the checkpoints written before (read from disk)."""
  workdir = str(tmp_path / "run")
  ckpt = checkpoints.Checkpointer(workdir, keep=1, async_save=True)
  _save_all(ckpt, [(1, None), (2, 10.0), (3, None), (4, 30.0), (5, None), (6, 30.0),
                   (7, None), (8, 20.0)])
  ckpt.close()
  assert _on_disk(workdir) == [4, 8]
  selection = checkpoints.selected_checkpoint(workdir)
  assert (selection.step, selection.value, selection.num_validated) == (4, 30.0, 2)

  again = checkpoints.Checkpointer(workdir, keep=1)  # a restart
  assert again.validation_history() == [(4, 30.0), (8, 20.0)]
  _save_all(again, [(9, None), (10, 30.0), (11, None)])
  assert _on_disk(workdir) == [4, 11]
  _save_all(again, [(12, 30.5)])
  assert _on_disk(workdir) == [12]
  assert again.selected() == checkpoints.Selection(12, 30.5, 1)
  restored = again.restore_params(12, jnp.zeros(3), key="w")
  np.testing.assert_array_equal(np.asarray(restored), np.full(3, 12.0))
  again.close()


def test_without_validation_the_latest_checkpoint_is_selected(tmp_path):
  workdir = str(tmp_path / "run")
  ckpt = checkpoints.Checkpointer(workdir, keep=2)
  _save_all(ckpt, [(1, None), (2, None), (3, None)])
  ckpt.close()
  assert _on_disk(workdir) == [2, 3]
  selection = checkpoints.selected_checkpoint(workdir)
  assert (selection.step, selection.value) == (3, None)
  assert "the latest" in selection.describe()
  assert checkpoints.selected_checkpoint(str(tmp_path / "empty")) is None
