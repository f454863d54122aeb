"""Training: loss goes down, sharded step == 1-device step, config errors, kill + resume."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import ps_jax
from ps_jax import checkpoints, evaluate, experiment, metrics, reporting, sharding, train
from ps_jax.retrieval import build, store
from ps_jax.retrieval.model import model_fingerprint
from train_fixtures import run_steps, tiny_batch, tiny_config, tiny_model

HERE = os.path.dirname(os.path.abspath(__file__))


def test_a_few_steps_lower_the_loss():
  model = tiny_model()
  batch = tiny_batch(seed=0)
  _, history = run_steps(model, [batch] * 12, sharding.make_mesh(1, 1, jax.devices()[:1]),
                         total_steps=12, lr_clip=5e-3, lr_new=5e-3)
  losses = [h["loss"] for h in history]
  assert losses[-1] < 0.88 * losses[0], losses
  assert max(losses[-4:]) < min(losses[:4]), losses
  assert all(b < a + 0.2 for a, b in zip(losses[2:], losses[3:])), losses  # no blow-up
  assert history[-1]["lr_new"] < history[4]["lr_new"]  # cosine decay after warm-up
  assert all(np.isfinite(h["grad_norm"]) for h in history)


def test_sharded_step_equals_single_device_step():
  """8 fake CPU devices, meshes 8x1, 4x2, 2x4 and 4x2 with 2 accumulation steps; then
  the FSDP layout of the trainer's state and gradients."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, os.path.join(HERE, "multidevice_train_check.py")],
                        env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
  result = json.loads(line[len("RESULT "):])
  assert result["devices"] == 8
  for name in ("8x1", "4x2", "2x4", "4x2_accum2"):
    assert result[name]["params"] < 1e-5, (name, result[name])
    assert result[name]["opt_state"] < 1e-5, (name, result[name])
    assert result[name]["loss"] < 1e-5, (name, result[name])
  _assert_fsdp_shards(result["layout"])


def _assert_fsdp_shards(layout):
  """data=2 x fsdp=4: what FSDP splits, and that moments and gradients follow it (equal
  values alone would pass with everything replicated)."""
  specs, shard, full = layout["specs"], layout["shard_shapes"], layout["shapes"]
  assert layout["moments_per_param"] == [2]  # Adam's mu and nu for every parameter
  assert layout["moments_like_param"] and layout["grads_like_param"]
  patch = "['vision_model']['embeddings']['patch_embedding']['kernel']"
  assert specs[patch] == [None, None, None, "fsdp"]
  assert full[patch] == [8, 8, 3, 32] and shard[patch] == [8, 8, 3, 8]  # embed / 4
  q = "['vision_model']['encoder']['layers']['self_attn']['q_proj']['kernel']"
  assert shard[q] == [2, 8, 32]  # scanned layers stay whole, embed split in 4
  # The text tower is 30 wide: 30 % 4 != 0, so its embed dimensions stay whole.
  for name in ("['text_model']['token_embedding']['embedding']",
               "['text_model']['encoder']['layers']['mlp']['fc1']['kernel']"):
    assert "fsdp" not in specs[name] and shard[name] == full[name], name
  sharded = [n for n, s in specs.items() if "fsdp" in s]
  assert len(sharded) == layout["sharded_params"] >= 15
  assert all(n.startswith(("['vision_model']", "['visual_projection']")) for n in sharded)


