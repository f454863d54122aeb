"""Prompt Switch model: switched layer, information flow, gradients, losses, official import."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import ps_jax
from conftest import random_text_batch, randomize_torch_module, tiny_hf_clip_config
from ps_jax import convert, losses
from ps_jax.models import clip
from torch_prompt_switch import TorchPromptSwitch

# Parity figures (1e-5 / 1e-4) are at float32 "highest" matmul precision; the fixture
# sets it for this module's tests only.
pytestmark = pytest.mark.usefixtures("highest_matmul_precision")

P = 6  # official number of prompts


def _hf_config():
  cfg = tiny_hf_clip_config("a")
  cfg["projection_dim"] = cfg["text_config"]["hidden_size"]  # caption head needs E == Dt
  return transformers.CLIPConfig(**cfg)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
  """(torch reference, path of its official-format .pth, HF config dict)."""
  torch.manual_seed(0)
  hf_config = _hf_config()
  ref = TorchPromptSwitch(hf_config, P).eval()
  randomize_torch_module(ref, seed=3)
  path = str(tmp_path_factory.mktemp("official") / "ckpt.pth")
  torch.save({"state_dict": ref.state_dict(), "epoch": 4, "optimizer": {"lr": 1e-6}}, path)
  return ref, path, hf_config.to_dict()


def _frames(num_frames, size=32, batch=2, seed=0):
  return np.random.default_rng(seed).normal(size=(batch, num_frames, size, size, 3)).astype(
      np.float32)


# ----------------------------------------------------------------------------- one layer


def _np_layer_norm(x, w, b, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * w + b


def _np_switched_layer(x, p, lp, heads):
  """Numpy float64 reference of one encoder layer with the prompt cube switched."""
  d = x.shape[-1]
  y = _np_layer_norm(x, lp["layer_norm1"]["scale"], lp["layer_norm1"]["bias"])
  n = x.shape[1] - p
  switched = y.copy()
  for c in range(x.shape[0] // p):
    for i in range(p):
      for j in range(p):  # prompt j of frame i goes to frame j, slot i
        switched[c * p + j, n + i] = y[c * p + i, n + j]
  a = lp["self_attn"]
  lin = lambda t, m: t @ m["kernel"] + m["bias"]
  q, k, v = (lin(switched, a[n_]).reshape(*switched.shape[:2], heads, d // heads)
             for n_ in ("q_proj", "k_proj", "v_proj"))
  s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d // heads)
  s = np.exp(s - s.max(-1, keepdims=True))
  s /= s.sum(-1, keepdims=True)
  att = np.einsum("bhqk,bkhd->bqhd", s, v).reshape(switched.shape)
  x = x + lin(att, a["out_proj"])
  y = _np_layer_norm(x, lp["layer_norm2"]["scale"], lp["layer_norm2"]["bias"])
  h = lin(y, lp["mlp"]["fc1"])
  h = h / (1 + np.exp(-1.702 * h))
  return x + lin(h, lp["mlp"]["fc2"])


def test_switched_layer_equals_numpy_reference():
  p, n, d, heads = 3, 5, 16, 4
  layer = clip.EncoderLayer(heads, 24, num_prompts=p)
  x = jax.random.normal(jax.random.PRNGKey(0), (2 * p, n + p, d))
  params = clip.init_params(layer, jax.random.PRNGKey(1), x, None)
  params = jax.tree_util.tree_map(
      lambda t: t + 0.1 * jax.random.normal(jax.random.PRNGKey(2), t.shape), params)
  got, _ = layer.apply({"params": params}, x, None)
  np64 = jax.tree_util.tree_map(lambda t: np.asarray(t, np.float64), params)
  want = _np_switched_layer(np.asarray(x, np.float64), p, np64, heads)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-6, rtol=0)
  # The residual stream is not switched: with zero attention the prompts stay in place.
  assert not np.allclose(want, _np_switched_layer(np.asarray(x, np.float64), 1, np64, heads))


def test_switch_prompts_is_a_per_chunk_transpose():
  p, n, d = 3, 2, 1
  y = jnp.arange(2 * p * (n + p), dtype=jnp.float32).reshape(2 * p, n + p, d)
  out = np.asarray(clip.switch_prompts(y, p))[..., 0]
  y = np.asarray(y)[..., 0]
  np.testing.assert_array_equal(out[:, :n], y[:, :n])
  for c in range(2):
    np.testing.assert_array_equal(out[c * p:(c + 1) * p, n:], y[c * p:(c + 1) * p, n:].T)


# ----------------------------------------------------------------------------- flow, grads


def _tiny_model(**kw):
  config = clip.ClipConfig.from_hf(_hf_config())
  model = ps_jax.build_model(config, num_prompts=kw.pop("num_prompts", 3), **kw)
  params = ps_jax.api.init_model_params(model, jax.random.PRNGKey(0))
  if "aggregation" in params["vision_model"]:  # make the zero-initialised output live
    out = params["vision_model"]["aggregation"]["attn"]["out_proj"]
    out["kernel"] = jax.random.normal(jax.random.PRNGKey(5), out["kernel"].shape) * 0.2
  return model, params


def _frame_changes(model, params, j, num_frames=6):
  frames = _frames(num_frames, batch=1)
  base = model.apply({"params": params}, frames, method="encode_video")["frame_features"][0]
  frames[0, j] += 1.0
  new = model.apply({"params": params}, frames, method="encode_video")["frame_features"][0]
  return np.abs(np.asarray(new - base)).max(-1)  # [F]


@pytest.mark.parametrize("switch,aggregate", [(True, True), (True, False), (False, True)])
def test_information_crosses_frames_only_within_a_chunk(switch, aggregate):
  model, params = _tiny_model(switch=switch, aggregate=aggregate)
  change = _frame_changes(model, params, j=1)  # chunks: frames 0-2 and 3-5
  assert change[1] > 1e-3
  assert change[0] > 1e-5 and change[2] > 1e-5, change
  np.testing.assert_array_equal(change[3:], 0.0)


def test_aggregation_groups_cross_chunks_but_not_clips():
  # G = 6 frames = 2 chunks of P = 3: every CLS attends to the prompts of both chunks.
  model, params = _tiny_model(aggregation_frames=6)
  frames = _frames(6, batch=2)
  run = lambda x: np.asarray(model.apply({"params": params}, x,
                                         method="encode_video")["frame_features"])
  base = run(frames)
  frames[0, 1] += 1.0
  change = np.abs(run(frames) - base).max(-1)  # [B, F]
  assert change[0, 1] > 1e-3 and np.all(change[0, 3:] > 1e-5), change
  np.testing.assert_array_equal(change[1], 0.0)


def test_frames_must_fill_whole_aggregation_groups():
  model, params = _tiny_model(aggregation_frames=6)
  with pytest.raises(ValueError, match="multiple of aggregation_frames=6"):
    model.apply({"params": params}, _frames(3), method="encode_video")
  with pytest.raises(ValueError, match="aggregation_frames must be 0 or a positive multiple"):
    ps_jax.build_model(clip.ClipConfig.from_hf(_hf_config()), 3, aggregation_frames=4)


def test_frames_are_independent_without_switch_and_aggregation():
  model, params = _tiny_model(switch=False, aggregate=False)
  change = _frame_changes(model, params, j=1)
  assert change[1] > 1e-3
  np.testing.assert_array_equal(np.delete(change, 1), 0.0)


def test_gradients_reach_new_parts_but_not_caption_inputs():
  model, params = _tiny_model()
  rng = np.random.default_rng(0)
  ids, mask = random_text_batch(rng, 2, 16, 99)
  frames = _frames(6)
  w = jnp.ones(99)

  def caption_only(p):
    out = model.apply({"params": p}, ids, mask, frames)
    return losses.caption_loss(out["caption_logits"], ids, 98, w)

  def total(p):
    out = model.apply({"params": p}, ids, mask, frames)
    return (losses.contrastive_loss(out["text_embedding"], out["video_embedding"],
                                    out["logit_scale"])
            + losses.caption_loss(out["caption_logits"], ids, 98, w))

  g = jax.grad(total)(params)
  norm = lambda t: float(sum(jnp.sum(x ** 2) for x in jax.tree_util.tree_leaves(t)))
  assert norm(g["vision_model"]["prompt"]) > 0
  assert norm(g["vision_model"]["aggregation"]) > 0
  assert norm(g["caption"]["decoder"]) > 0 and norm(g["caption"]["head"]) > 0
  gc = jax.grad(caption_only)(params)
  assert norm(gc["text_model"]["token_embedding"]) == 0.0
  assert norm(gc["text_model"]["position_embedding"]) == 0.0
  assert norm(gc["vision_model"]["prompt"]) > 0  # the caption loss trains the video side


def test_new_parameter_initialisation():
  model, params = ps_jax.build_model(clip.ClipConfig.from_hf(_hf_config()), 6), None
  params = ps_jax.api.init_model_params(model, jax.random.PRNGKey(0))
  d = 48
  np.testing.assert_allclose(np.std(params["vision_model"]["prompt"]), d ** -0.5 * 0.02,
                             rtol=0.15)
  out = params["vision_model"]["aggregation"]["attn"]["out_proj"]
  assert not np.any(out["kernel"]) and not np.any(out["bias"])


def _official_decoder_init(d, i):
  """name -> ("uniform", bound) or ("const", value): torch's default initialisation of
  one nn.TransformerDecoderLayer(d, heads, i), which the official code keeps."""
  out = {}
  for attn in ("self_attn", "multihead_attn"):
    out[f"{attn}.in_proj_weight"] = ("uniform", (6 / (d + 3 * d)) ** 0.5)  # xavier
    out[f"{attn}.in_proj_bias"] = ("const", 0.0)
    out[f"{attn}.out_proj.weight"] = ("uniform", d ** -0.5)  # kaiming_uniform(a=sqrt(5))
    out[f"{attn}.out_proj.bias"] = ("const", 0.0)
  for lin, fan_in in (("linear1", d), ("linear2", i)):
    out[f"{lin}.weight"] = out[f"{lin}.bias"] = ("uniform", fan_in ** -0.5)
  for norm in ("norm1", "norm2", "norm3"):
    out[f"{norm}.weight"], out[f"{norm}.bias"] = ("const", 1.0), ("const", 0.0)
  return out


def _check_init(name, x, kind, value):
  x = np.asarray(x, np.float64)
  if kind == "const":
    np.testing.assert_array_equal(x, value, err_msg=name)
    return
  std = value / np.sqrt(3)  # of U(-bound, bound)
  assert np.abs(x).max() <= value, name
  assert abs(x.mean()) < 5 * std / np.sqrt(x.size), name
  np.testing.assert_allclose(x.std(), std, rtol=0.03 if x.size >= 10000 else 0.12,
                             err_msg=name)


def _caption_layer(tensors, k):
  prefix = f"caption_transformer.layers.{k}."
  return {n[len(prefix):]: v for n, v in tensors.items() if n.startswith(prefix)}


def _assert_caption_head_starts_like_the_official_one(params):
  """Identical decoder layers, LayerNorms 1/0, output layer = token embedding, bias 0."""
  cap = params["caption"]
  for leaf in jax.tree_util.tree_leaves(cap["decoder"]):
    for k in range(1, leaf.shape[0]):
      np.testing.assert_array_equal(leaf[k], leaf[0])
  for norm in ("prenorm", "norm"):
    np.testing.assert_array_equal(cap[norm]["scale"], 1.0)
    np.testing.assert_array_equal(cap[norm]["bias"], 0.0)
  np.testing.assert_array_equal(cap["head"]["kernel"],
                                params["text_model"]["token_embedding"]["embedding"].T)
  np.testing.assert_array_equal(cap["head"]["bias"], 0.0)


def test_caption_decoder_starts_like_the_official_torch_decoder():
  d, i, heads, layers = 128, 512, 4, 3  # wide enough for tight statistics
  cfg = clip.ClipConfig(
      text=clip.TextConfig(vocab_size=99, max_position_embeddings=16, hidden_size=d,
                           intermediate_size=i, num_hidden_layers=1, num_attention_heads=heads),
      vision=clip.VisionConfig(image_size=32, patch_size=8, hidden_size=48,
                               intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=4), projection_dim=d)
  model = ps_jax.build_model(cfg, 6, num_captioner_layers=layers)
  params = ps_jax.api.init_model_params(model, jax.random.PRNGKey(0))
  _assert_caption_head_starts_like_the_official_one(params)
  tensors = convert.export_tensors(params, convert.prompt_switch_layout(cfg, 6, True, layers))
  torch.manual_seed(0)
  t_layer = torch.nn.TransformerDecoderLayer(d, heads, i)
  t_decoder = torch.nn.TransformerDecoder(t_layer, layers)  # deep copies of t_layer
  want = {n: tuple(v.shape) for n, v in t_layer.state_dict().items()}
  ours = _caption_layer(tensors, 0)
  assert {n: v.shape for n, v in ours.items()} == want
  formulas = _official_decoder_init(d, i)
  assert set(formulas) == set(want)
  for name, (kind, value) in formulas.items():
    _check_init("torch " + name, t_layer.state_dict()[name].numpy(), kind, value)
    _check_init(name, ours[name], kind, value)
  for k in range(1, layers):
    for name, value in t_decoder.layers[k].state_dict().items():
      torch.testing.assert_close(value, t_decoder.layers[0].state_dict()[name])
      np.testing.assert_array_equal(_caption_layer(tensors, k)[name], ours[name])


# ----------------------------------------------------------------------------- losses


def test_caption_loss_hand_computed():
  # B=1, L=5, V=4, eos=3: ids [2, 0, 1, 3, 3]; positions 0..3 predict [0, 1, 3, 3];
  # position 3's input is EOS -> not counted; targets 0,1,3 with weights 1, .25, .25.
  ids = jnp.array([[2, 0, 1, 3, 3]])
  logits = jnp.log(jnp.array([[[.7, .1, .1, .1], [.2, .5, .2, .1], [.1, .1, .2, .6],
                               [.25, .25, .25, .25]]]))
  w = jnp.array([1.0, 0.25, 1.0, 0.25])
  want = 0.5 * (1.0 * -np.log(.7) + 0.25 * -np.log(.5) + 0.25 * -np.log(.6)) / 1.5
  got = losses.caption_loss(logits, ids, eos_id=3, class_weights=w)
  np.testing.assert_allclose(float(got), want, rtol=1e-6)


def test_caption_class_weights_from_the_clip_tokenizer(clip_tokenizer_dir):
  from ps_jax.tokenizer import ClipTokenizer

  tok = ClipTokenizer(clip_tokenizer_dir)
  w = losses.caption_class_weights(tok, tok.vocab_size)
  low = set(np.flatnonzero(w == 0.25).tolist())
  assert {320, 49406, 49407} <= low  # "a", start, end
  assert len(low) == len(losses.FREQUENT_WORDS) + 2
  assert w[2368] == 1.0  # "cat"


def test_contrastive_loss_matches_formula():
  rng = np.random.default_rng(0)
  t = rng.normal(size=(5, 8)); t /= np.linalg.norm(t, axis=1, keepdims=True)
  v = rng.normal(size=(5, 8)); v /= np.linalg.norm(v, axis=1, keepdims=True)
  s = np.exp(2.0) * t @ v.T
  lse = lambda a, ax: np.log(np.exp(a).sum(ax))
  want = (np.mean(lse(s, 1) - np.diag(s)) + np.mean(lse(s, 0) - np.diag(s))) / 2
  np.testing.assert_allclose(float(losses.contrastive_loss(t, v, jnp.float32(2.0))), want,
                             rtol=1e-5)


# ----------------------------------------------------------------------------- official


def _reference_with_groups(ref, group_frames):
  """The reference with the official vision config's num_frames = `group_frames`."""
  ref = copy.deepcopy(ref)
  ref.nf = group_frames or P
  return ref


