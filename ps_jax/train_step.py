"""The pure training step `(state, batch) -> (state, metrics)` and its loss.

With `grad_accum_steps = k > 1` the step splits the batch into k micro-batches and
computes EXACTLY the full-batch gradient (the contrastive loss still sees every text
against every video of the global batch): embeddings of all micro-batches are computed
first without gradients, the loss gradient with respect to the embeddings is taken on
the full similarity matrix, and each micro-batch is then back-propagated with its slice
of that gradient (the "gradient cache" construction). Peak activation memory is that of
one micro-batch; the cost is one extra forward pass.

Layer: assembly (imports losses, optim, sharding and data.transforms). `jit_train_step`
is the one place the step is jitted with its shardings: training, the benchmarks and
the tests all compile it there.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import optax

from ps_jax import losses, optim, sharding
from ps_jax.data.transforms import normalize_frames

Array = jax.Array
State = dict  # {"step", "params", "opt_state", "rng", "ema_params" (optional)}


@flax.struct.dataclass
class LossConfig:
  """Constants of the loss: caption class weights float32[V], EOS id, multiplier."""
  class_weights: Array
  eos_id: int = flax.struct.field(pytree_node=False)
  caption_multiplier: float = flax.struct.field(pytree_node=False,
                                                default=losses.CAPTION_LOSS_MULTIPLIER)

  def caption_terms(self, logits: Array, input_ids: Array) -> tuple[Array, Array]:
    return losses.caption_terms(logits, input_ids, self.eos_id, self.class_weights)

  def weight_sum(self, input_ids: Array) -> Array:
    """Denominator of the caption loss for a whole batch (needs no model)."""
    counted = (input_ids[:, :-1] != self.eos_id).astype(jnp.float32)
    return jnp.sum(self.class_weights[input_ids[:, 1:]] * counted)


def forward(model, params, batch) -> dict:
  """Model outputs for a batch of frames.

  uint8 frames (the pipeline's output) are CLIP-normalised here, on device; floating
  frames are taken as already normalised on the host (`normalize_frames` in numpy).
  """
  frames = batch["frames"]
  if frames.dtype == jnp.uint8:
    frames = normalize_frames(frames)
  return model.apply({"params": params}, batch["input_ids"], batch["attention_mask"], frames)


def loss_fn(params, batch, model, lc: LossConfig) -> tuple[Array, dict]:
  """Full-batch loss: contrastive + caption (when the model has a caption head)."""
  out = forward(model, params, batch)
  contrastive = losses.contrastive_loss(out["text_embedding"], out["video_embedding"],
                                        out["logit_scale"])
  metrics = {"loss_contrastive": contrastive}
  loss = contrastive
  if "caption_logits" in out:
    num, den = lc.caption_terms(out["caption_logits"], batch["input_ids"])
    caption = lc.caption_multiplier * num / jnp.maximum(den, 1e-9)
    metrics["loss_caption"] = caption
    loss = loss + caption
  return loss, metrics


def _split(batch: Mapping[str, Array], k: int) -> dict[str, Array]:
  """[B, ...] -> [k, B/k, ...]; micro-batch j takes rows j, j+k, j+2k, ... so that every
  device's contiguous shard of rows is split evenly among the micro-batches."""
  def split(x):
    return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)
  return {key: split(v) for key, v in batch.items()}


def _merge(x: Array) -> Array:
  """Inverse of `_split` for one array: [k, B/k, ...] -> [B, ...]."""
  return jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:])


def accumulated_grads(params, batch, model, lc: LossConfig, k: int) -> tuple[Any, Array, dict]:
  """Exact full-batch (loss, grads, metrics) computed over k micro-batches."""
  micro = _split(batch, k)

  def embed(p, mb):
    out = forward(model, p, mb)
    return out["text_embedding"], out["video_embedding"]

  text, video = jax.lax.map(lambda mb: embed(params, mb), micro)
  text, video = _merge(text), _merge(video)
  contrastive, (g_text, g_video, g_scale) = jax.value_and_grad(
      losses.contrastive_loss, argnums=(0, 1, 2))(text, video, params["logit_scale"])
  g_text, g_video = _split({"t": g_text, "v": g_video}, k).values()
  has_caption = model.config.num_captioner_layers > 0
  den = jnp.maximum(lc.weight_sum(batch["input_ids"]), 1e-9)

  def micro_step(carry, xs):
    grads, caption_sum = carry
    mb, gt, gv = xs

    def surrogate(p):
      out = forward(model, p, mb)
      s = jnp.sum(out["text_embedding"] * gt) + jnp.sum(out["video_embedding"] * gv)
      num = jnp.float32(0.0)
      if has_caption:
        num, _ = lc.caption_terms(out["caption_logits"], mb["input_ids"])
        s = s + lc.caption_multiplier * num / den
      return s, num

    g, num = jax.grad(surrogate, has_aux=True)(params)
    return (jax.tree_util.tree_map(jnp.add, grads, g), caption_sum + num), None

  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  (grads, caption_sum), _ = jax.lax.scan(micro_step, (zeros, jnp.float32(0.0)),
                                         (micro, g_text, g_video))
  grads = {**grads, "logit_scale": grads["logit_scale"] + g_scale}
  metrics = {"loss_contrastive": contrastive}
  loss = contrastive
  if has_caption:
    caption = lc.caption_multiplier * caption_sum / den
    metrics["loss_caption"] = caption
    loss = loss + caption
  return loss, grads, metrics


