"""Weight layouts: HF CLIP / official Prompt Switch tensors <-> ps_jax parameter trees.

A layout is a list of `Entry`s, each tying one external tensor name (per-layer names
use `{i}`) to one path in the Flax tree and a transform (linear and conv kernels are
transposed; per-layer tensors are stacked on the scan axis). `import_tensors` and
`export_tensors` are the two directions; every layout is tested as a round trip.

Layer: formats (imports only `models`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from ps_jax.models.clip import CLIP, ClipConfig

Params = dict

# Buffers some HF checkpoints carry that are not parameters.
_IGNORED_SUFFIXES = ("position_ids",)


@dataclasses.dataclass(frozen=True)
class Entry:
  """One external tensor (or a family of per-layer tensors) <-> one Flax leaf.

  name: external name; `{i}` marks the layer index of a stacked (scanned) tensor.
  path: path of the leaf in the Flax params tree.
  kind: "copy", "linear" (torch [out, in] <-> flax [in, out]) or "conv"
    (torch [out, in, kh, kw] <-> flax [kh, kw, in, out]).
  layers: number of stacked layers when `name` contains `{i}`.
  """
  name: str
  path: tuple[str, ...]
  kind: str = "copy"
  layers: int = 0


def _to_flax(x: np.ndarray, kind: str) -> np.ndarray:
  if kind == "linear":
    return x.T
  if kind == "conv":
    return x.transpose(2, 3, 1, 0)
  return x


def _to_torch(x: np.ndarray, kind: str) -> np.ndarray:
  if kind == "linear":
    return x.T
  if kind == "conv":
    return x.transpose(3, 2, 0, 1)
  return x


def _linear(name: str, path: tuple[str, ...], layers: int = 0, bias: bool = True):
  out = [Entry(f"{name}.weight", path + ("kernel",), "linear", layers)]
  if bias:
    out.append(Entry(f"{name}.bias", path + ("bias",), "copy", layers))
  return out


def _norm(name: str, path: tuple[str, ...], layers: int = 0):
  return [Entry(f"{name}.weight", path + ("scale",), "copy", layers),
          Entry(f"{name}.bias", path + ("bias",), "copy", layers)]


def _encoder_layer(prefix: str, path: tuple[str, ...], layers: int) -> list[Entry]:
  p = f"{prefix}.layers.{{i}}"
  base = path + ("layers",)
  out = []
  for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
    out += _linear(f"{p}.self_attn.{proj}", base + ("self_attn", proj), layers)
  out += _norm(f"{p}.layer_norm1", base + ("layer_norm1",), layers)
  out += _norm(f"{p}.layer_norm2", base + ("layer_norm2",), layers)
  out += _linear(f"{p}.mlp.fc1", base + ("mlp", "fc1"), layers)
  out += _linear(f"{p}.mlp.fc2", base + ("mlp", "fc2"), layers)
  return out


def clip_layout(config: ClipConfig, prefix: str = "", path: tuple[str, ...] = ()) -> list[Entry]:
  """Layout of `transformers.CLIPModel` names (optionally prefixed, e.g. "clip.")."""
  t, v = ("text_model",), ("vision_model",)
  out = [
      Entry(f"{prefix}text_model.embeddings.token_embedding.weight",
            path + t + ("token_embedding", "embedding")),
      Entry(f"{prefix}text_model.embeddings.position_embedding.weight",
            path + t + ("position_embedding",)),
      *_encoder_layer(f"{prefix}text_model.encoder", path + t + ("encoder",),
                      config.text.num_hidden_layers),
      *_norm(f"{prefix}text_model.final_layer_norm", path + t + ("final_layer_norm",)),
      Entry(f"{prefix}vision_model.embeddings.class_embedding",
            path + v + ("embeddings", "class_embedding")),
      Entry(f"{prefix}vision_model.embeddings.patch_embedding.weight",
            path + v + ("embeddings", "patch_embedding", "kernel"), "conv"),
      Entry(f"{prefix}vision_model.embeddings.position_embedding.weight",
            path + v + ("embeddings", "position_embedding")),
      *_norm(f"{prefix}vision_model.pre_layrnorm", path + v + ("pre_layrnorm",)),
      *_encoder_layer(f"{prefix}vision_model.encoder", path + v + ("encoder",),
                      config.vision.num_hidden_layers),
      *_norm(f"{prefix}vision_model.post_layernorm", path + v + ("post_layernorm",)),
      *_linear(f"{prefix}text_projection", path + ("text_projection",), bias=False),
      *_linear(f"{prefix}visual_projection", path + ("visual_projection",), bias=False),
      Entry(f"{prefix}logit_scale", path + ("logit_scale",)),
  ]
  return out


def _expand(entries: Iterable[Entry]):
  """Yields (entry, external name, layer index or None) for every external tensor."""
  for e in entries:
    if e.layers:
      for i in range(e.layers):
        yield e, e.name.format(i=i), i
    else:
      yield e, e.name, None


def _get(tree: Mapping, path: Sequence[str]):
  for k in path:
    tree = tree[k]
  return tree


def _set(tree: dict, path: Sequence[str], value) -> None:
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def _shape_tree_paths(tree, prefix=()):
  if isinstance(tree, Mapping):
    for k, v in tree.items():
      yield from _shape_tree_paths(v, prefix + (k,))
  else:
    yield prefix, tuple(tree.shape)


class LayoutError(ValueError):
  """Tensors that do not fit a layout: lists every missing, unexpected, mis-shaped name."""


def import_tensors(tensors: Mapping[str, Any], entries: Sequence[Entry],
                   expected: Optional[Mapping] = None, source: str = "checkpoint",
                   ignore_prefixes: Sequence[str] = ()) -> Params:
  """External named tensors -> Flax params tree (float32 numpy arrays).

  Args:
    tensors: name -> array-like (numpy, torch or safetensors tensors).
    entries: the layout.
    expected: optional tree of arrays / ShapeDtypeStructs with the shapes the model
      wants; every leaf must be produced by the layout with exactly that shape.
    source: file name used in error messages.
    ignore_prefixes: external names starting with these are skipped silently.

  Raises:
    LayoutError naming every missing, unexpected or mis-shaped tensor.
  """
  expected_shapes = dict(_shape_tree_paths(expected)) if expected is not None else {}
  flat: dict[tuple[str, ...], Any] = {}
  missing, bad_shape = [], []
  used = set()
  for e, name, i in _expand(entries):
    if name not in tensors:
      missing.append(name)
      continue
    used.add(name)
    raw = np.asarray(tensors[name], dtype=np.float32)
    arr = _to_flax(raw, e.kind)
    if e.path in expected_shapes:
      want = expected_shapes[e.path][1:] if e.layers else expected_shapes[e.path]
      if arr.shape != want:
        want_t = _to_torch(np.empty(want), e.kind).shape
        bad_shape.append(f"{name}: expected shape {want_t}, got {raw.shape}")
        continue
    if e.layers:
      flat.setdefault(e.path, [None] * e.layers)[i] = arr
    else:
      flat[e.path] = arr
  unexpected = sorted(
      n for n in tensors if n not in used and not n.endswith(_IGNORED_SUFFIXES)
      and not n.startswith(tuple(ignore_prefixes)))
  params: Params = {}
  for path, value in flat.items():
    if isinstance(value, list):
      if any(v is None for v in value):
        continue  # reported above
      shapes = sorted({v.shape for v in value})
      if len(shapes) != 1:
        bad_shape.append(f"{'/'.join(path)}: per-layer shapes differ {shapes}")
        continue
      value = np.stack(value)
    _set(params, path, value)
  mapped = {e.path for e in entries}
  missing += [f"(no tensor maps to parameter {'/'.join(p)})"
              for p in expected_shapes if p not in mapped]
  if missing or unexpected or bad_shape:
    lines = [f"{source} does not match the model:"]
    lines += [f"  missing: {n}" for n in missing]
    lines += [f"  unexpected: {n}" for n in unexpected]
    lines += [f"  wrong shape: {n}" for n in bad_shape]
    raise LayoutError("\n".join(lines))
  return params


def export_tensors(params: Mapping, entries: Sequence[Entry]) -> dict[str, np.ndarray]:
  """Flax params tree -> external name -> contiguous float32 numpy array."""
  out = {}
  for e, name, i in _expand(entries):
    arr = np.asarray(_get(params, e.path), dtype=np.float32)
    if e.layers:
      arr = arr[i]
    out[name] = np.array(_to_torch(arr, e.kind), dtype=np.float32, order="C")
  return out


# ----------------------------------------------------------------------------- files


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """Reads a `.safetensors` file, or a HF sharded checkpoint's `*.index.json` (no pickle)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"No such weights file: {path!r}")
  if path.endswith(".index.json"):
    with open(path, encoding="utf-8") as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    out = {}
    for shard in shards:
      out.update(read_safetensors(os.path.join(os.path.dirname(path), shard)))
    return out
  try:
    return dict(safetensors.numpy.load_file(path))
  except Exception as e:  # safetensors raises several error types for corrupt files
    raise ValueError(f"Cannot read safetensors file {path!r}: {e}") from e


