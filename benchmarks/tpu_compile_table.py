"""The launch table as compiled facts: each row is `python -m ps_jax.main --mode compile`
with find_max_batch on a TPU slice, compiled on this CPU by the real TPU compiler.

  python benchmarks/tpu_compile_table.py --out benchmarks/RESULTS_tpu_compile.md
  python benchmarks/tpu_compile_table.py --rows b32-v5e-64,l14-v5p-128 --jobs 2
  python benchmarks/tpu_compile_table.py --table_only --out benchmarks/RESULTS_tpu_compile.md \
      --update_docs      # the table from the records so far, quoted into the docs

Each row runs in its own process (logs under --workdir); its JSON record is kept in
benchmarks/tpu_compile/<row>.json, and the table is assembled from those records (a row
not compiled yet is listed as such), so rows compiled on different days add up. Needs
libtpu (pip install -e ".[tpu]"). Every figure is per chip; step times and MFU are
ESTIMATES (roofline bounds from the compiled cost analysis), not measurements.
"""

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # noqa: E402  pylint: disable=g-import-not-at-top

GiB = 2 ** 30
# name -> (slice, config, overrides): 12 training frames, the config's own compute
# (the ViT-L/14 rows on v5p-128 and v4-32 were compiled with its earlier remat).
ROWS = {
    "b32-v5e-64": ("v5e-64", "msrvtt_vitb32", ()),
    "b32-v5p-128": ("v5p-128", "msrvtt_vitb32", ()),
    "b32-v4-32": ("v4-32", "msrvtt_vitb32", ()),
    "l14-v5e-64": ("v5e-64", "msrvtt_vitl14", ("--config.mesh.fsdp=8",)),
    "l14-v5p-128": ("v5p-128", "msrvtt_vitl14", ("--config.mesh.fsdp=4",
                                                "--config.model.remat_policy=dots_saveable")),
    "l14-v4-32": ("v4-32", "msrvtt_vitl14", ("--config.mesh.fsdp=4",
                                            "--config.model.remat_policy=dots_saveable")),
    "b16-v5e-64": ("v5e-64", "msrvtt_vitb16", ()),
    "b16-v5p-128": ("v5p-128", "msrvtt_vitb16", ()),
    "b16-v4-32": ("v4-32", "msrvtt_vitb16", ()),
}
BACKBONES = {"msrvtt_vitb32": "ViT-B/32", "msrvtt_vitb16": "ViT-B/16",
             "msrvtt_vitl14": "ViT-L/14"}
FRAMES = 12
RECORDS = os.path.join(REPO, "benchmarks", "tpu_compile")