def compute_grads(params, batch: Mapping[str, Array], model, lc: LossConfig,
                  grad_accum_steps: int = 1, grad_shardings: Any = None):
  """(loss, grads like params, metrics) of one global batch.

  With `grad_shardings` (the params' NamedShardings) every gradient is constrained to
  its parameter's layout: under FSDP XLA then reduce-scatters each gradient onto the
  shards that own the parameter instead of all-reducing a replicated copy, and the
  optimizer update runs on shards.
  """
  if grad_accum_steps > 1:
    loss, grads, metrics = accumulated_grads(params, batch, model, lc, grad_accum_steps)
  else:
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, model,
                                                                        lc)
  if grad_shardings is not None:
    grads = jax.lax.with_sharding_constraint(grads, grad_shardings)
  return loss, grads, metrics


def train_step(state: State, batch: Mapping[str, Array], *, model, tx: optax.GradientTransformation,
               lc: LossConfig, schedules: Mapping[str, Callable], grad_accum_steps: int = 1,
               ema_decay: float = 0.0, grad_shardings: Any = None) -> tuple[State, dict]:
  """One optimiser update on a global batch.

  Args:
    state: {"step": int32[], "params", "opt_state", "rng": uint32[2], "ema_params"?}.
    batch: {"frames": uint8[B, F, S, S, 3] (or float32, already normalised on the host),
      "input_ids": int32[B, L], "attention_mask": int32[B, L]} (global arrays, sharded
      on B).

    grad_shardings: the params' shardings, imposed on the gradients (see
      `compute_grads`); None leaves them to XLA.

  Returns:
    (new state, metrics of floats: loss, loss terms, grad_norm, lr_clip, lr_new,
    logit_scale).
  """
  loss, grads, metrics = compute_grads(state["params"], batch, model, lc, grad_accum_steps,
                                       grad_shardings)
  params, opt_state = optim.apply_step(tx, grads, state["opt_state"], state["params"])
  params = optim.clamp_logit_scale(params)
  rng, _ = jax.random.split(state["rng"])
  new = {"step": state["step"] + 1, "params": params, "opt_state": opt_state, "rng": rng}
  if "ema_params" in state:
    new["ema_params"] = optim.ema_update(state["ema_params"], params, ema_decay)
  metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads),
             "logit_scale": params["logit_scale"],
             **{f"lr_{k}": s(state["step"]) for k, s in schedules.items()}}
  return new, metrics


def make_loss_config(tokenizer, vocab_size: int,
                     caption_weight: float = losses.CAPTION_LOSS_MULTIPLIER) -> LossConfig:
  """The loss constants for a tokenizer: frequent-word caption weights, EOS id, and the
  caption loss's weight (official: 0.5)."""
  weights = losses.caption_class_weights(tokenizer, vocab_size)
  return LossConfig(jnp.asarray(weights), tokenizer.eos_id, caption_weight)


BATCH_NDIMS = {"frames": 5, "input_ids": 2, "attention_mask": 2}


def jit_train_step(model, tx: optax.GradientTransformation, lc: LossConfig,
                   schedules: Mapping[str, Callable], state_shardings: Any, mesh, *,
                   grad_accum_steps: int = 1, ema_decay: float = 0.0, donate: bool = True):
  """`train_step` jitted over `mesh`: (state, batch) -> (state, metrics).

  The state is placed (and returned) as `state_shardings`; every batch array is split on
  its leading axis over all mesh axes (`sharding.batch_sharding`); metrics come back
  replicated; gradients are constrained to the params' shardings (`compute_grads`). With
  `donate` the input state's buffers are reused for the output (and deleted).
  """
  step = functools.partial(train_step, model=model, tx=tx, lc=lc, schedules=schedules,
                           grad_accum_steps=grad_accum_steps, ema_decay=ema_decay,
                           grad_shardings=state_shardings["params"])
  batch = {k: sharding.batch_sharding(mesh, n) for k, n in BATCH_NDIMS.items()}
  return jax.jit(step, in_shardings=(state_shardings, batch),
                 out_shardings=(state_shardings, sharding.replicated(mesh)),
                 donate_argnums=0 if donate else ())


def create_state(params, tx: optax.GradientTransformation, rng, ema: bool) -> State:
  """A fresh train state: step 0, `params`, `tx.init(params)`, `rng` (and an EMA copy)."""
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
           "rng": rng}
  if ema:
    state["ema_params"] = params
  return state


def state_shardings(mesh, params_sharding: Any, abstract_state: State) -> dict:
  """Shardings of a train state (`create_state`'s tree, abstract): params and EMA as
  `params_sharding`, optimizer moments like their params, scalars replicated."""
  rep = sharding.replicated(mesh)
  opt = sharding.opt_state_shardings(abstract_state["opt_state"], params_sharding,
                                     abstract_state["params"], mesh)
  out = {"step": rep, "params": params_sharding, "opt_state": opt, "rng": rep}
  if "ema_params" in abstract_state:
    out["ema_params"] = params_sharding
  return out

