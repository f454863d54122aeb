"""Training and evaluation loops: they only schedule work around the jitted step.

`train_and_evaluate(config, workdir)` builds the mesh, data, model and optimizer from
an ml_collections config, resumes from the workdir's latest checkpoint, trains with
periodic validation, and finally evaluates on the test split the checkpoint selected on
validation (or on test, when `config.select_on == "test"`, labelled as such).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from ps_jax import api, checkpoints, embed, evaluation, losses, optim, sharding
from ps_jax import tokenizer as tokenizer_lib
from ps_jax import train_step as ts
from ps_jax.data import pipeline
from ps_jax.models.clip import ClipConfig, Compute, TextConfig, VisionConfig, logical_axes

# ----------------------------------------------------------------------------- config


def say(message: str) -> None:
  """Progress messages for the user, from process 0 only."""
  if jax.process_index() == 0:
    print(message, flush=True)


class ConfigError(ValueError):
  """An inconsistent experiment config; the message names the field."""


# (field, check, what the field must be): simple range checks, run first.
_FIELD_CHECKS = (
    ("batch_size", lambda v: v >= 1, "a positive number of (video, caption) pairs"),
    ("eval_batch_size", lambda v: v >= 1, "a positive number"),
    ("num_epochs", lambda v: v >= 1, "a positive number of epochs"),
    ("num_train_steps", lambda v: v == -1 or v >= 1, "-1 (use num_epochs) or positive"),
    ("eval_every_steps", lambda v: v == -1 or v >= 1, "-1 (once per epoch) or positive"),
    ("log_every_steps", lambda v: v >= 1, "positive"),
    ("checkpoint.every_steps", lambda v: v >= 1, "positive"),
    ("checkpoint.keep", lambda v: v >= 1, "positive"),
    ("optim.lr_clip", lambda v: v >= 0, ">= 0"),
    ("optim.lr_new", lambda v: v >= 0, ">= 0"),
    ("optim.weight_decay", lambda v: v >= 0, ">= 0"),
    ("optim.b1", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim.b2", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim.eps", lambda v: v > 0, "> 0"),
    ("optim.warmup_fraction", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("optim.grad_clip", lambda v: v >= 0, ">= 0 (0 = no clipping)"),
    ("optim.ema_decay", lambda v: 0 <= v < 1, "in [0, 1) (0 = no EMA)"),
    ("data.image_size", lambda v: v >= 1, "positive"),
    ("data.max_len", lambda v: v >= 2, ">= 2 (start and end tokens)"),
    ("data.worker_count", lambda v: v >= 0, ">= 0 (0 = in the main process)"),
    ("data.flip_prob", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("data.group_size", lambda v: v >= 1, "positive"),
    ("model.prompt_init_scale", lambda v: v > 0, "> 0"),
)


def _field(config, dotted: str):
  value = config
  for key in dotted.split("."):
    value = value[key]
  return value


def validate_config(config, num_devices: Optional[int] = None,
                    num_processes: Optional[int] = None) -> None:
  """Raises ConfigError naming the config field, before anything is computed."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  num_processes = jax.process_count() if num_processes is None else num_processes
  for dotted, ok, expected in _FIELD_CHECKS:
    value = _field(config, dotted)
    if not ok(value):
      raise ConfigError(f"config.{dotted}={value!r} must be {expected}")
  m, d = config.model, config.data
  try:
    Compute(m.dtype, m.remat_policy, m.scan_unroll, m.attention_impl).validate()
  except ValueError as e:
    raise ConfigError(f"config.model: {e}") from None
  p = m.num_prompts
  if p < 0:
    raise ConfigError(f"config.model.num_prompts must be >= 0, got {p}")
  for field in ("num_frames", "eval_num_frames"):
    f = d[field]
    if f < 1 or (p and f % p):
      raise ConfigError(f"config.data.{field}={f} must be a positive multiple of "
                        f"config.model.num_prompts={p} (F = chunks x prompts)")
  mesh_size = [config.mesh.data, config.mesh.fsdp]
  if -1 not in mesh_size and math.prod(mesh_size) != num_devices:
    raise ConfigError(f"config.mesh: data x fsdp = {mesh_size[0]} x {mesh_size[1]} must "
                      f"equal the {num_devices} devices")
  k = config.optim.grad_accum_steps
  if k < 1 or config.batch_size % k:
    raise ConfigError(f"config.batch_size={config.batch_size} must be divisible by "
                      f"config.optim.grad_accum_steps={k}")
  micro = config.batch_size // k
  if micro % num_devices:
    raise ConfigError(f"config.batch_size={config.batch_size} / grad_accum_steps={k} = "
                      f"{micro} must be divisible by the {num_devices} devices of the "
                      "data-parallel mesh")
  for field in ("batch_size", "eval_batch_size"):
    if config[field] % num_devices or config[field] % num_processes:
      raise ConfigError(f"config.{field}={config[field]} must be divisible by the "
                        f"{num_devices} devices and {num_processes} processes")
  if config.batch_size % d.group_size:
    raise ConfigError(f"config.batch_size={config.batch_size} must be divisible by "
                      f"config.data.group_size={d.group_size}")
  init = m.init_from
  if init and not os.path.exists(init):
    raise ConfigError(f"config.model.init_from={init!r} does not exist (a HF CLIP "
                      "directory, an official .pth checkpoint, or '' to train from scratch)")
  if config.optim.aggregation_group not in ("clip", "new"):
    raise ConfigError("config.optim.aggregation_group must be 'clip' or 'new', got "
                      f"{config.optim.aggregation_group!r}")
  if config.select_on not in ("val", "test"):
    raise ConfigError(f"config.select_on must be 'val' or 'test', got {config.select_on!r}")
  if not d.name:
    raise ConfigError("config.data.name is empty")


