"""Ablation of configs/demo.py: no switch and no aggregation (frames never meet).

  python -m ps_jax.main --config configs/demo_noswitch.py --workdir /tmp/ps_jax_demo_noswitch

The prompts stay (same parameter count) but are never transposed between frames and
the CLS tokens do not read them at the end, so every frame is encoded on its own and
mean-pooled: the model cannot know the frame order, and its twin accuracy stays near
50%. Same data, schedule and budget as the demo.
"""

import os

from ps_jax.config_defaults import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(__file__), "demo.py"))
  c.model.switch = False
  c.model.aggregate = False
  return c
