"""Where a train step spends its time: a jax.profiler trace of bench_train's step,
aggregated per XLA thunk, with each thunk's HLO result shape.

For each variant (bench_train's options; the first is the base) it runs --steps steps
under `jax.profiler.trace` (perfetto JSON), sums the duration of every traced thunk per
name over the steps, and prints the total per category and the top --top thunks:

  category      from the thunk's name: matmul fusion (ynn/onednn/dot/conv), zero fill or
                broadcast (wrapped_broadcast/broadcast), element-wise fusion (loop/input/
                fusion), copy, loop control (while/conditional), other
  ms/step       summed thunk time per step (on a multi-core CPU, thunks of one step run
                on several threads: the sum can exceed the step's wall time). A loop's
                own thunk (while) spans its body's thunks, so loop control is listed but
                left out of the total and the shares.
  shape         the thunk's HLO result shape(s), from the compiled module text

The profiler slows the step (~15% here); the wall s/step it prints is for reading the
table, not for comparing with bench_train.

  python benchmarks/profile_step.py --model vitb32 --batch 4 --frames 6 --dtype float32 \\
      --variant dtype=bfloat16,scan_unroll=0 [--top 15] [--json F]
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # noqa: E402

import bench_train as bt  # noqa: E402
from ps_jax import runtime, sharding  # noqa: E402
# pylint: enable=g-import-not-at-top,wrong-import-position

CATEGORIES = (  # (category, name pattern), first match wins
    ("matmul fusion", re.compile(r"ynn|onednn|dot|conv|gemm|matmul|custom-call", re.I)),
    ("zero fill / broadcast", re.compile(r"broadcast", re.I)),
    ("copy", re.compile(r"copy|transpose|bitcast", re.I)),
    ("element-wise fusion", re.compile(r"fusion|reduce|select|add|multiply", re.I)),
    ("loop control", re.compile(r"while|conditional|call", re.I)),
)


def category(name: str) -> str:
  for label, pattern in CATEGORIES:
    if pattern.search(name):
      return label
  return "other"


def result_shapes(hlo_text: str) -> dict[str, str]:
  """instruction name -> its result shape text, from a compiled module's HLO."""
  out = {}
  for match in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\([^=]*?\)|[a-z0-9]+\[[^\]]*\])",
                           hlo_text, re.M):
    out.setdefault(match.group(1), match.group(2))
  return out


def trace_thunks(trace_dir: str) -> collections.Counter:
  """Summed duration (microseconds) per traced event name of a perfetto trace."""
  files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
  if not files:
    raise SystemExit(f"the profiler wrote no perfetto trace under {trace_dir}")
  with gzip.open(files[0]) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  totals = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and "dur" in e and e.get("name"):
      totals[e["name"]] += e["dur"]
  return totals


def profile(variant: bt.TrainVariant, steps: int) -> dict:
  """Profiles `steps` steps of a compiled variant (after 2 warm-up steps)."""
  state = variant.init_state()
  variant.compile(state)
  state, _ = variant.run(state, 2)  # warm up
  trace_dir = tempfile.mkdtemp(prefix="profile_step_")
  try:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      state, seconds = variant.run(state, steps, start=2)
    totals = trace_thunks(trace_dir)
  finally:
    shutil.rmtree(trace_dir, ignore_errors=True)
  shapes = result_shapes(variant.compiled.as_text())
  thunks = {name: us for name, us in totals.items() if name in shapes}
  by_category = collections.Counter()
  for name, us in thunks.items():
    by_category[category(name)] += us
  busy = sum(us for name, us in thunks.items() if category(name) != "loop control")
  return {"s_per_step": seconds, "steps": steps, "thunk_ms_per_step": busy / 1e3 / steps,
          "categories": {c: us / 1e3 / steps for c, us in by_category.most_common()},
          "top": [{"thunk": name, "category": category(name), "ms_per_step": us / 1e3 / steps,
                   "shape": shapes.get(name, "")}
                  for name, us in sorted(thunks.items(), key=lambda kv: -kv[1])]}


def print_profile(label: str, p: dict, top: int) -> None:
  total = p["thunk_ms_per_step"]
  print(f"\n### {label}: {p['s_per_step']:.3f} s/step under the profiler, thunks "
        f"{total:.0f} ms/step summed\n")
  print("| category | ms/step | share |\n|---|---:|---:|")
  for name, ms in p["categories"].items():
    share = "(spans its body)" if name == "loop control" else f"{100 * ms / total:.1f}%"
    print(f"| {name} | {ms:.1f} | {share} |")
  print("\n| top thunks | category | ms/step | share | shape |\n|---|---|---:|---:|---|")
  for t in [t for t in p["top"] if t["category"] != "loop control"][:top]:
    print(f"| {t['thunk']} | {t['category']} | {t['ms_per_step']:.1f} | "
          f"{100 * t['ms_per_step'] / total:.1f}% | `{t['shape'][:60]}` |")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="vitb32", choices=sorted(bt.MODELS))
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--frames", type=int, default=6)
  parser.add_argument("--text_len", type=int, default=32)
  parser.add_argument("--num_prompts", type=int, default=6)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--scan_unroll", type=int, default=1, help="0: every layer")
  parser.add_argument("--patch_embed", default="matmul", choices=("matmul", "conv"))
  parser.add_argument("--variant", action="append", default=[],
                      help="another variant, as bench_train's --variant (repeatable)")
  parser.add_argument("--steps", type=int, default=2)
  parser.add_argument("--top", type=int, default=15)
  parser.add_argument("--json", help="also write the profiles here")
  args = parser.parse_args(argv)
  runtime.retain_freed_memory()
  clip = bt.MODELS[args.model]
  full = clip.vision.num_hidden_layers
  base = bt.Options(dtype=args.dtype, scan_unroll=args.scan_unroll or full,
                    num_prompts=args.num_prompts, patch_embed=args.patch_embed)
  variants = [base] + [bt.parse_variant(v, base, full) for v in args.variant]
  mesh = sharding.make_mesh(-1, 1, jax.devices()[:1])
  batches = bt.make_host_batches(clip, args.batch, args.frames, args.text_len)
  print(f"model {args.model}, {args.batch} videos x {args.frames} frames, text "
        f"{args.text_len}, {jax.devices()[0].platform}, jax {jax.__version__}, "
        f"{os.cpu_count()} CPUs")
  results = {}
  for opts in variants:
    label = opts.label(base, full) if opts is not base else (
        f"base (dtype={opts.dtype}, scan_unroll="
        f"{'full' if opts.scan_unroll >= full else opts.scan_unroll})")
    tv = bt.TrainVariant(opts, clip, mesh, batches, args.text_len, num_captioner_layers=0)
    results[label] = profile(tv, args.steps)
    print_profile(label, results[label], args.top)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
