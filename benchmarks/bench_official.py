"""Train-step speed of ps_jax against the official PyTorch Prompt Switch, side by side.

  python benchmarks/bench_official.py --official_src ~/src/PromptSwitch \
      [--model vitb32] [--batch 4] [--frames 6] [--text_len 32] [--caption] \
      [--rounds 3] [--steps 2] [--json out.json]

`--official_src` is a checkout of the official repository (github.com/bladewaltz1/
PromptSwitch); nothing of it is copied here. Its `model/prompt_clip.py` (PromptCLIP)
and `modules/metrics.py` are imported from there. PromptCLIP reads its CLIP config and
weights from the Hugging Face hub; here the two `from_pretrained` calls it makes are
answered locally with the chosen architecture and a seeded random initialisation, so
no network is needed and any size can be timed.

One process, one batch, the same weights on both sides: the official model is built
first, its `state_dict` is saved as an official `.pth` and loaded by `ps_jax.load_model`.
Before timing, the loss of both models on the same batch is printed (float32): the two
must agree, or the comparison is not of the same computation.

Rows (each a full step: forward, backward, global-norm clipping at 1.0, AdamW with the
official two learning-rate groups, logit-scale clamp):
  - official, float32 (the official trainer's precision);
  - official, forward under `torch.autocast("cpu"/"cuda", bfloat16)`;
  - ps_jax, float32 compute (`--f32_unroll`, default the rolled scan);
  - ps_jax, bfloat16 compute, float32 params and optimizer state (`--bf16_unroll`,
    default every layer unrolled);
  - with `--unfused_rows`, both ps_jax rows again with optax's chain AdamW (moments,
    update and apply as separate passes) instead of the fused single-pass step;
  - with `--conv_rows`, both again with the patch embedding as a strided convolution
    instead of ps_jax's default, flattened patches @ kernel.
The loss is the official contrastive loss (`--caption` adds the caption head and its
loss on both sides). The official trainer steps `transformers.optimization.AdamW`,
which transformers 5 no longer has; the official rows use it when it exists and
`torch.optim.AdamW` (`--torch_adamw`, the same update up to where eps enters) otherwise.

Timing as in bench_train.py: everything is compiled and run once first; then in each of
--rounds rounds every row runs one untimed step and --steps timed steps, one row after
the other; a row's time is the median over rounds. glibc keeps freed memory for both
frameworks (`ps_jax.runtime.retain_freed_memory`, as training does) unless
`--host_memory release`. Prints one markdown table with the ratios against official
float32 and against official autocast.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
import types

import jax
import numpy as np

import bench_train as bt
from ps_jax import api, optim, runtime, sharding
from ps_jax import train_step as ts
from ps_jax.data.transforms import normalize_frames

OFFICIAL_MODULES = ("model.prompt_clip", "modules.metrics")


def import_official(src: str) -> tuple[types.ModuleType, types.ModuleType]:
  """(model.prompt_clip, modules.metrics) of the official checkout at `src`."""
  missing = [m for m in OFFICIAL_MODULES
             if not os.path.exists(os.path.join(src, *m.split(".")) + ".py")]
  if missing:
    raise SystemExit(f"--official_src {src!r}: no {', '.join(missing)} there; expected a "
                     "checkout of github.com/bladewaltz1/PromptSwitch")
  sys.path.insert(0, os.path.abspath(src))
  try:
    return tuple(importlib.import_module(m) for m in OFFICIAL_MODULES)
  finally:
    sys.path.pop(0)


def official_model(prompt_clip: types.ModuleType, hf_config, args, torch):
  """The official `PromptCLIP` for `hf_config`, randomly initialised from seed 0.

  PromptCLIP calls `CLIPConfig.from_pretrained(<hub name>)` and
  `CLIPModel.from_pretrained(<hub name>, config=...)`; for this call only, the two class
  methods are replaced by ones that return `hf_config` and a fresh `CLIPModel(config)`.
  """
  config_cls, model_cls = prompt_clip.CLIPConfig, prompt_clip.CLIPModel
  saved = config_cls.__dict__.get("from_pretrained"), model_cls.__dict__.get("from_pretrained")
  config_cls.from_pretrained = classmethod(lambda cls, *a, **k: copy.deepcopy(hf_config))
  model_cls.from_pretrained = classmethod(lambda cls, *a, config=None, **k: cls(config))
  cfg = types.SimpleNamespace(
      num_frames=args.frames, num_test_frames=args.frames, num_prompts=args.num_prompts,
      loss="clip+caption" if args.caption else "clip",
      num_captioner_layers=args.captioner_layers, pooling_type="avg",
      pooling_type_test="avg", input_res=hf_config.vision_config.image_size,
      embed_dim=hf_config.projection_dim)
  try:
    torch.manual_seed(0)
    return prompt_clip.PromptCLIP(cfg).train()
  finally:
    for cls, method in zip((config_cls, model_cls), saved):
      if method is None:
        del cls.from_pretrained
      else:
        cls.from_pretrained = method


class OfficialStep:
  """The official trainer's step (trainer/trainer.py) on one fixed batch."""

  def __init__(self, model, metrics: types.ModuleType, host_batch: dict, args, torch,
               autocast: bool):
    self.torch, self.model, self.metrics = torch, model, metrics
    self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    self.model.to(self.device)
    self.default_threads = torch.get_num_threads()
    self.autocast = autocast
    b, f = host_batch["frames"].shape[:2]
    frames = normalize_frames(host_batch["frames"]).transpose(0, 1, 4, 2, 3)  # B F 3 S S
    self.data = {"video": torch.from_numpy(np.ascontiguousarray(frames)).to(self.device),
                 "text": {k: torch.from_numpy(host_batch[k]).long().to(self.device)
                          for k in ("input_ids", "attention_mask")}}
    groups = [{"params": model.clip_params, "lr": bt.OPTIM["lr_clip"]},
              {"params": model.noclip_params, "lr": bt.OPTIM["lr_new"]}]
    hf_adamw = getattr(importlib.import_module("transformers.optimization"), "AdamW", None)
    if hf_adamw is not None and args.torch_adamw == "official":
      self.opt = hf_adamw(groups, weight_decay=bt.OPTIM["weight_decay"])
      self.adamw = "transformers.optimization.AdamW"
    else:
      kind = "default" if args.torch_adamw == "official" else args.torch_adamw
      kw = {"fused": {"fused": True}, "foreach": {"foreach": True}}.get(kind, {})
      self.opt = torch.optim.AdamW(groups, betas=(bt.OPTIM["b1"], bt.OPTIM["b2"]),
                                   eps=bt.OPTIM["eps"],
                                   weight_decay=bt.OPTIM["weight_decay"], **kw)
      self.adamw = f"torch.optim.AdamW ({kind})"
    self.caption = args.caption

  def loss(self):
    """The official training loss on the batch: CLIPLoss (+ the caption loss)."""
    torch, fn = self.torch, self.torch.nn.functional
    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
      out = self.model(self.data)
    text = out["text_features"].float()
    video = out["video_features_pooled"].float()
    sims = self.metrics.sim_matrix_training(text, video, "avg")
    logits = sims * self.model.clip.logit_scale.exp()
    diag = torch.arange(len(logits), device=logits.device)
    loss = (fn.cross_entropy(logits, diag) + fn.cross_entropy(logits.T, diag)) / 2
    if self.caption:
      ids = out["input_ids"]
      # The official CaptionLoss: tokens before the first EOS, frequent words weighted
      # (the weights do not change the cost; here they are all 1) times 0.5.
      mask = ids[:, :-1] != int(ids.max())
      loss = loss + 0.5 * fn.cross_entropy(out["pred_logits"].float()[mask],
                                           ids[:, 1:][mask])
    return loss

  def step(self) -> float:
    loss = self.loss()
    loss.backward()
    self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), bt.OPTIM["grad_clip"])
    self.opt.step()
    self.opt.zero_grad(set_to_none=True)
    with self.torch.no_grad():
      self.model.clip.logit_scale.clamp_(max=math.log(100.0))
    return loss.detach().item()  # waits for the step, like ps_jax's per-step metrics

  def run(self, steps: int) -> float:
    self.torch.set_num_threads(self.default_threads)
    t0 = time.perf_counter()
    for _ in range(steps):
      self.step()
    return (time.perf_counter() - t0) / steps