# Measured once with the same library calls (`--mode compile` at a fixed batch); kept
# beside the table because they decide how the search compiles.
NOTES = """
## How the table was searched, and what it costs here

- Each row: two probe compiles (4 and 16 videos per chip) fit peak = a + b x videos;
  the prediction is compiled with the config's own program and must fit; `one more`
  says whether the batch one video larger was also compiled and refused. A compile
  whose program is over the HBM is slow here (10+ minutes on 2 cores: the TPU compiler
  tries rematerialisation before it gives up), so rows made with `--no_check_above`
  say `not tried`.
- Rolled vs unrolled scan, ViT-B/32 train step, 4 videos x 12 frames per chip on
  v5e:2x2 (`python -m ps_jax.main --mode compile --config configs/msrvtt_vitb32.py
  --workdir /tmp/c --config.compile.topology=v5e:2x2 --config.compile.videos_per_chip=4
  --config.compile.programs=train_step --config.data.num_frames=12
  --config.model.scan_unroll=1`, then `=12`): rolled compiles in 27 s against 144 s, but
  plans 3.56 GiB of temporaries against 2.03 GiB, and its `cost_analysis()` counts the
  loop body without its trip count (0.20 against 1.56 TFLOP). It cannot stand in for
  the unrolled step: the probes compile the config's own program
  (`config.compile.search_unroll = 0`).
- `optimal_seconds` came out negative on every compile here (-64 s rolled, -373 s
  unrolled for the step above), so the estimates use the roofline; the field is kept in
  each JSON record.
- Unrolled, the compiled FLOPs equal the model's analytic count (1.556 against 1.554
  TFLOP per chip above: ratio 1.00, no remat or padding overhead); ViT-L/14 runs 2
  iterations of 12 layers, whose loop trip count the cost analysis leaves out, so its
  compiled/model ratio is below 1 and its MFU bound is not comparable.
- At the largest batch the ratio rises above 1 (1.04 on v5e, 1.11 on v5p, 1.13 on v4):
  with the program at the HBM limit the TPU compiler rematerialises activations on its
  own (remat_policy none), so the extra FLOPs are recomputation the compiler chose, not
  padding. Every ViT-B/32 row is HBM-bound at that batch (the roofline's HBM time above
  its compute time), so the lean-step goal (compute-bound, MFU bound >= 50%) holds on
  none of them: v5p comes closest (74% of peak, but HBM time 376 ms against 310 ms of
  compute), v5e and v4 are at 40% and 45%.
- ViT-L/14 first compiled with `remat dots_saveable` (every matmul output of the 24
  layers kept for the backward pass, attention logits included): the probes put it at
  10.8 GiB a video per chip on v5p (fsdp=4), 12.4 GiB on v4 (fsdp=4) and 24.4 GiB on
  v5e (fsdp=8), so 5 videos per chip fit on v5p-128, 1 on v4-32 and none on v5e-64
  (26.41 GiB at 1 video per chip of 16: `does not fit`). With `nothing_saveable` (each
  layer's input kept, its matmuls recomputed backward) it is 1.9 GiB a video on v5e,
  where 5 fit (the row above), and on v4-32 the 16-video probe fits (30.70 GiB peak of
  32; the confirmation at 17 ran out of this machine's 24 GiB of RAM, so that row is
  not in the table). `configs/msrvtt_vitl14.py` now uses `nothing_saveable`; the v5p
  and v4 rows above are the earlier compiles and say so in their compute column.
- Rows compile one after another: about 20 minutes each for ViT-B/32 and ViT-B/16 here
  (three compiles), 10 to 40 minutes for ViT-L/14 (a refused compile is the slow one);
  a ViT-L/14 compile at 16+ videos per chip needs more than 20 GiB of host RAM.
"""


def command(name: str, workdir: str) -> list:
  slice_name, config, overrides = ROWS[name]
  return [sys.executable, "-m", "ps_jax.main", "--mode", "compile",
          "--config", f"configs/{config}.py", "--workdir", os.path.join(workdir, name),
          f"--config.compile.topology={slice_name}", "--config.compile.find_max_batch=True",
          "--config.compile.programs=train_step", f"--config.data.num_frames={FRAMES}",
          *overrides]


