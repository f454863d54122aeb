"""ActivityNet Captions, ViT-B/32: paragraph-to-video retrieval (protocol
activitynet/val1-paragraph).

  python -m ps_jax.data.prepare --dataset activitynet --video_dir ActivityNet/videos \
      --anno_dir ActivityNet/annotations --out_dir data --fps 3
  python -m ps_jax.main --config configs/activitynet_vitb32.py --workdir runs/anet_b32 \
      --config.model.init_from=clip-vit-base-patch32 --config.data.dir=data

Protocol (the official code's `anet_dataset.py`, also CLIP4Clip's): a query is all
sentences of a video joined into one paragraph, truncated to CLIP's 77 tokens with EOS
kept (a paragraph averages ~60 words: many are cut). Training videos: the 10,007 ids of
`train_ids.json` annotated in `train.json`, minus a seeded hold-out of 1,000 for
checkpoint selection; test: the 4,916 ids of `val_ids.json` annotated in `val_1.json`
(papers say 4,917: see `ps_jax.data.protocols`). Videos run minutes: `--fps 3` stores
them as the official compress step does (3 frames a second, short side 224, JPEG),
about 0.5 MB a minute; frames are still sampled over the whole video (6 segments for
training, 12 at test). Test frames are sampled with the `uniform` rule, as for every
test split, so the test is deterministic and repeatable; the official `anet_dataset.py`
draws them with the training `rand` rule instead (a difference, listed in
docs/reproducing.md). `--anno_dir` holds the official
repository's data/ActivityNet files; video files are named `v_<youtube id>.mp4` (or
.mkv), and the ones that cannot be found are listed in DATA_DIR/prepare_report.jsonl
and counted against the protocol ("4913 of 4916 test videos present").

Hardware: an 8-chip TPU slice or 8 GPUs (data parallel) run the official batch of 32
for 5 epochs (~1,400 steps); one GPU with grad_accum_steps. The Prompt Switch paper
reports no ActivityNet number; `config.reference` holds CLIP4Clip's (ViT-B/32, its best
variant) for comparison, printed beside ours after the final test.
"""

import os

from ps_jax.config_defaults import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(__file__), "msrvtt_vitb32.py"))
  c.data.name = "activitynet"
  c.eval_every_steps = 282       # about once an epoch (9,007 training videos / 32)
  c.checkpoint.every_steps = 282
  c.reference.source = "CLIP4Clip ViT-B/32"
  c.reference.t2v = {"R@1": 40.5, "R@5": 73.4, "R@50": 98.2, "MdR": 2.0, "MnR": 7.5}
  return c
