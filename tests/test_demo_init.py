"""Why configs/demo.py sets model.qk_init_std: where a clip and its reversed twin start.

A clip and its time-reversed twin hold the same frames, so a freshly initialised model
can tell them apart only through interactions between a frame's content and its
position (its prompts), and attention is where those interactions live. With every
projection drawn from N(0, 0.02) the attention logits start near zero, each token
attends alike, and the twins' video embeddings start about a thousand times closer
than two different clips': the symmetric saddle the demo must leave. Query/key
kernels drawn at OpenAI CLIP's width^-0.5 start them tens of times further apart.
"""

import jax
import numpy as np
import pytest

from ps_jax import api, experiment
from ps_jax.config_defaults import load_config_file
from ps_jax.data import moving_shapes, sampling
from ps_jax.data.transforms import normalize_frames
from ps_jax.models.layers import DENSE_INIT_STD
from train_fixtures import REPO

PAIRS = 24


@pytest.fixture(scope="module")
def demo_model():
  """(config, model, jitted encode_video) of configs/demo.py."""
  config = load_config_file(f"{REPO}/configs/demo.py")
  tokenizer = experiment.build_tokenizer(config)
  model = api.build_model(experiment.clip_config_from(config, tokenizer),
                          **experiment.model_options(config))
  encode = jax.jit(lambda p, f: model.apply({"params": p}, normalize_frames(f),
                                            method="encode_video")["video_embedding"])
  return config, model, encode


def _twin_ratio(encode, params, clips):
  """Mean twin distance / mean distance between different clips."""
  fwd, rev = (np.asarray(encode(params, c), np.float64) for c in clips)
  twin = np.linalg.norm(fwd - rev, axis=1).mean()
  other = np.linalg.norm(fwd[:, None] - fwd[None], axis=-1)[~np.eye(PAIRS, dtype=bool)].mean()
  return twin / other


@pytest.fixture(scope="module")
def clips():
  """(forward, reversed) uint8[PAIRS, 4, 32, 32, 3]: the demo's evaluation frames of its
  first validation pairs."""
  cfg = moving_shapes.SIZES["demo"]
  idx = sampling.sample_frame_indices(cfg.num_frames, 4, 4, "uniform")
  pairs = [moving_shapes.render_pair(cfg, "val", i) for i in range(PAIRS)]
  return (np.stack([f.frames[idx] for f, _ in pairs]),
          np.stack([r.frames[idx] for _, r in pairs]))


def test_qk_init_std_rescales_only_the_query_and_key_kernels(demo_model):
  _, model, _ = demo_model
  base = api.init_model_params(model, jax.random.PRNGKey(0))
  scaled = api.init_model_params(model, jax.random.PRNGKey(0), 0.125)
  flat_scaled = dict(jax.tree_util.tree_flatten_with_path(scaled)[0])
  rescaled = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(base)[0]:
    name = jax.tree_util.keystr(path)
    if "['self_attn']['q_proj']['kernel']" in name or "['self_attn']['k_proj']['kernel']" in name:
      np.testing.assert_allclose(flat_scaled[path], leaf * (0.125 / DENSE_INIT_STD), rtol=1e-6)
      rescaled += 1
    else:
      np.testing.assert_array_equal(flat_scaled[path], leaf)
  assert rescaled == 4   # q and k of the text and vision encoders (layers stacked)


def test_twins_start_apart_only_with_the_demos_attention_init(demo_model, clips):
  config, model, encode = demo_model
  assert config.model.qk_init_std == 64 ** -0.5
  for seed in (0, 1, 2):
    rng = jax.random.PRNGKey(seed)
    flat = _twin_ratio(encode, api.init_model_params(model, rng), clips)  # all N(0, 0.02)
    demo = _twin_ratio(encode, api.init_model_params(model, rng, config.model.qk_init_std),
                       clips)
    assert flat < 0.003 and demo > 0.01 and demo > 10 * flat, (seed, flat, demo)
