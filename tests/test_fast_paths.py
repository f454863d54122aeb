"""Fast paths against the float32 reference on tiny models: bfloat16 compute,
`jax.nn.dot_product_attention`, remat policies, scan unrolling, buffer donation and
host-side frame normalisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ps_jax import api, optim
from ps_jax import train_step as ts
from ps_jax.data.transforms import normalize_frames
from ps_jax.train_step import create_state
from train_fixtures import OPTIM, VOCAB, tiny_batch, tiny_model

LC = ts.LossConfig(jnp.asarray(np.linspace(0.25, 1.0, VOCAB), jnp.float32), VOCAB - 1)
FULL_UNROLL = 2  # the tiny vision tower's depth (text: 1 layer, caption decoder: 2)


def perturbed_params(model, seed: int = 0, scale: float = 0.05) -> dict:
  """Initial params with noise on every leaf: the zero-initialised aggregation output
  projection would otherwise block the gradient of the aggregation attention."""
  params = api.init_model_params(model, jax.random.PRNGKey(0))
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return treedef.unflatten([p + scale * jax.random.normal(k, p.shape, p.dtype)
                            for p, k in zip(leaves, keys)])


def loss_and_grads(model, params, batch):
  """(loss, metrics, grads) of the full training loss (contrastive + caption)."""
  fn = jax.jit(lambda p, b: jax.value_and_grad(ts.loss_fn, has_aux=True)(p, b, model, LC))
  (loss, metrics), grads = fn(params, batch)
  return float(loss), jax.device_get(metrics), jax.device_get(grads)


def outputs(model, params, batch):
  """Training forward outputs and the index forward pass (encode_video)."""
  def fn(p):
    video = model.apply({"params": p}, normalize_frames(batch["frames"]),
                        method="encode_video")
    return {**ts.forward(model, p, batch), **{f"encode_video/{k}": v for k, v in video.items()}}
  return jax.device_get(jax.jit(fn)(params))


def assert_trees_close(actual, expected, rtol, atol):
  flat_a = jax.tree_util.tree_flatten_with_path(actual)[0]
  flat_e = jax.tree_util.tree_leaves(expected)
  assert len(flat_a) == len(flat_e)
  for (path, a), e in zip(flat_a, flat_e):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(e, np.float32),
                               rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


def relative_error(a, b) -> float:
  """||a - b|| / ||b|| over whole trees."""
  diff = sum(float(np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
  ref = sum(float(np.sum(np.asarray(y, np.float64) ** 2)) for y in jax.tree_util.tree_leaves(b))
  return (diff / ref) ** 0.5


@pytest.fixture(scope="module")
def batch():
  return tiny_batch(batch=4, frames=4, seed=3)  # P=2: two chunks per video


@pytest.fixture(scope="module")
def reference(batch):
  """float32, XLA attention, no remat, rolled scan: (params, loss, grads)."""
  model = tiny_model()
  params = perturbed_params(model)
  loss, _, grads = loss_and_grads(model, params, batch)
  return params, loss, grads


def test_dot_product_attention_matches_xla_forward_and_gradients(batch, reference):
  params, loss, grads = reference
  ref_out = outputs(tiny_model(), params, batch)
  dpa = tiny_model(attention_impl="dot_product_attention")
  assert_trees_close(outputs(dpa, params, batch), ref_out, rtol=1e-5, atol=1e-5)
  dpa_loss, _, dpa_grads = loss_and_grads(dpa, params, batch)
  np.testing.assert_allclose(dpa_loss, loss, rtol=1e-5)
  assert_trees_close(dpa_grads, grads, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("remat_policy,scan_unroll", [
    ("full", 1), ("nothing_saveable", 1), ("dots_saveable", 1),
    ("dots_with_no_batch_dims_saveable", 1), ("none", FULL_UNROLL), ("full", FULL_UNROLL)])
def test_remat_and_scan_unroll_give_identical_gradients(batch, reference, remat_policy,
                                                        scan_unroll):
  params, loss, grads = reference
  model = tiny_model(remat_policy=remat_policy, scan_unroll=scan_unroll)
  got_loss, _, got_grads = loss_and_grads(model, params, batch)
  np.testing.assert_allclose(got_loss, loss, rtol=1e-6)
  assert_trees_close(got_grads, grads, rtol=1e-6, atol=1e-6)


def test_patch_embedding_as_a_matmul_equals_the_convolution(batch, reference):
  """model.patch_embed="matmul": the same parameter tree, init and (up to float32
  rounding) the same outputs and gradients as the strided convolution."""
  params, loss, grads = reference
  model = tiny_model(patch_embed="matmul")
  fresh = api.init_model_params(model, jax.random.PRNGKey(4))
  conv_fresh = api.init_model_params(tiny_model(), jax.random.PRNGKey(4))
  assert jax.tree_util.tree_structure(fresh) == jax.tree_util.tree_structure(conv_fresh)
  assert_trees_close(fresh, conv_fresh, rtol=0, atol=0)  # same names, shapes and values
  assert_trees_close(outputs(model, params, batch), outputs(tiny_model(), params, batch),
                     rtol=1e-5, atol=1e-5)
  got_loss, _, got_grads = loss_and_grads(model, params, batch)
  np.testing.assert_allclose(got_loss, loss, rtol=1e-5)
  assert_trees_close(got_grads, grads, rtol=1e-5, atol=1e-5)


def test_host_normalisation_equals_device_normalisation(batch, reference):
  params, loss, grads = reference
  host = {**batch, "frames": normalize_frames(batch["frames"])}
  assert host["frames"].dtype == np.float32
  got_loss, _, got_grads = loss_and_grads(tiny_model(), params, host)
  np.testing.assert_allclose(got_loss, loss, rtol=1e-6)
  assert_trees_close(got_grads, grads, rtol=1e-6, atol=1e-6)


def make_step(model, tx, schedules, donate: bool):
  """The jitted train step (one device) and a fresh state for `model`."""
  step = jax.jit(lambda s, b: ts.train_step(s, b, model=model, tx=tx, lc=LC,
                                            schedules=schedules),
                 donate_argnums=0 if donate else ())
  return step, create_state(perturbed_params(model), tx, jax.random.PRNGKey(1), False)


def run(model, batches, tx, schedules, donate=True):
  step, state = make_step(model, tx, schedules, donate)
  history = []
  for b in batches:
    state, metrics = step(state, b)
    history.append(jax.device_get(metrics))
  return jax.device_get(state), history


@pytest.fixture(scope="module")
def adamw_run():
  """Three steps of the official AdamW recipe, float32, with donation (the default)."""
  batches = [tiny_batch(batch=4, frames=4, seed=s) for s in range(3)]
  tx, schedules = optim.make_optimizer(OPTIM, 10)
  state, history = run(tiny_model(), batches, tx, schedules, donate=True)
  return batches, tx, schedules, state, history


def test_donation_does_not_change_results(adamw_run):
  batches, tx, schedules, donated, hist_d = adamw_run
  kept, hist_k = run(tiny_model(), batches, tx, schedules, donate=False)
  assert_trees_close(donated, kept, rtol=0, atol=0)
  assert_trees_close(hist_d, hist_k, rtol=0, atol=0)


@pytest.mark.parametrize("donate", [True, False])
def test_the_trainers_step_donates_the_input_state(donate):
  """`ts.jit_train_step` as the training loop calls it (donate by default): after a step
  every buffer of the input state is gone (XLA reused it for the output); with
  donate=False they all survive, so this test can tell the two apart."""
  from ps_jax import sharding  # pylint: disable=g-import-not-at-top
  from train_fixtures import make_train_step  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh(1, 1, jax.devices()[:1])
  batch = tiny_batch(batch=4, frames=4)
  state, step, shardings = make_train_step(tiny_model(), mesh, batch)
  if not donate:
    tx, schedules = optim.make_optimizer(OPTIM, 10)
    step = ts.jit_train_step(tiny_model(), tx, LC, schedules, shardings, mesh, donate=False)
  leaves = jax.tree_util.tree_leaves(state)
  new, _ = step(state, sharding.global_batch(batch, mesh))
  jax.block_until_ready(new)
  assert len(leaves) > 100
  assert [x.is_deleted() for x in leaves] == [donate] * len(leaves)


# bfloat16 keeps 8 significant bits: each matmul input is rounded with a relative error
# of at most 2^-9 ~ 2e-3, while accumulation, LayerNorm statistics, softmax, the losses,
# params and optimizer state stay float32. Through these tiny towers the observed
# relative errors are about 1e-3 on the loss, 6e-3 on the gradient norm, 1e-2 on the
# gradient and 3.6e-2 on an AdamW update (whose first steps are nearly
# lr * sign(grad), so tiny gradients decide their sign on rounding noise); 99.6% of the
# AdamW-updated params stay within a tenth of the summed learning rate of float32. The
# tolerances are 3-8x those values: loose enough for other CPUs and XLA versions, and
# still 10-100x below the error of a wrong computation (a term in the wrong dtype,
# unscaled or missing), which moves these quantities by O(1).
BF16_LOSS_RTOL = 1e-2
BF16_GRAD_NORM_RTOL = 2e-2
BF16_GRAD_REL = 4e-2         # ||g_bf16 - g_f32|| / ||g_f32|| over all parameters
BF16_ADAM_UPDATE_REL = 1e-1
BF16_ADAM_AGREE = 0.98       # fraction of params within (sum of lr) / 10 of float32


def test_bfloat16_train_step_matches_float32(batch, reference, adamw_run):
  params, loss32, grads32 = reference
  bf16 = tiny_model(dtype="bfloat16")
  loss16, _, grads16 = loss_and_grads(bf16, params, batch)
  np.testing.assert_allclose(loss16, loss32, rtol=BF16_LOSS_RTOL)
  assert relative_error(grads16, grads32) < BF16_GRAD_REL

  # The official AdamW recipe over three steps.
  batches, tx, schedules, state32, hist32 = adamw_run
  state16, hist16 = run(bf16, batches, tx, schedules)
  start = perturbed_params(bf16)
  update = lambda s: jax.tree_util.tree_map(lambda a, b: a - b, s["params"], start)
  for h16, h32 in zip(hist16, hist32):
    np.testing.assert_allclose(h16["loss"], h32["loss"], rtol=BF16_LOSS_RTOL)
    np.testing.assert_allclose(h16["grad_norm"], h32["grad_norm"], rtol=BF16_GRAD_NORM_RTOL)
  floats = [x for x in jax.tree_util.tree_leaves((state16["params"], state16["opt_state"]))
            if np.issubdtype(x.dtype, np.floating)]
  assert floats and all(x.dtype == np.float32 for x in floats)
  assert relative_error(update(state16), update(state32)) < BF16_ADAM_UPDATE_REL
  lr_sum = sum(float(h["lr_clip"]) for h in hist32)
  assert lr_sum > 0
  diffs = np.concatenate([np.abs(a - b).ravel() for a, b in zip(
      jax.tree_util.tree_leaves(state16["params"]),
      jax.tree_util.tree_leaves(state32["params"]))])
  assert np.all(np.isfinite(diffs))
  assert np.mean(diffs <= lr_sum / 10) > BF16_ADAM_AGREE
