"""Tiny training setups shared by the training tests (importable in subprocesses)."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from ps_jax import api, optim, sharding
from ps_jax import train_step as ts
from ps_jax.config_defaults import load_config_file
from ps_jax.models.clip import ClipConfig, TextConfig, VisionConfig, logical_axes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(REPO, "tests", "configs", "tiny.py")
VOCAB = 40


def tiny_config(**overrides):
  """tests/configs/tiny.py (configs/demo.py shrunk) with dotted-key overrides."""
  c = load_config_file(TINY_CONFIG)
  for key, value in overrides.items():
    target = c
    *path, last = key.split(".")
    for p in path:
      target = target[p]
    target[last] = value
  return c


def tiny_model(num_prompts=2, **kw):
  clip = ClipConfig(
      TextConfig(vocab_size=VOCAB, max_position_embeddings=8, hidden_size=32,
                 intermediate_size=48, num_hidden_layers=1, num_attention_heads=2),
      VisionConfig(image_size=16, patch_size=8, hidden_size=32, intermediate_size=48,
                   num_hidden_layers=2, num_attention_heads=2), projection_dim=32)
  return api.build_model(clip, num_prompts=num_prompts, **kw)


def tiny_batch(batch=8, frames=4, seed=0):
  rng = np.random.default_rng(seed)
  ids = np.full((batch, 8), VOCAB - 1, np.int32)
  mask = np.zeros((batch, 8), np.int32)
  for b in range(batch):
    n = int(rng.integers(2, 6))
    ids[b, 0] = VOCAB - 2
    ids[b, 1:1 + n] = rng.integers(0, VOCAB - 2, n)
    mask[b, :n + 2] = 1
  return {"frames": rng.integers(0, 256, (batch, frames, 16, 16, 3), dtype=np.uint8),
          "input_ids": ids, "attention_mask": mask}


OPTIM = dict(lr_clip=1e-3, lr_new=1e-3, weight_decay=0.2, b1=0.9, b2=0.999, eps=1e-6,
             warmup_fraction=0.1, grad_clip=1.0)


def make_train_step(model, mesh, example_batch, rules=(("embed", "fsdp"),),
                    grad_accum_steps=1, ema_decay=0.0, total_steps=10, **optim_overrides):
  """(initial state on `mesh`, jitted sharded step, state shardings) for `model`."""
  tx, schedules = optim.make_optimizer({**OPTIM, **optim_overrides}, total_steps)
  lc = ts.LossConfig(jnp.asarray(np.linspace(0.25, 1.0, VOCAB), jnp.float32), VOCAB - 1)
  shapes = api.param_shapes(model)
  ps = sharding.param_shardings(logical_axes(model, *api.dummy_inputs(model)), shapes, mesh,
                                dict(rules))
  params = jax.device_put(api.init_model_params(model, jax.random.PRNGKey(0)), ps)
  rng = jax.random.PRNGKey(1)
  abstract = jax.eval_shape(lambda: ts.create_state(shapes, tx, rng, ema_decay > 0))
  shard = ts.state_shardings(mesh, ps, abstract)
  state = jax.jit(lambda p: ts.create_state(p, tx, rng, ema_decay > 0),
                  out_shardings=shard)(params)
  step = ts.jit_train_step(model, tx, lc, schedules, shard, mesh,
                           grad_accum_steps=grad_accum_steps, ema_decay=ema_decay)
  return state, step, shard


def run_steps(model, batches, mesh, rules=(("embed", "fsdp"),), grad_accum_steps=1,
              ema_decay=0.0, total_steps=10, **optim_overrides):
  """Runs the jitted, sharded train step on `mesh`; returns (host state, [metrics])."""
  state, step, _ = make_train_step(model, mesh, batches[0], rules, grad_accum_steps,
                                   ema_decay, total_steps, **optim_overrides)
  history = []
  for batch in batches:
    state, metrics = step(state, sharding.global_batch(batch, mesh))
    history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
  return jax.device_get(state), history


def local_rows(batch, mesh):
  """This process's rows of a global host batch (what its input pipeline would read)."""
  rows = sharding.process_batch_rows(mesh, len(next(iter(batch.values()))))
  return {k: v[rows] for k, v in batch.items()}


def run_steps_per_process(model, batches, mesh, **kwargs):
  """Like `run_steps`, but on several processes: each feeds only its `local_rows` of
  every batch. Returns (state as global jax.Arrays on `mesh`, [metrics])."""
  state, step, _ = make_train_step(model, mesh, batches[0], **kwargs)
  history = []
  for batch in batches:
    state, metrics = step(state, sharding.global_batch(local_rows(batch, mesh), mesh))
    history.append({k: float(v) for k, v in metrics.items()})  # replicated: readable
  return state, history