@pytest.mark.parametrize("overrides,match", [
    ({"data.num_frames": 6}, "data.num_frames=6 must be a positive multiple of "
                             "config.model.num_prompts=4"),
    ({"batch_size": 9, "optim.grad_accum_steps": 2}, "batch_size=9 must be divisible by "
                                                      "config.optim.grad_accum_steps=2"),
    ({"optim.grad_accum_steps": 3}, "grad_accum_steps=3"),
    ({"model.init_from": "/no/such/clip"}, "config.model.init_from='/no/such/clip' does not "
                                           "exist"),
    ({"mesh.data": 2, "mesh.fsdp": 2}, "config.mesh"),
    ({"select_on": "train"}, "config.select_on"),
    ({"model.qk_init_std": -0.1}, "config.model.qk_init_std=-0.1 must be >= 0"),
    ({"model.qk_init_std": 0.1, "model.init_from": "/"}, "config.model.qk_init_std applies "
                                                         "to training from scratch"),
])
def test_inconsistent_configs_fail_before_any_compute(overrides, match, tmp_path):
  """Each entry point of `ps_jax.main` (train, eval, index), called with the bad config:
  the error names the field, and nothing was rendered or written (the workdir and the
  data directory do not even exist)."""
  pattern = match.replace("(", r"\(").replace(")", r"\)")
  with pytest.raises(ValueError, match=pattern):
    experiment.validate_config(tiny_config(**overrides), num_devices=1, num_processes=1)
  entry_points = {
      "train": train.train_and_evaluate, "eval": evaluate.evaluate_only,
      "index": lambda c, w: build.index_from_config(c, w, split=None, out=None)}
  for name, run in entry_points.items():
    workdir = tmp_path / name
    config = tiny_config(**overrides)
    config.data.dir = str(tmp_path / f"{name}_data")
    with pytest.raises(experiment.ConfigError, match=pattern):
      run(config, str(workdir))
    assert not workdir.exists() and not (tmp_path / f"{name}_data").exists(), name


def test_batch_must_divide_over_devices():
  with pytest.raises(ValueError, match="divisible by the 16 devices"):
    experiment.validate_config(tiny_config(), num_devices=16, num_processes=2)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  from ps_jax.data import prepare  # pylint: disable=g-import-not-at-top
  root = str(tmp_path_factory.mktemp("shapes"))
  prepare.prepare("moving_shapes", out_dir=root, shapes_size="tiny", progress=False)
  return root


@pytest.fixture(scope="module")
def full_run(data_root, tmp_path_factory):
  """(workdir, final record) of an uninterrupted 6-step run on one device."""
  workdir = str(tmp_path_factory.mktemp("full") / "run")
  return workdir, train.train_and_evaluate(tiny_config(**{"data.dir": data_root}), workdir)


def _final_params(workdir):
  model, params = ps_jax.load_model(workdir)
  return model, jax.device_get(params)


def test_kill_and_resume_equals_uninterrupted_run(data_root, full_run, tmp_path):
  full, record = full_run
  assert set(record) >= {"step", "num_videos", "num_texts", "t2v", "v2t"}
  assert set(record["t2v"]) == {"R@1", "R@5", "R@10", "R@50", "MdR", "MnR"}
  with open(os.path.join(full, "metrics.json")) as f:
    assert json.load(f) == record
  assert os.path.exists(os.path.join(full, "training_curves.png"))

  part = str(tmp_path / "part")
  assert train.train_and_evaluate(tiny_config(**{"data.dir": data_root,
                                                 "stop_after_steps": 3}), part) == {}
  ckpt = checkpoints.Checkpointer(part, async_save=False)
  assert ckpt.latest_step() == 3
  ckpt.close()
  resumed = train.train_and_evaluate(tiny_config(**{"data.dir": data_root}), part)
  assert resumed["t2v"] == record["t2v"] and resumed["step"] == record["step"]

  a = checkpoints.Checkpointer(full, async_save=False)
  b = checkpoints.Checkpointer(part, async_save=False)
  steps = sorted(set(a.manager.all_steps()) & set(b.manager.all_steps()))
  assert 6 in steps
  shapes = ps_jax.api.param_shapes(_final_params(full)[0])
  for step in steps:  # every state saved by both runs agrees, not only the metrics
    pa, pb = a.restore_params(step, shapes), b.restore_params(step, shapes)
    for x, y in zip(jax.tree_util.tree_leaves(pa), jax.tree_util.tree_leaves(pb)):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
  a.close()
  b.close()


def test_resume_onto_a_different_mesh(data_root, full_run, tmp_path):
  """Stop on 1 device, resume on 8 devices (data=4, fsdp=2): same result as 1 device."""
  full = full_run[0]
  part = str(tmp_path / "part")
  train.train_and_evaluate(tiny_config(**{"data.dir": data_root, "stop_after_steps": 3}),
                           part)
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, os.path.join(HERE, "resume_on_mesh.py"), part,
                         data_root], env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resuming from step 3" in proc.stdout
  model = _final_params(full)[0]
  shapes = ps_jax.api.param_shapes(model)
  a = checkpoints.Checkpointer(full, async_save=False)
  b = checkpoints.Checkpointer(part, async_save=False)
  pa, pb = a.restore_params(6, shapes), b.restore_params(6, shapes)
  a.close()
  b.close()
  for x, y in zip(jax.tree_util.tree_leaves(pa), jax.tree_util.tree_leaves(pb)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)


