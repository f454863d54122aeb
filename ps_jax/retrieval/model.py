"""The model behind an index: loaded once, fingerprinted, with its evaluation settings.

Layer: assembly (imports model loading, checkpoints, data.tokenizers, retrieval.store).
Indexing and search both load their model here, so a query is embedded by exactly the
model (fingerprint checked) and tokenizer that embedded the videos.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

from ps_jax import api, checkpoints, convert
from ps_jax.data import tokenizers
from ps_jax.retrieval import fingerprint

DEFAULT_MAX_LEN = 77


class ModelLoadError(ValueError):
  """The model or its tokenizer cannot be loaded; the message names the flag or path."""


def model_description(model) -> dict:
  """What defines the computation of a PromptSwitch module (for the fingerprint).

  The CLIP architecture and the Prompt Switch options; not the `Compute` settings
  (dtype, remat, kernels), which change how, not what, is computed.
  """
  return {"clip": model.clip.to_hf_dict(), "prompt_switch": dataclasses.asdict(model.config)}


def model_fingerprint(model, params) -> str:
  """`fingerprint.fingerprint_params` over `model_description(model)` and all of `params`."""
  return fingerprint.fingerprint_params(model_description(model), params)


def tokenizer_spec(model_path: str, model_file: Optional[dict] = None) -> Optional[str]:
  """How search finds the tokenizer of a model: a path, "moving_shapes", or None (unknown).

  A training workdir (`model_file` = its ps_jax_model.json) follows its config
  (`ps_jax.data.tokenizers.spec_from_config`); a HF CLIP directory with tokenizer files
  is its own.
  """
  if model_file is not None:
    return tokenizers.spec_from_config(model_file.get("config", {}))
  return tokenizers.spec_for_model_dir(model_path)


def load_tokenizer(spec: str):
  """`ps_jax.data.tokenizers.load`, with ModelLoadError for a missing or bad spec."""
  try:
    return tokenizers.load(spec)
  except (OSError, ValueError) as e:
    raise ModelLoadError(str(e)) from e


@dataclasses.dataclass
class IndexModel:
  """A model ready to embed videos or text, and how to load it again.

  Attributes:
    model: the PromptSwitch module.
    params: its float32 params (host or device arrays).
    fingerprint: `model_fingerprint(model, params)`.
    path: absolute path given to `ps_jax.load_model`, or None for an in-memory model
      (search then needs `--model`).
    load_kwargs: JSON-able keyword arguments of `ps_jax.load_model` besides the path.
    defaults: evaluation settings of the model: num_frames, image_size, max_len,
      tokenizer (a `tokenizer_spec` or None).
  """
  model: Any
  params: Any
  fingerprint: str
  path: Optional[str]
  load_kwargs: dict
  defaults: dict

  @classmethod
  def from_params(cls, model, params, *, path: Optional[str] = None,
                  load_kwargs: Optional[dict] = None, num_frames: Optional[int] = None,
                  image_size: Optional[int] = None, max_len: Optional[int] = None,
                  tokenizer: Optional[str] = None) -> "IndexModel":
    """Wraps an in-memory (model, params); defaults follow the official test recipe
    (F = 2 chunks of P frames, the vision tower's image size, 77 tokens)."""
    p = model.config.num_prompts
    defaults = {"num_frames": num_frames or (2 * p if p else 12),
                "image_size": image_size or model.clip.vision.image_size,
                "max_len": max_len or min(DEFAULT_MAX_LEN,
                                          model.clip.text.max_position_embeddings),
                "tokenizer": tokenizer}
    return cls(model, params, model_fingerprint(model, params), path, dict(load_kwargs or {}),
               defaults)

  @classmethod
  def load(cls, path: str, load_kwargs: Optional[dict] = None) -> "IndexModel":
    """`ps_jax.load_model(path, **load_kwargs)` plus the defaults a workdir records."""
    if not os.path.exists(path):
      raise ModelLoadError(f"--model {path!r} does not exist (a ps_jax workdir, a HF CLIP "
                           "directory or an official .pth checkpoint)")
    path = os.path.abspath(path)
    load_kwargs = dict(load_kwargs or {})
    try:
      model, params = api.load_model(path, **load_kwargs)
    except convert.CheckpointReadError as e:
      raise ModelLoadError(str(e)) from e
    model_file = checkpoints.read_model_file(path) if checkpoints.has_model_file(path) else None
    data = (model_file or {}).get("config", {}).get("data", {})
    return cls.from_params(model, params, path=path, load_kwargs=load_kwargs,
                           num_frames=data.get("eval_num_frames"),
                           image_size=data.get("image_size"), max_len=data.get("max_len"),
                           tokenizer=tokenizer_spec(path, model_file))