def hf_weights_file(hf_dir: str) -> str:
  """The weights file of a local HF directory (single or sharded safetensors)."""
  for name in ("model.safetensors", "model.safetensors.index.json"):
    if os.path.exists(os.path.join(hf_dir, name)):
      return os.path.join(hf_dir, name)
  raise FileNotFoundError(
      f"{hf_dir!r} has no model.safetensors (or model.safetensors.index.json); ps_jax "
      "reads only safetensors weights, never pickled pytorch_model.bin files")


def load_hf_clip(hf_dir: str, expected: Optional[Mapping] = None) -> tuple[ClipConfig, Params]:
  """A local HF CLIP directory (config.json + model.safetensors) -> (config, params).

  Args:
    hf_dir: directory written by `CLIPModel.save_pretrained` or downloaded from a hub.
    expected: optional params shape tree to validate against (defaults to the CLIP
      model built from config.json).
  """
  config = ClipConfig.from_hf(hf_dir)
  path = hf_weights_file(hf_dir)
  if expected is None:
    expected = clip_param_shapes(config)
  params = import_tensors(read_safetensors(path), clip_layout(config), expected, source=path)
  return config, params


def save_hf_clip(params: Mapping, config: ClipConfig, out_dir: str) -> None:
  """Writes config.json + model.safetensors that `transformers.CLIPModel` loads."""
  os.makedirs(out_dir, exist_ok=True)
  tensors = export_tensors(params, clip_layout(config))
  safetensors.numpy.save_file(tensors, os.path.join(out_dir, "model.safetensors"),
                              metadata={"format": "pt"})
  with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config.to_hf_dict(), f, indent=2)


