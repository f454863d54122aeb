"""An independent PyTorch reference of the official Prompt Switch model, for tests.

Built from `transformers.CLIPModel` modules and torch's own MultiheadAttention and
TransformerDecoder, with parameter names equal to the official trainer's state_dict,
and the forward pass written directly from DESIGN.md's "Model semantics".
"""

import torch
from torch import nn
import transformers


class TorchPromptSwitch(nn.Module):
  """clip.* (HF CLIPModel + prompt_embedding + attn), caption_prenorm/transformer/head.

  `num_frames` is the official vision config's num_frames (the training clip length,
  which the official model keeps at test): the aggregation reshapes the flat frame
  batch into groups of that many frames, as the official CLIPVisionTransformer does.
  """

  def __init__(self, hf_config: transformers.CLIPConfig, num_prompts: int,
               num_captioner_layers: int = 2, num_frames: int = 0):
    super().__init__()
    self.p = num_prompts
    self.nf = num_frames or num_prompts
    self.clip = transformers.CLIPModel(hf_config)
    vis, txt = hf_config.vision_config, hf_config.text_config
    d = vis.hidden_size
    self.clip.vision_model.encoder.prompt_embedding = nn.Parameter(
        torch.randn(num_prompts, num_prompts, d) * d ** -0.5 * 0.02)
    self.clip.vision_model.attn = nn.MultiheadAttention(d, vis.num_attention_heads,
                                                        batch_first=True)
    dt = txt.hidden_size
    self.caption_prenorm = nn.LayerNorm(dt)
    layer = nn.TransformerDecoderLayer(dt, txt.num_attention_heads, txt.intermediate_size,
                                       dropout=0.0, activation="relu", batch_first=True)
    self.caption_transformer = nn.TransformerDecoder(layer, num_captioner_layers,
                                                     norm=nn.LayerNorm(dt))
    self.caption_head = nn.Linear(dt, txt.vocab_size)

  def encode_text(self, input_ids, attention_mask):
    pooled = self.clip.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
    return nn.functional.normalize(self.clip.text_projection(pooled), dim=-1)

  def frame_features(self, frames):
    """frames [B, F, 3, H, W] -> projected frame features [B, F, E]."""
    b, f = frames.shape[:2]
    p, vm = self.p, self.clip.vision_model
    h = vm.pre_layrnorm(vm.embeddings(frames.flatten(0, 1)))
    d = h.shape[-1]
    h = torch.cat([h, vm.encoder.prompt_embedding.repeat(b * f // p, 1, 1)], dim=1)
    for layer in vm.encoder.layers:
      y = layer.layer_norm1(h)
      cube = y[:, -p:].reshape(-1, p, p, d).transpose(1, 2).reshape(-1, p, d)
      y = torch.cat([y[:, :-p], cube], dim=1)
      h = h + layer.self_attn(hidden_states=y)[0]
      h = h + layer.mlp(layer.layer_norm2(h))
    # Official: bs = (B*F) // nf; q = CLS [bs, nf, D]; kv = the nf*P prompts of the group.
    groups = b * f // self.nf
    cls = h[:, 0].reshape(groups, self.nf, d)
    prompts = h[:, -p:].reshape(groups, self.nf * p, d)
    cls = cls + vm.attn(cls, prompts, prompts, need_weights=False)[0]
    cls = vm.post_layernorm(cls.reshape(-1, d))
    return self.clip.visual_projection(cls).reshape(b, f, -1)

  def encode_video(self, frames):
    feats = self.frame_features(frames)
    video = nn.functional.normalize(feats, dim=-1).mean(dim=1)
    return feats, nn.functional.normalize(video, dim=-1)

  def caption_logits(self, input_ids, frames):
    memory = self.frame_features(frames)
    emb = self.clip.text_model.embeddings(input_ids=input_ids[:, :-1]).detach()
    x = self.caption_prenorm(emb)
    mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
    x = self.caption_transformer(x, memory, tgt_mask=mask, tgt_is_causal=True)
    return self.caption_head(x)