def data_dir(config, workdir: str) -> str:
  return config.data.dir or os.path.join(workdir, "data")


def ensure_dataset(config, workdir: str) -> str:
  """The prepared dataset's directory; the synthetic benchmark is rendered on first use."""
  from ps_jax.data import builders, prepare  # pylint: disable=g-import-not-at-top

  root = data_dir(config, workdir)
  try:
    builders.dataset_dir(root, config.data.name)
    return root
  except builders.DatasetNotFoundError:
    name = config.data.name
    if not name.startswith("moving_shapes"):
      raise
  size = name.split("/", 1)[1] if "/" in name else "demo"
  if jax.process_index() == 0:
    say(f"rendering the moving_shapes/{size} benchmark into {root}")
    prepare.prepare("moving_shapes", out_dir=root, shapes_size=size, seed=config.data.seed,
                    progress=False)
  multihost_utils.sync_global_devices("dataset prepared")
  return root


def build_tokenizer(config) -> tokenizer_lib.Tokenizer:
  """config.data.tokenizer, else the synthetic vocabulary or the init checkpoint's."""
  if config.data.tokenizer:
    return tokenizer_lib.load_tokenizer(config.data.tokenizer)
  if config.data.name.startswith("moving_shapes"):
    from ps_jax.data import moving_shapes  # pylint: disable=g-import-not-at-top
    return moving_shapes.make_tokenizer()
  if config.model.init_from and os.path.isdir(config.model.init_from):
    return tokenizer_lib.ClipTokenizer(config.model.init_from)
  raise ConfigError("config.data.tokenizer is empty and cannot be inferred: give a directory "
                    "with CLIP tokenizer files (see ps_jax.tokenizer.write_clip_tokenizer_files)")


def clip_config_from(config, tokenizer) -> ClipConfig:
  """The CLIP architecture: from the init checkpoint, else from config.model.clip."""
  init = config.model.init_from
  if init and os.path.isdir(init):
    return ClipConfig.from_hf(init)
  c = config.model.clip
  text = dict(c.text)
  if text.get("vocab_size", -1) in (-1, None):
    text["vocab_size"] = tokenizer.vocab_size
  text.setdefault("max_position_embeddings", config.data.max_len)
  return ClipConfig(text=TextConfig(**text), vision=VisionConfig(**dict(c.vision)),
                    projection_dim=c.projection_dim,
                    logit_scale_init_value=c.logit_scale_init_value)


def model_options(config) -> dict:
  m = config.model
  return dict(num_prompts=m.num_prompts, switch=m.switch, aggregate=m.aggregate,
              num_captioner_layers=m.num_captioner_layers,
              prompt_init_scale=m.prompt_init_scale, dtype=m.dtype,
              remat_policy=m.remat_policy, scan_unroll=m.scan_unroll,
              attention_impl=m.attention_impl)


