"""Evaluation jobs: a split's retrieval metrics, the test of the selected checkpoint, and
`--mode eval`.

Layer: jobs (imports experiment assembly, embed, checkpoints, metrics, reporting and the
data pipeline). Metrics are the paper's (`ps_jax.metrics`): R@1/5/10/50, MdR, MnR in
both directions, DSL only when asked for and labelled; moving_shapes adds the twin
accuracy.
"""

from __future__ import annotations

from typing import Optional

import jax
import numpy as np

from ps_jax import checkpoints, embed, experiment, fileio, metrics, reporting
from ps_jax.data import pipeline
from ps_jax.experiment import ConfigError, Setup

METRICS_FILE = "metrics.json"


def twin_accuracy(sim: np.ndarray, text_to_video: np.ndarray, video_ids) -> Optional[float]:
  """moving_shapes: % of captions scoring their own clip above its time-reversed twin.

  Twins ("...f" / "...r") hold the same frames in opposite order, so 50% is what any
  model blind to frame order gets. None when the ids have no twins.
  """
  where = {v: i for i, v in enumerate(video_ids)}
  twin = np.array([where.get(v[:-1] + {"f": "r", "r": "f"}.get(v[-1:], "?"), -1)
                   for v in video_ids])
  if (twin < 0).any():
    return None
  rows = np.arange(len(text_to_video))
  diff = sim[rows, text_to_video] - sim[rows, twin[text_to_video]]
  ties = np.abs(diff) <= 1e-6  # an order-blind model scores twins equally: half credit
  return float(100.0 * np.mean(np.where(ties, 0.5, diff > 0)))


def eval_workers(config) -> int:
  """Worker processes of the evaluation pipeline (config.data.eval_worker_count, -1:
  the training pipeline's config.data.worker_count)."""
  n = config.data.eval_worker_count
  return config.data.worker_count if n < 0 else n


def evaluate_split(setup: Setup, params, split: str, encoders=None) -> dict:
  """Embeds every video and caption of `split` once and computes the paper's metrics.

  Args:
    setup: `experiment.build_setup`'s result; params: placed like setup.params_sharding.
    encoders: `embed.make_encoders(...)` to reuse (compiled once for a whole run).

  Returns:
    {"metrics", "dsl" (or None), "num_videos", "num_texts", "twin_acc" (or None),
     "counts" (the split against its dataset's named protocol, `protocols.CountCheck`)}.
  """
  c = setup.config
  data = pipeline.make_eval_data(
      setup.data_root, c.data.name, split, tokenizer=setup.tokenizer,
      global_batch_size=c.eval_batch_size, num_frames=c.data.eval_num_frames,
      num_prompts=c.model.num_prompts or c.data.eval_num_frames, image_size=c.data.image_size,
      max_len=c.data.max_len, worker_count=eval_workers(c))
  encode_video, encode_text = encoders or embed.make_encoders(setup.model, setup.mesh,
                                                              setup.params_sharding)
  videos = embed.embed_videos(encode_video, params, data.videos, data.num_videos, setup.mesh)
  texts = embed.embed_texts(encode_text, params, data.input_ids, data.attention_mask,
                            c.eval_batch_size, setup.mesh)
  sim = metrics.similarity(texts, videos)  # once: the metrics, DSL and twins share it
  result = metrics.retrieval_metrics(sim, data.text_to_video)
  dsl = metrics.dsl_retrieval_metrics(sim, data.text_to_video) if c.dsl else None
  return {"metrics": result, "dsl": dsl, "num_videos": data.num_videos,
          "num_texts": len(texts), "twin_acc": twin_accuracy(sim, data.text_to_video,
                                                             data.video_ids),
          "counts": data.counts}


