"""MSVD, ViT-B/32: 1,200 train videos (all 48,774 captions), 100 val, 670 test.

  python -m ps_jax.data.prepare --dataset msvd --video_dir MSVD/videos \
      --anno_dir MSVD/annotations --out_dir data --fps 3
  python -m ps_jax.main --config configs/msvd_vitb32.py --workdir runs/msvd_b32 \
      --config.model.init_from=clip-vit-base-patch32 --config.data.dir=data

Test protocol: t2v ranks the 670 videos for each of the 27,763 captions; v2t ranks a
video's caption group by its best caption. Checkpoints are selected on the official val
list. Official recipe otherwise (batch 32, 5 epochs, lr 1e-6 / 1e-5), computed in bfloat16
(the official trainer: float32; `--config.model.dtype=float32`). `--fps 3` re-times
the videos like the official compress step (224 px, 3 fps); videos already compressed by
it need no `--fps`.
"""

import os

from ps_jax.config_defaults import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(__file__), "msrvtt_vitb32.py"))
  c.data.name = "msvd"
  c.eval_every_steps = 500
  c.checkpoint.every_steps = 500
  return c
