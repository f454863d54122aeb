"""ActivityNet Captions, ViT-B/32: moments (protocol activitynet/moments), on the model
of configs/activitynet_vitb32.py.

  python -m ps_jax.data.prepare --dataset activitynet --video_dir ActivityNet/videos \
      --anno_dir ActivityNet/annotations --out_dir data --fps 3
  python -m ps_jax.main --config configs/activitynet_moments_vitb32.py \
      --workdir runs/anet_b32 --config.data.dir=data --mode eval

Training is the paragraph recipe of activitynet_vitb32.py (`--mode train` here trains it
and then evaluates the moments too); `--mode eval` on its workdir ranks moments: each of
the 17,500 sentences of val_1.json is a query, its ground truth the [start, end] it
describes in its own video (of the 4,916 test videos). Each test video is indexed as
windows of time at five scales (10, 20, 40, 80 and 160 s, each every half its length:
`--mode index` writes the same index), 12 frames a window sampled like a test clip, and
the windows are ranked by the model's text-video similarity: within the sentence's own
video (temporal grounding) and among all 4,916 videos' windows (corpus). `--fps 3`
matters here: it gives every stored video its time base (windows are placed in seconds).

Why these windows (benchmarks/anet_moment_windows.py, RESULTS_anet_moment_windows.md):
val_1's moments last 3.8 s to 93 s (10th/90th percentile; median 23 s) in videos of
about two minutes, so no one length fits them; over the 17,500 moments the best window
of these five scales reaches IoU >= 0.5 with 86.3% and >= 0.7 with 70.1% (the ceiling of
R@n at those IoUs, whatever the model), at 43 windows a video (1,319 per hour).
One scale of 16 s reaches 38.5% and 16.9%.

Published numbers are not printed beside ours: the temporal grounding literature
(2D-TAN and after) trains a grounding head and tests on val_2 with its own splits;
ours is a retrieval model ranking fixed windows, reported for what it is.
"""

import os

from ps_jax.config_defaults import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(__file__), "activitynet_vitb32.py"))
  c.moments.protocol = "activitynet/moments"
  c.moments.windows = "10:5,20:10,40:20,80:40,160:80"
  return c
