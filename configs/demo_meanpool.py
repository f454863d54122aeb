"""Order-blind baseline for configs/demo.py: plain CLIP, frames mean-pooled (no prompts).

  python -m ps_jax.main --config configs/demo_meanpool.py --workdir /tmp/ps_jax_demo_meanpool

The CLIP4Clip-style model ps_jax builds with num_prompts=0: no cube, no switch, no
aggregation, no caption head; frames are sampled one per temporal segment as in the
demo. A clip and its time-reversed twin show the same set of frames, so its twin
accuracy is 50% by construction: the floor that the demo's switch must beat.
"""

import os

from ps_jax.config_defaults import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(__file__), "demo.py"))
  c.model.num_prompts = 0
  c.model.num_captioner_layers = 0
  return c