def test_eval_mode_and_load_model_from_a_workdir(data_root, tmp_path):
  workdir = str(tmp_path / "run")
  cfg = tiny_config(**{"data.dir": data_root, "num_train_steps": 3, "eval_every_steps": 3})
  trained = train.train_and_evaluate(cfg, workdir)
  os.remove(os.path.join(workdir, "metrics.json"))
  again = evaluate.evaluate_only(cfg, workdir)
  assert again["t2v"] == trained["t2v"]
  model, params = ps_jax.load_model(workdir)
  frames = np.zeros((1, 8, 32, 32, 3), np.float32)
  out = model.apply({"params": params}, frames, method="encode_video")
  assert out["video_embedding"].shape == (1, 32)


def test_twin_accuracy():
  ids = ["a00000f", "a00000r", "a00001f", "a00001r"]
  t2v = np.array([0, 1, 2, 3, 3])
  sim = np.array([[.9, .1, 0, 0], [.2, .8, 0, 0], [0, 0, .5, .5], [0, 0, .7, .3],
                  [0, 0, .2, .4]])
  # caption 0 and 1 right, 2 a tie (half), 3 wrong, 4 right -> 3.5 / 5.
  assert evaluate.twin_accuracy(sim, t2v, ids) == pytest.approx(70.0)
  assert evaluate.twin_accuracy(sim, t2v, ["x", "y", "z", "w"]) is None


# Validation t2v R@1 injected per step: the best (40) is reached at step 4 and tied at
# step 6; the last step (8) is worse. Only the validation numbers are scripted: the
# weights, checkpoints and the test evaluation are real.
SCRIPTED_VAL_R1 = {2: 10.0, 4: 40.0, 6: 40.0, 8: 20.0}


def _script_validation(monkeypatch, scripted=None):
  """Replaces the validation t2v R@1 of each step by `scripted[step]`."""
  scripted = SCRIPTED_VAL_R1 if scripted is None else scripted
  real = evaluate.report

  def report(setup, step, split, result, *args, **kwargs):
    if split == setup.config.data.val_split:
      result["metrics"]["t2v"]["R@1"] = scripted[step]
    return real(setup, step, split, result, *args, **kwargs)

  monkeypatch.setattr(evaluate, "report", report)


def _selection_config(data_root, **overrides):
  return tiny_config(**{"data.dir": data_root, "num_train_steps": 8, "eval_every_steps": 2,
                        "checkpoint.every_steps": 1, "checkpoint.keep": 1, **overrides})


def _params_at(workdir, step):
  return jax.device_get(ps_jax.api.load_model_dir(workdir, step=step)[1])


def _assert_trees_equal(a, b):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _assert_selected_step_4(workdir, record, data_root):
  best = checkpoints.select_best(list(SCRIPTED_VAL_R1.items()))
  assert best == (4, 40.0)
  assert record["step"] == 4
  assert record["selection"]["step"] == 4
  assert record["selection"]["score"] == 40.0
  assert (record["selection"]["split"], record["selection"]["window"]) == ("val", 1)
  assert record["test_selected"] is False and record["protocol"] == "validation"
  assert "step 4 (best val t2v R@1 40.0" in record["checkpoint_selected_on"]
  ckpt_dir = os.path.join(workdir, "checkpoints")
  assert sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit()) == [4, 8]
  # The test metrics are those of step 4's weights, which differ from the last step's.
  p4, p8 = _params_at(workdir, 4), _params_at(workdir, 8)
  assert any(not np.array_equal(x, y) for x, y in
             zip(jax.tree_util.tree_leaves(p4), jax.tree_util.tree_leaves(p8)))
  cfg = _selection_config(data_root)
  setup = experiment.build_setup(cfg, workdir)
  for step, params in ((4, p4), (8, p8)):
    result = evaluate.evaluate_split(setup, jax.device_put(params, setup.params_sharding),
                                  cfg.data.test_split)
    if step == 4:
      assert result["metrics"]["t2v"] == record["t2v"]
      assert result["metrics"]["v2t"] == record["v2t"]
  # load_model(workdir), --mode eval and --mode index use the same checkpoint.
  _assert_trees_equal(jax.device_get(ps_jax.load_model(workdir)[1]), p4)
  again = evaluate.evaluate_only(cfg, workdir)
  assert again["step"] == 4 and again["t2v"] == record["t2v"]
  build.index_from_config(cfg, workdir, out=os.path.join(workdir, "index"))
  model = ps_jax.load_model(workdir)[0]
  assert (store.load_index(os.path.join(workdir, "index")).fingerprint
          == model_fingerprint(model, p4))


