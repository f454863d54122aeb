"""Optimiser of the official recipe: AdamW, two learning-rate groups, warm-up + cosine.

Layer: foundation (optax only).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

# Parameters that Prompt Switch adds and trains with the larger learning rate. As in the
# official code, the aggregation attention stays in the CLIP group (unless
# config.optim.aggregation_group = "new").
NEW_PARAM_PREFIXES = (("vision_model", "prompt"), ("caption",))
AGGREGATION_PREFIX = ("vision_model", "aggregation")
MAX_LOGIT_SCALE = math.log(100.0)


def param_group(path: tuple[str, ...], aggregation_group: str = "clip") -> str:
  """"new" for the prompt cube and the caption head (and the aggregation attention when
  `aggregation_group == "new"`), "clip" for everything else."""
  prefixes = NEW_PARAM_PREFIXES + ((AGGREGATION_PREFIX,) if aggregation_group == "new" else ())
  return "new" if any(path[:len(p)] == p for p in prefixes) else "clip"


def param_labels(params: Any, aggregation_group: str = "clip") -> Any:
  """Tree of "clip" / "new" labels matching `params`."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: param_group(tuple(k.key for k in path), aggregation_group), params)


def schedule(peak: float, total_steps: int, warmup_fraction: float) -> optax.Schedule:
  """Linear warm-up from 0 over `warmup_fraction` of the steps, then cosine to 0."""
  warmup = int(round(total_steps * warmup_fraction))
  return optax.warmup_cosine_decay_schedule(0.0, peak, max(warmup, 1), max(total_steps, 2),
                                            end_value=0.0)


def make_optimizer(cfg: Mapping, total_steps: int) -> tuple[optax.GradientTransformation,
                                                             dict[str, optax.Schedule]]:
  """config.optim -> (optax transformation, {"clip": lr schedule, "new": lr schedule}).

  Global-norm clipping, then AdamW (decoupled weight decay on all parameters) with one
  learning rate per group.
  """
  schedules = {"clip": schedule(cfg["lr_clip"], total_steps, cfg["warmup_fraction"]),
               "new": schedule(cfg["lr_new"], total_steps, cfg["warmup_fraction"])}

  def adamw(lr):
    return optax.adamw(lr, b1=cfg["b1"], b2=cfg["b2"], eps=cfg["eps"],
                       weight_decay=cfg["weight_decay"])

  tx = optax.chain(
      optax.clip_by_global_norm(cfg["grad_clip"]) if cfg["grad_clip"] else optax.identity(),
      optax.multi_transform({k: adamw(s) for k, s in schedules.items()},
                            lambda p: param_labels(p, cfg.get("aggregation_group", "clip"))))
  return tx, schedules


def clamp_logit_scale(params: dict) -> dict:
  """logit_scale <- min(logit_scale, ln 100), applied after every update."""
  return {**params, "logit_scale": jnp.minimum(params["logit_scale"], MAX_LOGIT_SCALE)}


def ema_update(ema: Any, params: Any, decay: float) -> Any:
  """Exponential moving average of the weights: ema <- decay * ema + (1 - decay) * params."""
  return jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
