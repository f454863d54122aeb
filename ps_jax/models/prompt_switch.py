"""The Prompt Switch video-text model: CLIP towers, prompt cube video encoder, caption head.

Parameter tree (the CLIP part is laid out exactly like `ps_jax.models.clip.CLIP`, so HF
CLIP weights load into it unchanged):
  text_model/..., vision_model/... (+ `prompt` [P, P, D] and `aggregation/attn/...`),
  text_projection, visual_projection, logit_scale,
  caption/{prenorm, decoder/layers/... (scanned), norm, head}.

Layer: models (imports `models.clip`, `models.layers`).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ps_jax.models import layers as L
from ps_jax.models.clip import (ClipConfig, Compute, TextTransformer, VisionTransformer,
                                eot_pool, l2_normalize)

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class PromptSwitchConfig:
  """What Prompt Switch adds to CLIP; the switches exist for ablations."""
  num_prompts: int = 6           # P; 0 = plain CLIP with mean pooling (CLIP4Clip baseline)
  switch: bool = True            # transpose the prompt cube before every self-attention
  aggregate: bool = True         # CLS attends to its group's prompts after the last layer
  num_captioner_layers: int = 2  # 0 = no caption head
  prompt_init_scale: float = 1.0  # x the official std D^-0.5 * 0.02 of the cube's init
  # G: the aggregation groups G consecutive frames of a clip (every CLS attends to the
  # G*P prompts of its group). The official model fixes G to its training num_frames,
  # at training and at test. 0 = P, one chunk (official default: num_frames = P = 6).
  aggregation_frames: int = 0

  @property
  def aggregation_group(self) -> int:
    """G, the frames whose prompts a CLS state attends to (P when the field is 0)."""
    return self.aggregation_frames or self.num_prompts

  def validate(self, clip: ClipConfig) -> "PromptSwitchConfig":
    if self.num_prompts < 0:
      raise ValueError(f"num_prompts must be >= 0, got {self.num_prompts}")
    g, p = self.aggregation_frames, self.num_prompts
    if g < 0 or (g and (not p or g % p)):
      raise ValueError(f"aggregation_frames must be 0 or a positive multiple of "
                       f"num_prompts={p} (the official model's training num_frames), got {g}")
    if self.num_captioner_layers and clip.projection_dim != clip.text.hidden_size:
      raise ValueError(
          f"the caption head cross-attends from the text width ({clip.text.hidden_size}) to "
          f"projected frame features (projection_dim={clip.projection_dim}); they must be "
          "equal (as in every released CLIP), or set num_captioner_layers=0")
    return self


class DecoderLayer(nn.Module):
  """`torch.nn.TransformerDecoderLayer` (post-norm, ReLU, no dropout at inference).

  Initialised with torch's defaults: attention as `layers.PackedAttention`, linear1 and
  linear2 weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)), LayerNorms 1 and 0.
  """
  num_heads: int
  intermediate_size: int
  eps: float = 1e-5
  compute: Compute = Compute()

  @nn.compact
  def __call__(self, x: Array, memory: Array, bias: Array) -> tuple[Array, None]:
    """x: [B, T, D]; memory: [B, F, D]; bias: causal mask [1, 1, T, T] -> ([B, T, D], None)."""
    dtype, impl = self.compute.jnp_dtype, self.compute.attention_impl
    x = x + L.PackedAttention(self.num_heads, dtype, impl, name="self_attn")(x, x, bias)
    x = L.LayerNorm(self.eps, dtype, name="norm1")(x)
    x = x + L.PackedAttention(self.num_heads, dtype, impl, name="multihead_attn")(x, memory)
    x = L.LayerNorm(self.eps, dtype, name="norm2")(x)
    d, i = x.shape[-1], self.intermediate_size
    h = L.Dense(i, ("embed", "mlp"), dtype=dtype, kernel_init=L.torch_linear_init(),
                bias_init=L.torch_bias_init(d), name="linear1")(x)
    h = L.Dense(d, ("mlp", "embed"), dtype=dtype, kernel_init=L.torch_linear_init(),
                bias_init=L.torch_bias_init(i), name="linear2")(jax.nn.relu(h))
    return L.LayerNorm(self.eps, dtype, name="norm3")(x + h), None


class CaptionHead(nn.Module):
  """Predicts the caption from the frame features (training-only auxiliary task).

  Initialisation follows the official model: every decoder layer starts from the same
  values (torch's TransformerDecoder deep-copies one layer; here the scan gives every
  layer the same params RNG), LayerNorms 1 and 0, and the output layer is a copy of the
  token embedding with a zero bias.
  """
  config: ClipConfig
  num_layers: int
  compute: Compute = Compute()

  @nn.compact
  def __call__(self, text_embeddings: Array, memory: Array, token_embedding: Array) -> Array:
    """text_embeddings: [B, T, Dt] token+position embeddings (already stop-gradient);
    memory: [B, F, E] projected frame features; token_embedding: [V, Dt] used only to
    initialise the output layer -> logits float32[B, T, V]."""
    t = self.config.text
    dtype = self.compute.jnp_dtype
    x = L.LayerNorm(1e-5, dtype, name="prenorm")(text_embeddings)
    layer = DecoderLayer
    if self.compute.remat_policy != "none":
      layer = nn.remat(layer, prevent_cse=False,
                       policy=L.REMAT_POLICIES[self.compute.remat_policy])
    decoder = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": False},
                      in_axes=(nn.broadcast, nn.broadcast), length=self.num_layers,
                      unroll=self.compute.scan_unroll,
                      metadata_params={nn.PARTITION_NAME: "layers"})
    bias = L.causal_bias(x.shape[1])
    x, _ = decoder(t.num_attention_heads, t.intermediate_size, 1e-5, self.compute,
                   name="decoder")(x, memory, bias)
    x = L.LayerNorm(1e-5, dtype, name="norm")(x)
    head = L.Dense(t.vocab_size, ("embed", "vocab"), dtype=dtype,
                   kernel_init=lambda *_: token_embedding.T, name="head")
    return head(x).astype(jnp.float32)


class PromptSwitch(nn.Module):
  """Prompt Switch text-video retrieval model (public API of DESIGN.md).

  Methods (apply with `method=`): `encode_text`, `encode_video`, `caption_logits`;
  `__call__` runs all three for training.
  """
  clip: ClipConfig
  config: PromptSwitchConfig = PromptSwitchConfig()
  compute: Compute = Compute()

  def setup(self):
    c, ps = self.clip, self.config.validate(self.clip)
    dtype = self.compute.jnp_dtype
    self.text_model = TextTransformer(c.text, self.compute)
    self.vision_model = VisionTransformer(c.vision, ps.num_prompts, ps.switch, ps.aggregate,
                                          ps.prompt_init_scale, self.compute,
                                          ps.aggregation_frames)
    self.text_projection = L.Dense(c.projection_dim, ("embed", "proj"), use_bias=False,
                                   dtype=dtype)
    self.visual_projection = L.Dense(c.projection_dim, ("embed", "proj"), use_bias=False,
                                     dtype=dtype)
    self.logit_scale = self.param(
        "logit_scale", L.partitioned(nn.initializers.constant(c.logit_scale_init_value), ()),
        ())
    if ps.num_captioner_layers:
      self.caption = CaptionHead(c, ps.num_captioner_layers, self.compute)

  @property
  def num_prompts(self) -> int:
    return self.config.num_prompts

  def encode_text(self, input_ids: Array, attention_mask: Optional[Array] = None) -> Array:
    """input_ids int32[B, L], attention_mask int[B, L] -> L2-normalised float32[B, E]."""
    hidden = self.text_model(input_ids, attention_mask)
    feats = self.text_projection(eot_pool(hidden, input_ids)).astype(jnp.float32)
    return l2_normalize(feats)

  def encode_video(self, frames: Array) -> dict[str, Array]:
    """frames float32[B, F, H, W, 3] (CLIP-normalised, chunk-major, F % P == 0 and, with
    the aggregation, F % G == 0) ->
    {"frame_features": float32[B, F, E] (projected, not normalised),
     "video_embedding": float32[B, E] (normalised mean of normalised frame features)}."""
    b, f = frames.shape[:2]
    p, g = self.config.num_prompts, self.config.aggregation_group
    if p and f % p:
      raise ValueError(f"number of frames F={f} must be a multiple of num_prompts={p}")
    if p and self.config.aggregate and f % g:
      raise ValueError(
          f"number of frames F={f} must be a multiple of aggregation_frames={g}: the "
          "official aggregation groups the frames of its training clips (num_frames), and "
          "a clip that is not a whole number of such groups would mix clips")
    pooled = self.vision_model(frames.reshape(b * f, *frames.shape[2:]))
    feats = self.visual_projection(pooled).astype(jnp.float32).reshape(b, f, -1)
    video = l2_normalize(jnp.mean(l2_normalize(feats), axis=1))
    return {"frame_features": feats, "video_embedding": video}

  def caption_logits_from_features(self, input_ids: Array, frame_features: Array) -> Array:
    """input_ids int32[B, L], frame_features float32[B, F, E] -> float32[B, L-1, V]."""
    if not self.config.num_captioner_layers:
      raise ValueError("this model has no caption head (num_captioner_layers=0)")
    embeddings = jax.lax.stop_gradient(self.text_model.embed(input_ids[:, :-1]))
    table = self.text_model.token_embedding.embedding
    return self.caption(embeddings, frame_features, table)

  def caption_logits(self, input_ids: Array, frames: Array) -> Array:
    """input_ids int32[B, L], frames float32[B, F, H, W, 3] -> logits float32[B, L-1, V]
    predicting input_ids[:, 1:]."""
    feats = self.encode_video(frames)["frame_features"]
    return self.caption_logits_from_features(input_ids, feats)

  def __call__(self, input_ids: Array, attention_mask: Array, frames: Array) -> dict:
    """Training forward: text_embedding [B, E], video_embedding [B, E], frame_features
    [B, F, E], logit_scale [], and caption_logits [B, L-1, V] when there is a head."""
    video = self.encode_video(frames)
    out = {"text_embedding": self.encode_text(input_ids, attention_mask),
           "video_embedding": video["video_embedding"],
           "frame_features": video["frame_features"], "logit_scale": self.logit_scale}
    if self.config.num_captioner_layers:
      out["caption_logits"] = self.caption_logits_from_features(
          input_ids, video["frame_features"])
    return out