def report(setup: Setup, step: int, split: str, result: dict, writer=None,
           selected_on: Optional[str] = None,
           selection: Optional[checkpoints.Selection] = None) -> dict:
  """Prints the table and logs scalars (process 0); a final result (`selected_on`
  given: the test of the selected checkpoint, or `--mode eval`) also goes to
  `<workdir>/metrics.json`.

  `selection`, when the checkpoint was chosen by its evaluations, is recorded as
  {"step", "split", "window", "score", "num_validated"} under "selection", and a final
  result records the protocol and `"test_selected": true` when that split is the test
  split itself. Returns the record."""
  record = metrics.metrics_to_json(step, result["num_videos"], result["num_texts"],
                                   result["metrics"], result["dsl"])
  record["split"] = split
  if selected_on:
    record["checkpoint_selected_on"] = selected_on
    record["protocol"] = setup.config.protocol
  if selection is not None and selection.value is not None:
    record["selection"] = {"step": selection.step, "split": selection.split,
                           "window": selection.window, "score": selection.value,
                           "num_validated": selection.num_validated}
    if selected_on:
      record["test_selected"] = selection.split == setup.config.data.test_split
  if result["twin_acc"] is not None:
    record["twin_acc"] = result["twin_acc"]
  counts = result.get("counts")
  if counts is not None:
    record["dataset_protocol"] = counts.to_json()
  reference = setup.config.reference.to_dict()
  if jax.process_index() != 0:
    return record
  title = f"{split} split, step {step}" + (
      f", checkpoint selected on {selected_on}" if selected_on else "")
  if counts is not None:
    title += f"\n{counts.label}"
  print(f"\n{title}\n" + metrics.format_table(result["metrics"], result["dsl"]), flush=True)
  if selected_on and (reference.get("t2v") or reference.get("v2t")):
    print("beside the published numbers:\n"
          + metrics.format_reference(result["metrics"], reference), flush=True)
  if result["twin_acc"] is not None:
    print(f"twin accuracy (own clip above its time-reversed twin): "
          f"{result['twin_acc']:.1f}% (50% = blind to frame order)", flush=True)
  if selected_on:  # a final result (not a periodic validation): <workdir>/metrics.json
    fileio.write_json(fileio.join(setup.workdir, METRICS_FILE), record)
  if writer is not None:
    scalars = {f"{d}_{k.replace('@', '')}": v for d in ("t2v", "v2t")
               for k, v in result["metrics"][d].items()}
    if result["twin_acc"] is not None:
      scalars["twin_acc"] = result["twin_acc"]
    writer.write_scalars(step, scalars, prefix=split, kind=None)
  return record


def describe_selection(config, selection: checkpoints.Selection) -> str:
  """How the tested checkpoint was chosen, for the table's title and metrics.json."""
  if selection.value is None:
    return selection.describe()
  if selection.split == config.data.test_split:
    protocol = "official protocol, " if config.protocol == "official" else ""
    return (f"TEST ({protocol}selected on the split it reports: flattering): "
            f"{selection.describe()}")
  return f"{selection.split}: {selection.describe()}"


def final_test(setup: Setup, ckpt: checkpoints.Checkpointer, params, step: int,
               writer: Optional[reporting.MetricWriter] = None, key: str = "params") -> dict:
  """Test metrics of the checkpoint selected by its evaluations (`Checkpointer.selected`:
  on validation, or on test when config.select_on == "test", labelled so), else of the
  last step (`params`, `step`)."""
  c = setup.config
  selection = ckpt.selected() if experiment.selection_split(c) else None
  if selection is not None and selection.value is not None:
    step = selection.step
    params = ckpt.restore_params(step, experiment.abstract_params(setup), key)
    selected = describe_selection(c, selection)
  else:
    selection = None
    selected = "none (the last step: no evaluation during training)"
  result = evaluate_split(setup, params, c.data.test_split)
  record = report(setup, step, c.data.test_split, result, writer, selected_on=selected,
                  selection=selection)
  if writer is not None:
    writer.write_record(step, record, kind="test")
  return record


def evaluate_only(config, workdir: str) -> dict:
  """`--mode eval`: the workdir's selected checkpoint (`Checkpointer.selected`), else
  config.model.init_from (zero-shot). Returns the record written to metrics.json."""
  experiment.validate_config(config)
  fileio.makedirs(workdir)
  setup = experiment.build_setup(config, workdir)
  ckpt = checkpoints.Checkpointer(workdir, async_save=False, read_only=True)
  try:
    selection = ckpt.selected()
    if selection is not None:
      step = selection.step
      key = "ema_params" if config.optim.ema_decay > 0 else "params"
      params = ckpt.restore_params(step, experiment.abstract_params(setup), key)
      source = describe_selection(setup.config, selection)
    else:
      if not config.model.init_from:
        raise ConfigError(f"--mode eval needs a checkpoint in {workdir!r} or "
                          "config.model.init_from (HF CLIP weights or a .pth)")
      step = 0
      params = jax.device_put(
          experiment.initial_params(config, setup.model, jax.random.PRNGKey(0)),
          setup.params_sharding)
      source = f"{config.model.init_from} (zero-shot)"
    result = evaluate_split(setup, params, config.data.test_split)
    return report(setup, step, config.data.test_split, result, selected_on=source,
                  selection=selection)
  finally:
    ckpt.close()
