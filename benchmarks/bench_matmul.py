"""Matmul forms of one transformer layer on the current device, GFLOP/s per dtype form.

  python benchmarks/bench_matmul.py [--rows 600] [--width 768] [--inner 3072] [--reps 7]

Rows: the forward MLP matmul x[M, D] @ w[D, I], its two backward matmuls (dx = g w^T,
dw = x^T g), each with float32 operands, bfloat16 operands and a float32 result
(`layers.mixed_precision_matmul`'s form) and bfloat16 operands and a bfloat16 result
(what `nn.Dense(dtype=bfloat16)` asks for); then ViT-B/32's patch embedding of 12 frames
two ways: as the strided convolution the model runs (`clip.VisionEmbeddings`' bias-free
`nn.Conv` named `patch_embedding`, kernel = stride = patch size) and as the same product
written as one matmul, the flattened non-overlapping patches times the reshaped kernel
(`patch_matmul` below; the model used that form once and went back to the convolution,
because the matmul rounds float32 differently). Each time is the best of --reps runs.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def best_seconds(fn, *args, reps: int) -> float:
  fn = jax.jit(fn)
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return min(times)


def dot(a, b, dims, out):
  return lax.dot_general(a, b, (dims, ((), ())), preferred_element_type=out)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rows", type=int, default=600, help="M: tokens in the batch")
  p.add_argument("--width", type=int, default=768, help="D")
  p.add_argument("--inner", type=int, default=3072, help="I")
  p.add_argument("--reps", type=int, default=7)
  args = p.parse_args()
  m, d, i = args.rows, args.width, args.inner
  rng = np.random.default_rng(0)
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}; "
        f"M={m}, D={d}, I={i}\n")
  print("| matmul | operands | result | ms | GFLOP/s |")
  print("|---|---|---|---:|---:|")
  forms = [("float32", jnp.float32, jnp.float32), ("bfloat16", jnp.bfloat16, jnp.float32),
           ("bfloat16", jnp.bfloat16, jnp.bfloat16)]
  for name, op, dims in [("forward x @ w", ("x", "w"), ((1,), (0,))),
                         ("backward g @ w^T", ("g", "w"), ((1,), (1,))),
                         ("backward x^T @ g", ("x", "g"), ((0,), (0,)))]:
    for label, dtype, out in forms:
      arrays = {"x": rng.standard_normal((m, d)), "w": rng.standard_normal((d, i)),
                "g": rng.standard_normal((m, i))}
      a, b = (jnp.asarray(arrays[k], dtype) for k in op)
      sec = best_seconds(lambda a, b, dims=dims, out=out: dot(a, b, dims, out), a, b,
                         reps=args.reps)
      print(f"| {name} | {label} | {jnp.dtype(out).name} | {1e3 * sec:.2f} | "
            f"{2 * m * d * i / sec / 1e9:.0f} |")

  # ViT-B/32 patch embedding of 12 frames.
  n, s, patch, width = 12, 224, 32, 768
  pixels = jnp.asarray(rng.standard_normal((n, s, s, 3)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((patch, patch, 3, width)), jnp.float32)
  g = s // patch
  flops = 2 * n * g * g * patch * patch * 3 * width

  def conv(x, k):
    return lax.conv_general_dilated(x, k, (patch, patch), "VALID",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def patch_matmul(x, k):
    x = x.reshape(n, g, patch, g, patch, 3).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, g * g, -1) @ k.reshape(-1, width)

  print(f"\n| patch embedding ({n} x {s}px, patch {patch}) | ms | GFLOP/s |")
  print("|---|---:|---:|")
  for name, fn in [("strided convolution", conv), ("patches @ kernel", patch_matmul)]:
    sec = best_seconds(fn, pixels, kernel, reps=args.reps)
    print(f"| {name} | {1e3 * sec:.2f} | {flops / sec / 1e9:.0f} |")


if __name__ == "__main__":
  main()
