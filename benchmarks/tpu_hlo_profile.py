"""Where a TPU train step spends its time, from the compiled HLO (no TPU needed).

  python benchmarks/tpu_hlo_profile.py --config configs/msrvtt_vitb32.py \
      --topology v5e:2x2 --videos_per_chip 16 --frames 12
  python benchmarks/tpu_hlo_profile.py ... --layers 2          # a 2-layer stand-in, ~6x
                                                              # faster to compile
  python benchmarks/tpu_hlo_profile.py ... --set model.attention_impl=dot_product_attention

Compiles the run's train step for the slice with the real TPU compiler (as `--mode
compile` does) and reads the scheduled entry computation of `compiled.as_text()`: every
TPU op carries the compiler's own cost-model estimate (`estimated_cycles` in its backend
config) and the JAX op it came from (`op_name`). The table sums the estimated cycles and
the output bytes by what the op does (matmul, attention products, copies and transposes,
normalisation, softmax, element-wise, optimizer, collectives) and by part of the model.
Cycles are ESTIMATES of the compiler's cost model, not measurements; shares are what to
read. Needs libtpu (pip install -e ".[tpu]").
"""

import argparse
import collections
import os
import re
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import provenance  # noqa: E402  pylint: disable=g-import-not-at-top
from ps_jax import aot, experiment  # noqa: E402  pylint: disable=g-import-not-at-top
from ps_jax.config_defaults import load_config_file  # noqa: E402  pylint: disable=g-import-not-at-top

_SHAPE = re.compile(r"(pred|[su](?:8|16|32|64)|bf16|f16|f32|f64)\[([\d,]*)\]")
_ITEM = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4,
         "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}
_OP = re.compile(r"\s+(?:ROOT )?%[\w.\-]+ = (.*?) ([\w\-]+)\((.*)$")
_ATTENTION = ("bqhd,bkhd->bhqk", "bhqk,bkhd->bqhd")


def shape_bytes(text: str) -> int:
  """Bytes of every array shape in an HLO type string ("(f32[2,3], bf16[4])" -> 32)."""
  total = 0
  for dtype, dims in _SHAPE.findall(text):
    n = 1
    for d in filter(None, dims.split(",")):
      n *= int(d)
    total += n * _ITEM[dtype]
  return total


def op_class(opcode: str, kind: str, name: str) -> str:
  """What an entry-computation op does, from its opcode, fusion kind and JAX op name."""
  if "PromptSwitch" not in name and "log_softmax" not in name and "diagonal" not in name:
    return "optimizer, clipping, loss scalars" if opcode == "fusion" else "other"
  if any(a in name for a in _ATTENTION) and kind in ("kOutput", "kConvolution"):
    return "attention products (QK^T, PV)"
  if opcode in ("copy", "transpose") or name.endswith(("/transpose", "/reshape")):
    return "copies, transposes"
  if opcode.startswith(("all-", "reduce-scatter", "collective")):
    return "collectives"
  if kind in ("kOutput", "kConvolution"):
    return "matmuls (projections, MLP, heads)"
  if "layer_norm" in name:
    return "layer norm"
  if "softmax" in name or "self_attn" in name:
    return "softmax, attention element-wise"
  return "element-wise, reductions"


def model_part(name: str) -> str:
  if "encode_video" in name:
    return "vision"
  if "encode_text" in name:
    return "text"
  if "caption" in name:
    return "caption head"
  return "loss, optimizer"


def entry_ops(hlo: str):
  """(class, part, estimated cycles, output bytes) of each op of the entry computation."""
  entry = hlo[hlo.index("\nENTRY"):].split("\n")[1:]
  for line in entry:
    m = _OP.match(line)
    if not m:
      continue
    out, opcode, rest = m.groups()
    if opcode in ("parameter", "constant", "get-tuple-element", "tuple", "bitcast"):
      continue
    kind = re.search(r"kind=(\w+)", rest)
    name = re.search(r'op_name="([^"]*)"', rest)
    cycles = re.search(r'"estimated_cycles":"(\d+)"', rest)
    name = name.group(1) if name else ""
    cls = op_class(opcode, kind.group(1) if kind else "", name)
    if opcode.endswith(("-start", "-done")):
      # Async moves (prefetch into on-chip memory, collectives): a *-start returns
      # ((source), destination, ...) and its *-done the destination again.
      cls = "async copies (start/done)" if cls in ("other", "copies, transposes") else cls
      moved = 0 if opcode.endswith("-done") else shape_bytes(out) - shape_bytes(
          out[2:out.index(")")] if out.startswith("((") else "")
    else:
      moved = shape_bytes(out)
    yield cls, model_part(name), int(cycles.group(1)) if cycles else 0, moved


