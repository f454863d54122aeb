"""Model FLOPs of a training step, and step-time bounds (estimates) from compiled costs.

Layer: foundation (imports topology only). The analytic count is what MFU is measured
against: the matmul and attention FLOPs a dense implementation must do, 3x the forward
(forward + backward; rematerialised recomputation is not model FLOPs). The compiled
count (`cost_analysis()["flops"]`) divided by it is the overhead of remat and padding.
"""

from __future__ import annotations

from typing import Optional

from ps_jax import topology


def _layers(tokens: int, width: int, mlp: int, n: int) -> float:
  """Forward FLOPs of n pre-LN transformer layers over one sequence: the q/k/v/out and
  MLP projections, QK^T and the weighted sum of V (dense)."""
  return n * (tokens * 2 * (4 * width * width + 2 * width * mlp) + 4 * tokens ** 2 * width)


def forward_flops_per_video(model, frames: int, text_len: int) -> dict:
  """Forward FLOPs of one (video of `frames` frames, caption of `text_len` tokens) pair,
  by part: {"vision", "text", "caption"} (caption: the training-only caption head)."""
  v, t, c = model.clip.vision, model.clip.text, model.config
  e, p = model.clip.projection_dim, c.num_prompts
  patches = (v.image_size // v.patch_size) ** 2
  vision = frames * (2 * 3 * v.patch_size ** 2 * v.hidden_size * patches
                     + _layers(1 + patches + p, v.hidden_size, v.intermediate_size,
                               v.num_hidden_layers) + 2 * v.hidden_size * e)
  if p and c.aggregate:  # per chunk: P CLS queries attend to the P*P prompt states
    d = v.hidden_size
    vision += frames // p * (2 * d * d * (2 * p + 2 * p * p) + 4 * p * p * p * d)
  text = _layers(text_len, t.hidden_size, t.intermediate_size, t.num_hidden_layers)
  text += 2 * t.hidden_size * e
  caption = 0.0
  if c.num_captioner_layers:
    n, d = text_len - 1, t.hidden_size
    # Self-attention (4 d^2), cross-attention q/out (2 d^2) and FFN per position; the
    # cross-attention keys / values over the F frame features; both attention products.
    per_layer = (n * 2 * (4 * d * d + 2 * d * d + 2 * d * t.intermediate_size)
                 + 2 * 2 * frames * e * d + 4 * n * n * d + 4 * n * frames * d)
    caption = c.num_captioner_layers * per_layer + 2 * d * t.vocab_size * n
  return {"vision": float(vision), "text": float(text), "caption": float(caption)}


def analytic_train_flops(model, videos: float, frames: int, text_len: int) -> float:
  """Model FLOPs of a training step on `videos` (video, caption) pairs: 3x forward."""
  return 3.0 * videos * sum(forward_flops_per_video(model, frames, text_len).values())


def step_estimate(flops: float, bytes_accessed: float, optimal_seconds: Optional[float],
                  chip: topology.Chip, model_flops: float, optimal_ok: bool) -> dict:
  """A step-time bound (an ESTIMATE, never a measurement) and the MFU it implies.

  Args:
    flops, bytes_accessed: the compiled program's per-chip cost analysis.
    optimal_seconds: the compiler's own estimate (may be negative: not meaningful).
    chip: the chip's peak bfloat16 FLOP/s and HBM bandwidth.
    model_flops: `analytic_train_flops` per chip.
    optimal_ok: use `optimal_seconds` (it was positive and grew with the batch); else
      the roofline max(FLOPs / peak, bytes accessed / HBM bandwidth).
  """
  compute = flops / chip.peak_flops
  memory = bytes_accessed / chip.hbm_bandwidth
  roofline = max(compute, memory)
  seconds = optimal_seconds if optimal_ok else roofline
  return {"compute_seconds": compute, "memory_seconds": memory,
          "roofline_seconds": roofline, "bound": "compute" if compute >= memory else "memory",
          "estimate_seconds": seconds,
          "estimate_source": "optimal_seconds" if optimal_ok else "roofline",
          "model_flops": model_flops, "flops_ratio": flops / model_flops,
          "mfu": model_flops / (chip.peak_flops * seconds) if seconds > 0 else float("nan")}
