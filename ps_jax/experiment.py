"""Experiment assembly: an ml_collections config -> mesh, dataset, tokenizer, model and
shardings, checked before anything is computed.

Layer: assembly (imports model loading, the formats, data and the foundation). Training,
evaluation and indexing build what they need from a config through this module:

  validate_config(config)                 # ConfigError naming the field
  setup = build_setup(config, workdir)    # mesh, model, tokenizer, data root, shardings
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from ps_jax import api, checkpoints, convert, fileio, metrics, reporting, sharding
from ps_jax import tokenizer as tokenizer_lib
from ps_jax.data import builders, preparation, tokenizers
from ps_jax.models.clip import ClipConfig, Compute, TextConfig, VisionConfig, logical_axes

# ----------------------------------------------------------------------------- config


class ConfigError(ValueError):
  """An inconsistent experiment config; the message names the field."""


# (field, check, what the field must be): simple range checks, run first.
_FIELD_CHECKS = (
    ("batch_size", lambda v: v >= 1, "a positive number of (video, caption) pairs"),
    ("eval_batch_size", lambda v: v >= 1, "a positive number"),
    ("num_epochs", lambda v: v >= 1, "a positive number of epochs"),
    ("num_train_steps", lambda v: v == -1 or v >= 1, "-1 (use num_epochs) or positive"),
    ("eval_every_steps", lambda v: v == -1 or v >= 1,
     "-1 (config.evals_per_epoch times an epoch) or positive"),
    ("evals_per_epoch", lambda v: v >= 1, "positive"),
    ("select_window", lambda v: v >= 1, "positive (1 = no moving average)"),
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
    ("data.eval_worker_count", lambda v: v >= -1, ">= -1 (-1 = data.worker_count)"),
    ("data.flip_prob", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("data.crop_scale", lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 1,
     "(low, high) with 0 < low <= high <= 1"),
    ("data.crop_ratio", lambda v: len(v) == 2 and 0 < v[0] <= v[1],
     "(low, high) with 0 < low <= high"),
    ("data.group_size", lambda v: v >= 1, "positive"),
    ("model.prompt_init_scale", lambda v: v > 0, "> 0"),
    ("model.qk_init_std", lambda v: v >= 0, ">= 0"),
    ("loss.caption_weight", lambda v: v >= 0, ">= 0"),
)


def get_field(config, dotted: str):
  """config's value at a dotted path ("model.scan_unroll")."""
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
    value = get_field(config, dotted)
    if not ok(value):
      raise ConfigError(f"config.{dotted}={value!r} must be {expected}")
  m, d = config.model, config.data
  try:
    Compute(m.dtype, m.remat_policy, m.scan_unroll, m.attention_impl,
            m.get("patch_embed", "conv")).validate()
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
  if p and m.aggregate and d.eval_num_frames % d.num_frames:
    raise ConfigError(f"config.data.eval_num_frames={d.eval_num_frames} must be a multiple "
                      f"of config.data.num_frames={d.num_frames}: the aggregation attends "
                      "over groups of the training clip length, as in the official model")
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
  if init and m.get("qk_init_std", 0.0):
    raise ConfigError("config.model.qk_init_std applies to training from scratch; with "
                      "config.model.init_from the query/key kernels are loaded: set it to 0")
  if config.optim.aggregation_group not in ("clip", "new"):
    raise ConfigError("config.optim.aggregation_group must be 'clip' or 'new', got "
                      f"{config.optim.aggregation_group!r}")
  if config.select_on not in ("val", "test"):
    raise ConfigError(f"config.select_on must be 'val' or 'test', got {config.select_on!r}")
  if config.protocol not in PROTOCOLS:
    raise ConfigError(f"config.protocol must be one of {PROTOCOLS}, got {config.protocol!r}")
  if config.optim.adamw not in ("official", "optax"):
    raise ConfigError("config.optim.adamw must be 'official' or 'optax', got "
                      f"{config.optim.adamw!r}")
  if d.crop_interpolation not in ("bilinear", "bicubic"):
    raise ConfigError("config.data.crop_interpolation must be 'bilinear' or 'bicubic', got "
                      f"{d.crop_interpolation!r}")
  if not d.name:
    raise ConfigError("config.data.name is empty")
  for direction in metrics.DIRECTIONS:
    for key, value in config.reference.get(direction, {}).items():
      if key not in metrics.METRIC_KEYS or not isinstance(value, (int, float)):
        raise ConfigError(f"config.reference.{direction}.{key}={value!r}: keys must be "
                          f"among {metrics.METRIC_KEYS}, values numbers")