def initial_params(config, model, rng) -> dict:
  """Host params: HF / official weights (new parts freshly initialised) or scratch."""
  init = config.model.init_from
  if not init:
    return jax.tree_util.tree_map(np.asarray, api.init_model_params(model, rng))
  clip_config = None if os.path.isdir(init) else model.clip.to_hf_dict()
  _, params = api.load_model(init, clip_config=clip_config, rng=rng, **model_options(config))
  return params


# ----------------------------------------------------------------------------- state


@dataclasses.dataclass
class Setup:
  """Everything the loops need, built once from the config."""
  config: Any
  workdir: str
  mesh: Any
  model: Any
  tokenizer: Any
  data_root: str
  state_shardings: Any = None
  params_sharding: Any = None


def build_setup(config, workdir: str) -> Setup:
  validate_config(config)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  say(f"mesh {dict(mesh.shape)} over {mesh.size} devices ({jax.process_count()} processes)")
  root = ensure_dataset(config, workdir)
  tokenizer = build_tokenizer(config)
  clip_config = clip_config_from(config, tokenizer)
  if tokenizer.vocab_size > clip_config.text.vocab_size:
    raise ConfigError(f"tokenizer has {tokenizer.vocab_size} ids but the text model only "
                      f"{clip_config.text.vocab_size} (config.data.tokenizer / model.clip)")
  model = api.build_model(clip_config, **model_options(config))
  params_sharding = model_params_sharding(model, mesh, config.sharding_rules)
  checkpoints.write_model_file(workdir, {
      "clip": clip_config.to_hf_dict(), "options": model_options(config),
      "tokenizer": config.data.tokenizer or config.data.name, "config": config.to_dict()})
  return Setup(config, workdir, mesh, model, tokenizer, root, params_sharding=params_sharding)


def model_params_sharding(model, mesh, rules) -> Any:
  """The model's param tree of NamedShardings: its logical axis names under `rules`
  (logical axis -> mesh axis pairs, config.sharding_rules)."""
  logical = logical_axes(model, *api.dummy_inputs(model))
  return sharding.param_shardings(logical, api.param_shapes(model), mesh, dict(rules))


def state_shardings(mesh, params_sharding, abstract_state) -> dict:
  """Shardings of a train state (`create_state`'s tree, abstract): params and EMA as
  `params_sharding`, optimizer moments like their params, scalars replicated."""
  rep = sharding.replicated(mesh)
  opt = sharding.opt_state_shardings(abstract_state["opt_state"], params_sharding,
                                     abstract_state["params"], mesh)
  out = {"step": rep, "params": params_sharding, "opt_state": opt, "rng": rep}
  if "ema_params" in abstract_state:
    out["ema_params"] = params_sharding
  return out


def create_state(params, tx, rng, ema: bool) -> dict:
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
           "rng": rng}
  if ema:
    state["ema_params"] = params
  return state


# ----------------------------------------------------------------------------- eval


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


def evaluate_split(setup: Setup, params, split: str, encoders=None) -> dict:
  """Embeds every video and caption of `split` once and computes the paper's metrics.

  Returns {"metrics", "dsl" (or None), "num_videos", "num_texts", "twin_acc"}.
  """
  c = setup.config
  data = pipeline.make_eval_data(
      setup.data_root, c.data.name, split, tokenizer=setup.tokenizer,
      global_batch_size=c.eval_batch_size, num_frames=c.data.eval_num_frames,
      num_prompts=c.model.num_prompts or c.data.eval_num_frames, image_size=c.data.image_size,
      max_len=c.data.max_len, worker_count=c.data.worker_count)
  encode_video, encode_text = encoders or embed.make_encoders(setup.model, setup.mesh,
                                                              setup.params_sharding)
  videos = embed.embed_videos(encode_video, params, data.videos, data.num_videos, setup.mesh)
  texts = embed.embed_texts(encode_text, params, data.input_ids, data.attention_mask,
                            c.eval_batch_size, setup.mesh)
  metrics, dsl = evaluation.evaluate(texts, videos, data.text_to_video, dsl=c.dsl)
  sim = evaluation.similarity(texts, videos)
  return {"metrics": metrics, "dsl": dsl, "num_videos": data.num_videos,
          "num_texts": len(texts), "twin_acc": twin_accuracy(sim, data.text_to_video,
                                                             data.video_ids)}


