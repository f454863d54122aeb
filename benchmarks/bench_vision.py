"""Forward throughput of the CLIP vision tower (frames/s) with scan unrolling and remat on/off.

Usage: python benchmarks/bench_vision.py [--model vitb32] [--batch 32] [--steps 5]
Random weights, 224 px (--model tiny: a 2-layer, 32 px tower for smoke runs), whatever
device JAX finds. Prints a markdown table.
"""

import argparse
import time

import jax
import jax.numpy as jnp

from ps_jax.models import clip

MODELS = {
    "tiny": clip.VisionConfig(image_size=32, patch_size=8, hidden_size=64,
                              intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=2),
    "vitb32": clip.VisionConfig(patch_size=32),
    "vitb16": clip.VisionConfig(patch_size=16),
    "vitl14": clip.VisionConfig(patch_size=14, hidden_size=1024, intermediate_size=4096,
                                num_hidden_layers=24, num_attention_heads=16),
}


def time_forward(vision: clip.VisionConfig, compute: clip.Compute, batch: int, steps: int,
                 grad: bool) -> float:
  """Seconds per call of the jitted vision tower forward (or forward + backward)."""
  model = clip.VisionTransformer(vision, compute=compute)
  pixels = jax.random.normal(jax.random.PRNGKey(0), (batch, vision.image_size,
                                                     vision.image_size, 3))
  params = clip.init_params(model, jax.random.PRNGKey(1), pixels[:1])
  if grad:
    fn = jax.jit(jax.grad(lambda p, x: jnp.sum(model.apply({"params": p}, x) ** 2)))
  else:
    fn = jax.jit(lambda p, x: model.apply({"params": p}, x))
  jax.block_until_ready(fn(params, pixels))  # compile
  start = time.perf_counter()
  for _ in range(steps):
    out = fn(params, pixels)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--model", default="vitb32", choices=sorted(MODELS))
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--grad", action="store_true", help="time forward + backward")
  args = parser.parse_args()
  vision = MODELS[args.model]
  layers = vision.num_hidden_layers
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, model {args.model}, "
        f"batch {args.batch}, dtype {args.dtype}, {'fwd+bwd' if args.grad else 'forward'}")
  print("| scan unroll | remat | s/step | frames/s |")
  print("|---|---|---|---|")
  for unroll in (1, layers):
    for remat in ("none", "full"):
      compute = clip.Compute(dtype=args.dtype, remat_policy=remat, scan_unroll=unroll)
      sec = time_forward(vision, compute, args.batch, args.steps, args.grad)
      label = "rolled (1)" if unroll == 1 else f"unrolled ({unroll})"
      print(f"| {label} | {remat} | {sec:.3f} | {args.batch / sec:.1f} |", flush=True)


if __name__ == "__main__":
  main()
