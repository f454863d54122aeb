"""Run with XLA_FLAGS=--xla_force_host_platform_device_count=8: compares the sharded
train step on meshes 1x1, 8x1, 4x2 and 2x4 (and gradient accumulation) and prints the
largest differences as JSON."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ps_jax import sharding  # noqa: E402
from train_fixtures import run_steps, tiny_batch, tiny_model  # noqa: E402


def max_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def main():
  assert jax.device_count() == 8, jax.devices()
  model = tiny_model()
  batches = [tiny_batch(seed=s) for s in range(2)]
  ref, ref_hist = run_steps(model, batches, sharding.make_mesh(1, 1, jax.devices()[:1]))
  out = {"devices": jax.device_count(), "loss": [h["loss"] for h in ref_hist]}
  for name, (data, fsdp, accum) in {"8x1": (8, 1, 1), "4x2": (4, 2, 1), "2x4": (2, 4, 1),
                                    "4x2_accum2": (4, 2, 2)}.items():
    mesh = sharding.make_mesh(data, fsdp)
    got, hist = run_steps(model, batches, mesh, grad_accum_steps=accum)
    out[name] = {"params": max_diff(got["params"], ref["params"]),
                 "opt_state": max_diff(got["opt_state"], ref["opt_state"]),
                 "loss": max(abs(h["loss"] - r["loss"]) for h, r in zip(hist, ref_hist))}
  print("RESULT " + json.dumps(out))


if __name__ == "__main__":
  main()
