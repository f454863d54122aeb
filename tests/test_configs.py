"""Every experiment config loads, and validates (or names the missing weights)."""

import glob
import os

import pytest

from ps_jax import experiment
from ps_jax.config_defaults import load_config_file

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.py")))


def test_there_are_configs():
  names = {os.path.basename(c)[:-3] for c in CONFIGS}
  assert {"demo", "demo_noswitch", "msrvtt_vitb32", "msrvtt_vitb16", "msvd_vitb32",
          "lsmdc_vitb32"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p))
def test_config_validates(path):
  config = load_config_file(path)
  assert load_config_file(path).to_dict() == config.to_dict()  # deterministic
  if config.model.init_from:
    with pytest.raises(ValueError, match="config.model.init_from"):
      experiment.validate_config(config, num_devices=8, num_processes=1)
    config.model.init_from = ""
  experiment.validate_config(config, num_devices=8 if config.batch_size % 8 == 0 else 1,
                        num_processes=1)


def test_official_recipe_numbers():
  c = load_config_file(os.path.join(os.path.dirname(__file__), "..", "configs",
                                    "msrvtt_vitb32.py"))
  assert (c.model.num_prompts, c.data.num_frames, c.data.eval_num_frames) == (6, 6, 12)
  assert (c.batch_size, c.num_epochs, c.optim.lr_clip, c.optim.lr_new) == (32, 5, 1e-6, 1e-5)
  assert (c.optim.weight_decay, c.optim.warmup_fraction, c.optim.grad_clip) == (0.2, 0.1, 1.0)
  assert (c.optim.b1, c.optim.b2, c.optim.eps) == (0.9, 0.999, 1e-6)


@pytest.mark.parametrize("field,value,message", [
    ("crop_scale", (0.0, 1.0), "config.data.crop_scale=(0.0, 1.0) must be (low, high) with "
                               "0 < low <= high <= 1"),
    ("crop_scale", (0.9, 0.5), "config.data.crop_scale=(0.9, 0.5)"),
    ("crop_ratio", (1.5, 1.0), "config.data.crop_ratio=(1.5, 1.0) must be (low, high)"),
])
def test_crop_ranges_are_checked(field, value, message):
  config = load_config_file(os.path.join(os.path.dirname(__file__), "..", "configs",
                                         "demo.py"))
  config.data[field] = value
  with pytest.raises(experiment.ConfigError) as err:
    experiment.validate_config(config, num_devices=1, num_processes=1)
  assert message in str(err.value)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p))
def test_training_configs_compute_in_bfloat16_unless_they_say_why_not(path):
  """bfloat16 compute (float32 params and optimizer state) with 12 layers unrolled (every
  ViT-B layer) is the default; the demo family pins float32 (its seed table's precision)."""
  config = load_config_file(path)
  if os.path.basename(path).startswith("demo"):
    assert (config.model.dtype, config.model.scan_unroll) == ("float32", 1)
    assert config.model.patch_embed == "conv"
  else:
    assert config.model.dtype == "bfloat16" and config.model.patch_embed == "matmul"
    # ViT-B: every layer unrolled; ViT-L/14's 24 layers run as 2 iterations of 12.
    assert config.model.scan_unroll == 12
    assert config.model.clip.vision.num_hidden_layers in (12, 24)
  assert config.optim.fused and config.optim.adamw == "official"