def test_the_final_test_uses_the_best_validation_step_not_the_last(
    data_root, tmp_path, monkeypatch, capsys):
  _script_validation(monkeypatch)
  workdir = str(tmp_path / "run")
  record = train.train_and_evaluate(_selection_config(data_root), workdir)
  assert "test split, step 4, checkpoint selected on val: step 4" in capsys.readouterr().out
  _assert_selected_step_4(workdir, record, data_root)
  with open(os.path.join(workdir, "metrics.json")) as f:
    assert json.load(f) == record


def test_the_best_step_from_before_a_resume_still_wins(data_root, tmp_path, monkeypatch):
  """Stopped at step 5 (checkpoints 4 = best and 5 = latest), resumed to step 8: the
  restarted run reads the metrics saved with step 4 and neither deletes nor forgets it."""
  _script_validation(monkeypatch)
  workdir = str(tmp_path / "run")
  assert train.train_and_evaluate(_selection_config(data_root, stop_after_steps=5),
                                  workdir) == {}
  record = train.train_and_evaluate(_selection_config(data_root), workdir)
  _assert_selected_step_4(workdir, record, data_root)
  history = reporting.read_history(os.path.join(workdir, "history.jsonl"))
  assert [r["step"] for r in history if r["kind"] == "train"] == list(range(1, 9))
  assert [r["step"] for r in history if r["kind"] == "eval"] == [2, 4, 6, 8]
  assert [r["step"] for r in history if r["kind"] == "test"] == [4]


# Scripted validation t2v R@1 at every step: the raw best is the spike at step 2, the
# best moving average over 3 evaluations is step 7 (and would be step 5 if a resumed
# run forgot the values of the open window).
SCRIPTED_SPIKE_R1 = {1: 0.0, 2: 60.0, 3: 0.0, 4: 0.0, 5: 40.0, 6: 40.0, 7: 40.0, 8: 0.0}


def _official_window_averages(values, window):
  """The official trainer's rule: a deque(maxlen=window) of R@1, averaged after each
  evaluation (fewer values at the start)."""
  recent, out = [], []
  for v in values:
    recent = (recent + [v])[-window:]
    out.append(float(np.mean(recent)))
  return out


@pytest.mark.parametrize("stop_after", [None, 4])
def test_selection_on_a_moving_average_survives_a_resume(data_root, tmp_path, monkeypatch,
                                                          stop_after):
  _script_validation(monkeypatch, SCRIPTED_SPIKE_R1)
  steps = sorted(SCRIPTED_SPIKE_R1)
  averages = _official_window_averages([SCRIPTED_SPIKE_R1[s] for s in steps], 3)
  expected = checkpoints.select_best(list(zip(steps, averages)))
  assert expected[0] == 7 and max(SCRIPTED_SPIKE_R1, key=SCRIPTED_SPIKE_R1.get) == 2
  workdir = str(tmp_path / "run")
  cfg = dict(eval_every_steps=1, select_window=3)
  if stop_after:
    assert train.train_and_evaluate(
        _selection_config(data_root, stop_after_steps=stop_after, **cfg), workdir) == {}
  record = train.train_and_evaluate(_selection_config(data_root, **cfg), workdir)
  assert record["step"] == record["selection"]["step"] == 7
  assert record["selection"]["score"] == pytest.approx(expected[1])
  assert record["selection"]["window"] == 3
  assert "moving average of 3 evaluations of val t2v R@1 40.0" in (
      record["checkpoint_selected_on"])
  history = reporting.read_history(os.path.join(workdir, "history.jsonl"))
  scores = [r["selection_score"] for r in history if r["kind"] == "eval"]
  np.testing.assert_allclose(scores, averages)
  _assert_trees_equal(jax.device_get(ps_jax.load_model(workdir)[1]), _params_at(workdir, 7))