# ----------------------------------------------------------------------------- protocol

PROTOCOLS = ("validation", "official")
# What config.protocol = "official" sets: the official code trains on the whole training
# list, evaluates on test 10 times an epoch and keeps the checkpoint with the best
# moving average (5 evaluations) of test t2v R@1.
OFFICIAL_PROTOCOL = (("data.train_split", "train_full"), ("select_on", "test"),
                     ("eval_every_steps", -1), ("evals_per_epoch", 10),
                     ("select_window", 5))


def apply_protocol(config, splits=()):
  """The config with config.protocol's fields set (a copy; unchanged for "validation").

  Args:
    config: the experiment config.
    splits: split names of the prepared dataset; "train_full" is used only where it
      exists (datasets with a validation hold-out; otherwise "train" is the full list).
  """
  if config.protocol != "official":
    return config
  config = config.copy_and_resolve_references()
  changed = []
  for dotted, value in OFFICIAL_PROTOCOL:
    if dotted == "data.train_split" and value not in splits:
      continue
    *parents, key = dotted.split(".")
    node = get_field(config, ".".join(parents)) if parents else config
    if node[key] != value:
      changed.append(f"{dotted}={value!r}")
      node[key] = value
  if changed:
    reporting.say("config.protocol='official' sets " + ", ".join(changed))
  return config


def selection_split(config) -> str:
  """The split the periodic evaluations run on and the checkpoint is selected on."""
  return config.data.test_split if config.select_on == "test" else config.data.val_split


def is_eval_step(config, step: int, steps_per_epoch: int, total_steps: int) -> bool:
  """Whether the periodic evaluation runs after training step `step` (1-based).

  Every config.eval_every_steps steps when > 0; else config.evals_per_epoch times an
  epoch at the official positions: batch indices floor(linspace(0, S - 1, k + 1))[1:]
  of each epoch of S steps (k = 1: the epoch's last step). Always after the last step.
  """
  if step == total_steps:
    return True
  if config.eval_every_steps > 0:
    return step % config.eval_every_steps == 0
  positions = np.linspace(0, steps_per_epoch - 1, config.evals_per_epoch + 1).astype(int)
  return (step - 1) % steps_per_epoch in set(positions[1:].tolist())


def data_dir(config, workdir: str) -> str:
  return config.data.dir or fileio.join(workdir, "data")


def ensure_dataset(config, workdir: str) -> str:
  """The prepared dataset's directory; the synthetic benchmark is rendered on first use."""
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
    reporting.say(f"rendering the moving_shapes/{size} benchmark into {root}")
    preparation.prepare("moving_shapes", out_dir=root, shapes_size=size,
                        seed=config.data.seed, progress=False)
  multihost_utils.sync_global_devices("dataset prepared")
  return root


def build_tokenizer(config) -> tokenizer_lib.Tokenizer:
  """The experiment's tokenizer (`ps_jax.data.tokenizers.spec_from_config`'s rule)."""
  spec = tokenizers.spec_from_config(config)
  if spec is None:
    init = config.model.init_from
    source = (f"config.model.init_from={init!r} is not a directory that holds one (an "
              "official .pth carries no tokenizer)") if init else "config.model.init_from is empty"
    raise ConfigError(f"config.data.tokenizer is empty and {source}: pass "
                      "--config.data.tokenizer=DIR, DIR a directory with CLIP tokenizer "
                      "files (vocab.json, merges.txt: any HF CLIP directory, or "
                      "ps_jax.tokenizer.write_clip_tokenizer_files)")
  try:
    return tokenizers.load(spec)
  except (OSError, ValueError) as e:
    raise ConfigError(f"config.data.tokenizer: {e}") from e