def table(ops, key, title: str) -> str:
  cyc, out = collections.Counter(), collections.Counter()
  for op in ops:
    cyc[key(op)] += op[2]
    out[key(op)] += op[3]
  total = sum(cyc.values()) or 1
  rows = [f"| {title} | est. cycles (M) | share | output GB |", "|---|---:|---:|---:|"]
  for k, c in cyc.most_common():
    rows.append(f"| {k} | {c / 1e6:.2f} | {c / total:.1%} | {out[k] / 1e9:.2f} |")
  return "\n".join(rows)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/msrvtt_vitb32.py")
  p.add_argument("--topology", default="v5e:2x2")
  p.add_argument("--videos_per_chip", type=int, default=16)
  p.add_argument("--frames", type=int, default=12)
  p.add_argument("--mesh", default="", help="data,fsdp (default: the config's mesh)")
  p.add_argument("--layers", type=int, default=0,
                 help="> 0: vision and text encoders of this depth (a quick stand-in)")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="a config override, e.g. model.attention_impl=dot_product_attention")
  p.add_argument("--save_hlo", default="", help="write the compiled HLO text here")
  p.add_argument("--from_hlo", default="", help="profile this saved HLO text instead")
  args = p.parse_args(argv)
  rec = provenance.record("tpu_hlo_profile.py", sys.argv[1:] if argv is None else argv)
  print(f"Command: `{rec['command']}`\n{provenance.commit_line(rec)}")
  if args.from_hlo:
    with open(args.from_hlo) as f:
      return report(f.read())
  config = load_config_file(args.config)
  fields = {"compile.topology": args.topology, "data.num_frames": args.frames}
  if args.layers:
    fields.update({"model.clip.vision.num_hidden_layers": args.layers,
                   "model.clip.text.num_hidden_layers": args.layers,
                   "model.scan_unroll": args.layers})
  if args.mesh:
    fields["mesh.data"], fields["mesh.fsdp"] = (int(x) for x in args.mesh.split(","))
  for item in args.set:
    field, _, value = item.partition("=")
    old = experiment.get_field(config, field)
    fields[field] = (value == "True") if isinstance(old, bool) else type(old)(value)
  config = aot._with(config, **fields)  # pylint: disable=protected-access
  target = aot.make_target(config)
  config = aot.checked_config(config, target, args.videos_per_chip)
  model, params_sharding = aot.build_model(config, target.mesh)
  start = time.perf_counter()
  lowered, _ = aot.lower_train_step(config, target.mesh, model, params_sharding,
                                    config.batch_size)
  compiled = lowered.compile()
  seconds = time.perf_counter() - start
  hlo = compiled.as_text()
  if args.save_hlo:
    with open(args.save_hlo, "w") as f:
      f.write(hlo)
  cost = aot._cost(compiled)  # pylint: disable=protected-access
  mem = compiled.memory_analysis()
  print(f"{args.config} on {target.spec.label()}, {aot.describe_run(config, target)}, "
        f"{' '.join(args.set) or 'defaults'}{f', {args.layers} layers' if args.layers else ''}"
        f"\ncompiled in {seconds:.0f} s; per chip: {cost.get('flops', 0) / 1e12:.3f} TFLOP, "
        f"{cost.get('bytes accessed', 0) / 1e9:.1f} GB accessed (cost analysis), "
        f"temporaries {aot.gib(mem.temp_size_in_bytes)} GiB")
  report(hlo)


def report(hlo: str) -> None:
  ops = list(entry_ops(hlo))
  print(f"{len(ops)} scheduled ops, {sum(o[2] for o in ops) / 1e6:.2f} M estimated cycles\n")
  print(table(ops, lambda o: o[0], "what the op does"))
  print()
  print(table(ops, lambda o: o[1], "part of the model"))


if __name__ == "__main__":
  main()
