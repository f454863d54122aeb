"""DiDeMo, ViT-B/32: paragraph-to-video retrieval (protocol didemo/test-paragraph).

  python -m ps_jax.data.prepare --dataset didemo --video_dir DiDeMo/videos \
      --anno_dir DiDeMo/annotations --out_dir data --fps 3
  python -m ps_jax.main --config configs/didemo_vitb32.py --workdir runs/didemo_b32 \
      --config.model.init_from=clip-vit-base-patch32 --config.data.dir=data

Protocol (CLIP4Clip's): a query is all descriptions of a video joined in file order,
truncated to CLIP's 77 tokens with EOS kept. `--anno_dir` holds the dataset authors'
`val_data.json` and `test_data.json` (1,094 and 1,037 videos) and, for training, your
`train_data.json` (same format; not distributed with this package). Checkpoints are
selected on val, the test split is reported. Videos are the Flickr files named by each
record's `video` field (e.g. `26292851@N04_4253489686_265c3c8051.m4v`), found in
--video_dir as that file or converted (`<video>.mp4`); many can no longer be downloaded,
so expect "1004 of 1037 test videos present" (the 1,004 papers report), each missing
one listed in DATA_DIR/prepare_report.jsonl.

Hardware: as configs/msrvtt_vitb32.py (batch 32, 5 epochs, official learning rates).
The Prompt Switch paper reports no DiDeMo number; `config.reference` holds CLIP4Clip's
(ViT-B/32, its best variant), printed beside ours after the final test.
"""

import os

from ps_jax.config_defaults import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(__file__), "msrvtt_vitb32.py"))
  c.data.name = "didemo"
  c.eval_every_steps = 250
  c.checkpoint.every_steps = 250
  c.reference.source = "CLIP4Clip ViT-B/32"
  c.reference.t2v = {"R@1": 43.4, "R@5": 70.2, "R@10": 80.6, "MdR": 2.0, "MnR": 17.5}
  return c
