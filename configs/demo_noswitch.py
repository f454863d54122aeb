"""Ablation of configs/demo.py: no switch and no aggregation (frames never meet).

  python -m ps_jax.main --config configs/demo_noswitch.py --workdir /tmp/ps_jax_demo_noswitch

The prompts stay (same parameter count) but are never transposed between frames and
the CLS tokens do not read them at the end, so every frame is encoded on its own and
mean-pooled. Frame order can reach the video embedding only through each frame's own
prompts (they tell a frame its position), and that suffices: with the official
optimizer and initialisation it learnt the direction of motion on 4 seeds of 5 (README
lists the five seeds). Same data, schedule and budget as the demo.
"""

import os

from ps_jax.config_defaults import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(__file__), "demo.py"))
  c.model.switch = False
  c.model.aggregate = False
  return c
