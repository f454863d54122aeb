"""MSR-VTT 9k, ViT-L/14 at 224 px: the large backbone, sharded with FSDP.

  python -m ps_jax.main --config configs/msrvtt_vitl14.py --workdir runs/msrvtt_l14 \
      --config.model.init_from=clip-vit-large-patch14 --config.data.dir=data

Same recipe as configs/msrvtt_vitb32.py on OpenAI's ViT-L/14 (304 M vision + 123 M text
parameters; 257 vision tokens a frame). Parameters, gradients and AdamW moments are
split over `mesh.fsdp` chips (a quarter each here), bfloat16 compute, remat
`nothing_saveable` (each layer's input kept, its matmuls recomputed in the backward
pass: about 1.9 GiB a video per chip where `dots_saveable` takes 11 to 24 GiB, so 5
videos per chip fit a v5e chip instead of none; benchmarks/RESULTS_tpu_compile.md);
the 24 vision layers run as 2 scan iterations of 12 unrolled layers (the base config's
scan_unroll). Check that it fits a slice before booking it:
  python -m ps_jax.main --mode compile --config configs/msrvtt_vitl14.py --workdir /tmp/c \
      --config.compile.topology=v5p-128 --config.compile.find_max_batch=True
(benchmarks/RESULTS_tpu_compile.md has the compiled table). The paper reports no
ViT-L/14 numbers.
"""

import os

from ps_jax.config_defaults import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(__file__), "msrvtt_vitb32.py"))
  c.model.init_from = "clip-vit-large-patch14"
  # The architecture without weights (--mode compile); init_from's config.json wins.
  c.model.clip.vision.update(patch_size=14, hidden_size=1024, intermediate_size=4096,
                             num_hidden_layers=24, num_attention_heads=16)
  c.model.clip.text.update(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12)
  c.model.clip.projection_dim = 768
  c.model.dtype = "bfloat16"
  c.model.remat_policy = "nothing_saveable"
  c.mesh.fsdp = 4
  return c
