"""Flax CLIP vs transformers.CLIPModel: parity, bfloat16 error, scan/remat options."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from conftest import random_text_batch
from ps_jax import convert
from ps_jax.models import clip

# Parity figures (1e-5 / 1e-4) are at float32 "highest" matmul precision; the fixture
# sets it for this module's tests only.
pytestmark = pytest.mark.usefixtures("highest_matmul_precision")


def _torch_outputs(hf_dir, ids, mask, pixels):
  model = transformers.CLIPModel.from_pretrained(hf_dir).eval()
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask),
                pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()))
  return {k: getattr(out, k).numpy() for k in ("text_embeds", "image_embeds", "logits_per_text")}


def _inputs(config: clip.ClipConfig, seed=0, batch_text=3, batch_image=4):
  rng = np.random.default_rng(seed)
  ids, mask = random_text_batch(rng, batch_text, config.text.max_position_embeddings,
                                config.text.vocab_size)
  size = config.vision.image_size
  pixels = rng.normal(size=(batch_image, size, size, 3)).astype(np.float32)
  return ids, mask, pixels


@pytest.mark.parametrize("variant", ["a", "b"])
def test_parity_with_transformers_float32(hf_clip_dirs, variant):
  config, params = convert.load_hf_clip(hf_clip_dirs[variant])
  ids, mask, pixels = _inputs(config, seed=1)
  ref = _torch_outputs(hf_clip_dirs[variant], ids, mask, pixels)
  out = clip.CLIP(config).apply({"params": params}, ids, pixels, mask)
  for key, want in ref.items():
    np.testing.assert_allclose(np.asarray(out[key]), want, atol=1e-5, rtol=0, err_msg=key)
  # The random weights make the similarities spread out, so the check is not vacuous.
  assert np.std(ref["logits_per_text"]) > 0.1


def test_configs_differ_where_it_matters(hf_clip_dirs):
  a = clip.ClipConfig.from_hf(hf_clip_dirs["a"])
  b = clip.ClipConfig.from_hf(hf_clip_dirs["b"])
  for field in ("patch_size", "hidden_size", "num_hidden_layers", "num_attention_heads"):
    assert getattr(a.vision, field) != getattr(b.vision, field), field
  assert a.text.intermediate_size != 4 * a.text.hidden_size  # non-default MLP size


@pytest.mark.parametrize("remat_policy,unroll", [("full", 1), ("dots_saveable", 2),
                                                 ("none", 3)])
def test_scan_remat_options_do_not_change_outputs(hf_clip_dirs, remat_policy, unroll):
  config, params = convert.load_hf_clip(hf_clip_dirs["a"])
  ids, mask, pixels = _inputs(config)
  base = clip.CLIP(config).apply({"params": params}, ids, pixels, mask)
  compute = clip.Compute(remat_policy=remat_policy, scan_unroll=unroll)
  model = clip.CLIP(config, compute)

  def loss(p):
    return jnp.sum(model.apply({"params": p}, ids, pixels, mask)["logits_per_text"] ** 2)

  out = model.apply({"params": params}, ids, pixels, mask)
  np.testing.assert_allclose(out["logits_per_text"], base["logits_per_text"], atol=1e-5)
  grads = jax.grad(loss)(params)
  ref_grads = jax.grad(lambda p: jnp.sum(clip.CLIP(config).apply(
      {"params": p}, ids, pixels, mask)["logits_per_text"] ** 2))(params)
  for g, r in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
    np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-4)


def test_bfloat16_compute_relative_error(hf_clip_dirs):
  """bfloat16 keeps 8 mantissa bits (relative rounding 2^-9 ~ 0.2% per op); over a few
  layers of matmuls, LayerNorms and softmaxes the errors add up to about 1%. We require
  the unit-norm embeddings to be within 3e-2 (max abs, i.e. relative to norm 1) and the
  logits within 3% of their spread, while the parameters stay float32."""
  config, params = convert.load_hf_clip(hf_clip_dirs["a"])
  ids, mask, pixels = _inputs(config)
  ref = clip.CLIP(config).apply({"params": params}, ids, pixels, mask)
  model = clip.CLIP(config, clip.Compute(dtype="bfloat16"))
  out = model.apply({"params": params}, ids, pixels, mask)
  for key in ("text_embeds", "image_embeds"):
    err = float(jnp.max(jnp.abs(out[key] - ref[key])))
    assert 0 < err < 3e-2, (key, err)
  spread = float(jnp.max(ref["logits_per_text"]) - jnp.min(ref["logits_per_text"]))
  err = float(jnp.max(jnp.abs(out["logits_per_text"] - ref["logits_per_text"])))
  assert err < 0.03 * spread, (err, spread)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))


def test_dot_product_attention_matches_xla(hf_clip_dirs):
  config, params = convert.load_hf_clip(hf_clip_dirs["b"])
  ids, mask, pixels = _inputs(config)
  ref = clip.CLIP(config).apply({"params": params}, ids, pixels, mask)
  out = clip.CLIP(config, clip.Compute(attention_impl="dot_product_attention")).apply(
      {"params": params}, ids, pixels, mask)
  np.testing.assert_allclose(out["logits_per_text"], ref["logits_per_text"], atol=1e-5)


def test_params_have_logical_axes_and_stacked_layers(hf_clip_dirs):
  config, params = convert.load_hf_clip(hf_clip_dirs["a"])
  ids, mask, pixels = _inputs(config)
  axes = clip.logical_axes(clip.CLIP(config), ids, pixels)
  q = axes["vision_model"]["encoder"]["layers"]["self_attn"]["q_proj"]["kernel"]
  assert tuple(q) == ("layers", "embed", "joined_kv")
  assert params["vision_model"]["encoder"]["layers"]["self_attn"]["q_proj"]["kernel"].shape == (
      config.vision.num_hidden_layers, 48, 48)
  assert jax.tree_util.tree_structure(axes, is_leaf=lambda x: isinstance(
      x, jax.sharding.PartitionSpec)) == jax.tree_util.tree_structure(params)


def test_bad_compute_options_are_rejected():
  with pytest.raises(ValueError, match="remat_policy"):
    clip.Compute(remat_policy="sometimes").validate()
  with pytest.raises(ValueError, match="dtype"):
    clip.Compute(dtype="float16").validate()


def test_hf_config_round_trip(hf_clip_dirs):
  config = clip.ClipConfig.from_hf(hf_clip_dirs["b"])
  again = clip.ClipConfig.from_hf(transformers.CLIPConfig(**config.to_hf_dict()))
  assert dataclasses.asdict(again) == dataclasses.asdict(config)