class JaxStep(bt.TrainVariant):
  """ps_jax's jitted train step; its state starts from `loaded`, the params that
  `ps_jax.load_model` read from the official checkpoint (the same tree for every row:
  dtype, scan unrolling and the patch-embedding form do not change the parameters)."""

  def __init__(self, opts: bt.Options, clip, mesh, host_batches, text_len: int,
               captioner_layers: int, loaded: dict, fused: bool = True):
    super().__init__(opts, clip, mesh, host_batches, text_len,
                     num_captioner_layers=captioner_layers)
    if not fused:  # optax's chain: moments, update and apply as separate passes
      self.tx, self.schedules = optim.make_optimizer({**bt.OPTIM, "fused": False}, 1000)
    self.loaded = loaded

  def init_state(self):
    params = jax.device_put(self.loaded, self.params_sharding)
    return jax.jit(lambda p: ts.create_state(p, self.tx, jax.random.PRNGKey(1), False),
                   out_shardings=self.state_sharding)(params)

  def loss(self, state) -> float:
    batch = self.put(0)
    with bt.precision(self.opts.dtype):
      value, _ = jax.jit(lambda p, b: ts.loss_fn(p, b, self.model, self.lc))(
          state["params"], batch)
    return float(value)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--official_src", required=True,
                 help="a checkout of github.com/bladewaltz1/PromptSwitch")
  p.add_argument("--model", default="vitb32", choices=sorted(bt.MODELS))
  p.add_argument("--batch", type=int, default=4, help="B videos (and captions) per step")
  p.add_argument("--frames", type=int, default=6, help="F frames per video")
  p.add_argument("--num_prompts", type=int, default=6, help="P (the official default)")
  p.add_argument("--text_len", type=int, default=32, help="L caption tokens (padded)")
  p.add_argument("--caption", action="store_true",
                 help="add the caption head and its loss (official --loss clip+caption)")
  p.add_argument("--captioner_layers", type=int, default=2)
  p.add_argument("--f32_unroll", type=int, default=1, help="ps_jax float32 scan_unroll "
                 "(0: every layer)")
  p.add_argument("--bf16_unroll", type=int, default=0, help="ps_jax bfloat16 scan_unroll "
                 "(0: every layer)")
  p.add_argument("--unfused_rows", action="store_true",
                 help="also time ps_jax with optax's chain AdamW instead of the fused step")
  p.add_argument("--conv_rows", action="store_true",
                 help="also time ps_jax with the patch embedding as a strided convolution "
                      "(the official form) instead of a matmul")
  p.add_argument("--torch_adamw", default="official",
                 choices=["official", "default", "foreach", "fused"],
                 help="official: transformers' AdamW when installed, else torch's default")
  p.add_argument("--host_memory", default="retain", choices=["retain", "release"])
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--steps", type=int, default=2, help="timed steps per row and round")
  p.add_argument("--json", default="", help="also write the rows here")
  return p.parse_args(argv)


