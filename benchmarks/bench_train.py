"""Training-step and indexing throughput of ps_jax, its fast paths, and a PyTorch reference.

  python benchmarks/bench_train.py --model vitb32 --frames 6 --batch 2 --num_prompts 6 \
      [--dtype bfloat16] [--scan_unroll 0] [--sweep all] [--variant num_prompts=0] \
      [--plain_clip] [--torch] [--pipeline] [--rounds 3] [--steps 2]

For one configuration (model size, frames, batch, image size, prompts, text length,
devices) prints markdown tables of:
  - the device's measured matmul peak (a large jitted matmul per compute dtype);
  - model FLOPs counted analytically (matmuls of the text tower, the vision tower on
    N + P tokens, prompt aggregation, caption head; x3 for forward + backward) next to
    XLA's own count (`jitted.lower(...).compile().cost_analysis()` of the step with
    every scanned layer unrolled: XLA counts a while loop's body once) and their ratio;
  - one row per train-step variant (the base options, then each fast path toggled on its
    own): step time, videos/s, frames/s, achieved TFLOP/s, MFU against the measured peak,
    XLA's memory plan of the step;
  - the same for the eval/index forward pass (`encode_video`);
  - with --torch, the same computation written with `transformers`' PyTorch CLIPModel
    (vision + text towers on the same B*F images and captions, the same contrastive loss,
    forward + backward + global-norm clipping + torch.optim.AdamW step, float32, eager
    attention; one row per --torch_threads setting, the fastest is the reference; on a
    CUDA device when PyTorch has one) and the ratio ps_jax / PyTorch;
  - with --pipeline, the grain input pipeline's frames/s next to the train step's.

Timing: every executable is compiled and run once first; then in each of --rounds
rounds every variant (and the PyTorch reference, and the matmul peak) runs one untimed
step and --steps timed steps, one variant after the other, and a variant's time is the
median over rounds of its mean step time. Interleaving rounds keeps ratios fair on a
machine whose load changes; the untimed step keeps what ran just before (the other
framework's threads, memory it freed) from being billed to the next variant.
Each step blocks on its metrics (a loop that logs every step); with prefetching the
next batch's `jax.device_put` is issued while the step runs, without it the transfer
happens between steps.

`--batch 0` picks the largest multiple of 8 videos whose step fits `--fill_fraction`
of the device's memory (XLA's memory plan of the base variant, compiled from shapes).

Base options (each a command-line flag): --dtype float32|bfloat16 (params and optimizer
state stay float32), --attention_impl xla|dot_product_attention, --patch_embed
matmul|conv, --remat_policy,
--scan_unroll (0 = every layer), --donate / --no_donate, --normalize device|host,
--prefetch / --no_prefetch; --variant adds rows with other combinations. Host memory:
by default glibc malloc keeps freed memory (`ps_jax.runtime.retain_freed_memory`, as
training does), in effect for PyTorch too; --host_memory release keeps glibc's defaults.
XLA flags go in the XLA_FLAGS environment variable. benchmarks/RESULTS_perf.md has the
measured tables and the commands that produced them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import math
import os
import statistics
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ps_jax import api, optim, runtime, sharding
from ps_jax import train_step as ts
from ps_jax.config_defaults import base_config
from ps_jax.data import moving_shapes, pipeline, preparation
from ps_jax.data.transforms import normalize_frames
from ps_jax.models.clip import ClipConfig, TextConfig, VisionConfig
from ps_jax.models import layers as L
from ps_jax.experiment import model_params_sharding
from ps_jax.train_step import create_state, state_shardings

MODELS = {
    "tiny": ClipConfig(
        TextConfig(vocab_size=1000, hidden_size=64, intermediate_size=128,
                   num_hidden_layers=2, num_attention_heads=2),
        VisionConfig(image_size=32, patch_size=8, hidden_size=64, intermediate_size=128,
                     num_hidden_layers=2, num_attention_heads=2), projection_dim=64),
    "vitb32": ClipConfig(),
    "vitb16": ClipConfig(vision=VisionConfig(patch_size=16)),
    "vitl14": ClipConfig(
        TextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12),
        VisionConfig(patch_size=14, hidden_size=1024, intermediate_size=4096,
                     num_hidden_layers=24, num_attention_heads=16), projection_dim=768),
}

# Official optimiser constants (config_defaults): the learning rates do not change timing.
OPTIM = dict(lr_clip=1e-6, lr_new=1e-5, weight_decay=0.2, b1=0.9, b2=0.999, eps=1e-6,
             warmup_fraction=0.1, grad_clip=1.0)


# ----------------------------------------------------------------------------- FLOPs


def _block_flops(tokens: int, width: int, inner: int) -> float:
  """Matmul FLOPs of one pre-LN CLIP block on one sequence of `tokens` tokens:
  q/k/v/out projections, the MLP, and the two attention products (QK^T and AV)."""
  return 2 * tokens * (4 * width * width + 2 * width * inner) + 4 * tokens * tokens * width


def count_flops(clip: ClipConfig, num_prompts: int, num_captioner_layers: int, batch: int,
                frames: int, text_len: int, aggregate: bool = True) -> dict[str, float]:
  """Forward matmul FLOPs (2 per multiply-add) of one training step, by part.

  Args:
    clip: the CLIP architecture; num_prompts: P (0 = plain CLIP, mean pooling);
    num_captioner_layers: caption decoder layers (0 = no caption head);
    batch: B videos (= B captions); frames: F frames per video; text_len: L tokens.

  Returns:
    {"text", "vision", "aggregation", "caption", "loss": forward FLOPs of each part,
     "forward": their sum, "train": 3 x forward (the backward pass costs two forward
     passes: gradients with respect to activations and to weights)}.
    The backward of the patch convolution needs no input gradient, so "train"
    overcounts by one patch-embedding forward (about 2% for ViT-B/32).
  """
  t, v, e, p = clip.text, clip.vision, clip.projection_dim, num_prompts
  images = batch * frames
  parts = {}
  parts["text"] = (batch * t.num_hidden_layers
                   * _block_flops(text_len, t.hidden_size, t.intermediate_size)
                   + 2 * batch * t.hidden_size * e)  # projection of the pooled EOT state
  tokens = v.num_positions + p
  patch = 2 * (v.num_positions - 1) * v.patch_size ** 2 * v.num_channels * v.hidden_size
  parts["vision"] = images * (
      patch + v.num_hidden_layers * _block_flops(tokens, v.hidden_size, v.intermediate_size)
      + 2 * v.hidden_size * e)  # visual projection of the pooled CLS state
  parts["aggregation"] = 0.0
  if p and aggregate:
    chunks, d = images // p, v.hidden_size
    parts["aggregation"] = chunks * (2 * p * d * d              # queries (P CLS states)
                                     + 2 * 2 * p * p * d * d    # keys, values (P*P prompts)
                                     + 4 * p * p * p * d        # QK^T and AV
                                     + 2 * p * d * d)           # output projection
  parts["caption"] = 0.0
  if num_captioner_layers:
    n, d, inner = text_len - 1, t.hidden_size, t.intermediate_size
    layer = (2 * n * 4 * d * d + 4 * n * n * d                 # self-attention
             + 2 * n * 2 * d * d + 2 * frames * 2 * e * d      # cross: q, out; k, v
             + 4 * n * frames * d                              # cross QK^T and AV
             + 2 * n * 2 * d * inner)                          # feed-forward
    parts["caption"] = batch * (num_captioner_layers * layer + 2 * n * d * t.vocab_size)
  parts["loss"] = 2.0 * batch * batch * e
  parts["forward"] = sum(parts.values())
  parts["train"] = 3 * parts["forward"]
  return parts


def count_eval_flops(clip: ClipConfig, num_prompts: int, batch: int, frames: int,
                     aggregate: bool = True) -> float:
  """Forward matmul FLOPs of `encode_video` on B videos of F frames."""
  parts = count_flops(clip, num_prompts, 0, batch, frames, text_len=2, aggregate=aggregate)
  return parts["vision"] + parts["aggregation"]


def xla_flops(compiled) -> float:
  """FLOPs in XLA's cost analysis of a compiled executable (a while loop's body counts
  once, whatever its trip count: count on a fully unrolled executable)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