# (F frames given, G = the official run's training num_frames; 0 = P): official defaults
# train with 6 and test with 12 frames (two groups of one chunk); trained with 12 frames,
# every CLS attends to the prompts of both chunks, at training and at test.
@pytest.mark.parametrize("num_frames,group", [(6, 0), (12, 0), (12, 12), (24, 12)])
def test_reproduces_the_official_model(official, num_frames, group):
  ref, path, hf_config = official
  ref = _reference_with_groups(ref, group)
  model, params = ps_jax.load_model(path, clip_config=hf_config, num_prompts=P,
                                    aggregation_frames=group)
  frames = _frames(num_frames, seed=num_frames)
  ids, mask = random_text_batch(np.random.default_rng(1), 2, 16, 99)
  with torch.no_grad():
    tf = torch.from_numpy(frames.transpose(0, 1, 4, 2, 3).copy())
    ti = torch.from_numpy(ids).long()
    want_text = ref.encode_text(ti, torch.from_numpy(mask)).numpy()
    want_feats, want_video = (x.numpy() for x in ref.encode_video(tf))
    want_logits = ref.caption_logits(ti, tf).numpy()
  v = {"params": params}
  got_video = model.apply(v, frames, method="encode_video")
  np.testing.assert_allclose(model.apply(v, ids, mask, method="encode_text"), want_text,
                             atol=1e-4)
  np.testing.assert_allclose(got_video["frame_features"], want_feats, atol=1e-4)
  np.testing.assert_allclose(got_video["video_embedding"], want_video, atol=1e-4)
  np.testing.assert_allclose(model.apply(v, ids, frames, method="caption_logits"),
                             want_logits, atol=1e-4)
  assert np.std(want_logits) > 0.05  # random weights: a vacuous match is impossible
  if group > P:  # per-chunk aggregation would not match
    chunked, _ = ps_jax.load_model(path, clip_config=hf_config, num_prompts=P)
    per_chunk = chunked.apply(v, frames, method="encode_video")["frame_features"]
    assert np.abs(np.asarray(per_chunk) - want_feats).max() > 1e-3