def main(argv=None) -> None:
  args = parse_args(argv)
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  retained = args.host_memory == "retain" and runtime.retain_freed_memory()
  prompt_clip, metrics = import_official(args.official_src)
  clip = bt.MODELS[args.model]
  full = max(clip.vision.num_hidden_layers, clip.text.num_hidden_layers)
  layers = args.captioner_layers if args.caption else 0
  hf_config = transformers.CLIPConfig(**clip.to_hf_dict())
  dev = jax.devices()[0]
  print(f"device: {dev.platform} {dev.device_kind}, jax {jax.__version__}, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), {os.cpu_count()} host "
        f"CPUs, load average {os.getloadavg()[0]:.1f}; host memory "
        f"{'retained' if retained else 'glibc defaults'}")
  print(f"model {args.model}, batch {args.batch} videos x {args.frames} frames, "
        f"P={args.num_prompts}, text length {args.text_len}, loss "
        f"{'contrastive + caption' if args.caption else 'contrastive'}; {args.rounds} "
        f"rounds x {args.steps} steps per row\n", flush=True)

  host_batches = bt.make_host_batches(clip, args.batch, args.frames, args.text_len)
  official = official_model(prompt_clip, hf_config, args, torch)
  state_dict = {k: v.detach().clone() for k, v in official.state_dict().items()}
  official_amp = official_model(prompt_clip, hf_config, args, torch)
  official_amp.load_state_dict(state_dict)
  rows = {"official, float32": OfficialStep(official, metrics, host_batches[0], args,
                                            torch, autocast=False),
          "official, torch.autocast(bfloat16)": OfficialStep(
              official_amp, metrics, host_batches[0], args, torch, autocast=True)}

  mesh = sharding.make_mesh(-1, 1, [dev])
  with tempfile.TemporaryDirectory() as tmp:
    pth = os.path.join(tmp, "official.pth")
    torch.save({"state_dict": state_dict}, pth)
    _, loaded = api.load_model(pth, clip_config=clip.to_hf_dict(),
                               num_prompts=args.num_prompts, num_captioner_layers=layers)
  jax_rows = {}
  kinds = [(True, "matmul", "")]
  if args.unfused_rows:
    kinds.append((False, "matmul", ", optax-chain AdamW"))
  if args.conv_rows:
    kinds.append((True, "conv", ", patch embedding as a convolution"))
  for fused, patch_embed, suffix in kinds:
    for dtype, unroll in (("float32", args.f32_unroll), ("bfloat16", args.bf16_unroll)):
      unroll = unroll or full
      opts = bt.Options(dtype=dtype, scan_unroll=unroll, num_prompts=args.num_prompts,
                        patch_embed=patch_embed)
      name = (f"ps_jax, {dtype}, {'unrolled' if unroll >= full else f'scan_unroll={unroll}'}"
              + suffix)
      jax_rows[name] = JaxStep(opts, clip, mesh, host_batches, args.text_len, layers,
                               loaded, fused)
  state = next(iter(jax_rows.values())).init_state()  # one state: same param structure

  ref = rows["official, float32"].loss().item()
  mine = next(iter(jax_rows.values())).loss(state)
  print(f"loss at the shared weights (float32): official {ref:.6f}, ps_jax {mine:.6f}, "
        f"|diff| {abs(ref - mine):.2e}", flush=True)
  if not abs(ref - mine) <= 1e-3 * max(1.0, abs(ref)):
    raise SystemExit("the two models disagree on the loss: not the same computation")

  compile_s = {}
  for name, row in jax_rows.items():
    row.compile(state)
    state, _ = row.run(state, 1)
    compile_s[name] = row.compile_s
    print(f"compiled {name}: {row.compile_s:.1f} s", flush=True)
  for row in rows.values():
    row.run(1)
  print(f"official optimizer: {rows['official, float32'].adamw}", flush=True)

  times: dict[str, list[float]] = {}
  step = 1
  for r in range(args.rounds):
    for name, row in rows.items():
      row.run(1)
      times.setdefault(name, []).append(row.run(args.steps))
    for name, row in jax_rows.items():
      state, _ = row.run(state, 1, start=step)
      state, sec = row.run(state, args.steps, start=step + 1)
      times.setdefault(name, []).append(sec)
    step += args.steps + 1
    print(f"round {r + 1}/{args.rounds} done (load average {os.getloadavg()[0]:.1f})",
          flush=True)

  med = {k: statistics.median(v) for k, v in times.items()}
  f32, amp = med["official, float32"], med["official, torch.autocast(bfloat16)"]
  print("\n### Train step: official PromptCLIP vs ps_jax, same weights and batch\n")
  print("| row | s/step (min-max) | videos/s | vs official float32 | vs official autocast |")
  print("|---|---:|---:|---:|---:|")
  out = []
  for name, sec in med.items():
    lo, hi = min(times[name]), max(times[name])
    print(f"| {name} | {sec:.3f} ({lo:.2f}-{hi:.2f}) | {args.batch / sec:.2f} | "
          f"{f32 / sec:.2f}x | {amp / sec:.2f}x |")
    out.append({"row": name, "s_per_step": sec, "min": lo, "max": hi,
                "vs_official_f32": f32 / sec, "vs_official_autocast": amp / sec,
                "compile_s": compile_s.get(name)})
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump({"args": vars(args), "loss_official": ref, "loss_ps_jax": mine,
                 "rows": out}, f, indent=2)


if __name__ == "__main__":
  main()