def write_eval(setup: Setup, step: int, split: str, result: dict, writer=None,
               selected_on: Optional[str] = None,
               selection: Optional[checkpoints.Selection] = None) -> dict:
  """Prints the table and logs scalars (process 0); a final result (`selected_on`
  given: the test of the selected checkpoint, or `--mode eval`) also goes to
  `<workdir>/metrics.json`.

  `selection`, when the checkpoint was chosen on validation, is recorded as
  {"step", "val_t2v_R@1", "num_validated"} under "selection"."""
  record = evaluation.metrics_to_json(step, result["num_videos"], result["num_texts"],
                                      result["metrics"], result["dsl"])
  record["split"] = split
  if selected_on:
    record["checkpoint_selected_on"] = selected_on
  if selection is not None and selection.value is not None:
    record["selection"] = {"step": selection.step, checkpoints.BEST_METRIC: selection.value,
                           "num_validated": selection.num_validated}
  if result["twin_acc"] is not None:
    record["twin_acc"] = result["twin_acc"]
  if jax.process_index() != 0:
    return record
  title = f"{split} split, step {step}" + (
      f", checkpoint selected on {selected_on}" if selected_on else "")
  print(f"\n{title}\n" + evaluation.format_table(result["metrics"], result["dsl"]), flush=True)
  if result["twin_acc"] is not None:
    print(f"twin accuracy (own clip above its time-reversed twin): "
          f"{result['twin_acc']:.1f}% (50% = blind to frame order)", flush=True)
  if selected_on:  # a final result (not a periodic validation): <workdir>/metrics.json
    path = os.path.join(setup.workdir, "metrics.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      json.dump(record, f, indent=2)
    os.replace(path + ".tmp", path)
  if writer is not None:
    for direction in ("t2v", "v2t"):
      for key, value in result["metrics"][direction].items():
        writer.add_scalar(f"{split}/{direction}_{key.replace('@', '')}", value, step)
    if result["twin_acc"] is not None:
      writer.add_scalar(f"{split}/twin_acc", result["twin_acc"], step)
    writer.flush()
  return record


# ----------------------------------------------------------------------------- logging


class Logger:
  """Progress bar, TensorBoard scalars and a JSON-lines history (process 0 only)."""

  def __init__(self, workdir: str, total_steps: int, start_step: int, batch_size: int):
    self.active = jax.process_index() == 0
    self.batch_size = batch_size
    self.history_path = os.path.join(workdir, "history.jsonl")
    self.writer = self.bar = None
    self.last_time, self.last_step = time.perf_counter(), start_step
    if self.active:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      import tqdm  # pylint: disable=g-import-not-at-top
      # A resumed run repeats the steps after its checkpoint: drop what a killed run
      # logged for them (TensorBoard's purge_step does the same for the event files).
      truncate_history(self.history_path, start_step)
      self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"),
                                  purge_step=start_step + 1)
      self.bar = tqdm.tqdm(total=total_steps, initial=start_step, desc="train",
                           dynamic_ncols=True, mininterval=1.0)

  def train(self, step: int, metrics: dict) -> None:
    if not self.active:
      return
    now = time.perf_counter()
    rate = (step - self.last_step) * self.batch_size / max(now - self.last_time, 1e-9)
    self.last_time, self.last_step = now, step
    scalars = {k: float(v) for k, v in metrics.items()}
    scalars["videos_per_s"] = rate
    for key, value in scalars.items():
      self.writer.add_scalar(f"train/{key}", value, step)
    self.bar.set_postfix({"loss": f"{scalars['loss']:.3f}",
                          "con": f"{scalars['loss_contrastive']:.3f}",
                          **({"cap": f"{scalars['loss_caption']:.3f}"}
                             if "loss_caption" in scalars else {}),
                          "lr": f"{scalars['lr_new']:.1e}", "vid/s": f"{rate:.1f}"},
                         refresh=False)
    self._append({"step": step, "kind": "train", **scalars})

  def eval(self, step: int, record: dict, kind: str = "eval") -> None:
    """A validation row ("eval") or the final test of the selected checkpoint ("test")."""
    if self.active:
      self._append({"step": step, "kind": kind, **record})

  def advance(self, n: int) -> None:
    if self.active:
      self.bar.update(n)

  def _append(self, row: dict) -> None:
    with open(self.history_path, "a", encoding="utf-8") as f:
      f.write(json.dumps(row) + "\n")

  def close(self) -> None:
    if self.active:
      self.bar.close()
      self.writer.close()