def test_fixed_length_padding_changes_nothing(official):
  """ps_jax pads captions to a fixed length, the official code to the longest caption of
  the batch: text embeddings and the caption loss are the same (padding is EOS, masked)."""
  _, path, hf_config = official
  model, params = ps_jax.load_model(path, clip_config=hf_config, num_prompts=P)
  v = {"params": params}
  ids, mask = random_text_batch(np.random.default_rng(7), 3, 10, 99)
  ids = np.pad(ids, ((0, 0), (0, 6)), constant_values=98)  # EOS padding to 16
  mask = np.pad(mask, ((0, 0), (0, 6)))
  longest = int(mask.sum(1).max())
  assert longest <= 10
  short_ids, short_mask = ids[:, :longest], mask[:, :longest]
  np.testing.assert_allclose(model.apply(v, ids, mask, method="encode_text"),
                             model.apply(v, short_ids, short_mask, method="encode_text"),
                             atol=1e-6)
  frames = _frames(P, seed=5, batch=3)
  weights = jnp.asarray(np.random.default_rng(2).uniform(0.25, 1.0, 99), jnp.float32)
  loss = lambda i: losses.caption_loss(model.apply(v, i, frames, method="caption_logits"),
                                       i, eos_id=98, class_weights=weights)
  np.testing.assert_allclose(float(loss(ids)), float(loss(short_ids)), rtol=1e-6)