# ----------------------------------------------------------------------------- timing

# On GPUs JAX's default precision lets float32 matmuls use TF32; unless --tf32, float32
# executables are traced with "highest" precision, as PyTorch's float32 reference.
FULL_FLOAT32 = False


def precision(dtype: str):
  """Context for tracing an executable that computes in `dtype`."""
  if dtype == "float32" and FULL_FLOAT32:
    return jax.default_matmul_precision("highest")
  return contextlib.nullcontext()



def median_time(fn: Callable[[], Any], reps: int) -> float:
  """Median wall seconds of `reps` calls of fn (which must block until done)."""
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


class MatmulPeak:
  """A large jitted square matmul with operands in one dtype: the device's achievable
  TFLOP/s."""

  def __init__(self, dtype: str, size: int, device):
    self.dtype, self.size = dtype, size
    key = jax.random.PRNGKey(0)
    a = jax.device_put(jax.random.normal(key, (size, size), jnp.dtype(dtype)), device)
    self.args = (a, a.T + 1)
    # float32 accumulation and result, as every matmul of the model (layers.matmul).
    mm = lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32)
    with precision(dtype):
      self.fn = jax.jit(mm).lower(*self.args).compile()
    jax.block_until_ready(self.fn(*self.args))
    self.samples: list[float] = []

  def measure(self) -> None:
    """Appends one sample (best of 3 calls, in TFLOP/s)."""
    sec = min(median_time(lambda: jax.block_until_ready(self.fn(*self.args)), 1)
              for _ in range(3))
    self.samples.append(2 * self.size ** 3 / sec / 1e12)

  @property
  def tflops(self) -> float:
    return statistics.median(self.samples)


# ----------------------------------------------------------------------------- variants


@dataclasses.dataclass(frozen=True)
class Options:
  """How one train-step variant computes: the model's Compute fields plus the loop's."""
  dtype: str = "float32"
  attention_impl: str = "xla"
  remat_policy: str = "none"
  scan_unroll: int = 1
  donate: bool = True
  normalize: str = "device"      # device: uint8 frames in, normalised in the step
  prefetch: bool = True
  num_prompts: int = 6
  patch_embed: str = "matmul"    # the training default (config.model.patch_embed)

  def compute(self) -> dict:
    return dict(dtype=self.dtype, attention_impl=self.attention_impl,
                remat_policy=self.remat_policy, scan_unroll=self.scan_unroll,
                patch_embed=self.patch_embed)

  def label(self, base: "Options", full_unroll: int) -> str:
    """The fields that differ from `base`, or "base"."""
    diff = []
    for f in dataclasses.fields(self):
      value, ref = getattr(self, f.name), getattr(base, f.name)
      if value != ref:
        if f.name == "scan_unroll":
          value = "full" if value >= full_unroll else value
        diff.append(f"{f.name}={value}")
    return ", ".join(diff) or "base"


SWEEPABLE = ("dtype", "attention_impl", "remat_policy", "scan_unroll", "donate", "normalize",
             "prefetch", "patch_embed")


