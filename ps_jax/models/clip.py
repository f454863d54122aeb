"""CLIP in Flax linen, numerically equal to `transformers.CLIPModel`, with a scanned encoder.

The encoder is one pre-LayerNorm block wrapped in `nn.scan` (parameters stacked on a
leading `layers` axis), optionally `nn.remat`-ed. The block can carry the Prompt Switch
cube: when `num_prompts > 0`, the last P tokens of each frame are prompts and, on the
layer-normed attention input only, the (P frames x P prompts) block of each chunk is
transposed (`jnp.swapaxes`) before self-attention.

Layer: models (the leaf of the package: imports only `models.layers`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ps_jax.models import layers as L

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class TextConfig:
  vocab_size: int = 49408
  max_position_embeddings: int = 77
  hidden_size: int = 512
  intermediate_size: int = 2048
  num_hidden_layers: int = 12
  num_attention_heads: int = 8
  layer_norm_eps: float = 1e-5
  hidden_act: str = "quick_gelu"


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  image_size: int = 224
  patch_size: int = 32
  num_channels: int = 3
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  layer_norm_eps: float = 1e-5
  hidden_act: str = "quick_gelu"

  @property
  def num_positions(self) -> int:
    """N = 1 + (image_size / patch_size)^2 CLS + patch tokens."""
    return 1 + (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class ClipConfig:
  """CLIP architecture (the fields of a HF `CLIPConfig` that change the computation)."""
  text: TextConfig = TextConfig()
  vision: VisionConfig = VisionConfig()
  projection_dim: int = 512
  logit_scale_init_value: float = 2.6592

  @classmethod
  def from_hf(cls, hf: Any) -> "ClipConfig":
    """From a `transformers.CLIPConfig`, its dict, or a directory/file with config.json."""
    if isinstance(hf, str):
      path = os.path.join(hf, "config.json") if os.path.isdir(hf) else hf
      try:
        with open(path, encoding="utf-8") as f:
          hf = json.load(f)
      except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"Cannot read CLIP config {path!r}: {e}") from e
    if not isinstance(hf, Mapping):
      hf = hf.to_dict()

    def pick(section, dc):
      raw = hf.get(section) or {}
      known = {f.name for f in dataclasses.fields(dc)}
      return dc(**{k: v for k, v in raw.items() if k in known})

    top = {k: hf[k] for k in ("projection_dim", "logit_scale_init_value") if k in hf}
    return cls(text=pick("text_config", TextConfig), vision=pick("vision_config", VisionConfig),
               **top)

  def to_hf_dict(self) -> dict:
    """A dict accepted by `transformers.CLIPConfig(**d)` (eos = the largest text id)."""
    text = dataclasses.asdict(self.text)
    text.update(eos_token_id=self.text.vocab_size - 1, bos_token_id=self.text.vocab_size - 2,
                pad_token_id=self.text.vocab_size - 1)
    return {"text_config": text, "vision_config": dataclasses.asdict(self.vision),
            "projection_dim": self.projection_dim,
            "logit_scale_init_value": self.logit_scale_init_value,
            "architectures": ["CLIPModel"], "model_type": "clip"}


PATCH_EMBEDS = ("conv", "matmul")


@dataclasses.dataclass(frozen=True)
class Compute:
  """How to compute (never what): dtype, remat, scan unrolling, attention kernel."""
  # float32 | bfloat16: activations and matmul operands; matmuls accumulate in float32
  # (layers.matmul) and params stay float32.
  dtype: str = "float32"
  remat_policy: str = "none"        # none | full | nothing_saveable | dots_saveable | ...
  scan_unroll: int = 1              # 1 = rolled loop; num_layers = fully unrolled
  attention_impl: str = "xla"       # xla | dot_product_attention
  # conv: a strided convolution; matmul: the same product as flattened patches @ the
  # reshaped kernel (same parameter; ~1.8x faster on XLA:CPU, native bfloat16 x bfloat16
  # -> float32 there, other float32 rounding).
  patch_embed: str = "conv"

  @property
  def jnp_dtype(self):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[self.dtype]

  def validate(self) -> "Compute":
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"compute dtype must be float32 or bfloat16, got {self.dtype!r}")
    if self.remat_policy != "none" and self.remat_policy not in L.REMAT_POLICIES:
      raise ValueError(f"remat_policy must be 'none' or one of {sorted(L.REMAT_POLICIES)}, "
                       f"got {self.remat_policy!r}")
    if self.attention_impl not in L.ATTENTION_IMPLS:
      raise ValueError(f"attention_impl must be one of {L.ATTENTION_IMPLS}, "
                       f"got {self.attention_impl!r}")
    if self.scan_unroll < 1:
      raise ValueError(f"scan_unroll must be >= 1, got {self.scan_unroll}")
    if self.patch_embed not in PATCH_EMBEDS:
      raise ValueError(f"patch_embed must be one of {PATCH_EMBEDS}, got {self.patch_embed!r}")
    return self


def switch_prompts(y: Array, num_prompts: int) -> Array:
  """The Prompt Switch: transposes each chunk's (frames, prompts) block of prompt tokens.

  Args:
    y: [C * P, N + P, D], frames chunk-major (P consecutive frames form a chunk), the
      last P tokens of each frame being its prompts.
    num_prompts: P.

  Returns:
    y with token N + j of frame c*P + i replaced by token N + i of frame c*P + j.
  """
  p = num_prompts
  cp, t, d = y.shape
  prompts = y[:, t - p:].reshape(cp // p, p, p, d)
  prompts = jnp.swapaxes(prompts, 1, 2).reshape(cp, p, d)
  return jnp.concatenate([y[:, :t - p], prompts], axis=1)


class EncoderLayer(nn.Module):
  """Pre-LN transformer block; with `num_prompts` (and `switch`) the Prompt Switch block."""
  num_heads: int
  intermediate_size: int
  eps: float = 1e-5
  hidden_act: str = "quick_gelu"
  num_prompts: int = 0
  switch: bool = True
  compute: Compute = Compute()

  @nn.compact
  def __call__(self, x: Array, bias: Optional[Array]) -> tuple[Array, None]:
    """x: [B, T, D] (for prompts: B = chunks * P frames) -> ([B, T, D], None)."""
    dtype = self.compute.jnp_dtype
    y = L.LayerNorm(self.eps, dtype, name="layer_norm1")(x)
    if self.num_prompts and self.switch:
      y = switch_prompts(y, self.num_prompts)
    x = x + L.MultiHeadAttention(self.num_heads, dtype, self.compute.attention_impl,
                                 name="self_attn")(y, bias)
    y = L.LayerNorm(self.eps, dtype, name="layer_norm2")(x)
    x = x + L.Mlp(self.intermediate_size, self.hidden_act, dtype, name="mlp")(y)
    return x, None


class Encoder(nn.Module):
  """`num_layers` EncoderLayers as one scanned layer; params under `layers` stacked on axis 0."""
  num_layers: int
  num_heads: int
  intermediate_size: int
  eps: float = 1e-5
  hidden_act: str = "quick_gelu"
  num_prompts: int = 0
  switch: bool = True
  compute: Compute = Compute()

  @nn.compact
  def __call__(self, x: Array, bias: Optional[Array] = None) -> Array:
    """x: [B, T, D], bias: additive attention mask or None -> [B, T, D]."""
    layer_cls = EncoderLayer
    if self.compute.remat_policy != "none":
      layer_cls = nn.remat(layer_cls, prevent_cse=False,
                           policy=L.REMAT_POLICIES[self.compute.remat_policy])
    scanned = nn.scan(
        layer_cls, variable_axes={"params": 0}, split_rngs={"params": True},
        in_axes=nn.broadcast, length=self.num_layers, unroll=self.compute.scan_unroll,
        metadata_params={nn.PARTITION_NAME: "layers"})
    x, _ = scanned(self.num_heads, self.intermediate_size, self.eps, self.hidden_act,
                   self.num_prompts, self.switch, self.compute, name="layers")(x, bias)
    return x


class TextTransformer(nn.Module):
  """CLIP text tower up to the final LayerNorm."""
  config: TextConfig
  compute: Compute = Compute()

  def setup(self):
    c = self.config
    self.token_embedding = nn.Embed(
        c.vocab_size, c.hidden_size, param_dtype=jnp.float32,
        embedding_init=L.partitioned(L.dense_init(0.02), ("vocab", "embed")))
    self.position_embedding = self.param(
        "position_embedding", L.partitioned(L.dense_init(0.01), ("positions", "embed")),
        (c.max_position_embeddings, c.hidden_size))
    self.encoder = Encoder(c.num_hidden_layers, c.num_attention_heads, c.intermediate_size,
                           c.layer_norm_eps, c.hidden_act, compute=self.compute)
    self.final_layer_norm = L.LayerNorm(c.layer_norm_eps, self.compute.jnp_dtype)

  def embed(self, input_ids: Array) -> Array:
    """input_ids int32[B, L] -> token + position embeddings float32[B, L, D]."""
    length = input_ids.shape[1]
    if length > self.config.max_position_embeddings:
      raise ValueError(f"text length {length} exceeds max_position_embeddings "
                       f"{self.config.max_position_embeddings}")
    return self.token_embedding(input_ids) + self.position_embedding[:length]

  def __call__(self, input_ids: Array, attention_mask: Optional[Array] = None) -> Array:
    """input_ids int32[B, L], attention_mask int[B, L] -> hidden states [B, L, D]."""
    x = self.embed(input_ids).astype(self.compute.jnp_dtype)
    length = input_ids.shape[1]
    keep = jnp.tril(jnp.ones((length, length), jnp.bool_))[None, None]
    if attention_mask is not None:
      keep = keep & (attention_mask[:, None, None, :] > 0)
    bias = jnp.where(keep, 0.0, jnp.finfo(jnp.float32).min)
    return self.final_layer_norm(self.encoder(x, bias))


def eot_pool(hidden: Array, input_ids: Array) -> Array:
  """Hidden states [B, L, D] at the first position of the largest id (EOT) -> [B, D]."""
  idx = jnp.argmax(input_ids, axis=-1)
  return jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0]


_PATCH_KERNEL_INIT = L.partitioned(L.dense_init(0.02), (None, None, "channels", "embed"))


class PatchKernel(nn.Module):
  """The patch embedding's kernel float32[p, p, C, D] alone, where `nn.Conv` keeps it
  (`<name>/kernel`, same initialiser), for the matmul form."""
  shape: tuple[int, int, int, int]

  @nn.compact
  def __call__(self) -> Array:
    return self.param("kernel", _PATCH_KERNEL_INIT, self.shape, jnp.float32)


def patches_as_rows(pixels: Array, patch: int) -> Array:
  """float[B, H, W, C] -> [B, (H/p)(W/p), p*p*C]: each non-overlapping p x p patch as
  one row, row-major over the grid, flattened (kh, kw, C) like a conv kernel's
  [kh, kw, C, D] reshaped to [p*p*C, D]."""
  b, h, w, ch = pixels.shape
  x = pixels.reshape(b, h // patch, patch, w // patch, patch, ch).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // patch) * (w // patch), patch * patch * ch)


class VisionEmbeddings(nn.Module):
  """Bias-free patch embedding + CLS + position embeddings.

  `patch_embed` "conv" applies the kernel [p, p, C, D] as a strided convolution,
  "matmul" as flattened patches @ kernel.reshape(p*p*C, D) (`layers.matmul`: float32
  accumulation); the parameter is the same.
  """
  config: VisionConfig
  patch_embed: str = "conv"

  @nn.compact
  def __call__(self, pixels: Array, dtype) -> Array:
    """pixels float[B, H, W, C] (CLIP-normalised) -> [B, N, D]."""
    c = self.config
    if pixels.shape[1:3] != (c.image_size, c.image_size):
      raise ValueError(f"images must be {c.image_size}x{c.image_size}, "
                       f"got {pixels.shape[1]}x{pixels.shape[2]}")
    p = c.patch_size
    if self.patch_embed == "conv":
      patches = nn.Conv(
          c.hidden_size, (p, p), strides=(p, p), padding="VALID", use_bias=False,
          dtype=dtype, param_dtype=jnp.float32, kernel_init=_PATCH_KERNEL_INIT,
          name="patch_embedding")(pixels.astype(dtype))
      patches = patches.reshape(patches.shape[0], -1, c.hidden_size)
    else:
      kernel = PatchKernel((p, p, pixels.shape[-1], c.hidden_size),
                           name="patch_embedding")()
      patches = L.matmul(patches_as_rows(pixels, p), kernel.reshape(-1, c.hidden_size),
                         dtype).astype(dtype)
    cls = self.param("class_embedding", L.partitioned(L.dense_init(0.02), ("embed",)),
                     (c.hidden_size,))
    pos = self.param("position_embedding",
                     L.partitioned(L.dense_init(0.02), ("positions", "embed")),
                     (c.num_positions, c.hidden_size))
    cls = jnp.broadcast_to(cls.astype(dtype), (patches.shape[0], 1, c.hidden_size))
    return jnp.concatenate([cls, patches], axis=1) + pos.astype(dtype)


class PromptAggregation(nn.Module):
  """Per group of G consecutive frames, the G CLS states attend to the group's G*P final
  prompt states (the official model's groups are its training `num_frames` frames).

  torch.nn.MultiheadAttention semantics (packed in-projection with bias, heads = vision
  heads), no LayerNorm on the prompts, output projection initialised to zero so that
  it starts as the identity: cls <- cls + attn(cls, prompts).
  """
  num_heads: int
  group_frames: int
  dtype: Any = jnp.float32
  attention_impl: str = "xla"

  @nn.compact
  def __call__(self, cls: Array, prompts: Array) -> Array:
    """cls: [n*G, D]; prompts: [n*G, P, D] (frames in groups of G) -> cls [n*G, D]."""
    g = self.group_frames
    ng, p, d = prompts.shape
    out = L.PackedAttention(self.num_heads, self.dtype, self.attention_impl, zero_out=True,
                            name="attn")(cls.reshape(ng // g, g, d),
                                         prompts.reshape(ng // g, g * p, d))
    return cls + out.reshape(ng, d)


class VisionTransformer(nn.Module):
  """CLIP vision tower, with the Prompt Switch cube and aggregation when num_prompts > 0.

  With `num_prompts = P > 0` the batch is chunk-major frames (P consecutive frames form a
  chunk, an independent clip), the (P, P, D) prompt cube is appended after `pre_layrnorm`
  (row i after frame i's N tokens, no position embedding), the scanned encoder switches
  it in every layer (if `switch`), and the CLS states aggregate the final prompts of
  their group of `aggregation_frames` consecutive frames (0 = P: their chunk), if
  `aggregate`, before `post_layernorm`.
  """
  config: VisionConfig
  num_prompts: int = 0
  switch: bool = True
  aggregate: bool = True
  prompt_init_scale: float = 1.0
  compute: Compute = Compute()
  aggregation_frames: int = 0

  def setup(self):
    c = self.config
    dtype = self.compute.jnp_dtype
    p = self.num_prompts
    self.embeddings = VisionEmbeddings(c, self.compute.patch_embed)
    self.pre_layrnorm = L.LayerNorm(c.layer_norm_eps, dtype)
    if p:
      std = c.hidden_size ** -0.5 * 0.02 * self.prompt_init_scale
      self.prompt = self.param(
          "prompt", L.partitioned(nn.initializers.normal(std), (None, None, "embed")),
          (p, p, c.hidden_size))
    self.encoder = Encoder(c.num_hidden_layers, c.num_attention_heads, c.intermediate_size,
                           c.layer_norm_eps, c.hidden_act, p, self.switch, self.compute)
    if p and self.aggregate:
      self.aggregation = PromptAggregation(c.num_attention_heads,
                                           self.aggregation_frames or p, dtype,
                                           self.compute.attention_impl)
    self.post_layernorm = L.LayerNorm(c.layer_norm_eps, dtype)

  def __call__(self, pixels: Array) -> Array:
    """pixels float[B, H, W, 3] (CLIP-normalised) -> pooled states [B, D] (after post LN).

    With prompts, B = chunks * P frames, chunk-major (and a multiple of the
    aggregation group).
    """
    dtype = self.compute.jnp_dtype
    x = self.pre_layrnorm(self.embeddings(pixels, dtype))
    p = self.num_prompts
    if p:
      group = (self.aggregation_frames or p) if self.aggregate else p
      if x.shape[0] % group:
        raise ValueError(f"{x.shape[0]} frames is not a multiple of the {group}-frame "
                         f"groups of num_prompts={p} and aggregation_frames")
      cube = jnp.tile(self.prompt.astype(dtype), (x.shape[0] // p, 1, 1))
      x = jnp.concatenate([x, cube], axis=1)
    x = self.encoder(x)
    cls = x[:, 0]
    if p and self.aggregate:
      cls = self.aggregation(cls, x[:, x.shape[1] - p:])
    return self.post_layernorm(cls)


class CLIP(nn.Module):
  """Plain CLIP: `transformers.CLIPModel` semantics.

  Parameter tree: text_model/{token_embedding, position_embedding, encoder/layers,
  final_layer_norm}, vision_model/{embeddings, pre_layrnorm, encoder/layers,
  post_layernorm}, text_projection, visual_projection, logit_scale.
  """
  config: ClipConfig
  compute: Compute = Compute()

  def setup(self):
    c = self.config
    dtype = self.compute.jnp_dtype
    self.text_model = TextTransformer(c.text, self.compute)
    self.vision_model = VisionTransformer(c.vision, compute=self.compute)
    self.text_projection = L.Dense(c.projection_dim, ("embed", "proj"), use_bias=False,
                                   dtype=dtype)
    self.visual_projection = L.Dense(c.projection_dim, ("embed", "proj"), use_bias=False,
                                     dtype=dtype)
    self.logit_scale = self.param(
        "logit_scale", L.partitioned(nn.initializers.constant(c.logit_scale_init_value), ()),
        ())

  def get_text_features(self, input_ids: Array, attention_mask: Optional[Array] = None):
    """input_ids int32[B, L] -> projected, un-normalised text features float32[B, E]."""
    hidden = self.text_model(input_ids, attention_mask)
    return self.text_projection(eot_pool(hidden, input_ids)).astype(jnp.float32)

  def get_image_features(self, pixels: Array) -> Array:
    """pixels float32[B, H, W, 3] -> projected, un-normalised image features float32[B, E]."""
    return self.visual_projection(self.vision_model(pixels)).astype(jnp.float32)

  def __call__(self, input_ids: Array, pixels: Array,
               attention_mask: Optional[Array] = None) -> dict[str, Array]:
    """Returns text_embeds [Bt, E], image_embeds [Bi, E] (normalised), logits_per_text [Bt, Bi]."""
    text = l2_normalize(self.get_text_features(input_ids, attention_mask))
    image = l2_normalize(self.get_image_features(pixels))
    logits = jnp.exp(self.logit_scale) * text @ image.T
    return {"text_embeds": text, "image_embeds": image, "logits_per_text": logits,
            "logits_per_image": logits.T}


def l2_normalize(x: Array, axis: int = -1, eps: float = 1e-12) -> Array:
  """x / max(||x||, eps), like torch.nn.functional.normalize."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, eps)


def init_params(model: nn.Module, rng: Array, *args, method=None) -> dict:
  """Initialises `model` and returns plain (unboxed) float32 params.

  Compiled as one program: run eagerly, every initialiser is its own small compilation
  (tens of seconds on a CPU for a tiny model)."""
  def init(rng, *args):
    return nn.unbox(model.init(rng, *args, method=method)["params"])
  return jax.jit(init)(rng, *args)


def logical_axes(model: nn.Module, *args, method=None) -> dict:
  """Pytree of `jax.sharding.PartitionSpec` of logical axis names, matching the params."""
  boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args, method=method))
  return nn.get_partition_spec(boxed)["params"]


def count_params(params) -> int:
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params))
