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
  c.model.qk_init_std = 64 ** -0.5  # OpenAI CLIP's attention init (width^-0.5): with
                                    # 0.02 the attention logits start near 0, every
                                    # token attends alike, and a clip and its reversed
                                    # twin start 1000x closer than two other clips
  c.model.dtype = "float32"        # 64-wide matmuls gain nothing from bfloat16 on a CPU,
  c.model.scan_unroll = 1           # and the five-seed table was measured in float32
  c.model.patch_embed = "conv"      # with the convolution's rounding
  c.data.name = "moving_shapes/demo"
  c.data.num_frames = 4
  c.data.eval_num_frames = 4       # middle frame of each segment: twins see mirrored frames
  c.data.image_size = 32
  c.data.max_len = 12
  c.data.worker_count = 0         # batches are made in this process (2 cores: XLA uses both)
  c.data.flip_prob = 0.0          # a flipped "moves left" clip would move right
  c.data.group_size = 2           # every clip shares its batch with its reversed twin
  c.batch_size = 32
  c.eval_batch_size = 32
  c.num_epochs = 30
  c.optim.lr_clip = 1e-3          # from scratch
  c.optim.lr_new = 5e-3           # the prompt cube, the aggregation and the caption head
  c.optim.aggregation_group = "new"  # official: with the CLIP weights; from scratch that
                                     # left the twins' symmetry unbroken on 2 seeds of 5
  c.optim.weight_decay = 0.05
  c.loss.caption_weight = 2.0     # official 0.5: the caption head predicts the direction
                                  # words from the frame features, a push towards frame
                                  # order that does not wait for the text tower
  c.eval_every_steps = 150        # 12 validations (each is also a checkpoint)
  c.checkpoint.every_steps = 600
  c.log_every_steps = 10
  c.retain_host_memory = False    # one malloc arena makes the in-process batches wait on
                                  # XLA's threads (~200 ms a step instead of ~110)
  return c