def sweep_variants(base: Options, names: list[str], remat_policies: list[str],
                   full_unroll: int) -> list[Options]:
  """base, then base with each named option toggled on its own."""
  out = [base]
  for name in names:
    value = getattr(base, name)
    if name == "dtype":
      choices = ["bfloat16" if value == "float32" else "float32"]
    elif name == "attention_impl":
      choices = ["dot_product_attention" if value == "xla" else "xla"]
    elif name == "remat_policy":
      choices = remat_policies if value == "none" else ["none"]
    elif name == "scan_unroll":
      choices = [full_unroll if value == 1 else 1]
    elif name == "normalize":
      choices = ["host" if value == "device" else "device"]
    elif name == "patch_embed":
      choices = ["conv" if value == "matmul" else "matmul"]
    else:
      choices = [not value]
    out += [dataclasses.replace(base, **{name: c}) for c in choices]
  return out


def parse_variant(spec: str, base: Options, full_unroll: int) -> Options:
  """'dtype=float32,scan_unroll=1' -> base with those fields replaced."""
  fields = {f.name for f in dataclasses.fields(Options)}
  changes: dict[str, Any] = {}
  for item in filter(None, spec.split(",")):
    name, _, raw = item.partition("=")
    if name not in fields or not raw:
      raise SystemExit(f"--variant {spec!r}: expected name=value pairs with names in "
                       f"{sorted(fields)}, got {item!r}")
    value = getattr(base, name)
    if isinstance(value, bool):
      changes[name] = raw.lower() in ("1", "true", "yes")
    elif isinstance(value, int):
      changes[name] = int(raw) or (full_unroll if name == "scan_unroll" else 0)
    else:
      changes[name] = raw
  return dataclasses.replace(base, **changes)


# ----------------------------------------------------------------------------- ps_jax


def make_host_batches(clip: ClipConfig, batch: int, frames: int, text_len: int,
                      count: int = 2, seed: int = 0) -> list[dict[str, np.ndarray]]:
  """`count` distinct random batches as the pipeline delivers them: uint8 frames
  [B, F, S, S, 3], captions of 8-20 tokens (BOS ... EOS, EOS-padded) and their masks."""
  rng = np.random.default_rng(seed)
  size, vocab = clip.vision.image_size, clip.text.vocab_size
  out = []
  for _ in range(count):
    ids = np.full((batch, text_len), vocab - 1, np.int32)
    mask = np.zeros((batch, text_len), np.int32)
    for b in range(batch):
      n = int(rng.integers(8, 21)) if text_len > 22 else max(text_len - 2, 0)
      ids[b, 0] = vocab - 2
      ids[b, 1:1 + n] = rng.integers(0, vocab - 2, n)
      mask[b, :n + 2] = 1
    out.append({"frames": rng.integers(0, 256, (batch, frames, size, size, 3), np.uint8),
                "input_ids": ids, "attention_mask": mask})
  return out


class TrainVariant:
  """One compiled, sharded train step of ps_jax with its options."""

  def __init__(self, opts: Options, clip: ClipConfig, mesh, host_batches, text_len: int,
               **model_overrides):
    self.opts = opts
    self.mesh = mesh
    self.model = api.build_model(clip, num_prompts=opts.num_prompts, **opts.compute(),
                                 **model_overrides)
    self.tx, self.schedules = optim.make_optimizer(OPTIM, 1000)
    vocab = clip.text.vocab_size
    self.lc = ts.LossConfig(jnp.ones(vocab, jnp.float32), vocab - 1)
    self.params_sharding = model_params_sharding(self.model, mesh,
                                                 base_config().sharding_rules)
    abstract = jax.eval_shape(lambda: create_state(api.param_shapes(self.model), self.tx,
                                                   jax.random.PRNGKey(0), False))
    self.state_sharding = state_shardings(mesh, self.params_sharding, abstract)
    self.host_batches = host_batches
    self.text_len = text_len
    self.compiled = None
    self.compile_s = float("nan")

  def init_state(self):
    """A fresh train state (float32 params and AdamW moments), placed on the mesh."""
    params = jax.device_put(api.init_model_params(self.model, jax.random.PRNGKey(0)),
                            self.params_sharding)
    return jax.jit(lambda p: create_state(p, self.tx, jax.random.PRNGKey(1), False),
                   out_shardings=self.state_sharding)(params)

  def host_batch(self, i: int) -> dict[str, np.ndarray]:
    """Batch i as the host hands it over (frames normalised here for normalize=host)."""
    b = self.host_batches[i % len(self.host_batches)]
    if self.opts.normalize == "host":
      b = {**b, "frames": normalize_frames(b["frames"])}
    return b

  def put(self, i: int) -> dict[str, jax.Array]:
    return sharding.global_batch(self.host_batch(i), self.mesh)

  def jitted(self, model=None):
    return ts.jit_train_step(model or self.model, self.tx, self.lc, self.schedules,
                             self.state_sharding, self.mesh, donate=self.opts.donate)

  def compile(self, state) -> None:
    start = time.perf_counter()
    with precision(self.opts.dtype):
      self.compiled = self.jitted().lower(state, self.put(0)).compile()
    self.compile_s = time.perf_counter() - start

  def unrolled_twin_flops(self, state, clip: ClipConfig, mode: str) -> float:
    """XLA's FLOP count of this step with every scanned layer unrolled."""
    if mode == "off":
      return float("nan")
    full = max(clip.vision.num_hidden_layers, clip.text.num_hidden_layers)
    if self.opts.scan_unroll >= full and mode == "compiled":
      return xla_flops(self.compiled)
    twin = api.build_model(clip, num_prompts=self.opts.num_prompts,
                           **{**self.opts.compute(), "scan_unroll": full})
    with precision(self.opts.dtype):
      lowered = self.jitted(twin).lower(state, self.put(0))
    if mode == "lowered":
      return xla_flops(lowered)
    return xla_flops(lowered.compile())

  def memory_gib(self) -> tuple[float, float]:
    """(temp, total) GiB of XLA's memory plan: temporaries, and arguments + outputs +
    temporaries minus donated (aliased) buffers."""
    m = self.compiled.memory_analysis()
    if m is None:
      return float("nan"), float("nan")
    total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)
    return m.temp_size_in_bytes / 2**30, total / 2**30

  def run(self, state, steps: int, start: int = 0):
    """`steps` train steps; returns (state, seconds per step)."""
    if self.opts.prefetch:
      nxt = self.put(start)  # as if prefetched during the previous step
      t0 = time.perf_counter()
      for i in range(steps):
        state, metrics = self.compiled(state, nxt)
        nxt = self.put(start + i + 1)      # transfer overlaps the running step
        jax.block_until_ready(metrics)
    else:
      t0 = time.perf_counter()
      for i in range(steps):
        batch = self.put(start + i)
        state, metrics = self.compiled(state, batch)
        jax.block_until_ready(metrics)
    jax.block_until_ready(state)
    return state, (time.perf_counter() - t0) / steps


