"""Ablation of configs/demo.py: no switch and no aggregation (frames never meet).

  python -m ps_jax.main --config configs/demo_noswitch.py --workdir /tmp/ps_jax_demo_noswitch

The prompts stay (same parameter count) but are never transposed between frames and
the CLS tokens do not read them at the end, so every frame is encoded on its own and
mean-pooled. Frame order can reach the video embedding only through each frame's own
prompts (they tell a frame its position), and that suffices for part of it: in the
recorded five-seed run (benchmarks/RESULTS_demo_seeds.json) no-switch reached 70.8-75.8%
twin accuracy on every seed, against 98.1-100% with the switch, and 21.8-26.9 t2v R@1
(docs/demo.md lists the five seeds). Same data, schedule and budget as the demo.
"""

import os

from ps_jax.config_defaults import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(__file__), "demo.py"))
  c.model.switch = False
  c.model.aggregate = False
  return c
