"""Defaults shared by the experiment configs in configs/ (each overrides what it changes).

Layer: foundation (ml_collections only; config files import it).
"""

import importlib.util
import os

import ml_collections


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of another config file (e.g. an ablation built on top of a config)."""
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def base_config() -> ml_collections.ConfigDict:
  """The official Prompt Switch recipe on ViT-B/32; experiment files override fields."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.init_from = ""          # HF CLIP dir, official .pth, or "" = from scratch (model.clip)
  c.model.clip = ml_collections.ConfigDict({
      "text": {"vocab_size": -1, "hidden_size": 512, "intermediate_size": 2048,
               "num_hidden_layers": 12, "num_attention_heads": 8},
      "vision": {"image_size": 224, "patch_size": 32, "hidden_size": 768,
                 "intermediate_size": 3072, "num_hidden_layers": 12,
                 "num_attention_heads": 12},
      "projection_dim": 512,
      "logit_scale_init_value": 2.6592})  # ln(1 / 0.07), CLIP's initial temperature
  c.model.num_prompts = 6
  c.model.switch = True
  c.model.aggregate = True
  c.model.num_captioner_layers = 2
  c.model.prompt_init_scale = 1.0  # x the official cube init std (D^-0.5 * 0.02)
  c.model.qk_init_std = 0.0  # from scratch only: query/key kernels' init std (0: 0.02)
  # Compute: bfloat16 matmul operands with float32 accumulation, float32 params,
  # optimizer state, loss and softmax (as every TPU/GPU run; "float32" is one flag away).
  c.model.dtype = "bfloat16"
  c.model.remat_policy = "none"
  # Every layer unrolled (12 = ViT-B's depth): measured for ViT-B/32 in bfloat16, 1.10x
  # the rolled loop; a float32 run is fastest rolled (1): 2 layers per iteration ran at
  # 0.95x, every layer at 0.73x (benchmarks/RESULTS_perf.md).
  c.model.scan_unroll = 12
  c.model.attention_impl = "xla"
  # The patch embedding as flattened patches @ kernel (same parameter as the official
  # strided convolution; "conv" computes it as one): ~1.8x faster on XLA:CPU, and in
  # bfloat16 a native bfloat16 x bfloat16 -> float32 product (benchmarks/bench_matmul.py).
  c.model.patch_embed = "matmul"

  c.data = ml_collections.ConfigDict()
  c.data.name = "msrvtt/9k"
  c.data.dir = ""                 # default: <workdir>/data
  c.data.tokenizer = ""           # default: the init checkpoint's CLIP tokenizer
  c.data.seed = 0                 # synthetic data only
  c.data.train_split = "train"
  c.data.val_split = "val"
  c.data.test_split = "test"
  c.data.num_frames = 6           # training frames: C=1 chunk of P=6
  c.data.eval_num_frames = 12     # test frames: C=2 chunks
  c.data.image_size = 224
  c.data.max_len = 77             # CLIP context; the official code pads per batch instead
  c.data.worker_count = 4         # grain worker processes of the training pipeline
  c.data.eval_worker_count = -1   # of the evaluation pipeline (started anew for every
                                  # evaluation); -1: data.worker_count
  c.data.flip_prob = 0.5          # horizontal flip of training clips (official: 0.5)
  c.data.crop_scale = (0.5, 1.0)  # RandomResizedCrop area fraction of training clips
  c.data.crop_ratio = (3 / 4, 4 / 3)  # and its aspect-ratio range (torchvision's)
  c.data.crop_interpolation = "bilinear"  # resampling of the training crop (official:
                                          # torchvision on tensors, bilinear)
  c.data.group_size = 1           # > 1: videos g*k..g*k+g-1 always share a batch

  c.batch_size = 32
  c.eval_batch_size = 64
  c.num_epochs = 5
  c.num_train_steps = -1          # > 0 overrides num_epochs
  c.stop_after_steps = -1         # > 0: stop early (a resumable partial run)

  c.optim = ml_collections.ConfigDict()
  c.optim.lr_clip = 1e-6
  c.optim.lr_new = 1e-5
  c.optim.aggregation_group = "clip"  # learning-rate group of the aggregation attention
                                      # (official: "clip"; "new" = lr_new)
  c.optim.adamw = "official"      # "official": transformers 4.26 AdamW (eps before bias
                                  # correction, decay after the update); "optax": optax.adamw
  c.optim.weight_decay = 0.2
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-6
  c.optim.warmup_fraction = 0.1
  c.optim.grad_clip = 1.0
  c.optim.fused = True            # official AdamW: one element-wise pass per parameter
                                  # (same numbers as the optax chain; False: the chain)
  c.optim.ema_decay = 0.0         # > 0 keeps an EMA of the weights (used for evaluation)
  c.optim.grad_accum_steps = 1

  c.loss = ml_collections.ConfigDict()
  c.loss.caption_weight = 0.5     # x the caption cross-entropy (official: 0.5)

  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
  # Logical axis -> mesh axis. FSDP shards the model width; everything else replicated.
  c.sharding_rules = (("embed", "fsdp"), ("vocab", None), ("mlp", None),
                      ("joined_kv", None), ("layers", None))

  # `--mode compile`: the run's jitted functions compiled for a TPU slice on this machine
  # (ps_jax.aot; needs libtpu: pip install -e ".[tpu]"). Nothing is allocated.
  c.compile = ml_collections.ConfigDict({
      "topology": "",            # v4-32, v5litepod-64, v5p-128, v6e-16 or v5e:4x4 ...
      "num_slices": 1,           # > 1: multi-slice (the data axis spans the slices)
      "videos_per_chip": 0,      # > 0: compile the step for this many videos per chip
                                 # instead of config.batch_size
      "find_max_batch": False,   # search the largest videos per chip whose step fits
      "probe_batches": (4, 16),  # videos per chip of the two compiles that predict it
      "check_above": True,       # also compile one video more, which must be refused
      "search_unroll": 0,        # scan_unroll of the probes; 0: the model's own (a rolled
                                 # scan compiles ~5x faster but plans memory differently)
      "hbm_gib": 0.0,            # per-chip budget; 0 = the chip's HBM
      "programs": "train_step,encode_video,encode_text,search_topk",
      "index_rows": 1_000_000,   # search_topk: rows of the index (1M videos or windows)
      "search_queries": 32,      # queries per request (the service's maximum)
      "search_k": 100,           # results per query (the service's maximum)
  })

  # Moments (ps_jax.moment_eval): windows "W:S,W:S" (seconds) index each video as windows
  # of time at every scale (`--mode index`, and `--mode eval` of a moment protocol);
  # protocol: a moment protocol of the dataset ("activitynet/moments"): `--mode eval`
  # then ranks windows for each sentence (R@n at IoU m, within its video and corpus).
  c.moments = ml_collections.ConfigDict({"windows": "", "protocol": ""})

  c.checkpoint = ml_collections.ConfigDict({"every_steps": 500, "keep": 2, "async_save": True})
  c.log_every_steps = 20
  c.eval_every_steps = -1         # > 0: every N steps; -1: evals_per_epoch times an epoch
  c.evals_per_epoch = 1           # at the official positions (linspace over the epoch)
  c.select_on = "val"             # "test" selects the checkpoint on test (flattering)
  c.select_window = 1             # select on the moving average of the last N evaluations
                                  # of t2v R@1 (official: 5, on test)
  c.protocol = "validation"       # "official": the official code's protocol (train on the
                                  # full list, 10 test evaluations an epoch, window 5,
                                  # selected on test; every result is labelled so)
  # Published numbers for this dataset's protocol, printed beside ours after the final
  # test: {"source": "who, which model", "t2v": {"R@1": ...}, "v2t": {...}}.
  c.reference = ml_collections.ConfigDict({"source": "", "t2v": {}, "v2t": {}})
  c.dsl = False                   # also report dual-softmax (post-processing) metrics
  # glibc malloc keeps freed memory for reuse (ps_jax.runtime.retain_freed_memory): no
  # page faults on XLA:CPU's per-step temporaries; the process keeps its peak heap.
  c.retain_host_memory = True
  return c
