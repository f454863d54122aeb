"""Optimiser of the official recipe: AdamW, two learning-rate groups, warm-up + cosine.

The official PyTorch code clips the gradients with `torch.nn.utils.clip_grad_norm_(..., 1.0)`,
steps `transformers.optimization.AdamW` (transformers 4.26: eps added before the bias
correction, decoupled weight decay applied to the already updated weights) and then
`get_cosine_schedule_with_warmup`. `config.optim.adamw = "official"` reproduces exactly
that; `"optax"` keeps the earlier recipe (optax.clip_by_global_norm, optax.adamw and a
rounded warm-up of at least one step) so that older runs can be reproduced.

Layer: foundation (optax only).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

# Parameters that Prompt Switch adds and trains with the larger learning rate. As in the
# official code, the aggregation attention stays in the CLIP group (unless
# config.optim.aggregation_group = "new").
NEW_PARAM_PREFIXES = (("vision_model", "prompt"), ("caption",))
AGGREGATION_PREFIX = ("vision_model", "aggregation")
MAX_LOGIT_SCALE = math.log(100.0)
ADAMW_VARIANTS = ("official", "optax")
# torch.nn.utils.clip_grad_norm_ divides by (total norm + this).
TORCH_CLIP_EPS = 1e-6


def param_group(path: tuple[str, ...], aggregation_group: str = "clip") -> str:
  """"new" for the prompt cube and the caption head (and the aggregation attention when
  `aggregation_group == "new"`), "clip" for everything else."""
  prefixes = NEW_PARAM_PREFIXES + ((AGGREGATION_PREFIX,) if aggregation_group == "new" else ())
  return "new" if any(path[:len(p)] == p for p in prefixes) else "clip"


def param_labels(params: Any, aggregation_group: str = "clip") -> Any:
  """Tree of "clip" / "new" labels matching `params`."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: param_group(tuple(k.key for k in path), aggregation_group), params)


# ----------------------------------------------------------------------------- schedules


def hf_warmup_steps(total_steps: int, warmup_fraction: float) -> int:
  """Warm-up length of the official code: `int(warmup_fraction * total_steps)` (may be 0)."""
  return int(warmup_fraction * total_steps)


def hf_cosine_schedule(peak: float, total_steps: int, warmup_steps: int) -> optax.Schedule:
  """transformers' `get_cosine_schedule_with_warmup` (half a cosine) times `peak`.

  Multiplier at step s (W = warmup_steps, N = total_steps):
    s / max(1, W)                                               if s < W,
    max(0, 0.5 * (1 + cos(pi * (s - W) / max(1, N - W))))       otherwise.
  With W = 0 step 0 already has the peak learning rate.

  Args:
    peak: the learning rate after warm-up.
    total_steps: N, the number of optimizer updates.
    warmup_steps: W.

  Returns:
    step (int[] or float[], may be traced) -> learning rate, a float[] scalar.
  """
  warm_div = float(max(1, warmup_steps))
  decay_div = float(max(1, total_steps - warmup_steps))

  def lr(step):
    s = jnp.asarray(step).astype(jnp.result_type(float))
    rising = s / warm_div
    # 0.5 * (1 + cos(pi * x)) = sin(pi / 2 * (1 - x))^2 (>= 0, so the max is moot): the
    # same function, whose float32 value stays accurate (~1e-7 relative) over the last
    # steps, where the cosine form cancels (~1e-4).
    remaining = (decay_div + warmup_steps - s) / decay_div
    falling = jnp.square(jnp.sin(0.5 * math.pi * remaining))
    return peak * jnp.where(s < warmup_steps, rising, falling)

  return lr


def optax_cosine_schedule(peak: float, total_steps: int,
                          warmup_fraction: float) -> optax.Schedule:
  """The earlier ("optax") schedule: linear warm-up from 0 over
  `max(1, round(warmup_fraction * total_steps))` steps, then cosine to 0."""
  warmup = int(round(total_steps * warmup_fraction))
  return optax.warmup_cosine_decay_schedule(0.0, peak, max(warmup, 1), max(total_steps, 2),
                                            end_value=0.0)


# ------------------------------------------------------------------ official transformations


