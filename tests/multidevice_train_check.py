"""Run with XLA_FLAGS=--xla_force_host_platform_device_count=8: compares the sharded
train step on meshes 1x1, 8x1, 4x2 and 2x4 (and gradient accumulation) and prints the
largest differences as JSON, then the layout FSDP gives the trainer's state and
gradients on a 2x4 mesh (`layout`)."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import functools  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ps_jax import api, sharding  # noqa: E402
from ps_jax import train_step as ts  # noqa: E402
from ps_jax.models.clip import ClipConfig, TextConfig, VisionConfig  # noqa: E402
from train_fixtures import make_train_step, run_steps, tiny_batch, tiny_model  # noqa: E402


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
  out["layout"] = fsdp_layout()
  print("RESULT " + json.dumps(out))


def _by_path(tree):
  return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _axes(x):
  """The mesh axis (or None) of each dimension of a jax.Array."""
  spec = tuple(x.sharding.spec) + (None,) * (x.ndim - len(x.sharding.spec))
  return [a if a is None or isinstance(a, str) else "+".join(a) for a in spec]


def fsdp_layout():
  """The trainer's state after one step on data=2 x fsdp=4, and its gradients.

  The text tower is 30 wide (30 % 4 != 0: its `embed` dimensions cannot be split), the
  vision tower 32 (split in 4)."""
  clip = ClipConfig(
      TextConfig(vocab_size=40, max_position_embeddings=8, hidden_size=30,
                 intermediate_size=48, num_hidden_layers=1, num_attention_heads=2),
      VisionConfig(image_size=16, patch_size=8, hidden_size=32, intermediate_size=48,
                   num_hidden_layers=2, num_attention_heads=2), projection_dim=30)
  model = api.build_model(clip, num_prompts=2)
  mesh = sharding.make_mesh(2, 4)
  batch = tiny_batch()
  state, step, shard = make_train_step(model, mesh, batch)
  state, _ = step(state, sharding.global_batch(batch, mesh))
  params = _by_path(state["params"])
  moments = {}
  for path, leaf in _by_path(state["opt_state"]).items():
    for name in params:
      if path.endswith(name) and leaf.shape == params[name].shape:
        moments.setdefault(name, []).append(leaf)
  grad_fn = jax.jit(functools.partial(ts.compute_grads, model=model, lc=ts.LossConfig(
      jax.numpy.linspace(0.25, 1.0, 40), 39), grad_shardings=shard["params"]))
  _, grads, _ = grad_fn(state["params"], sharding.global_batch(batch, mesh))
  grads = _by_path(grads)
  same = lambda a, b: a.sharding.is_equivalent_to(b.sharding, b.ndim)
  return {
      "num_params": len(params),
      "moments_per_param": sorted({len(v) for v in moments.values()}),
      "moments_like_param": all(same(m, params[n]) for n, ms in moments.items() for m in ms),
      "grads_like_param": all(same(grads[n], p) for n, p in params.items()),
      "sharded_params": sum(1 for p in params.values() if "fsdp" in _axes(p)),
      "specs": {n: _axes(p) for n, p in params.items()},
      "shard_shapes": {n: list(p.addressable_shards[0].data.shape) for n, p in params.items()},
      "shapes": {n: list(p.shape) for n, p in params.items()},
  }


if __name__ == "__main__":
  main()
