"""ps_jax's official layout against the official Prompt Switch ViT-B/32 state_dict.

tests/data/official_promptclip_vitb32_state_dict.json lists every name and shape of the
official PyTorch `PromptCLIP.state_dict()` for ViT-B/32 with the official defaults,
derived from the official code (its "source" field says from which files and lines).
These tests check that `export_official` writes exactly those names and shapes and that
the `.pth` import path (`api.official_params`, used by `load_model`) accepts exactly them.

No ViT-B/32 weights are materialised for the export: the params tree holds broadcast
views of a zero scalar and every tensor family is exported and dropped in turn.
"""

import json
import pathlib

import jax
import numpy as np
import pytest
import safetensors.numpy

import ps_jax
from ps_jax import api, convert
from ps_jax.models.clip import ClipConfig

FIXTURE = pathlib.Path(__file__).parent / "data" / "official_promptclip_vitb32_state_dict.json"

# The fields of the hub config openai/clip-vit-base-patch32 that set a shape (the official
# PromptCLIP builds its CLIPModel from that config).
VIT_B32 = {
    "text_config": dict(vocab_size=49408, max_position_embeddings=77, hidden_size=512,
                        intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
    "vision_config": dict(image_size=224, patch_size=32, hidden_size=768,
                          intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
    "projection_dim": 512,
}


@pytest.fixture(scope="module")
def official():
  with open(FIXTURE, encoding="utf-8") as f:
    doc = json.load(f)
  doc["tensors"] = {k: tuple(v) for k, v in doc["tensors"].items()}
  return doc


@pytest.fixture(scope="module")
def model(official):
  return api.build_model(ClipConfig.from_hf(VIT_B32), num_prompts=official["num_prompts"],
                         num_captioner_layers=official["num_captioner_layers"])


@pytest.fixture(scope="module")
def shapes(model):
  return api.param_shapes(model)


def _zeros_like_shapes(tree):
  """A params tree of read-only zero views (no memory per element)."""
  if isinstance(tree, dict):
    return {k: _zeros_like_shapes(v) for k, v in tree.items()}
  return np.broadcast_to(np.zeros((), np.float32), tree.shape)


def _exported_layout(params, model, monkeypatch, tmp_path) -> dict[str, tuple[int, ...]]:
  """name -> shape of what `ps_jax.export_official` writes, without holding the tensors:
  the real `convert.export_tensors` runs one layout entry at a time and the file writer
  only records shapes."""
  real_export = convert.export_tensors

  def export_per_entry(tree, entries):
    out = {}
    for entry in entries:
      for name, arr in real_export(tree, [entry]).items():
        assert arr.dtype == np.float32, (name, arr.dtype)
        out[name] = np.broadcast_to(np.zeros((), np.float32), arr.shape)
    return out

  written = {}

  def record(tensors, path, metadata=None):
    del path, metadata
    written.update({k: tuple(v.shape) for k, v in tensors.items()})

  monkeypatch.setattr(convert, "export_tensors", export_per_entry)
  monkeypatch.setattr(safetensors.numpy, "save_file", record)
  ps_jax.export_official(params, model, str(tmp_path / "official.safetensors"))
  return written


@pytest.fixture(scope="module")
def exported(model, shapes, tmp_path_factory):
  with pytest.MonkeyPatch.context() as mp:
    return _exported_layout(_zeros_like_shapes(shapes), model, mp,
                            tmp_path_factory.mktemp("export"))


def _name_diff(official_names, ours, what, buffers=()) -> str:
  only_official = sorted(set(official_names) - set(ours))
  only_ours = sorted(set(ours) - set(official_names))
  lines = [f"{what} differs from the official state_dict names:"]
  lines += [f"  only in the official state_dict: {n}"
            + (" (a persistent buffer of the official model)" if n in buffers else "")
            for n in only_official]
  lines += [f"  only in ps_jax: {n}" for n in only_ours]
  return "\n".join(lines)


def test_fixture_is_self_consistent(official):
  tensors = official["tensors"]
  assert list(tensors) == sorted(tensors)
  assert len(tensors) == 447
  assert set(official["buffers"]) <= set(tensors)
  p = official["num_prompts"]
  assert tensors["clip.vision_model.encoder.prompt_embedding"] == (p, p, 768)
  caption = [n for n in tensors if n.startswith(tuple(official["caption_head_prefixes"]))]
  assert len(caption) == 2 + official["num_captioner_layers"] * 18 + 2 + 2


def test_export_names_equal_official(official, exported):
  assert set(exported) == set(official["tensors"]), _name_diff(
      official["tensors"], exported, "ps_jax.export_official", official["buffers"])


def test_export_shapes_equal_official(official, exported):
  common = sorted(set(exported) & set(official["tensors"]))
  assert len(common) >= len(official["tensors"]) - len(official["buffers"])
  wrong = [f"{n}: official {official['tensors'][n]}, ps_jax {exported[n]}"
           for n in common if exported[n] != official["tensors"][n]]
  assert not wrong, "\n".join(wrong)


def _layout_names(entries) -> set[str]:
  return {e.name.format(i=i) for e in entries for i in range(e.layers or 1)}


def test_layout_without_caption_head_drops_exactly_the_caption_tensors(official, model):
  """An official --loss clip checkpoint has no caption head; the layout ps_jax uses for it
  must differ from the full one by exactly the official caption head names."""
  c = model.config
  full = _layout_names(convert.prompt_switch_layout(
      model.clip, c.num_prompts, c.aggregate, c.num_captioner_layers))
  bare = _layout_names(convert.prompt_switch_layout(model.clip, c.num_prompts, c.aggregate, 0))
  caption = {n for n in official["tensors"]
             if n.startswith(tuple(official["caption_head_prefixes"]))}
  assert bare <= full
  assert full - bare == caption, _name_diff(caption, full - bare, "the caption head layout")
  assert all(convert.has_caption_head({n: None}) for n in caption)
  assert not any(convert.has_caption_head({n: None}) for n in official["tensors"]
                 if n not in caption)


def _official_state(official, drop=()):
  """The official state_dict with zeros: int64 position_ids buffers, float32 views
  (no memory per element) for every parameter."""
  state = {}
  for name, shape in official["tensors"].items():
    if name in drop:
      continue
    if name in official["buffers"]:
      state[name] = np.zeros(shape, np.dtype(official["buffers"][name]))
    else:
      state[name] = np.broadcast_to(np.zeros((), np.float32), shape)
  return state


def test_import_accepts_exactly_the_official_state_dict(official, model, shapes):
  params = api.official_params(_official_state(official), model, jax.random.PRNGKey(0),
                               source="official.pth")
  got = jax.tree_util.tree_map(lambda x: (tuple(x.shape), str(x.dtype)), params)
  want = jax.tree_util.tree_map(lambda x: (tuple(x.shape), str(x.dtype)), shapes)
  assert got == want


@pytest.mark.parametrize("name", [
    "clip.vision_model.encoder.prompt_embedding",
    "clip.vision_model.attn.in_proj_weight",
    "clip.text_model.encoder.layers.11.mlp.fc2.weight",
    "caption_transformer.layers.1.multihead_attn.out_proj.bias",
])
def test_import_rejects_a_missing_official_tensor(official, model, name):
  assert name in official["tensors"]
  # A plain try (not pytest.raises) frees the traceback, and with it the stacked
  # arrays of the failed import, as soon as the message is read.
  try:
    api.official_params(_official_state(official, drop={name}), model,
                        jax.random.PRNGKey(0), source="official.pth")
  except convert.LayoutError as e:
    message = str(e)
  else:
    pytest.fail(f"official_params accepted a state_dict without {name}")
  assert f"missing: {name}" in message, message
  assert message.count("missing:") == 1, message