def clip_config_from(config, tokenizer=None, *, vocab_size: Optional[int] = None) -> ClipConfig:
  """The CLIP architecture: from the init checkpoint, else from config.model.clip, whose
  vocab_size -1 means the tokenizer's (or `vocab_size`, without a tokenizer)."""
  init = config.model.init_from
  if init and os.path.isdir(init):
    return ClipConfig.from_hf(init)
  c = config.model.clip
  text = dict(c.text)
  if text.get("vocab_size", -1) in (-1, None):
    text["vocab_size"] = tokenizer.vocab_size if tokenizer is not None else vocab_size
  text.setdefault("max_position_embeddings", config.data.max_len)
  return ClipConfig(text=TextConfig(**text), vision=VisionConfig(**dict(c.vision)),
                    projection_dim=c.projection_dim,
                    logit_scale_init_value=c.logit_scale_init_value)


def model_options(config) -> dict:
  m = config.model
  # The official model aggregates over groups of the TRAINING clip length, also at test.
  return dict(num_prompts=m.num_prompts, switch=m.switch, aggregate=m.aggregate,
              aggregation_frames=config.data.num_frames if m.num_prompts else 0,
              num_captioner_layers=m.num_captioner_layers,
              prompt_init_scale=m.prompt_init_scale, dtype=m.dtype,
              remat_policy=m.remat_policy, scan_unroll=m.scan_unroll,
              attention_impl=m.attention_impl, patch_embed=m.get("patch_embed", "conv"))


def initial_params(config, model, rng) -> dict:
  """Host params: HF / official weights (new parts freshly initialised) or scratch."""
  init = config.model.init_from
  if not init:
    params = api.init_model_params(model, rng, config.model.get("qk_init_std", 0.0))
    return jax.tree_util.tree_map(np.asarray, params)
  clip_config = None if os.path.isdir(init) else model.clip.to_hf_dict()
  try:
    _, params = api.load_model(init, clip_config=clip_config, rng=rng, **model_options(config))
  except convert.CheckpointReadError as e:
    raise ConfigError(f"config.model.init_from: {e}") from e
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
  params_sharding: Any


def build_setup(config, workdir: str) -> Setup:
  """Checks the config, then builds the mesh, renders / finds the dataset, the tokenizer
  and the model, and records the model description in the workdir."""
  validate_config(config)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  reporting.say(f"mesh {dict(mesh.shape)} over {mesh.size} devices "
                f"({jax.process_count()} processes)")
  root = ensure_dataset(config, workdir)
  if config.protocol != "validation":
    index = builders.read_index(builders.dataset_dir(root, config.data.name))
    config = apply_protocol(config, tuple(index["splits"]))
  tokenizer = build_tokenizer(config)
  clip_config = clip_config_from(config, tokenizer)
  if tokenizer.vocab_size > clip_config.text.vocab_size:
    raise ConfigError(f"tokenizer has {tokenizer.vocab_size} ids but the text model only "
                      f"{clip_config.text.vocab_size} (config.data.tokenizer / model.clip)")
  try:
    model = api.build_model(clip_config, **model_options(config))
  except ValueError as e:
    raise ConfigError(f"config.model: {e}") from e
  params_sharding = model_params_sharding(model, mesh, config.sharding_rules)
  checkpoints.write_model_file(workdir, {
      "clip": clip_config.to_hf_dict(), "options": model_options(config),
      "tokenizer": tokenizers.spec_from_config(config), "config": config.to_dict()})
  return Setup(config, workdir, mesh, model, tokenizer, root, params_sharding)


def model_params_sharding(model, mesh, rules) -> Any:
  """The model's param tree of NamedShardings: its logical axis names under `rules`
  (logical axis -> mesh axis pairs, config.sharding_rules)."""
  logical = logical_axes(model, *api.dummy_inputs(model))
  return sharding.param_shardings(logical, api.param_shapes(model), mesh, dict(rules))


def abstract_params(setup: Setup) -> Any:
  """The model's params as ShapeDtypeStructs placed like `setup.params_sharding`."""
  return jax.tree_util.tree_map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
      api.param_shapes(setup.model), setup.params_sharding)
