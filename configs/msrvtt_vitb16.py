"""MSR-VTT 9k, ViT-B/16 (paper: t2v R@1 50.0 selected on test).

  python -m ps_jax.main --config configs/msrvtt_vitb16.py --workdir runs/msrvtt_b16 \
      --config.model.init_from=clip-vit-base-patch16 --config.data.dir=data

Same recipe as configs/msrvtt_vitb32.py with the patch-16 backbone: 4x the vision
tokens, so bfloat16 compute and dots-saveable remat are on by default; on one 80 GB GPU
batch 32 x 6 frames fits without accumulation.
"""

import os

from ps_jax.config_defaults import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(__file__), "msrvtt_vitb32.py"))
  c.model.init_from = "clip-vit-base-patch16"
  c.model.clip.vision.patch_size = 16  # the architecture without weights (--mode compile)
  c.model.dtype = "bfloat16"
  c.model.remat_policy = "dots_saveable"
  return c