def clip_param_shapes(config: ClipConfig) -> Params:
  """Shape tree (ShapeDtypeStructs) of the plain CLIP params for `config`."""
  ids = jnp.zeros((1, 2), jnp.int32)
  px = jnp.zeros((1, config.vision.image_size, config.vision.image_size, 3), jnp.float32)
  boxed = jax.eval_shape(lambda: CLIP(config).init(jax.random.PRNGKey(0), ids, px))
  return nn.unbox(boxed)["params"]


# ----------------------------------------------------------------------------- Prompt Switch


def _packed_attention(name: str, path: tuple[str, ...], layers: int = 0) -> list[Entry]:
  """torch.nn.MultiheadAttention names <-> ps_jax PackedAttention params."""
  return [Entry(f"{name}.in_proj_weight", path + ("in_proj_kernel",), "linear", layers),
          Entry(f"{name}.in_proj_bias", path + ("in_proj_bias",), "copy", layers),
          *_linear(f"{name}.out_proj", path + ("out_proj",), layers)]


# Official names of the caption head (absent from checkpoints trained with `--loss clip`).
CAPTION_HEAD_PREFIXES = ("caption_prenorm.", "caption_transformer.", "caption_head.")


def has_caption_head(tensors: Mapping[str, Any]) -> bool:
  """Whether an official state_dict holds any caption head tensor."""
  return any(name.startswith(CAPTION_HEAD_PREFIXES) for name in tensors)