def _torch_clip_coef(grads: Any, max_norm: float) -> jax.Array:
  """min(max_norm / (global L2 norm of `grads` + 1e-6), 1): torch's clipping factor."""
  return jnp.minimum(max_norm / (optax.global_norm(grads) + TORCH_CLIP_EPS), 1.0)


def torch_clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """`torch.nn.utils.clip_grad_norm_(params, max_norm)` as a stateless transformation.

  total = global L2 norm of all updates; coef = max_norm / (total + 1e-6); every leaf is
  multiplied by min(coef, 1) (i.e. scaled only when coef < 1). Unlike
  `optax.clip_by_global_norm`, the 1e-6 keeps clipped norms slightly below `max_norm`.
  """
  def update_fn(updates, state, params=None):
    del params
    coef = _torch_clip_coef(updates, max_norm)
    return jax.tree_util.tree_map(lambda g: (g * coef).astype(g.dtype), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


class OfficialAdamWState(NamedTuple):
  """State of `official_adamw`.

  Attributes:
    count: int32[], updates applied so far (the learning rate is read at this step).
    mu: first moments, a tree like the params (at least float32).
    nu: second moments, a tree like the params (at least float32).
  """
  count: jax.Array
  mu: Any
  nu: Any


def _moment_dtype(p: jax.Array) -> jnp.dtype:
  """float32 for float32 / bfloat16 / float16 params, float64 for float64 params."""
  return jnp.promote_types(p.dtype, jnp.float32)


def _bias_factor(b1: float, b2: float, t: jax.Array) -> jax.Array:
  """sqrt(1 - b2^t) / (1 - b1^t) for the (1-based) step t, a float[] scalar."""
  return jnp.sqrt(1.0 - jnp.power(b2, t)) / (1.0 - jnp.power(b1, t))


def _step_terms(lr: jax.Array, count: jax.Array, b1: float, b2: float,
                weight_decay: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(step_size, decay, t) of the update at `count` with learning rate `lr`:
  t = count + 1, step_size = lr * sqrt(1 - b2^t) / (1 - b1^t), decay = lr * weight_decay."""
  t = optax.safe_int32_increment(count)
  return lr * _bias_factor(b1, b2, t.astype(lr.dtype)), lr * weight_decay, t


def _first_moment(m: jax.Array, g: jax.Array, b1: float) -> jax.Array:
  """b1 m + (1 - b1) g, in m's dtype."""
  return b1 * m + (1.0 - b1) * g.astype(m.dtype)


def _second_moment(v: jax.Array, g: jax.Array, b2: float) -> jax.Array:
  """b2 v + (1 - b2) g^2, in v's dtype."""
  return b2 * v + (1.0 - b2) * jnp.square(g.astype(v.dtype))


def _official_leaf_update(p: jax.Array, mu: jax.Array, nu: jax.Array, step_size: jax.Array,
                          decay: jax.Array, eps: float) -> jax.Array:
  """The update of one leaf from its new moments (transformers 4.26 AdamW).

  Args:
    p: parameter, shape [...].
    mu, nu: the moments after this step's gradient, shape [...] in `_moment_dtype(p)`.
    step_size: float[], lr * sqrt(1 - b2^t) / (1 - b1^t).
    decay: float[], lr * weight_decay.
    eps: added to sqrt(nu) before the bias correction.

  Returns:
    update [...] in p.dtype such that p + update is torch's
    p' = p - step_size * mu / (sqrt(nu) + eps), then p' - decay * p'.
  """
  dt = mu.dtype
  adam = step_size.astype(dt) * mu / (jnp.sqrt(nu) + eps)
  stepped = p.astype(dt) - adam
  return (-adam - decay.astype(dt) * stepped).astype(p.dtype)


def official_adamw(learning_rate: float | optax.Schedule, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-6, weight_decay: float = 0.0
                   ) -> optax.GradientTransformation:
  """`transformers.optimization.AdamW` (4.26, correct_bias=True) as an optax transformation.

  Per parameter, at step t = count + 1 with lr = learning_rate(count):
    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
    p <- p - lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
    p <- p - lr * weight_decay * p
  Differs from `optax.adamw` in where eps enters (before the bias correction) and in
  decaying the updated rather than the incoming weights. Element-wise on every leaf, so
  it works under jit, inside `optax.multi_transform` and with sharded params.

  Args:
    learning_rate: a constant or a schedule of the update count (0 for the first update).
    b1, b2, eps, weight_decay: as in transformers' AdamW.

  Returns:
    A transformation whose `update` needs `params` and returns updates in the params'
    dtypes; its state is an `OfficialAdamWState`.
  """
  lr_at = learning_rate if callable(learning_rate) else (lambda _: learning_rate)

  def init_fn(params):
    zeros = lambda p: jnp.zeros(p.shape, _moment_dtype(p))
    return OfficialAdamWState(count=jnp.zeros((), jnp.int32),
                              mu=jax.tree_util.tree_map(zeros, params),
                              nu=jax.tree_util.tree_map(zeros, params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("official_adamw needs the params (decoupled weight decay)")
    step_size, decay, t = _step_terms(jnp.asarray(lr_at(state.count)), state.count, b1, b2,
                                      weight_decay)
    tmap = jax.tree_util.tree_map
    mu = tmap(lambda m, g: _first_moment(m, g, b1), state.mu, updates)
    nu = tmap(lambda v, g: _second_moment(v, g, b2), state.nu, updates)
    new = tmap(lambda p, m, v: _official_leaf_update(p, m, v, step_size, decay, eps),
               params, mu, nu)
    return new, OfficialAdamWState(count=t, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------- assembly


def adamw_variant(cfg: Mapping) -> str:
  """`cfg["adamw"]` ("official" when absent); ValueError naming config.optim.adamw else."""
  variant = cfg.get("adamw", "official")
  if variant not in ADAMW_VARIANTS:
    raise ValueError(f"config.optim.adamw must be one of {ADAMW_VARIANTS}, got {variant!r}")
  return variant


def make_schedules(cfg: Mapping, total_steps: int) -> dict[str, optax.Schedule]:
  """{"clip": lr schedule, "new": lr schedule} of the chosen variant: the official
  warm-up + cosine for "official", the earlier rounded optax schedule for "optax"."""
  peaks = {"clip": cfg["lr_clip"], "new": cfg["lr_new"]}
  if adamw_variant(cfg) == "official":
    warmup = hf_warmup_steps(total_steps, cfg["warmup_fraction"])
    return {k: hf_cosine_schedule(v, total_steps, warmup) for k, v in peaks.items()}
  return {k: optax_cosine_schedule(v, total_steps, cfg["warmup_fraction"])
          for k, v in peaks.items()}


class FusedAdamW(NamedTuple):
  """The official chain (clip -> per-group AdamW) with a single-pass `step`.

  `init` and `update` are the optax chain's, so the state is the chain's state tree
  (checkpoints, shardings and the unfused path all read it); `step(grads, state,
  params) -> (params, state)` computes the same new params and state, bit for bit,
  with one element-wise function per leaf that reads p, g, mu, nu once and writes p,
  mu, nu (XLA fuses it into one loop per output instead of optax's separate moment,
  update and apply passes).
  """
  init: Callable
  update: Callable
  step: Callable


def apply_step(tx, grads: Any, opt_state: Any, params: Any) -> tuple[Any, Any]:
  """(new params, new state) of one optimizer update: `tx.step` when `tx` is a
  `FusedAdamW`, else `tx.update` followed by `optax.apply_updates`."""
  if isinstance(tx, FusedAdamW):
    return tx.step(grads, opt_state, params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def _is_masked(x) -> bool:
  return isinstance(x, optax.MaskedNode)


def fused_official_step(cfg: Mapping, schedules: Mapping[str, optax.Schedule]) -> Callable:
  """The chain of `make_optimizer` ("official" AdamW) as one pass per leaf.

  Same arithmetic in the same order as torch_clip_by_global_norm -> official_adamw ->
  optax.apply_updates: g' = g * min(max_norm / (|g| + 1e-6), 1); the moments; the
  update of `_official_leaf_update`; p + update. Each leaf takes the learning rate,
  step count and moments of its group (the group whose masked moment tree holds it).

  Returns:
    step(grads, state, params) -> (params, state), state as `make_optimizer`'s tx.init.
  """
  b1, b2, eps, wd, max_norm = (cfg["b1"], cfg["b2"], cfg["eps"], cfg["weight_decay"],
                               cfg["grad_clip"])

  def step(grads, state, params):
    clip_state, part = state
    p_leaves, treedef = jax.tree_util.tree_flatten(params)
    g_leaves = treedef.flatten_up_to(grads)
    coef = _torch_clip_coef(grads, max_norm) if max_norm else None
    groups = {}
    for name, masked in part.inner_states.items():
      inner = masked.inner_state
      step_size, decay, t = _step_terms(jnp.asarray(schedules[name](inner.count)),
                                        inner.count, b1, b2, wd)
      groups[name] = dict(step_size=step_size, decay=decay, count=t,
                          mu=jax.tree_util.tree_leaves(inner.mu, is_leaf=_is_masked),
                          nu=jax.tree_util.tree_leaves(inner.nu, is_leaf=_is_masked))
    new_p = []
    for i, (p, g) in enumerate(zip(p_leaves, g_leaves)):
      owner = [gr for gr in groups.values() if not _is_masked(gr["mu"][i])]
      if len(owner) != 1:
        raise ValueError(f"parameter leaf {i} belongs to {len(owner)} optimizer groups")
      gr = owner[0]
      if coef is not None:
        g = (g * coef).astype(g.dtype)
      m, v = _first_moment(gr["mu"][i], g, b1), _second_moment(gr["nu"][i], g, b2)
      update = _official_leaf_update(p, m, v, gr["step_size"], gr["decay"], eps)
      new_p.append(jnp.asarray(p + update).astype(p.dtype))
      gr["mu"][i], gr["nu"][i] = m, v

    def unflatten(tree, leaves):  # the masked moment tree, with its MaskedNodes kept
      return jax.tree_util.tree_structure(tree, is_leaf=_is_masked).unflatten(leaves)

    inner_states = {
        name: masked._replace(inner_state=masked.inner_state._replace(
            count=groups[name]["count"], mu=unflatten(masked.inner_state.mu, groups[name]["mu"]),
            nu=unflatten(masked.inner_state.nu, groups[name]["nu"])))
        for name, masked in part.inner_states.items()}
    return (treedef.unflatten(new_p),
            (clip_state, part._replace(inner_states=inner_states)))

  return step


def make_optimizer(cfg: Mapping, total_steps: int) -> tuple[optax.GradientTransformation,
                                                             dict[str, optax.Schedule]]:
  """config.optim -> (optax transformation, {"clip": lr schedule, "new": lr schedule}).

  Global-norm clipping (skipped when `grad_clip` is 0), then AdamW (decoupled weight decay
  on all parameters) with one learning rate per group. `cfg["adamw"]` chooses between the
  official recipe (torch clip, transformers AdamW, transformers schedule) and the earlier
  optax one (optax.clip_by_global_norm, optax.adamw, `optax_cosine_schedule`). The
  official recipe comes as a `FusedAdamW` (same init/update, plus the single-pass
  `step` that `apply_step` uses) unless `cfg["fused"]` is False.

  Raises:
    ValueError: for an unknown `cfg["adamw"]`.
  """
  official = adamw_variant(cfg) == "official"
  schedules = make_schedules(cfg, total_steps)
  adamw = official_adamw if official else optax.adamw
  clip = torch_clip_by_global_norm if official else optax.clip_by_global_norm

  def group_tx(lr):
    return adamw(lr, b1=cfg["b1"], b2=cfg["b2"], eps=cfg["eps"],
                 weight_decay=cfg["weight_decay"])

  tx = optax.chain(
      clip(cfg["grad_clip"]) if cfg["grad_clip"] else optax.identity(),
      optax.multi_transform({k: group_tx(s) for k, s in schedules.items()},
                            lambda p: param_labels(p, cfg.get("aggregation_group", "clip"))))
  if official and cfg.get("fused", True):
    tx = FusedAdamW(tx.init, tx.update, fused_official_step(cfg, schedules))
  return tx, schedules


def clamp_logit_scale(params: dict) -> dict:
  """logit_scale <- min(logit_scale, ln 100), applied after every update."""
  return {**params, "logit_scale": jnp.minimum(params["logit_scale"], MAX_LOGIT_SCALE)}


def ema_update(ema: Any, params: Any, decay: float) -> Any:
  """Exponential moving average of the weights: ema <- decay * ema + (1 - decay) * params."""
  return jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