@pytest.mark.parametrize("steps_per_epoch,evals", [(2, 10), (7, 1), (7, 3), (50, 10),
                                                   (91, 10), (3, 2)])
def test_evaluations_run_at_the_official_positions(steps_per_epoch, evals):
  cfg = tiny_config(eval_every_steps=-1, evals_per_epoch=evals)
  epochs, total = 3, 3 * steps_per_epoch
  # The official trainer: per epoch, after batch indices
  # np.linspace(0, num_steps - 1, evals_per_epoch + 1, dtype=int)[1:].
  official = np.linspace(0, steps_per_epoch - 1, evals + 1, dtype=int)[1:]
  expected = sorted({e * steps_per_epoch + int(b) + 1 for e in range(epochs)
                     for b in official})
  got = [s for s in range(1, total + 1)
         if experiment.is_eval_step(cfg, s, steps_per_epoch, total)]
  assert got == expected
  every = tiny_config(eval_every_steps=4)
  assert [s for s in range(1, 11) if experiment.is_eval_step(every, s, 3, 10)] == [4, 8, 10]


def test_the_official_protocol_sets_its_fields_and_only_those():
  cfg = tiny_config()
  assert experiment.apply_protocol(cfg, ("train", "val", "train_full", "test")) is cfg
  cfg.protocol = "official"
  out = experiment.apply_protocol(cfg, ("train", "val", "train_full", "test"))
  assert (out.data.train_split, out.select_on, out.eval_every_steps, out.evals_per_epoch,
          out.select_window) == ("train_full", "test", -1, 10, 5)
  assert experiment.selection_split(out) == out.data.test_split
  assert cfg.data.train_split == "train" and cfg.select_on == "val"  # a copy
  no_holdout = experiment.apply_protocol(cfg, ("train", "val", "test"))
  assert no_holdout.data.train_split == "train"  # already the whole training list
  for key in ("model", "optim", "data", "loss"):
    changed = {k for k in out[key] if out[key][k] != cfg[key][k]}
    assert changed <= {"train_split"}, (key, changed)
  with pytest.raises(ValueError, match="config.protocol must be one of"):
    experiment.validate_config(tiny_config(protocol="paper"), num_devices=1,
                               num_processes=1)


def test_the_official_protocol_selects_on_test_and_says_so(data_root, tmp_path, capsys):
  """4 steps of 2 per epoch with 10 evaluations an epoch: every step is evaluated on
  test; the tested checkpoint is the best 5-evaluation moving average of test R@1."""
  workdir = str(tmp_path / "run")
  record = train.train_and_evaluate(
      _selection_config(data_root, protocol="official", num_train_steps=4,
                        eval_every_steps=3), workdir)
  out = capsys.readouterr().out
  assert "config.protocol='official' sets select_on='test', eval_every_steps=-1" in out
  history = reporting.read_history(os.path.join(workdir, "history.jsonl"))
  evals = [r for r in history if r["kind"] == "eval"]
  assert [(r["step"], r["split"]) for r in evals] == [(s, "test") for s in (1, 2, 3, 4)]
  averages = _official_window_averages([r["t2v"]["R@1"] for r in evals], 5)
  best = checkpoints.select_best([(r["step"], a) for r, a in zip(evals, averages)])
  assert record["selection"]["step"] == record["step"] == best[0]
  assert record["selection"]["score"] == pytest.approx(best[1])
  assert (record["selection"]["split"], record["selection"]["window"]) == ("test", 5)
  assert record["test_selected"] is True and record["protocol"] == "official"
  assert record["checkpoint_selected_on"].startswith(
      "TEST (official protocol, selected on the split it reports: flattering)")
  assert record["t2v"] == next(r for r in evals if r["step"] == best[0])["t2v"]