def prompt_switch_layout(clip_config: ClipConfig, num_prompts: int, aggregate: bool = True,
                         num_captioner_layers: int = 2) -> list[Entry]:
  """Layout of the official Prompt Switch `state_dict` names (`clip.` + HF names, ...)."""
  out = clip_layout(clip_config, prefix="clip.")
  if num_prompts:
    out.append(Entry("clip.vision_model.encoder.prompt_embedding", ("vision_model", "prompt")))
    if aggregate:
      out += _packed_attention("clip.vision_model.attn", ("vision_model", "aggregation", "attn"))
  n = num_captioner_layers
  if n:
    cap = ("caption",)
    dec = cap + ("decoder",)
    out += _norm("caption_prenorm", cap + ("prenorm",))
    out += _packed_attention("caption_transformer.layers.{i}.self_attn", dec + ("self_attn",), n)
    out += _packed_attention("caption_transformer.layers.{i}.multihead_attn",
                             dec + ("multihead_attn",), n)
    for lin in ("linear1", "linear2"):
      out += _linear(f"caption_transformer.layers.{{i}}.{lin}", dec + (lin,), n)
    for norm in ("norm1", "norm2", "norm3"):
      out += _norm(f"caption_transformer.layers.{{i}}.{norm}", dec + (norm,), n)
    out += _norm("caption_transformer.norm", cap + ("norm",))
    out += _linear("caption_head", cap + ("head",))
  return out


def official_buffers(clip_config: ClipConfig) -> dict[str, np.ndarray]:
  """The persistent buffers of the official model's state_dict: its CLIP embeddings
  register `position_ids` (int64 [1, positions]) without `persistent=False`, and the
  official trainer loads checkpoints strictly, so an export must hold them."""
  return {
      "clip.text_model.embeddings.position_ids":
          np.arange(clip_config.text.max_position_embeddings, dtype=np.int64)[None],
      "clip.vision_model.embeddings.position_ids":
          np.arange(clip_config.vision.num_positions, dtype=np.int64)[None]}


class CheckpointReadError(ValueError):
  """A checkpoint file that cannot be read, or holds more than weights; names the file."""


# torch.load's general advice around the reason it refused a file (the advice includes
# re-running with weights_only=False, which is what must not happen to an untrusted file).
_TORCH_LOAD_BOILERPLATE = ("Weights only load failed", "Please file an issue",
                           "Check the documentation")


def read_official_checkpoint(path: str, use_ema: bool = False) -> dict[str, np.ndarray]:
  """The `state_dict` (or `state_dict_ema`) of an official Prompt Switch `.pth` file.

  Loaded with `torch.load(weights_only=True)`: tensors and plain containers only. A file
  that pickles anything else (a class instance, a function to call) is refused before
  any of it runs: CheckpointReadError naming the file and what it holds.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"reading {path!r} needs PyTorch (pip install torch==2.13.0), "
                      "only to unpickle the tensors") from e
  if not os.path.exists(path):
    raise FileNotFoundError(f"No such checkpoint: {path!r}")
  try:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types for corrupt or unsafe files
    lines = [l.strip() for l in str(e).splitlines()
             if l.strip() and not l.strip().startswith(_TORCH_LOAD_BOILERPLATE)]
    reason = lines[0] if lines else type(e).__name__
    raise CheckpointReadError(
        f"Cannot read {path!r} as a weights-only PyTorch checkpoint (tensors and plain "
        f"containers; nothing else is unpickled): {reason}") from e
  key = "state_dict_ema" if use_ema else "state_dict"
  if isinstance(ckpt, Mapping) and key in ckpt:
    state = ckpt[key]
  elif isinstance(ckpt, Mapping) and not use_ema and all(
      hasattr(v, "shape") for v in ckpt.values()):
    state = ckpt  # a bare state_dict
  else:
    found = sorted(ckpt) if isinstance(ckpt, Mapping) else type(ckpt).__name__
    raise CheckpointReadError(f"{path!r} has no {key!r} entry (found {found})")
  # Checkpoints saved from DataParallel / DDP prefix every name with "module.".
  return {k.removeprefix("module."): v.float().numpy() for k, v in state.items()}
