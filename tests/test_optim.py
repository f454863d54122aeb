"""Optimiser: learning-rate groups, AdamW and schedule of the official recipe."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ps_jax import api, config_defaults, optim
from train_fixtures import tiny_model


def _groups(aggregation_group):
  model = tiny_model(num_prompts=2)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *api.dummy_inputs(model)))
  labels = optim.param_labels(nn.unbox(shapes)["params"], aggregation_group)
  flat = jax.tree_util.tree_flatten_with_path(labels)[0]
  return {"/".join(k.key for k in path): label for path, label in flat}


def test_the_cube_and_caption_head_are_new_the_aggregation_follows_the_option():
  official = _groups("clip")
  assert official["vision_model/prompt"] == "new"
  assert all(v == "new" for k, v in official.items() if k.startswith("caption/"))
  agg = {k: v for k, v in official.items() if k.startswith("vision_model/aggregation/")}
  assert agg and set(agg.values()) == {"clip"}
  assert official["logit_scale"] == "clip"
  assert official["text_model/token_embedding/embedding"] == "clip"
  moved = _groups("new")
  assert {k for k, v in moved.items() if v != official[k]} == set(agg)


# --------------------------------------------------------------- the official AdamW recipe
# A float64 numpy transcription of the official PyTorch recipe, written here from the
# formulas (independent of ps_jax): torch.nn.utils.clip_grad_norm_(params, max_norm),
# transformers 4.26 AdamW (eps before the bias correction, decay of the updated weights)
# and get_cosine_schedule_with_warmup stepped after each update.

def _hf_multiplier(step, total, warmup):
  if step < warmup:
    return step / max(1, warmup)
  progress = (step - warmup) / max(1, total - warmup)
  return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def _torch_clip(grads, max_norm):
  """(clipped grads, whether they were scaled)."""
  total = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
  coef = max_norm / (total + 1e-6)
  if coef < 1.0:
    return {k: g * coef for k, g in grads.items()}, True
  return grads, False


def _reference_run(params, grad_seq, groups, peaks, hp, total, warmup):
  """Flat {name: float64 array} params after len(grad_seq) official updates, and the
  steps on which clipping scaled the gradients."""
  p = {k: np.array(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  clipped = []
  for step, grads in enumerate(grad_seq):
    g, was = _torch_clip({k: np.asarray(x, np.float64) for k, x in grads.items()},
                         hp["grad_clip"])
    clipped.append(was)
    t = step + 1
    for k in p:
      lr = peaks[groups[k]] * _hf_multiplier(step, total, warmup)
      m[k] = hp["b1"] * m[k] + (1 - hp["b1"]) * g[k]
      v[k] = hp["b2"] * v[k] + (1 - hp["b2"]) * g[k] ** 2
      denom = np.sqrt(v[k]) + hp["eps"]
      step_size = lr * math.sqrt(1 - hp["b2"] ** t) / (1 - hp["b1"] ** t)
      p[k] = p[k] - step_size * m[k] / denom
      p[k] = p[k] - lr * hp["weight_decay"] * p[k]
  return p, clipped


SHAPES = {"vision_model/prompt": (2, 3), "vision_model/aggregation/kernel": (3, 3),
          "vision_model/encoder/kernel": (4, 3), "caption/bias": (5,), "logit_scale": ()}
# Per-leaf gradient scales: the caption bias gets tiny gradients (~1e-6, where eps matters
# most); the global norm is ~2.8 on even steps (clipped) and ~0.28 on odd ones (not).
LEAF_SCALE = {"vision_model/prompt": 1.0, "vision_model/aggregation/kernel": 0.5,
              "vision_model/encoder/kernel": 0.3, "caption/bias": 1e-6, "logit_scale": 0.2}
HP = dict(lr_clip=1e-2, lr_new=5e-2, weight_decay=0.2, b1=0.9, b2=0.999, eps=1e-6,
          warmup_fraction=0.3, grad_clip=1.0)
TOTAL, STEPS = 10, 6          # warm-up of int(0.3 * 10) = 3 steps, then the cosine


def _nest(flat):
  out = {}
  for name, x in flat.items():
    *head, last = name.split("/")
    node = out
    for k in head:
      node = node.setdefault(k, {})
    node[last] = x
  return out


def _flat(tree):
  return {"/".join(k.key for k in path): x
          for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  params = {k: rng.normal(size=s) for k, s in SHAPES.items()}
  grads = [{k: rng.normal(size=s) * LEAF_SCALE[k] * (1.0 if i % 2 == 0 else 0.1)
            for k, s in SHAPES.items()} for i in range(STEPS)]
  return params, grads


def _run_ps_jax(cfg, params, grads, dtype):
  tx, _ = optim.make_optimizer(cfg, TOTAL)
  p = _nest({k: jnp.asarray(v, dtype) for k, v in params.items()})
  state = tx.init(p)
  update = jax.jit(tx.update)
  for g in grads:
    u, state = update(_nest({k: jnp.asarray(v, dtype) for k, v in g.items()}), state, p)
    p = optax.apply_updates(p, u)
  return {k: np.asarray(v, np.float64) for k, v in _flat(p).items()}, state


def _reference():
  params, grads = _problem()
  groups = {k: optim.param_group(tuple(k.split("/"))) for k in SHAPES}
  assert set(groups.values()) == {"clip", "new"}
  ref, clipped = _reference_run(params, grads, groups,
                                {"clip": HP["lr_clip"], "new": HP["lr_new"]}, HP, TOTAL,
                                int(HP["warmup_fraction"] * TOTAL))
  assert any(clipped) and not all(clipped), clipped
  return params, grads, ref


def _max_rel_displacement_error(got, ref, start):
  """max over leaves of |got - ref| / max|ref - start| (error relative to the change)."""
  return max(float(np.max(np.abs(got[k] - ref[k])) / np.max(np.abs(ref[k] - start[k])))
             for k in ref)


# Errors are measured as max over leaves of |ps_jax - reference| / max|reference change|.
# float64 differs from the transcription only by the order of operations (observed 2e-14);
# float32 by its rounding of the O(1) weights and of the moments (observed 9e-6). Either
# formula change is far larger on this problem: eps after the bias correction (optax)
# moves the tiny-gradient caption bias by 0.57 of its change, decaying the pre-update
# weights moves the prompt by 8e-3.
X64_RTOL = 1e-10
F32_RTOL = 5e-5


def test_official_adamw_matches_the_torch_recipe_in_float64():
  params, grads, ref = _reference()
  with jax.enable_x64(True):
    got, state = _run_ps_jax(HP, params, grads, jnp.float64)
    moments = [x for x in jax.tree_util.tree_leaves(state) if x.ndim > 0]
    assert moments and all(x.dtype == jnp.float64 for x in moments)
  assert _max_rel_displacement_error(got, ref, params) < X64_RTOL


def test_official_adamw_matches_the_torch_recipe_in_float32():
  params, grads, ref = _reference()
  got, state = _run_ps_jax({**HP, "adamw": "official"}, params, grads, jnp.float32)
  floats = [x for x in jax.tree_util.tree_leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and all(x.dtype == jnp.float32 for x in floats)
  assert _max_rel_displacement_error(got, ref, params) < F32_RTOL


def test_official_and_optax_adamw_differ_early_in_warm_up():
  # Element-wise gradients ~1e-4 (a global norm of 1 spread over many weights): on the
  # first warm-up steps eps before the bias correction damps the official update to
  # ~sqrt(1 - b2^t)|g| / (sqrt(1 - b2^t)|g| + eps) ~ 0.8 of optax's |g| / (|g| + eps)
  # ~ 0.99. Observed: the weights' changes after 3 updates differ by 19% (norm ratio).
  rng = np.random.default_rng(1)
  params = {k: rng.normal(size=s) for k, s in SHAPES.items()}
  grads = [{k: rng.normal(size=s) * 1e-4 for k, s in SHAPES.items()} for _ in range(3)]
  cfg = {**HP, "warmup_fraction": 0.1}
  total = 100                   # warm-up of 10 steps in both variants: equal lr schedules
  moved = {}
  for variant in ("official", "optax"):
    tx, schedules = optim.make_optimizer({**cfg, "adamw": variant}, total)
    p = _nest({k: jnp.asarray(v, jnp.float32) for k, v in params.items()})
    state = tx.init(p)
    for g in grads:
      u, state = tx.update(_nest({k: jnp.asarray(v, jnp.float32) for k, v in g.items()}),
                           state, p)
      p = optax.apply_updates(p, u)
    moved[variant] = np.concatenate([(np.asarray(v) - params[k]).ravel()
                                     for k, v in _flat(p).items()])
    moved[variant + "_lr"] = [float(schedules["new"](s)) for s in range(4)]
  assert moved["official_lr"] == pytest.approx(moved["optax_lr"], rel=1e-6)
  rel = (np.linalg.norm(moved["official"] - moved["optax"])
         / np.linalg.norm(moved["optax"]))
  assert rel > 0.15, rel


@pytest.mark.parametrize("total,fraction,warmup", [(10, 0.1, 1), (7, 0.1, 0), (100, 0.1, 10)])
def test_the_schedule_is_transformers_cosine_with_warmup(total, fraction, warmup):
  assert optim.hf_warmup_steps(total, fraction) == warmup
  _, schedules = optim.make_optimizer({**HP, "warmup_fraction": fraction}, total)
  steps = np.arange(total + 1)
  traced = jax.jit(jax.vmap(schedules["clip"]))(jnp.asarray(steps, jnp.int32))
  want = [HP["lr_clip"] * _hf_multiplier(int(s), total, warmup) for s in steps]
  np.testing.assert_allclose(np.asarray(traced), want, rtol=1e-6, atol=1e-14)
  assert float(schedules["new"](0)) == pytest.approx(HP["lr_new"] if warmup == 0 else 0.0,
                                                     rel=1e-6)
  assert float(schedules["new"](warmup)) == pytest.approx(HP["lr_new"], rel=1e-6)
  assert float(schedules["new"](total - 1)) == pytest.approx(
      HP["lr_new"] * _hf_multiplier(total - 1, total, warmup), rel=1e-5)


def test_the_optax_variant_keeps_the_earlier_rounded_warm_up():
  _, official = optim.make_optimizer({**HP, "warmup_fraction": 0.1}, 7)
  _, earlier = optim.make_optimizer({**HP, "warmup_fraction": 0.1, "adamw": "optax"}, 7)
  assert float(official["clip"](0)) == pytest.approx(HP["lr_clip"])
  assert float(earlier["clip"](0)) == 0.0 and float(earlier["clip"](1)) == pytest.approx(
      HP["lr_clip"])


def test_the_default_config_uses_the_official_recipe():
  cfg = config_defaults.base_config().optim
  assert optim.adamw_variant(cfg) == "official"
  tx, _ = optim.make_optimizer(cfg, 10)
  states = jax.tree_util.tree_leaves(tx.init({"logit_scale": jnp.zeros(())}),
                                     is_leaf=lambda x: isinstance(x, optim.OfficialAdamWState))
  assert any(isinstance(s, optim.OfficialAdamWState) for s in states)


def test_an_unknown_adamw_variant_is_refused():
  with pytest.raises(ValueError, match=r"config\.optim\.adamw"):
    optim.make_optimizer({**HP, "adamw": "torch"}, 10)


@pytest.mark.parametrize("overrides", [{}, {"aggregation_group": "new"}, {"grad_clip": 0.0}])
def test_the_fused_step_equals_the_optax_chain_bit_for_bit(overrides):
  """`FusedAdamW.step` (the train step's path) against tx.update + apply_updates: the
  same params and the same state tree, exactly, over steps with and without clipping."""
  params, grads = _problem(seed=3)
  cfg = {**HP, **overrides}
  fused, _ = optim.make_optimizer(cfg, TOTAL)
  chain, _ = optim.make_optimizer({**cfg, "fused": False}, TOTAL)
  assert isinstance(fused, optim.FusedAdamW) and not isinstance(chain, optim.FusedAdamW)
  p0 = _nest({k: jnp.asarray(v, jnp.float32) for k, v in params.items()})
  runs = []
  for tx in (fused, chain):
    p, state = p0, tx.init(p0)
    step = jax.jit(lambda g, s, p, tx=tx: optim.apply_step(tx, g, s, p))
    for g in grads:
      p, state = step(_nest({k: jnp.asarray(v, jnp.float32) for k, v in g.items()}), state, p)
    runs.append((p, state))
  (pf, sf), (pc, sc) = runs
  assert jax.tree_util.tree_structure(sf) == jax.tree_util.tree_structure(sc)
  for a, b in zip(jax.tree_util.tree_leaves((pf, sf)), jax.tree_util.tree_leaves((pc, sc))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.allclose(np.asarray(_flat(pf)["vision_model/prompt"]), params["vision_model/prompt"])


def test_the_fused_step_matches_the_torch_recipe_in_float64():
  """The path training takes (FusedAdamW.step) against the independent transcription."""
  params, grads, ref = _reference()
  tx, _ = optim.make_optimizer(HP, TOTAL)
  assert isinstance(tx, optim.FusedAdamW)
  with jax.enable_x64(True):
    p = _nest({k: jnp.asarray(v, jnp.float64) for k, v in params.items()})
    state = tx.init(p)
    step = jax.jit(lambda g, s, p: optim.apply_step(tx, g, s, p))
    for g in grads:
      p, state = step(_nest({k: jnp.asarray(v, jnp.float64) for k, v in g.items()}), state, p)
    got = {k: np.asarray(v, np.float64) for k, v in _flat(p).items()}
  assert _max_rel_displacement_error(got, ref, params) < X64_RTOL
