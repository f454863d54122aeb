"""Demo: a tiny Prompt Switch trained from scratch on the synthetic moving_shapes benchmark.

  python -m ps_jax.main --config configs/demo.py --workdir /tmp/ps_jax_demo

Hardware: CPU (2 cores are enough). Renders the benchmark on first use (384 train /
96 val / 160 test clips of 12 frames, 32x32 px, in twins: each clip and its
time-reversed copy), trains for a few minutes and prints R@1/5/10/50, MdR, MnR in both
directions plus the twin accuracy (own clip above its reversed twin; 50% = blind to
frame order). Compare with configs/demo_noswitch.py; README lists the results.
"""

from ps_jax.config_defaults import base_config


def get_config():
  c = base_config()
  c.model.clip.text.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4)
  c.model.clip.vision.update(image_size=32, patch_size=8, hidden_size=64,
                             intermediate_size=128, num_hidden_layers=3,
                             num_attention_heads=4)
  c.model.clip.projection_dim = 64
  c.model.num_prompts = 4
  c.model.prompt_init_scale = 100.0  # from scratch the cube must start O(1) (official
                                     # init: D^-0.5 * 0.02, made for pretrained CLIP)
  c.data.name = "moving_shapes/demo"
  c.data.num_frames = 4
  c.data.eval_num_frames = 4       # middle frame of each segment: twins see mirrored frames
  c.data.image_size = 32
  c.data.max_len = 12
  c.data.worker_count = 0
  c.data.flip_prob = 0.0          # a flipped "moves left" clip would move right
  c.data.group_size = 2           # every clip shares its batch with its reversed twin
  c.batch_size = 32
  c.eval_batch_size = 32
  c.num_epochs = 30
  c.optim.lr_clip = 1e-3          # from scratch
  c.optim.lr_new = 1e-2           # the prompt cube (and caption head): a large step breaks
                                  # the twins' symmetry (identical frame sets) early
  c.optim.aggregation_group = "new"  # the aggregation attention learns at lr_new too: its
                                     # output projection starts at zero, and at lr_clip
                                     # the switch broke the symmetry on 3 seeds of 5
  c.optim.weight_decay = 0.05
  c.checkpoint.every_steps = 100
  c.log_every_steps = 10
  return c