def step_memory_bytes(opts: Options, clip: ClipConfig, mesh, batch: int, frames: int,
                      text_len: int) -> int:
  """Bytes of XLA's memory plan for the train step at `batch` videos (compiled from
  abstract state: nothing is allocated but one batch of host frames)."""
  tv = TrainVariant(opts, clip, mesh, make_host_batches(clip, batch, frames, text_len, 1),
                    text_len)
  abstract = jax.eval_shape(lambda: create_state(api.param_shapes(tv.model), tv.tx,
                                                 jax.random.PRNGKey(0), False))
  abstract = jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract,
      tv.state_sharding)
  with precision(opts.dtype):
    m = tv.jitted().lower(abstract, tv.put(0)).compile().memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
          - m.alias_size_in_bytes)


def device_memory_bytes(device) -> int:
  """The memory XLA may use on `device` (the host's physical memory for a CPU)."""
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def fill_batch(opts: Options, clip: ClipConfig, mesh, frames: int, text_len: int,
               fraction: float, max_batch: int, multiple: int = 8) -> int:
  """The largest batch (a multiple of `multiple`, at most `max_batch`) whose train step
  fits `fraction` of the first device's memory, per XLA's memory plan.

  The plan at `multiple` and 2 * `multiple` videos gives fixed and per-video bytes; the
  extrapolated batch is then compiled and shrunk by 10% until its own plan fits.
  """
  limit = fraction * device_memory_bytes(mesh.devices.flat[0]) * mesh.devices.size
  small = step_memory_bytes(opts, clip, mesh, multiple, frames, text_len)
  per_video = (step_memory_bytes(opts, clip, mesh, 2 * multiple, frames, text_len)
               - small) / multiple
  fixed = small - multiple * per_video
  batch = int((limit - fixed) / max(per_video, 1.0)) // multiple * multiple
  batch = max(multiple, min(batch, max_batch // multiple * multiple))
  while batch > multiple:
    need = step_memory_bytes(opts, clip, mesh, batch, frames, text_len)
    print(f"fill: batch {batch} plans {need / 2**30:.1f} GiB of {limit / 2**30:.1f} GiB",
          flush=True)
    if need <= limit:
      break
    batch = max(multiple, int(batch * 0.9) // multiple * multiple)
  return batch


class EvalVariant:
  """The jitted `encode_video` (index forward pass) on uint8 frames, normalised on device."""

  def __init__(self, opts: Options, clip: ClipConfig, mesh, frames_u8: np.ndarray):
    self.opts = opts
    self.model = api.build_model(clip, num_prompts=opts.num_prompts, **opts.compute())
    ps = model_params_sharding(self.model, mesh, base_config().sharding_rules)
    self.params = jax.device_put(api.init_model_params(self.model, jax.random.PRNGKey(0)), ps)
    self.frames = sharding.global_batch({"frames": frames_u8}, mesh)["frames"]
    fn = lambda p, f: self.model.apply({"params": p}, normalize_frames(f),
                                       method="encode_video")["video_embedding"]
    start = time.perf_counter()
    with precision(opts.dtype):
      self.compiled = jax.jit(fn).lower(self.params, self.frames).compile()
    self.compile_s = time.perf_counter() - start

  def run(self, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
      jax.block_until_ready(self.compiled(self.params, self.frames))
    return (time.perf_counter() - t0) / steps


# ----------------------------------------------------------------------------- PyTorch


class TorchReference:
  """`transformers.CLIPModel` (eager attention, float32) trained like ps_jax's step:
  vision and text towers, video = normalised mean of normalised frame features,
  symmetric InfoNCE, backward, global-norm clipping at 1.0, AdamW (official constants).
  No prompt cube, aggregation or caption head: these exist only in Prompt Switch.
  Runs on the first CUDA device when PyTorch sees one, else on the CPU."""

  def __init__(self, clip: ClipConfig, host_batch: dict[str, np.ndarray], adamw: str,
               tf32: bool = False, autocast: bool = False):
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top

    self.torch = torch
    self.default_threads = torch.get_num_threads()
    self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.manual_seed(0)
    config = transformers.CLIPConfig(**clip.to_hf_dict(), attn_implementation="eager")
    self.model = transformers.CLIPModel(config).train().to(self.device)
    impl = self.model.vision_model.config._attn_implementation  # pylint: disable=protected-access
    if impl != "eager":
      raise RuntimeError(f"PyTorch reference must use eager attention, got {impl!r}")
    kw = {"fused": True} if adamw == "fused" else {"foreach": True} if adamw == "foreach" else {}
    self.opt = torch.optim.AdamW(self.model.parameters(), lr=OPTIM["lr_clip"],
                                 betas=(OPTIM["b1"], OPTIM["b2"]), eps=OPTIM["eps"],
                                 weight_decay=OPTIM["weight_decay"], **kw)
    b, f = host_batch["frames"].shape[:2]
    frames = normalize_frames(host_batch["frames"])  # same images, NCHW
    self.pixels = self.to_device(frames.reshape(b * f, *frames.shape[2:]))
    self.ids = torch.from_numpy(host_batch["input_ids"]).long().to(self.device)
    self.mask = torch.from_numpy(host_batch["attention_mask"]).long().to(self.device)
    self.labels = torch.arange(b, device=self.device)
    self.b, self.f = b, f
    self.autocast = autocast  # forward in torch.autocast(bfloat16): PyTorch's mixed precision

  def to_device(self, frames: np.ndarray):
    """float32[N, S, S, 3] normalised frames -> an NCHW tensor on the reference's device."""
    return self.torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))).to(
        self.device)

  def _features(self):
    m = self.model
    text = m.text_projection(m.text_model(input_ids=self.ids,
                                          attention_mask=self.mask).pooler_output)
    image = m.visual_projection(m.vision_model(pixel_values=self.pixels).pooler_output)
    return text, image

  def step(self) -> float:
    torch, fn = self.torch, self.torch.nn.functional
    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
      text, image = self._features()
    text, image = text.float(), image.float()
    text = fn.normalize(text, dim=-1)
    video = fn.normalize(fn.normalize(image, dim=-1).reshape(self.b, self.f, -1).mean(1),
                         dim=-1)
    logits = self.model.logit_scale.exp() * text @ video.T
    loss = (fn.cross_entropy(logits, self.labels) + fn.cross_entropy(logits.T, self.labels)) / 2
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), OPTIM["grad_clip"])
    self.opt.step()
    with torch.no_grad():
      self.model.logit_scale.clamp_(max=math.log(100.0))
    return loss.detach().item()  # waits for the step, like ps_jax's per-step metrics

  def run(self, steps: int, threads: int = 0) -> float:
    """Seconds per train step with `threads` intra-op threads (0: PyTorch's default)."""
    self.torch.set_num_threads(threads or self.default_threads)
    t0 = time.perf_counter()
    for _ in range(steps):
      self.step()
    return (time.perf_counter() - t0) / steps

  def run_eval(self, steps: int, pixels, threads: int = 0) -> float:
    """Seconds per forward pass of the vision tower (+ projection) on `pixels`."""
    self.torch.set_num_threads(threads or self.default_threads)
    m = self.model
    t0 = time.perf_counter()
    with self.torch.inference_mode():
      for _ in range(steps):
        out = m.visual_projection(m.vision_model(pixel_values=pixels).pooler_output)
        out.cpu()
    return (time.perf_counter() - t0) / steps