def read_history(path: str) -> list[dict]:
  """The rows of a history.jsonl; a line cut short by a killed process is skipped."""
  rows = []
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      for line in f:
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:
          continue
  return rows


def truncate_history(path: str, step: int) -> None:
  """Keeps the training and validation rows of steps <= `step` (atomically)."""
  if not os.path.exists(path):
    return
  keep = [r for r in read_history(path) if r["step"] <= step and r["kind"] != "test"]
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in keep)
  os.replace(path + ".tmp", path)


def plot_history(workdir: str) -> Optional[str]:
  """Writes `<workdir>/training_curves.png` from history.jsonl (losses, lr, val R@1)."""
  path = os.path.join(workdir, "history.jsonl")
  if jax.process_index() != 0 or not os.path.exists(path):
    return None
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  rows = read_history(path)
  train = {}
  for r in rows:  # a resumed run re-logs some steps: keep the last value per step
    if r["kind"] == "train":
      train[r["step"]] = r
  evals = [r for r in rows if r["kind"] == "eval"]
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  steps = sorted(train)
  for key in ("loss", "loss_contrastive", "loss_caption"):
    if steps and key in train[steps[0]]:
      axes[0].plot(steps, [train[s][key] for s in steps], label=key)
  axes[0].set(title="training loss", xlabel="step")
  axes[0].legend()
  for key in ("lr_clip", "lr_new"):
    if steps:
      axes[1].plot(steps, [train[s][key] for s in steps], label=key)
  axes[1].set(title="learning rate", xlabel="step", yscale="log")
  axes[1].legend()
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
  axes[2].legend()
  fig.tight_layout()
  out = os.path.join(workdir, "training_curves.png")
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out


