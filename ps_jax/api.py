"""Model loading, the public entry point: `load_model` from a HF CLIP directory, an
official `.pth` or a ps_jax training workdir, and `export_official`.

Layer: model loading (imports models and the formats: convert, checkpoints).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from ps_jax import checkpoints, convert, reporting
from ps_jax.models import layers as L
from ps_jax.models.clip import ClipConfig, Compute, init_params
from ps_jax.models.prompt_switch import PromptSwitch, PromptSwitchConfig


def build_model(clip_config: ClipConfig, num_prompts: int = 6, **overrides) -> PromptSwitch:
  """A PromptSwitch module; overrides are PromptSwitchConfig or Compute fields.

  `num_prompts=0` defaults to no caption head (plain CLIP with mean pooling).
  """
  ps_fields = {f.name for f in dataclasses.fields(PromptSwitchConfig)}
  compute_fields = {f.name for f in dataclasses.fields(Compute)}
  unknown = sorted(set(overrides) - ps_fields - compute_fields)
  if unknown:
    raise TypeError(f"unknown load_model options {unknown}; expected fields of "
                    f"PromptSwitchConfig {sorted(ps_fields)} or Compute {sorted(compute_fields)}")
  ps = {k: v for k, v in overrides.items() if k in ps_fields}
  if num_prompts == 0:
    ps.setdefault("num_captioner_layers", 0)
  config = PromptSwitchConfig(num_prompts=num_prompts, **ps).validate(clip_config)
  compute = Compute(**{k: v for k, v in overrides.items() if k in compute_fields}).validate()
  return PromptSwitch(clip_config, config, compute)


def dummy_inputs(model: PromptSwitch) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Smallest (input_ids, attention_mask, frames) that `model.init` accepts."""
  size = model.clip.vision.image_size
  frames = jnp.zeros((1, max(model.config.aggregation_group, 1), size, size, 3), jnp.float32)
  ids = jnp.zeros((1, 2), jnp.int32)
  return ids, jnp.ones_like(ids), frames


def init_model_params(model: PromptSwitch, rng: jax.Array, qk_init_std: float = 0.0) -> dict:
  """Fresh float32 params for every parameter of `model` (DESIGN.md initialisation).

  qk_init_std > 0 draws the query and key projection kernels of both towers' encoder
  layers from N(0, qk_init_std) instead of N(0, 0.02) (the same draws, rescaled).
  """
  params = init_params(model, rng, *dummy_inputs(model))
  if qk_init_std:
    params = jax.tree_util.tree_map(lambda x: x, params)  # a copy of the dicts
    for tower in ("text_model", "vision_model"):
      attention = params[tower]["encoder"]["layers"]["self_attn"]
      for name in ("q_proj", "k_proj"):
        kernel = attention[name]["kernel"]
        attention[name] = {**attention[name],
                           "kernel": kernel * (qk_init_std / L.DENSE_INIT_STD)}
  return params


def param_shapes(model: PromptSwitch) -> dict:
  """Tree of ShapeDtypeStructs of `model`'s params, without computing anything."""
  boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *dummy_inputs(model)))
  return nn.unbox(boxed)["params"]


def merge_clip_params(fresh: dict, clip_params: dict) -> dict:
  """Replaces the subtrees of `fresh` present in `clip_params` (text_model and
  vision_model merged one level deep) and re-initialises the caption head's output
  layer as a copy of the (loaded) token embedding."""
  params = jax.tree_util.tree_map(np.asarray, fresh)
  for key, value in clip_params.items():
    if key in ("text_model", "vision_model"):
      params[key] = {**params[key], **value}
    else:
      params[key] = value
  if "caption" in params:
    table = params["text_model"]["token_embedding"]["embedding"]
    params["caption"]["head"]["kernel"] = np.array(table.T)
    params["caption"]["head"]["bias"] = np.zeros(table.shape[0], np.float32)
  return params