def run_row(name: str, workdir: str, extra=()) -> int:
  os.makedirs(os.path.join(workdir, name), exist_ok=True)
  with open(os.path.join(workdir, name, "log.txt"), "w") as log:
    env = {**os.environ, "ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "JAX_PLATFORMS": "cpu"}
    return subprocess.run(command(name, workdir) + list(extra), stdout=log,
                          stderr=subprocess.STDOUT, cwd=REPO, env=env,
                          check=False).returncode


def keep_record(name: str, workdir: str) -> bool:
  """Copies the row's record from its workdir into RECORDS; False if it wrote none."""
  d = os.path.join(workdir, name)
  found = [f for f in os.listdir(d) if f.startswith("compile_")] if os.path.isdir(d) else []
  if not found:
    return False
  with open(os.path.join(d, found[0])) as f:
    rec = json.load(f)
  os.makedirs(RECORDS, exist_ok=True)
  with open(os.path.join(RECORDS, f"{name}.json"), "w") as f:
    json.dump(rec, f, indent=1)
    f.write("\n")
  return True


def record(name: str):
  """The row's kept record (RECORDS/<name>.json), or None."""
  path = os.path.join(RECORDS, f"{name}.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def row_line(name: str, r) -> str:
  slice_name, config, _ = ROWS[name]
  if r is None:
    return f"| {slice_name} | {BACKBONES[config]} | not compiled yet | | | | | | | |"
  mesh = ", ".join(f"{k}={v}" for k, v in r["mesh"].items())
  lb, m, est = r["largest_batch"], r["programs"]["train_step"], r["train_estimate"]
  vpc = lb["videos_per_chip"]
  above = "refused" if lb["refused_above"] else "not tried"
  return (f"| {slice_name} ({r['chips']} chips) | {BACKBONES[config]} | {mesh} | "
          f"{r['model_dtype']}, remat {r['remat_policy']}, unroll {r['scan_unroll']} | "
          f"**{vpc}** ({vpc * r['chips']}; {vpc + 1}: {above}) | "
          f"{m['argument_bytes'] / GiB:.2f} | {m['temp_bytes'] / GiB:.2f} | "
          f"{m['total_bytes'] / GiB:.2f} / {r['hbm_limit_bytes'] / GiB:.0f} | "
          f"{est['flops_ratio']:.2f} | {est['compute_seconds'] * 1e3:.0f} / "
          f"{est['memory_seconds'] * 1e3:.0f} ms ({est['bound']}) | {est['mfu']:.0%} |")


def table(names) -> str:
  head = ("| slice | backbone | mesh | compute | largest videos per chip (global batch; "
          "one more) | arguments GiB | temporaries GiB | peak / HBM GiB | compiled / model "
          "FLOPs | roofline: compute / HBM time | est. MFU bound |\n"
          "|---|---|---|---|---|---:|---:|---:|---:|---|---:|")
  return "\n".join([head] + [row_line(n, record(n)) for n in names])


# The pages that quote the table (found by its header line).
DOCS = (os.path.join("docs", "training_at_scale.md"), os.path.join("launch", "README.md"))


def update_docs(text: str) -> None:
  """Replaces the table (or its TPU_COMPILE_TABLE placeholder) in each of DOCS."""
  header = text.splitlines()[0]
  for doc in DOCS:
    path = os.path.join(REPO, doc)
    with open(path, encoding="utf-8") as f:
      lines = f.read().split("\n")
    if "TPU_COMPILE_TABLE" in lines:
      start = end = lines.index("TPU_COMPILE_TABLE")
    else:
      start = lines.index(header)
      end = start
      while end + 1 < len(lines) and lines[end + 1].startswith("|"):
        end += 1
    lines[start:end + 1] = text.splitlines()
    with open(path, "w", encoding="utf-8") as f:
      f.write("\n".join(lines))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", default=",".join(ROWS), help=f"comma list of {list(ROWS)}")
  parser.add_argument("--workdir", default="/tmp/ps_jax_tpu_compile")
  parser.add_argument("--jobs", type=int, default=1, help="rows compiled at once")
  parser.add_argument("--no_check_above", action="store_true",
                      help="do not compile one video more than the largest that fits "
                      "(an over-HBM compile can take 10+ minutes here)")
  parser.add_argument("--table_only", action="store_true",
                      help="assemble the table from the records kept in "
                      "benchmarks/tpu_compile/")
  parser.add_argument("--out", default="", help="write the results file here")
  parser.add_argument("--update_docs", action="store_true",
                      help="put the table into docs/training_at_scale.md and "
                      "launch/README.md")
  args = parser.parse_args()
  names = args.rows.split(",")
  for n in names:
    if n not in ROWS:
      parser.error(f"--rows: unknown {n!r}; choose from {list(ROWS)}")
  if not args.table_only:
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
      extra = ["--config.compile.check_above=False"] if args.no_check_above else []
      for n, rc in zip(names, pool.map(lambda n: run_row(n, args.workdir, extra), names)):
        kept = rc == 0 and keep_record(n, args.workdir)
        print(f"{n}: exit {rc}" + (f" -> {RECORDS}/{n}.json" if kept else ""), flush=True)
  names = list(ROWS) if args.table_only and args.rows == ",".join(ROWS) else names
  text = table(names)
  print(text)
  if args.out:
    rec = provenance.record("tpu_compile_table.py", sys.argv[1:])
    found = {n: record(n) for n in names}
    v = next((r for r in found.values() if r), {}).get("versions", {})
    compiled = "; ".join(f"{n} {r['date'][:10]}" for n, r in found.items() if r)
    with open(args.out, "w") as f:
      f.write(f"# TPU compile check: the launch table\n\nCommand: `{rec['command']}` "
              f"(each row: `{' '.join(command(names[0], '<workdir>')[1:])}` with its "
              f"slice, config and mesh)\n{provenance.commit_line(rec)} jax {v.get('jax')}, "
              f"libtpu {v.get('libtpu')}; rows compiled (UTC): {compiled or 'none'}\n\n"
              f"{text}\n{NOTES}")
  if args.update_docs:
    update_docs(text)


if __name__ == "__main__":
  main()
