"""The training loop: it only schedules work around the jitted step.

Layer: jobs (imports experiment assembly, the step, checkpoints, evaluation and
reporting). `train_and_evaluate(config, workdir)` builds everything from an
ml_collections config (`ps_jax.experiment`), resumes from the workdir's latest complete
checkpoint, trains with periodic evaluations on the selection split (each evaluated
step is checkpointed with its selection score: t2v R@1, optionally a moving average),
and finally tests the selected checkpoint (selected on validation; on test when
`config.select_on == "test"` or `config.protocol == "official"`, labelled as such).
Killed at any moment and run again, it ends exactly like an uninterrupted run.
"""

from __future__ import annotations

import jax
import numpy as np

from ps_jax import api, checkpoints, embed, evaluate, experiment, fileio, optim, reporting
from ps_jax import sharding
from ps_jax import train_step as ts
from ps_jax.data import pipeline


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (resuming from `workdir` if it holds checkpoints) and evaluates on test.

  Returns the final test record (the content of `<workdir>/metrics.json`), or {} when
  `config.stop_after_steps` stopped the run early.
  """
  experiment.validate_config(config)
  fileio.makedirs(workdir)
  setup = experiment.build_setup(config, workdir)
  c, mesh = setup.config, setup.mesh  # config.protocol applied
  loader = pipeline.make_train_loader(
      setup.data_root, c.data.name, c.data.train_split, tokenizer=setup.tokenizer,
      global_batch_size=c.batch_size, num_frames=c.data.num_frames,
      num_prompts=c.model.num_prompts or c.data.num_frames, image_size=c.data.image_size,
      max_len=c.data.max_len, seed=c.seed, worker_count=c.data.worker_count,
      flip_prob=c.data.flip_prob, crop_scale=tuple(c.data.crop_scale),
      crop_ratio=tuple(c.data.crop_ratio), crop_interpolation=c.data.crop_interpolation,
      group_size=c.data.group_size)
  total_steps = c.num_train_steps if c.num_train_steps > 0 else (
      c.num_epochs * loader.steps_per_epoch)
  select_split = experiment.selection_split(c)
  tx, schedules = optim.make_optimizer(c.optim, total_steps)
  lc = ts.make_loss_config(setup.tokenizer, setup.model.clip.text.vocab_size,
                           c.loss.caption_weight)
  ema = c.optim.ema_decay > 0

  rng = jax.random.PRNGKey(c.seed)
  abstract = jax.eval_shape(lambda: ts.create_state(api.param_shapes(setup.model), tx, rng,
                                                    ema))
  shardings = ts.state_shardings(mesh, setup.params_sharding, abstract)
  ckpt = checkpoints.Checkpointer(workdir, keep=c.checkpoint.keep,
                                  async_save=c.checkpoint.async_save)
  iterator = iter(loader)
  start = ckpt.latest_step()
  recent = []  # raw t2v R@1 of the evaluations in the open moving-average window
  if start is not None:
    reporting.say(f"resuming from step {start} ({ckpt.directory})")
    recent = ckpt.recent_values(start)
    target = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    state = ckpt.restore(start, target, iterator)
  else:
    start = 0
    params = jax.device_put(
        experiment.initial_params(c, setup.model, jax.random.fold_in(rng, 1)),
        setup.params_sharding)
    state = jax.jit(lambda p: ts.create_state(p, tx, jax.random.fold_in(rng, 2), ema),
                    out_shardings=shardings)(params)
  step_fn = ts.jit_train_step(setup.model, tx, lc, schedules, shardings, mesh,
                              grad_accum_steps=c.optim.grad_accum_steps,
                              ema_decay=c.optim.ema_decay)
  encoders = embed.make_encoders(setup.model, mesh, setup.params_sharding)
  writer = reporting.MetricWriter(workdir, start)
  progress = reporting.TrainProgress(total_steps, start, c.batch_size)
  stop_at = total_steps if c.stop_after_steps <= 0 else min(total_steps, c.stop_after_steps)
  eval_params = "ema_params" if ema else "params"
  try:
    for step in range(start + 1, stop_at + 1):
      state, metrics = step_fn(state, sharding.global_batch(next(iterator), mesh))
      progress.advance()
      if step % c.log_every_steps == 0 or step == stop_at:
        scalars = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
        scalars["videos_per_s"] = progress.rate(step)
        writer.write_scalars(step, scalars)
        progress.show(scalars)
      value = {checkpoints.RECENT: recent}
      if select_split and experiment.is_eval_step(c, step, loader.steps_per_epoch,
                                                  total_steps):
        result = evaluate.evaluate_split(setup, state[eval_params], select_split, encoders)
        record = evaluate.report(setup, step, select_split, result, writer)
        value = checkpoints.evaluated_metrics(recent, record["t2v"]["R@1"],
                                              c.select_window, select_split)
        recent = value[checkpoints.RECENT]
        record["selection_score"] = value[checkpoints.SCORE]
        writer.write_record(step, record, kind="eval")
      if checkpoints.SCORE in value or step % c.checkpoint.every_steps == 0 or (
          step == stop_at):
        writer.flush()  # everything logged up to this step is on disk with its checkpoint
        ckpt.save(step, state, iterator, metrics=value, force=True)
    ckpt.wait()
    if stop_at < total_steps:
      reporting.say(f"stopped after step {stop_at} of {total_steps} "
                    "(config.stop_after_steps)")
      return {}
    return evaluate.final_test(setup, ckpt, state[eval_params], total_steps, writer,
                               eval_params)
  finally:
    progress.close()
    writer.close()
    ckpt.close()
    reporting.plot_history(workdir)
