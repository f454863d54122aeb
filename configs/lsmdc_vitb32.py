"""LSMDC, ViT-B/32: movie clips with one caption each (the last one listed).

  python -m ps_jax.data.prepare --dataset lsmdc --video_dir LSMDC/videos \
      --anno_dir LSMDC/annotations --out_dir data --fps 3
  python -m ps_jax.main --config configs/lsmdc_vitb32.py --workdir runs/lsmdc_b32 \
      --config.model.init_from=clip-vit-base-patch32 --config.data.dir=data

Test: the 1,000-clip public test set, all of it (protocol lsmdc/1k; the official loader
skips clip 1012_Unbreakable_00.05.16.065-00.05.21.941 and tests on 999); selection on a
seeded hold-out of training clips. Official recipe otherwise (batch 32, 5 epochs, lr
1e-6 / 1e-5), computed in bfloat16 (the official trainer: float32;
`--config.model.dtype=float32`). `--fps 3` re-times the videos like the official
compress step (224 px, 3 fps); videos already compressed by it need no `--fps`.
"""

import os

from ps_jax.config_defaults import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(__file__), "msrvtt_vitb32.py"))
  c.data.name = "lsmdc"
  return c
