"""configs/demo.py shrunk for tests: moving_shapes/tiny, a 2-layer CLIP, a few steps.

  python -m ps_jax.main --config tests/configs/tiny.py --workdir DIR --config.data.dir=DATA

Runs in seconds on a CPU; the training and kill/resume tests use it in-process and as
a real `ps_jax.main` process.
"""

import os

from ps_jax.config_defaults import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(__file__), "..", "..", "configs",
                                    "demo.py"))
  c.model.clip.text.update(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                           num_attention_heads=2)
  c.model.clip.vision.update(patch_size=16, hidden_size=32, intermediate_size=48,
                             num_hidden_layers=2, num_attention_heads=2)
  c.model.clip.projection_dim = 32
  c.data.name = "moving_shapes/tiny"
  c.data.worker_count = 0  # in-process reading: no worker processes to leave behind
  c.batch_size = 8
  c.eval_batch_size = 8
  c.num_train_steps = 6
  c.eval_every_steps = 3
  c.checkpoint.every_steps = 2
  c.log_every_steps = 1
  # The mechanics tests (resume, several processes, sharding) compare runs to 1e-5; they
  # keep the default init, whose small attention logits do not amplify rounding
  # differences, and the default retained host memory.
  c.model.qk_init_std = 0.0
  c.retain_host_memory = True
  return c