# ----------------------------------------------------------------------------- pipeline


def pipeline_frames_per_s(args, clip: ClipConfig, workers: list[int]) -> list[tuple]:
  """grain training-pipeline throughput (frames/s) on a prepared synthetic .mp4 dataset,
  built with benchmarks/bench_pipeline.py's helpers, for each worker count."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_pipeline.py")
  spec = importlib.util.spec_from_file_location("bench_pipeline", path)
  bench_pipeline = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench_pipeline)
  rows = []
  with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
    src = bench_pipeline._make_videos(  # pylint: disable=protected-access
        os.path.join(tmp, "src"), args.pipeline_clips, 256, 16)
    out = os.path.join(tmp, "data")
    preparation.prepare("moving_shapes", out_dir=out, video_dir=os.path.join(src, "videos"),
                        anno_dir=src, frames_per_video=16, short_side=256, num_workers=0,
                        progress=False)
    tok = moving_shapes.make_tokenizer()
    for w in workers:
      loader = pipeline.make_train_loader(
          out, "moving_shapes", "train", tokenizer=tok, global_batch_size=args.batch,
          num_frames=args.frames, num_prompts=max(args.num_prompts, 1),
          image_size=clip.vision.image_size, max_len=args.text_len, seed=0, worker_count=w,
          shard_index=0, shard_count=1)
      _, dt = bench_pipeline.time_batches(loader, args.pipeline_batches)
      rows.append((w, args.pipeline_batches * args.batch * args.frames / dt))
  return rows


# ----------------------------------------------------------------------------- main


def _fmt(x: float, spec: str = ".3f") -> str:
  return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="vitb32", choices=sorted(MODELS))
  p.add_argument("--frames", type=int, default=6, help="F frames per video")
  p.add_argument("--batch", type=int, default=2, help="B videos (and captions) per step; "
                 "0: the largest multiple of 8 whose step fits --fill_fraction of the "
                 "device memory (XLA's memory plan of the base variant)")
  p.add_argument("--fill_fraction", type=float, default=0.9)
  p.add_argument("--max_batch", type=int, default=1024, help="cap of --batch 0")
  p.add_argument("--image_size", type=int, default=0, help="0: the model's (224, tiny 32)")
  p.add_argument("--num_prompts", type=int, default=6, help="P (0: plain CLIP)")
  p.add_argument("--text_len", type=int, default=77, help="L caption tokens (padded)")
  p.add_argument("--devices", type=int, default=0, help="use the first N devices (0: all)")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--attention_impl", default="xla", choices=list(L.ATTENTION_IMPLS))
  p.add_argument("--remat_policy", default="none",
                 choices=["none"] + sorted(L.REMAT_POLICIES))
  p.add_argument("--scan_unroll", type=int, default=1, help="0: unroll every layer")
  p.add_argument("--donate", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--normalize", default="device", choices=["device", "host"])
  p.add_argument("--patch_embed", default="matmul", choices=["matmul", "conv"])
  p.add_argument("--prefetch", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--sweep", default="all",
                 help=f"options to toggle one at a time: 'all', 'none' or a comma list of "
                      f"{','.join(SWEEPABLE)}")
  p.add_argument("--sweep_remat", default="full,dots_with_no_batch_dims_saveable",
                 help="policies tried when the sweep toggles remat on")
  p.add_argument("--variant", action="append", default=[],
                 help="one more train-step variant: comma-separated overrides of the base "
                      "options, e.g. 'dtype=float32,scan_unroll=1' or 'num_prompts=0' "
                      "(repeatable; scan_unroll=0 unrolls every layer)")
  p.add_argument("--plain_clip", action="store_true",
                 help="also the base options with num_prompts=0 (no cube, no caption head)")
  p.add_argument("--torch", action="store_true", help="time the PyTorch reference")
  p.add_argument("--torch_autocast", action="store_true",
                 help="also time the PyTorch reference with its forward under "
                      "torch.autocast(bfloat16), PyTorch's mixed precision")
  p.add_argument("--torch_adamw", default="fused", choices=["fused", "foreach", "default"],
                 help="torch.optim.AdamW implementation (fused: the fastest on CPU)")
  p.add_argument("--torch_threads", default="0",
                 help="PyTorch intra-op thread counts, one row each; the fastest is the "
                      "reference (0: PyTorch's default)")
  p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=False,
                 help="GPU: let float32 matmuls use TF32 (JAX's default precision, PyTorch's "
                      "allow_tf32); off: full float32 in both")
  p.add_argument("--eval", action=argparse.BooleanOptionalAction, default=True,
                 help="also time the encode_video (index) forward pass")
  p.add_argument("--eval_batch", type=int, default=0, help="0: --batch")
  p.add_argument("--eval_frames", type=int, default=0, help="0: --frames")
  p.add_argument("--pipeline", action="store_true", help="time the grain input pipeline")
  p.add_argument("--pipeline_workers", default="0,2")
  p.add_argument("--pipeline_clips", type=int, default=16)
  p.add_argument("--pipeline_batches", type=int, default=8)
  p.add_argument("--host_memory", default="retain", choices=["retain", "release"],
                 help="retain: glibc malloc keeps freed memory (ps_jax.runtime, the "
                      "training default), for ps_jax and PyTorch alike; release: glibc's "
                      "defaults (large blocks are unmapped when freed and page-faulted in "
                      "again)")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--steps", type=int, default=2, help="timed steps per variant and round")
  p.add_argument("--matmul_size", type=int, default=0, help="0: 2048 on CPU, 8192 else")
  p.add_argument("--xla_count", default="compiled", choices=["compiled", "lowered", "off"],
                 help="XLA FLOP count on the unrolled twin: compiled (cost analysis of the "
                      "optimised executable), lowered (before optimisation, no compile), off")
  return p.parse_args(argv)


def main(argv=None) -> None:
  args = parse_args(argv)
  retained = args.host_memory == "retain" and runtime.retain_freed_memory()
  global FULL_FLOAT32
  FULL_FLOAT32 = jax.default_backend() == "gpu" and not args.tf32
  base_clip = MODELS[args.model]
  size = args.image_size or base_clip.vision.image_size
  clip = dataclasses.replace(base_clip, vision=dataclasses.replace(base_clip.vision,
                                                                   image_size=size))
  full_unroll = max(clip.vision.num_hidden_layers, clip.text.num_hidden_layers)
  devices = jax.devices()[:args.devices or None]
  mesh = sharding.make_mesh(-1, 1, devices)
  dev = devices[0]
  base = Options(args.dtype, args.attention_impl, args.remat_policy,
                 args.scan_unroll or full_unroll, args.donate, args.normalize, args.prefetch,
                 args.num_prompts, args.patch_embed)
  names = (list(SWEEPABLE) if args.sweep == "all" else
           [] if args.sweep == "none" else args.sweep.split(","))
  unknown = sorted(set(names) - set(SWEEPABLE))
  if unknown:
    raise SystemExit(f"--sweep: unknown options {unknown}; expected {SWEEPABLE}")
  variants = sweep_variants(base, names, args.sweep_remat.split(","), full_unroll)
  variants += [parse_variant(spec, base, full_unroll) for spec in args.variant]
  if args.plain_clip and args.num_prompts:  # for the base and its other dtype
    variants += [dataclasses.replace(v, num_prompts=0) for v in list(variants)
                 if v == dataclasses.replace(base, dtype=v.dtype)]

  if args.batch == 0:
    args.batch = fill_batch(base, clip, mesh, args.frames, args.text_len,
                            args.fill_fraction, args.max_batch)
  b, f = args.batch, args.frames
  print(f"device: {dev.platform} {dev.device_kind} x{len(devices)}, jax {jax.__version__}, "
        f"{os.cpu_count()} host CPUs, load average {os.getloadavg()[0]:.1f}")
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}, host memory "
        f"{'retained (one arena, no mmap, no trim)' if retained else 'glibc defaults'}")
  print(f"model {args.model} ({size}px, patch {clip.vision.patch_size}), batch {b} videos x "
        f"{f} frames = {b * f} images, P={args.num_prompts}, text length {args.text_len}; "
        f"{args.rounds} rounds x {args.steps} steps per variant\n")

  host_batches = make_host_batches(clip, b, f, args.text_len)
  size_mm = args.matmul_size or (2048 if dev.platform == "cpu" else 8192)
  peaks = {d: MatmulPeak(d, size_mm, dev) for d in sorted({v.dtype for v in variants})}

  # Compile everything (states are shared by variants of the same parameter structure).
  states: dict[int, Any] = {}
  train = []
  for v in variants:
    tv = TrainVariant(v, clip, mesh, host_batches, args.text_len)
    if v.num_prompts not in states:
      states[v.num_prompts] = tv.init_state()
    tv.compile(states[v.num_prompts])
    states[v.num_prompts], _ = tv.run(states[v.num_prompts], 1)  # first run
    train.append(tv)
    print(f"compiled {v.label(base, full_unroll)}: {tv.compile_s:.1f} s", flush=True)
  # XLA's FLOP count once per (P, remat policy): the other fast paths do not change the
  # computation's FLOPs. Unrolled variants first: their own executable counts.
  flop_cache: dict[tuple, float] = {}
  for tv in sorted(train, key=lambda t: t.opts.scan_unroll < full_unroll):
    key = (tv.opts.num_prompts, tv.opts.remat_policy)
    if key not in flop_cache:
      flop_cache[key] = tv.unrolled_twin_flops(states[tv.opts.num_prompts], clip,
                                               args.xla_count)
    tv.xla = flop_cache[key]

  evals = []
  if args.eval:
    eb, ef = args.eval_batch or b, args.eval_frames or f
    eval_frames = make_host_batches(clip, eb, ef, 2, count=1, seed=1)[0]["frames"]
    seen = set()
    for v in variants:
      key = (v.dtype, v.attention_impl, v.scan_unroll, v.num_prompts)
      if key not in seen:
        seen.add(key)
        ev = EvalVariant(dataclasses.replace(base, **dict(zip(
            ("dtype", "attention_impl", "scan_unroll", "num_prompts"), key))), clip, mesh,
                         eval_frames)
        ev.run(1)
        evals.append(ev)

  ref = ref_amp = None
  torch_threads = [int(t) for t in args.torch_threads.split(",")]
  if args.torch:
    import torch  # pylint: disable=g-import-not-at-top
    ref = TorchReference(clip, host_batches[0], args.torch_adamw, args.tf32)
    ref.run(1)
    if args.torch_autocast:
      ref_amp = TorchReference(clip, host_batches[0], args.torch_adamw, args.tf32,
                               autocast=True)
      ref_amp.run(1)
    if args.eval:
      eval_pixels = ref.to_device(normalize_frames(eval_frames.reshape(
          -1, *eval_frames.shape[2:])))
      ref.run_eval(1, eval_pixels)
    print(f"PyTorch {torch.__version__} on {ref.device} (default {ref.default_threads} "
          f"threads), AdamW {args.torch_adamw}, TF32 {'on' if args.tf32 else 'off'}",
          flush=True)

  # Interleaved timing rounds.
  times: dict[str, list[float]] = {}
  page_faults: dict[str, float] = {}  # minor faults per step, last round
  step = 1
  for r in range(args.rounds):
    for peak in peaks.values():
      peak.measure()
    # Each timed run follows one untimed step of the same computation: what ran before
    # (the other framework's threads and freed memory) must not be billed to it.
    for i, tv in enumerate(train):
      p = tv.opts.num_prompts
      states[p], _ = tv.run(states[p], 1, start=step)
      faults = runtime.minor_page_faults()
      states[p], sec = tv.run(states[p], args.steps, start=step + 1)
      page_faults[f"train{i}"] = (runtime.minor_page_faults() - faults) / args.steps
      times.setdefault(f"train{i}", []).append(sec)
    for i, ev in enumerate(evals):
      ev.run(1)
      times.setdefault(f"eval{i}", []).append(ev.run(args.steps))
    if ref is not None:
      for n in torch_threads:
        ref.run(1, n)
        faults = runtime.minor_page_faults()
        times.setdefault(f"torch{n}", []).append(ref.run(args.steps, n))
        page_faults[f"torch{n}"] = (runtime.minor_page_faults() - faults) / args.steps
        if ref_amp is not None:
          ref_amp.run(1, n)
          faults = runtime.minor_page_faults()
          times.setdefault(f"torch_amp{n}", []).append(ref_amp.run(args.steps, n))
          page_faults[f"torch_amp{n}"] = (runtime.minor_page_faults() - faults) / args.steps
        if args.eval:
          ref.run_eval(1, eval_pixels, n)
          times.setdefault(f"torch_eval{n}", []).append(ref.run_eval(args.steps, eval_pixels, n))
    step += args.steps + 1
    print(f"round {r + 1}/{args.rounds} done (load average {os.getloadavg()[0]:.1f})",
          flush=True)
  med = {k: statistics.median(v) for k, v in times.items()}
  spread = {k: (min(v), max(v)) for k, v in times.items()}

  # Tables.
  print("\n### Matmul peak (jitted square matmul, median over rounds)\n")
  print("| dtype | size | TFLOP/s |")
  print("|---|---|---|")
  for d, peak in peaks.items():
    print(f"| {d} | {peak.size} | {peak.tflops:.3f} |")
  peak32 = peaks["float32"].tflops if "float32" in peaks else float("nan")

  print("\n### Model FLOPs per train step (analytic matmul count vs XLA cost analysis)\n")
  print("| P | text | vision | aggregation | caption head | forward | train (x3) | "
        "XLA (unrolled twin) | XLA / analytic |")
  print("|---|---|---|---|---|---|---|---|---|")
  flops = {}
  for p in sorted(states):
    c = count_flops(clip, p, 2 if p else 0, b, f, args.text_len)
    flops[p] = c
    xla = flop_cache.get((p, base.remat_policy), float("nan"))
    g = lambda x: f"{x / 1e9:.1f}"
    print(f"| {p} | {g(c['text'])} | {g(c['vision'])} | {g(c['aggregation'])} | "
          f"{g(c['caption'])} | {g(c['forward'])} | {g(c['train'])} | "
          f"{_fmt(xla / 1e9, '.1f')} | {_fmt(xla / c['train'])} |")
  print("(GFLOP; XLA's count also includes element-wise work: softmax, LayerNorm, AdamW)")

  torch_keys = [f"torch{n}" for n in torch_threads if f"torch{n}" in med]
  torch_train = min((med[k] for k in torch_keys), default=None)
  print(f"\n### Train step: {b} videos x {f} frames, {len(devices)} device(s)\n")
  print("| variant | compile s | s/step (min-max) | videos/s | frames/s | XLA GFLOP (ratio) | "
        "TFLOP/s | MFU | XLA temp / total GiB | page faults/step | vs base | "
        "ps_jax / PyTorch |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  base_sec = med["train0"]
  for i, tv in enumerate(train):
    sec, (lo, hi) = med[f"train{i}"], spread[f"train{i}"]
    model_flops = flops[tv.opts.num_prompts]["train"]
    achieved = model_flops / sec / 1e12
    mfu = achieved / (peaks[tv.opts.dtype].tflops * len(devices))
    temp, total = tv.memory_gib()
    label = tv.opts.label(base, full_unroll)
    if tv.opts.num_prompts == 0:
      label += " (plain CLIP, no caption head)"
    print(f"| {label} | {tv.compile_s:.1f} | {sec:.3f} ({lo:.3g}-{hi:.3g}) | {b / sec:.2f} | "
          f"{b * f / sec:.1f} | {_fmt(tv.xla / 1e9, '.1f')} "
          f"({_fmt(tv.xla / model_flops, '.2f')}) | {achieved:.3f} | {100 * mfu:.1f}% | "
          f"{_fmt(temp, '.2f')} / {_fmt(total, '.2f')} | {page_faults[f'train{i}']:.0f} | "
          f"{base_sec / sec:.2f}x | "
          f"{_fmt(torch_train / sec if torch_train else None, '.2f')}x |")
  plain_flops = count_flops(clip, 0, 0, b, f, args.text_len)["train"]
  for n, key in zip(torch_threads, torch_keys):
    sec, (lo, hi) = med[key], spread[key]
    threads = n or ref.default_threads
    print(f"| PyTorch CLIPModel (eager, fp32, AdamW {args.torch_adamw}, {threads} threads) "
          f"| - | {sec:.3f} ({lo:.3g}-{hi:.3g}) | {b / sec:.2f} | {b * f / sec:.1f} | - | "
          f"{plain_flops / sec / 1e12:.3f} | {100 * plain_flops / sec / 1e12 / peak32:.1f}% | "
          f"- | {page_faults[key]:.0f} | - | {torch_train / sec:.2f}x |")
  for n in torch_threads:
    key = f"torch_amp{n}"
    if key in med:
      sec, (lo, hi) = med[key], spread[key]
      print(f"| PyTorch CLIPModel (eager, autocast bfloat16, AdamW {args.torch_adamw}, "
            f"{n or ref.default_threads} threads) | - | {sec:.3f} ({lo:.3g}-{hi:.3g}) | "
            f"{b / sec:.2f} | {b * f / sec:.1f} | - | {plain_flops / sec / 1e12:.3f} | - | - | "
            f"{page_faults[key]:.0f} | - | {torch_train / sec:.2f}x |")
  if torch_train:
    print("(ps_jax / PyTorch: against the fastest float32 PyTorch row; PyTorch runs plain "
          "CLIP towers, ps_jax rows with P > 0 also run the prompt cube, aggregation and "
          "caption head)")
  stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
  peak_mem = stats.get("peak_bytes_in_use") if stats else None
  print(f"\ndevice peak memory over the run: "
        f"{_fmt(peak_mem / 2**30 if peak_mem else None, '.2f')} GiB "
        f"(memory_stats() {'reports it' if stats else 'returns None on this backend'})")

  if evals:
    eb, ef = args.eval_batch or b, args.eval_frames or f
    eval_keys = [f"torch_eval{n}" for n in torch_threads if f"torch_eval{n}" in med]
    torch_eval = min((med[k] for k in eval_keys), default=None)
    print(f"\n### Eval / index forward (encode_video): {eb} videos x {ef} frames\n")
    print("| variant | compile s | s/batch | videos/s | frames/s | GFLOP | TFLOP/s | MFU | "
          "ps_jax / PyTorch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for i, ev in enumerate(evals):
      sec = med[f"eval{i}"]
      fl = count_eval_flops(clip, ev.opts.num_prompts, eb, ef)
      achieved = fl / sec / 1e12
      mfu = achieved / (peaks[ev.opts.dtype].tflops * len(devices))
      label = ev.opts.label(base, full_unroll).replace("base", "base options")
      print(f"| {label} | {ev.compile_s:.1f} | {sec:.3f} | {eb / sec:.2f} | "
            f"{eb * ef / sec:.1f} | {fl / 1e9:.1f} | {achieved:.3f} | {100 * mfu:.1f}% | "
            f"{_fmt(torch_eval / sec if torch_eval else None, '.2f')}x |")
    fl = count_eval_flops(clip, 0, eb, ef)
    for n, key in zip(torch_threads, eval_keys):
      sec = med[key]
      print(f"| PyTorch vision tower (inference_mode, {n or ref.default_threads} threads) | - "
            f"| {sec:.3f} | {eb / sec:.2f} | {eb * ef / sec:.1f} | {fl / 1e9:.1f} | "
            f"{fl / sec / 1e12:.3f} | {100 * fl / sec / 1e12 / peak32:.1f}% | "
            f"{torch_eval / sec:.2f}x |")

  if args.pipeline:
    workers = [int(w) for w in args.pipeline_workers.split(",")]
    rows = pipeline_frames_per_s(args, clip, workers)
    consume = b * f / base_sec
    best = b * f / min(med[f"train{i}"] for i in range(len(train)))
    print(f"\n### Host input pipeline vs train step ({b} x {f} frames, {size}px)\n")
    print("| grain workers | pipeline frames/s | base step frames/s | fastest step frames/s "
          "| limiting |")
    print("|---|---|---|---|---|")
    for w, fps in rows:
      limit = "pipeline" if fps < best else "train step"
      print(f"| {w} | {fps:.1f} | {consume:.1f} | {best:.1f} | {limit} |")
    print("(measured one after the other; on a CPU backend the step and the pipeline share "
          "the same cores, so together they reach about 1 / (1/pipeline + 1/step))")


if __name__ == "__main__":
  main()
