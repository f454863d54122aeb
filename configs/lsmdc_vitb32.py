"""LSMDC, ViT-B/32: movie clips with one caption each (the last one listed).

  python -m ps_jax.data.prepare --dataset lsmdc --video_dir LSMDC/videos \
      --anno_dir LSMDC/annotations --out_dir data
  python -m ps_jax.main --config configs/lsmdc_vitb32.py --workdir runs/lsmdc_b32 \
      --config.model.init_from=clip-vit-base-patch32 --config.data.dir=data

Test: the 1,000-clip public test set; selection on a seeded hold-out of training clips.
Official recipe otherwise (batch 32, 5 epochs, lr 1e-6 / 1e-5).
"""

import os

from ps_jax.config_defaults import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(__file__), "msrvtt_vitb32.py"))
  c.data.name = "lsmdc"
  return c
