"""Optimiser: learning-rate groups of the official recipe."""

import flax.linen as nn
import jax

from ps_jax import api, optim
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