def test_official_import_rejects_unexpected_and_missing_keys(official, tmp_path):
  ref, _, hf_config = official
  state = ref.state_dict()
  state["clip.vision_model.extra_prompt"] = torch.zeros(2)
  del state["caption_head.bias"]
  path = str(tmp_path / "bad.pth")
  torch.save({"state_dict": state}, path)
  with pytest.raises(convert.LayoutError) as err:
    ps_jax.load_model(path, clip_config=hf_config, num_prompts=P)
  assert "unexpected: clip.vision_model.extra_prompt" in str(err.value)
  assert "missing: caption_head.bias" in str(err.value)
  with pytest.raises(convert.LayoutError, match="prompt_embedding: expected shape"):
    ps_jax.load_model(official[1], clip_config=hf_config, num_prompts=4)


def test_official_checkpoint_without_caption_head_loads(official, tmp_path, capsys):
  ref, _, hf_config = official  # as trained with the official default --loss clip
  state = {k: v for k, v in ref.state_dict().items() if not k.startswith("caption_")}
  path = str(tmp_path / "retrieval_only.pth")
  torch.save({"state_dict": state}, path)
  capsys.readouterr()
  model, params = ps_jax.load_model(path, clip_config=hf_config, num_prompts=P)
  assert "has no caption head weights" in capsys.readouterr().out
  _assert_caption_head_starts_like_the_official_one(params)
  frames = _frames(12, seed=7)
  ids, mask = random_text_batch(np.random.default_rng(2), 2, 16, 99)
  with torch.no_grad():
    want_text = ref.encode_text(torch.from_numpy(ids).long(), torch.from_numpy(mask)).numpy()
    _, want_video = ref.encode_video(torch.from_numpy(frames.transpose(0, 1, 4, 2, 3).copy()))
  v = {"params": params}
  np.testing.assert_allclose(model.apply(v, ids, mask, method="encode_text"), want_text,
                             atol=1e-4)
  np.testing.assert_allclose(model.apply(v, frames, method="encode_video")["video_embedding"],
                             want_video.numpy(), atol=1e-4)
  assert np.all(np.isfinite(model.apply(v, ids, frames, method="caption_logits")))
  # Any other missing tensor is still an error that names it.
  del state["clip.vision_model.attn.in_proj_bias"]
  torch.save({"state_dict": state}, path)
  with pytest.raises(convert.LayoutError) as err:
    ps_jax.load_model(path, clip_config=hf_config, num_prompts=P)
  assert "missing: clip.vision_model.attn.in_proj_bias" in str(err.value)
  assert "caption" not in str(err.value)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_export_official_loads_strictly_into_torch(official, tmp_path, suffix):
  ref, path, hf_config = official
  model, params = ps_jax.load_model(path, clip_config=hf_config, num_prompts=P)
  out = str(tmp_path / f"export{suffix}")
  ps_jax.export_official(params, model, out)
  if suffix == ".pth":
    state = torch.load(out, map_location="cpu", weights_only=True)["state_dict"]
  else:
    import safetensors.torch  # pylint: disable=g-import-not-at-top
    state = safetensors.torch.load_file(out)
  # The official model keeps both position_ids buffers in its state_dict (its CLIP copy
  # registers them persistent); this transformers version does not, hence "unexpected".
  ids = {"clip.text_model.embeddings.position_ids": 16,
         "clip.vision_model.embeddings.position_ids": (32 // 8) ** 2 + 1}
  for name, n in ids.items():
    assert state[name].dtype == torch.int64
    torch.testing.assert_close(state[name], torch.arange(n)[None], rtol=0, atol=0)
  fresh = TorchPromptSwitch(transformers.CLIPConfig(**hf_config), P)
  missing, unexpected = fresh.load_state_dict(state, strict=False)
  assert [k for k in missing if not k.endswith("position_ids")] == []
  assert set(unexpected) <= set(ids)
  for k, v in ref.state_dict().items():
    if not k.endswith("position_ids"):
      torch.testing.assert_close(state[k], v, rtol=0, atol=0, msg=k)
  if suffix != ".pth":
    return
  _, again_params = ps_jax.load_model(out, clip_config=hf_config, num_prompts=P)
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(again_params),
                  strict=True):
    np.testing.assert_array_equal(a, b)


def test_load_model_from_hf_dir_initialises_new_parts(tmp_path):
  hf = transformers.CLIPModel(_hf_config())
  randomize_torch_module(hf, seed=1)
  hf.save_pretrained(str(tmp_path))
  model, params = ps_jax.load_model(str(tmp_path), num_prompts=P)
  emb = params["text_model"]["token_embedding"]["embedding"]
  np.testing.assert_array_equal(params["caption"]["head"]["kernel"], emb.T)
  np.testing.assert_array_equal(
      emb, hf.text_model.embeddings.token_embedding.weight.detach().numpy())
  _assert_caption_head_starts_like_the_official_one(params)
  # num_prompts=0: plain CLIP, mean pooling of normalised image features.
  base, bparams = ps_jax.load_model(str(tmp_path), num_prompts=0)
  assert "caption" not in bparams and "prompt" not in bparams["vision_model"]
  frames = _frames(4)
  got = base.apply({"params": bparams}, frames, method="encode_video")["video_embedding"]
  _, cparams = convert.load_hf_clip(str(tmp_path))
  img = clip.CLIP(base.clip).apply({"params": cparams}, frames.reshape(8, 32, 32, 3),
                                   method="get_image_features").reshape(2, 4, -1)
  img = img / np.linalg.norm(img, axis=-1, keepdims=True)
  mean = img.mean(1)
  np.testing.assert_allclose(got, mean / np.linalg.norm(mean, axis=-1, keepdims=True),
                             atol=1e-5)


def test_frames_not_a_multiple_of_prompts_is_an_error():
  model, params = _tiny_model()
  with pytest.raises(ValueError, match="multiple of num_prompts=3"):
    model.apply({"params": params}, _frames(4), method="encode_video")