def load_model(path: str, *, clip_config: Any = None, num_prompts: int = 6,
               rng: Optional[jax.Array] = None, use_ema: bool = False, **overrides):
  """Loads a Prompt Switch model and its float32 params.

  Args:
    path: a HF CLIP directory (config.json + model.safetensors; the new parameters are
      freshly initialised), an official Prompt Switch `.pth` checkpoint (one trained
      with `--loss clip` has no caption head: it is initialised fresh, with a message),
      or a ps_jax checkpoint directory (written by training).
    clip_config: for a `.pth` only: a HF CLIPConfig, a dict or a directory with
      config.json; default ViT-B/32.
    num_prompts: P; 0 = plain CLIP with mean pooling (no cube, no aggregation, no head).
    rng: PRNG key for new parameters (default PRNGKey(0)).
    use_ema: for a `.pth`, load `state_dict_ema` instead of `state_dict`.
    **overrides: PromptSwitchConfig fields (switch, aggregate, num_captioner_layers,
      aggregation_frames: the official run's training num_frames when it exceeds P) and
      Compute fields (dtype, remat_policy, scan_unroll, attention_impl).

  Returns:
    (model, params): a flax.linen Module and a params pytree; use
    `model.apply({"params": params}, ..., method="encode_text")` etc.
  """
  rng = jax.random.PRNGKey(0) if rng is None else rng
  if checkpoints.has_model_file(path):
    return load_model_dir(path, **overrides)
  if path.endswith((".pth", ".pt", ".bin")):
    config = ClipConfig() if clip_config is None else ClipConfig.from_hf(clip_config)
    model = build_model(config, num_prompts, **overrides)
    state = convert.read_official_checkpoint(path, use_ema=use_ema)
    return model, official_params(state, model, rng, source=path)
  if os.path.isdir(path):
    if clip_config is not None:
      raise ValueError("clip_config is only for .pth checkpoints; a HF directory has its own "
                       "config.json")
    config = ClipConfig.from_hf(path)
    model = build_model(config, num_prompts, **overrides)
    _, clip_params = convert.load_hf_clip(path)
    return model, merge_clip_params(init_model_params(model, rng), clip_params)
  raise FileNotFoundError(f"{path!r} is neither a HF CLIP directory, a .pth checkpoint nor a "
                          "ps_jax checkpoint directory")


def official_params(state: dict, model: PromptSwitch, rng: jax.Array,
                    source: str = "checkpoint") -> dict:
  """`model`'s params from an official state_dict (name -> float32 array).

  A checkpoint trained with the official default `--loss clip` has no caption head; it
  is complete for retrieval, so the head is then initialised fresh (as the official
  code initialises it, from `rng`), which is reported. Any other missing, unexpected
  or mis-shaped tensor is a `convert.LayoutError` naming it.
  """
  c = model.config
  shapes = param_shapes(model)
  fresh_head = c.num_captioner_layers > 0 and not convert.has_caption_head(state)
  if fresh_head:
    shapes = {k: v for k, v in shapes.items() if k != "caption"}
  layout = convert.prompt_switch_layout(model.clip, c.num_prompts, c.aggregate,
                                        0 if fresh_head else c.num_captioner_layers)
  params = convert.import_tensors(state, layout, shapes, source=source)
  if not fresh_head:
    return params
  reporting.say(f"{source} has no caption head weights (an official checkpoint trained "
                f"with --loss clip): the {c.num_captioner_layers}-layer caption head is "
                "initialised fresh")
  return merge_clip_params(init_model_params(model, rng), params)


def load_model_dir(workdir: str, step: Optional[int] = None, use_ema: Optional[bool] = None,
                   **overrides):
  """(model, params) of a training workdir: checkpoint `step`, else the selected one
  (`checkpoints.Checkpointer.selected`: best validation t2v R@1, else the latest), whose
  step and validation value are printed. `use_ema` (default: whether the run kept an
  EMA, which its evaluations used) loads `ema_params`."""
  desc = checkpoints.read_model_file(workdir)
  model = build_model(ClipConfig.from_hf(desc["clip"]), **{**desc["options"], **overrides})
  if use_ema is None:
    use_ema = desc.get("config", {}).get("optim", {}).get("ema_decay", 0.0) > 0
  ckpt = checkpoints.Checkpointer(workdir, async_save=False, read_only=True)
  try:
    if step is None:
      selection = ckpt.selected()
      if selection is None:
        raise FileNotFoundError(f"{workdir!r} has {checkpoints.MODEL_FILE} but no checkpoint")
      step = selection.step
      if jax.process_index() == 0:
        print(f"{workdir}: loading {selection.describe()}", file=sys.stderr, flush=True)
    params = ckpt.restore_params(step, param_shapes(model),
                                 "ema_params" if use_ema else "params")
  finally:
    ckpt.close()
  return model, params


def export_official(params: dict, model: PromptSwitch, out_path: str) -> None:
  """Writes params with the official Prompt Switch state_dict names (and its
  `position_ids` buffers, so the official model loads it strictly).

  `out_path` ending in `.pth`: a PyTorch file `{"state_dict": ...}` as the official
  trainer saves and loads (needs torch); otherwise a safetensors file.
  """
  layout = convert.prompt_switch_layout(model.clip, model.config.num_prompts,
                                        model.config.aggregate,
                                        model.config.num_captioner_layers)
  tensors = {**convert.export_tensors(params, layout), **convert.official_buffers(model.clip)}
  if not out_path.endswith(".pth"):
    safetensors.numpy.save_file(tensors, out_path)
    return
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"writing {out_path!r} needs PyTorch (pip install torch==2.13.0); "
                      "any other extension writes safetensors") from e
  torch.save({"state_dict": {k: torch.from_numpy(np.array(v))  # a C-ordered copy
                             for k, v in tensors.items()}}, out_path)