def test_select_on_test_alone_selects_on_test_and_says_so(data_root, tmp_path, capsys):
  """`--config.select_on=test` without the official protocol: the evaluations run on
  test (at the config's own steps, one evaluation per selection), the best of them is
  reported, labelled as selected on test; the protocol and its other fields stay."""
  workdir = str(tmp_path / "run")
  record = train.train_and_evaluate(
      _selection_config(data_root, select_on="test", num_train_steps=2, eval_every_steps=1),
      workdir)
  out = capsys.readouterr().out
  assert "config.protocol='official' sets" not in out
  ran = checkpoints.read_model_file(workdir)["config"]
  assert (ran["select_on"], ran["protocol"], ran["data"]["train_split"],
          ran["eval_every_steps"], ran["select_window"]) == ("test", "validation", "train", 1, 1)
  history = reporting.read_history(os.path.join(workdir, "history.jsonl"))
  evals = [r for r in history if r["kind"] == "eval"]
  assert [(r["step"], r["split"]) for r in evals] == [(1, "test"), (2, "test")]
  best = checkpoints.select_best([(r["step"], r["t2v"]["R@1"]) for r in evals])
  assert record["step"] == record["selection"]["step"] == best[0]
  assert (record["selection"]["split"], record["selection"]["window"],
          record["selection"]["score"]) == ("test", 1, best[1])
  assert record["test_selected"] is True and record["protocol"] == "validation"
  label = "TEST (selected on the split it reports: flattering): step"
  assert record["checkpoint_selected_on"].startswith(label)
  assert f"test split, step {best[0]}, checkpoint selected on {label}" in out
  assert record["t2v"] == next(r for r in evals if r["step"] == best[0])["t2v"]
  with open(os.path.join(workdir, "metrics.json")) as f:
    assert json.load(f) == record


def _official_dsl_t2v_ranks(sim, text_to_video):
  """The DSL code's text-to-video ranks: sim * softmax(100 sim) over the texts, then
  each caption's 1-based rank of its own video along its row."""
  sim = np.asarray(sim, np.float64)
  prior = np.exp(100 * (sim - sim.max(axis=0)))
  dsl = sim * prior / prior.sum(axis=0)
  own = dsl[np.arange(len(text_to_video)), text_to_video]
  return 1 + (dsl > own[:, None]).sum(axis=1)


def test_dsl_reaches_the_evaluation_output(data_root, full_run, tmp_path, capsys,
                                           monkeypatch):
  """`--config.dsl=True` with `--mode eval` on a trained workdir: the table, metrics.json
  and the record carry the dual-softmax numbers of the evaluated similarities, labelled
  as post-processing, beside the unchanged plain numbers."""
  seen = []
  real = metrics.dsl_retrieval_metrics

  def recorded(sim, text_to_video, *args, **kwargs):
    seen.append((np.asarray(sim), np.asarray(text_to_video)))
    return real(sim, text_to_video, *args, **kwargs)

  monkeypatch.setattr(metrics, "dsl_retrieval_metrics", recorded)
  workdir = str(tmp_path / "run")
  shutil.copytree(full_run[0], workdir)
  record = evaluate.evaluate_only(tiny_config(**{"data.dir": data_root, "dsl": True}), workdir)
  out = capsys.readouterr().out
  (sim, t2v), = seen
  assert (record["step"], record["t2v"], record["v2t"]) == (
      full_run[1]["step"], full_run[1]["t2v"], full_run[1]["v2t"])
  assert (record["num_texts"], record["num_videos"]) == sim.shape == (len(t2v), 8)
  ranks = _official_dsl_t2v_ranks(sim, t2v)
  assert record["dsl"]["t2v"]["R@1"] == pytest.approx(100 * np.mean(ranks == 1))
  assert record["dsl"]["t2v"]["R@5"] == pytest.approx(100 * np.mean(ranks <= 5))
  assert record["dsl"]["t2v"]["MdR"] == pytest.approx(np.median(ranks))
  assert record["dsl"]["t2v"]["MnR"] == pytest.approx(np.mean(ranks))
  assert record["dsl"]["v2t"] == real(sim, t2v)["v2t"]
  with open(os.path.join(workdir, "metrics.json")) as f:
    assert json.load(f)["dsl"] == record["dsl"]
  for d in ("t2v", "v2t"):
    line = f"{d} (DSL post-proc.)" + "".join(f"{record['dsl'][d][k]:>8.1f}"
                                             for k in metrics.METRIC_KEYS)
    assert line in out