# ----------------------------------------------------------------------------- loops


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (resuming from `workdir` if it holds checkpoints) and evaluates on test.

  Returns the final test record (the content of `<workdir>/metrics.json`).
  """
  validate_config(config)
  os.makedirs(workdir, exist_ok=True)
  setup = build_setup(config, workdir)
  c, mesh = config, setup.mesh
  loader = pipeline.make_train_loader(
      setup.data_root, c.data.name, c.data.train_split, tokenizer=setup.tokenizer,
      global_batch_size=c.batch_size, num_frames=c.data.num_frames,
      num_prompts=c.model.num_prompts or c.data.num_frames, image_size=c.data.image_size,
      max_len=c.data.max_len, seed=c.seed, worker_count=c.data.worker_count,
      flip_prob=c.data.flip_prob, group_size=c.data.group_size)
  total_steps = c.num_train_steps if c.num_train_steps > 0 else (
      c.num_epochs * loader.steps_per_epoch)
  eval_every = c.eval_every_steps if c.eval_every_steps > 0 else loader.steps_per_epoch
  tx, schedules = optim.make_optimizer(c.optim, total_steps)
  weights = losses.caption_class_weights(setup.tokenizer, setup.model.clip.text.vocab_size)
  lc = ts.LossConfig(jnp.asarray(weights), setup.tokenizer.eos_id,
                     losses.CAPTION_LOSS_MULTIPLIER)
  ema = c.optim.ema_decay > 0

  rng = jax.random.PRNGKey(c.seed)
  abstract = jax.eval_shape(lambda: create_state(api.param_shapes(setup.model), tx, rng, ema))
  shardings = state_shardings(setup.mesh, setup.params_sharding, abstract)
  setup.state_shardings = shardings
  ckpt = checkpoints.Checkpointer(workdir, keep=c.checkpoint.keep,
                                  async_save=c.checkpoint.async_save)
  iterator = iter(loader)
  start = ckpt.latest_step()
  if start is not None:
    say(f"resuming from step {start} ({ckpt.directory})")
    target = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    state = ckpt.restore(start, target, iterator)
  else:
    start = 0
    params = jax.device_put(initial_params(c, setup.model, jax.random.fold_in(rng, 1)),
                            setup.params_sharding)
    state = jax.jit(functools.partial(create_state, tx=tx, ema=ema),
                    out_shardings=shardings)(params, rng=jax.random.fold_in(rng, 2))
  step_fn = jax.jit(
      functools.partial(ts.train_step, model=setup.model, tx=tx, lc=lc, schedules=schedules,
                        grad_accum_steps=c.optim.grad_accum_steps, ema_decay=c.optim.ema_decay),
      in_shardings=(shardings, {k: sharding.batch_sharding(mesh, n) for k, n in
                                (("frames", 5), ("input_ids", 2), ("attention_mask", 2))}),
      out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
  encoders = embed.make_encoders(setup.model, mesh, setup.params_sharding)
  log = Logger(workdir, total_steps, start, c.batch_size)
  stop_at = total_steps if c.stop_after_steps <= 0 else min(total_steps, c.stop_after_steps)
  eval_params = "ema_params" if ema else "params"
  try:
    for step in range(start + 1, stop_at + 1):
      batch = sharding.global_batch(next(iterator), mesh)
      state, metrics = step_fn(state, batch)
      log.advance(1)
      if step % c.log_every_steps == 0 or step == stop_at:
        log.train(step, jax.device_get(metrics))
      record = None
      if step % eval_every == 0 or step == total_steps:
        result = evaluate_split(setup, state[eval_params], c.data.val_split, encoders)
        record = write_eval(setup, step, c.data.val_split, result, log.writer)
        log.eval(step, record)
      if record is not None or step % c.checkpoint.every_steps == 0 or step == stop_at:
        metrics_for_ckpt = ({checkpoints.BEST_METRIC: record["t2v"]["R@1"]}
                            if record is not None else None)
        ckpt.save(step, state, iterator, metrics=metrics_for_ckpt, force=True)
    ckpt.wait()
    if stop_at < total_steps:
      say(f"stopped after step {stop_at} of {total_steps} (config.stop_after_steps)")
      return {}
    return final_test(setup, ckpt, state[eval_params], total_steps, log, eval_params)
  finally:
    log.close()
    ckpt.close()
    plot_history(workdir)


def final_test(setup: Setup, ckpt, params, step: int, log=None, key="params") -> dict:
  """Test metrics of the checkpoint selected on validation (`Checkpointer.selected`), or
  of the last step when config.select_on == "test" (labelled as such)."""
  c = setup.config
  selection = ckpt.selected() if c.select_on == "val" and c.data.val_split else None
  if selection is not None and selection.value is not None:
    step = selection.step
    params = ckpt.restore_params(step, abstract_params(setup), key)
    selected = f"{c.data.val_split}: {selection.describe()}"
  else:
    selection = None
    selected = "test (the last step; selecting on test flatters the numbers)"
  result = evaluate_split(setup, params, c.data.test_split)
  record = write_eval(setup, step, c.data.test_split, result,
                      log.writer if log else None, selected_on=selected,
                      selection=selection)
  if log is not None:
    log.eval(step, record, kind="test")
  return record


def abstract_params(setup: Setup) -> Any:
  """The model's params as ShapeDtypeStructs placed like `setup.params_sharding`."""
  return jax.tree_util.tree_map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
      api.param_shapes(setup.model), setup.params_sharding)


def evaluate_only(config, workdir: str) -> dict:
  """`--mode eval`: the workdir's selected checkpoint (`Checkpointer.selected`), else
  config.model.init_from (zero-shot)."""
  validate_config(config)
  os.makedirs(workdir, exist_ok=True)
  setup = build_setup(config, workdir)
  ckpt = checkpoints.Checkpointer(workdir, async_save=False, read_only=True)
  try:
    selection = ckpt.selected()
    if selection is not None:
      step = selection.step
      key = "ema_params" if config.optim.ema_decay > 0 else "params"
      params = ckpt.restore_params(step, abstract_params(setup), key)
      source = f"{config.data.val_split}: {selection.describe()}"
    else:
      if not config.model.init_from:
        raise ConfigError(f"--mode eval needs a checkpoint in {workdir!r} or "
                          "config.model.init_from (HF CLIP weights or a .pth)")
      step = 0
      params = jax.device_put(initial_params(config, setup.model, jax.random.PRNGKey(0)),
                              setup.params_sharding)
      source = f"{config.model.init_from} (zero-shot)"
    result = evaluate_split(setup, params, config.data.test_split)
    return write_eval(setup, step, config.data.test_split, result, selected_on=source,
                      selection=selection)
  finally:
    ckpt.close()
