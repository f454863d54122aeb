"""What fits where: parameter / optimizer-state bytes per device, and activation estimates.

  python launch/memory_estimate.py                       # the tables in launch/README.md
  python launch/memory_estimate.py --models l14 --fsdp 1,4,8,16 --frames 12

Parameter counts are exact (`ps_jax.models.clip.count_params` on `api.param_shapes`, the
Prompt Switch model with 6 prompts and the 2-layer caption head). Bytes per device are
exact for the sharding `config.sharding_rules` gives on a (data, fsdp) mesh: every
parameter shard is float32, AdamW keeps two float32 moments per parameter, placed like
the parameter, and the gradients (float32, transient during the update) are laid out
like them too. Activation numbers are ESTIMATES from a per-layer count of the tensors a
pre-LayerNorm block keeps for the backward pass; XLA fuses, rematerialises and pads, so
measure (e.g. `jax.jit(...).lower(...).compile().memory_analysis()`) before relying on
them.
"""

import argparse
import math
import os
import sys

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ps_jax import api, sharding  # noqa: E402  pylint: disable=g-import-not-at-top
from ps_jax import train_step as ts  # noqa: E402  pylint: disable=g-import-not-at-top
from ps_jax.config_defaults import base_config  # noqa: E402  pylint: disable=g-import-not-at-top
from ps_jax.models.clip import (ClipConfig, TextConfig, VisionConfig,  # noqa: E402  pylint: disable=g-import-not-at-top
                                count_params, logical_axes)

GiB = 2 ** 30
# OpenAI CLIP backbones (as in their Hugging Face config.json files).
BACKBONES = {
    "b32": ("ViT-B/32", dict(patch_size=32, hidden_size=768, intermediate_size=3072,
                             num_hidden_layers=12, num_attention_heads=12),
            dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                 num_attention_heads=8), 512),
    "b16": ("ViT-B/16", dict(patch_size=16, hidden_size=768, intermediate_size=3072,
                             num_hidden_layers=12, num_attention_heads=12),
            dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                 num_attention_heads=8), 512),
    "l14": ("ViT-L/14", dict(patch_size=14, hidden_size=1024, intermediate_size=4096,
                             num_hidden_layers=24, num_attention_heads=16),
            dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12), 768),
    # A small model that compiles in seconds: what tests/test_memory.py measures.
    "tiny": ("tiny", dict(image_size=32, patch_size=8, hidden_size=64, intermediate_size=256,
                          num_hidden_layers=4, num_attention_heads=4),
             dict(vocab_size=1000, hidden_size=64, intermediate_size=256,
                  num_hidden_layers=2, num_attention_heads=4), 64),
}
# Elements a pre-LN block keeps per token for backward, in units of the width h, and
# attention matrices kept (units of heads x tokens^2), by remat policy (see REMAT_NOTE).
# The tensor count gives ~16 h for "none"; XLA:CPU's memory analysis of ViT-B/32
# (`--measure`) shows ~27 h (unfused elementwise temporaries), which is used here.
KEPT = {"none": (27, 2), "dots_saveable": (10, 1), "dots_with_no_batch_dims_saveable": (10, 0),
        "nothing_saveable": (1, 0), "full": (1, 0)}
REMAT_NOTE = (
    "none: LayerNorm in/out, q, k, v, attention output, residual and the 4h MLP tensors "
    "(~16 h per token per layer by count, ~27 h as XLA:CPU measures it) and 2 attention "
    "maps; dots_saveable keeps the matmul outputs (~10 h and the attention logits); "
    "dots_with_no_batch_dims_saveable only the projection outputs (~10 h); full / "
    "nothing_saveable each layer's input (1 h), recomputing one layer at a time (+1 "
    "layer of the 'none' working set).")


def build(key: str, num_prompts: int = 6):
  _, vision, text, proj = BACKBONES[key]
  clip = ClipConfig(TextConfig(**text), VisionConfig(**vision), projection_dim=proj)
  return api.build_model(clip, num_prompts=num_prompts)


def state_bytes_per_device(model, data: int, fsdp: int, rules) -> dict:
  """{"params", "adam", "grads"}: bytes on one device of a (data, fsdp) mesh."""
  mesh = AbstractMesh((data, fsdp), sharding.MESH_AXES)
  shapes = api.param_shapes(model)
  shardings = sharding.param_shardings(logical_axes(model, *api.dummy_inputs(model)),
                                       shapes, mesh, dict(rules))
  per_device = sum(math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
                   for x, s in zip(jax.tree_util.tree_leaves(shapes),
                                   jax.tree_util.tree_leaves(shardings)))
  return {"params": per_device, "adam": 2 * per_device, "grads": per_device}


def activation_bytes_per_video(model, frames: int, remat: str, bytes_per_value: int,
                               text_len: int = 32) -> float:
  """ESTIMATE of training activations for one video (F frames) and its caption."""
  v, t = model.clip.vision, model.clip.text
  s = 1 + (v.image_size // v.patch_size) ** 2 + model.config.num_prompts
  linear, maps = KEPT[remat]

  def tower(tokens, width, heads, layers):
    kept = layers * (linear * tokens * width + maps * heads * tokens ** 2)
    if remat in ("full", "nothing_saveable"):  # one layer recomputed at a time
      none_linear, none_maps = KEPT["none"]
      kept += none_linear * tokens * width + none_maps * heads * tokens ** 2
    return kept * bytes_per_value

  vision = frames * tower(s, v.hidden_size, v.num_attention_heads, v.num_hidden_layers)
  text = tower(text_len, t.hidden_size, t.num_attention_heads, t.num_hidden_layers)
  caption_logits = 2 * (text_len - 1) * t.vocab_size * 4  # float32 logits + their gradient
  return vision + text + caption_logits


def measure(key: str, videos: int, frames: int, remat: str, dtype: str,
            text_len: int = 32) -> dict:
  """XLA's memory analysis of the loss gradient for `videos` videos on ONE device of
  the default backend (compiled from shapes only: nothing is allocated).

  Returns {"temp": bytes of temporaries (activations and workspace), "estimate": this
  module's activation estimate for the same batch}.
  """
  _, vision, text, proj = BACKBONES[key]
  clip = ClipConfig(TextConfig(**text), VisionConfig(**vision), projection_dim=proj)
  model = api.build_model(clip, num_prompts=6, remat_policy=remat, dtype=dtype)
  size = clip.vision.image_size
  batch = {"frames": jax.ShapeDtypeStruct((videos, frames, size, size, 3), jnp.uint8),
           "input_ids": jax.ShapeDtypeStruct((videos, text_len), jnp.int32),
           "attention_mask": jax.ShapeDtypeStruct((videos, text_len), jnp.int32)}
  lc = ts.LossConfig(jnp.ones((clip.text.vocab_size,), jnp.float32), clip.text.vocab_size - 1)
  grad = jax.jit(lambda p, b: jax.grad(lambda q: ts.loss_fn(q, b, model, lc)[0])(p))
  compiled = grad.lower(api.param_shapes(model), batch).compile()
  nbytes = 2 if dtype == "bfloat16" else 4
  return {"temp": compiled.memory_analysis().temp_size_in_bytes,
          "estimate": videos * activation_bytes_per_video(model, frames, remat, nbytes,
                                                          text_len)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="b32,b16,l14",
                      help="comma list of b32,b16,l14 (and tiny, a test-sized model)")
  parser.add_argument("--fsdp", default="1,4,8,16,64", help="FSDP sizes to tabulate")
  parser.add_argument("--frames", default="6,12",
                      help="training frames per video (comma list; official: 6)")
  parser.add_argument("--measure", action="store_true",
                      help="instead of the tables, compile the loss gradient of each of "
                      "--models for --videos videos of each --frames on one device of "
                      "this machine's backend and print XLA's temporary bytes next to "
                      "the estimate")
  parser.add_argument("--videos", type=int, default=4, help="videos per device (--measure)")
  parser.add_argument("--remat", default="none,full", help="remat policies (--measure)")
  parser.add_argument("--dtype", default="float32", help="float32 or bfloat16 (--measure)")
  args = parser.parse_args()
  models = args.models.split(",")
  for m in models:
    if m not in BACKBONES:
      parser.error(f"--models: unknown {m!r}; choose from {sorted(BACKBONES)}")
  for r in args.remat.split(","):
    if r not in KEPT:
      parser.error(f"--remat: unknown {r!r}; choose from {list(KEPT)}")
  if args.measure:
    print(f"| backbone | videos x frames | dtype | remat_policy | XLA temp GiB "
          f"({jax.default_backend()}) | estimate GiB |\n|---|---|---|---|---:|---:|")
    for m in models:
      for frames in (int(f) for f in args.frames.split(",")):
        for remat in args.remat.split(","):
          got = measure(m, args.videos, frames, remat, args.dtype)
          print(f"| {BACKBONES[m][0]} | {args.videos} x {frames} | {args.dtype} | {remat} | "
                f"{got['temp'] / GiB:.2f} | {got['estimate'] / GiB:.2f} |", flush=True)
    return
  fsdps = [int(f) for f in args.fsdp.split(",")]
  rules = base_config().sharding_rules

  print("Parameters and float32 training state per device (params + AdamW m, v; "
        "gradients add one more params column while the update runs), default "
        "config.sharding_rules, GiB:\n")
  print("| backbone | parameters | params (fsdp=1) | "
        + " | ".join(f"params+adam, fsdp={f}" for f in fsdps) + " |")
  print("|---|---:|---:|" + "---:|" * len(fsdps))
  built = {}
  for m in models:
    model = built[m] = build(m)
    n = count_params(api.param_shapes(model))
    cells = []
    for f in fsdps:
      b = state_bytes_per_device(model, 1, f, rules)
      cells.append(f"{(b['params'] + b['adam']) / GiB:.2f}")
    full = state_bytes_per_device(model, 1, 1, rules)
    print(f"| {BACKBONES[m][0]} | {n / 1e6:.1f} M | {full['params'] / GiB:.2f} | "
          + " | ".join(cells) + " |")

  print("\nESTIMATED activations per training video (caption of 32 tokens), GiB, by "
        "config.model.remat_policy; multiply by the videos per device (per micro-batch "
        "with grad_accum_steps):\n")
  print("| backbone | frames | dtype | " + " | ".join(KEPT) + " |")
  print("|---|---:|---|" + "---:|" * len(KEPT))
  for m in models:
    for frames in (int(f) for f in args.frames.split(",")):
      for dtype, nbytes in (("float32", 4), ("bfloat16", 2)):
        cells = [f"{activation_bytes_per_video(built[m], frames, r, nbytes) / GiB:.3f}"
                 for r in KEPT]
        print(f"| {BACKBONES[m][0]} | {frames} | {dtype} | " + " | ".join(cells) + " |")
  print(f"\n({REMAT_NOTE})")


if __name__ == "__main__":
  main()
