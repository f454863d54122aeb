"""Runs experiment configs over several seeds and prints mean, std and min per config.

  python benchmarks/run_seeds.py --configs configs/demo.py,configs/demo_noswitch.py,\
configs/demo_meanpool.py --seeds 0,1,2,3,4 --root /tmp/ps_jax_seeds

Each (config, seed) is one real `python -m ps_jax.main --config C --workdir
ROOT/<config>/seed<S> --config.seed=S` process, run one after another (as a user
would run them; the wall time of each run is measured). All runs share one prepared
dataset (ROOT/data; the synthetic data does not depend on config.seed), rendered by the
first run. A run whose workdir already holds metrics.json is not run again (delete the
workdir, or pass --rerun). Extra `--config.<field>=<value>` arguments are passed to
every run.

Prints a per-run table (test t2v R@1, R@5, MdR, v2t R@1, twin accuracy, the selected
step, wall time) and a summary per config: mean ± std (population std over the seeds)
and min of test t2v R@1 and twin accuracy, and the largest wall time. `--markdown`
prints the summary as the table README.md shows. `--min_gap A,B,POINTS` fails (exit 1)
unless config A beats config B by at least POINTS t2v R@1 on every seed. `--json FILE`
writes the runs, their summary and config digests, and as "provenance" the command,
commit, date and host (benchmarks/RESULTS_demo_seeds.json is this file).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from typing import Optional, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import provenance  # noqa: E402
from ps_jax.config_defaults import load_config_file  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_one(config: str, seed: int, workdir: str, data_dir: str, extra: Sequence[str],
            rerun: bool) -> dict:
  """Runs (or reuses) one training run; returns its metrics.json plus "wall_s"."""
  metrics_file = os.path.join(workdir, "metrics.json")
  timing_file = os.path.join(workdir, "run_seeds_wall_s.txt")
  if rerun or not os.path.exists(metrics_file):
    if os.path.exists(workdir):
      raise SystemExit(f"{workdir} exists without a finished run: delete it first")
    cmd = [sys.executable, "-m", "ps_jax.main", "--config", config, "--workdir", workdir,
           f"--config.seed={seed}", f"--config.data.dir={data_dir}", *extra]
    print(" ".join(cmd), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
      raise SystemExit(f"run failed ({proc.returncode}): {' '.join(cmd)}\n"
                       f"{proc.stderr[-3000:]}")
    with open(timing_file, "w", encoding="utf-8") as f:
      f.write(f"{wall:.1f}\n")
  with open(metrics_file, encoding="utf-8") as f:
    record = json.load(f)
  wall = None
  if os.path.exists(timing_file):
    with open(timing_file, encoding="utf-8") as f:
      wall = float(f.read())
  return {**record, "wall_s": wall}


def summarize(records: Sequence[dict]) -> dict:
  """Mean, population std and min over seeds of t2v R@1 and twin accuracy."""
  out = {}
  for name, values in (("t2v_R@1", [r["t2v"]["R@1"] for r in records]),
                       ("t2v_R@5", [r["t2v"]["R@5"] for r in records]),
                       ("t2v_MdR", [r["t2v"]["MdR"] for r in records]),
                       ("v2t_R@1", [r["v2t"]["R@1"] for r in records]),
                       ("twin_acc", [r.get("twin_acc") for r in records])):
    if any(v is None for v in values):
      continue
    v = np.asarray(values, np.float64)
    out[name] = {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
                 "max": float(v.max())}
  walls = [r["wall_s"] for r in records if r["wall_s"] is not None]
  out["max_wall_s"] = max(walls) if walls else None
  return out


def _pm(stats: dict, key: str, fmt: str = "{:.1f}") -> str:
  if key not in stats:
    return "-"
  s = stats[key]
  return f"{fmt.format(s['mean'])} ± {fmt.format(s['std'])}"


def print_runs(name: str, seeds: Sequence[int], records: Sequence[dict]) -> None:
  print(f"\n{name}")
  print(f"{'seed':>5} {'t2v R@1':>8} {'R@5':>6} {'MdR':>5} {'v2t R@1':>8} {'twin acc':>9} "
        f"{'step':>6} {'wall s':>7}")
  for seed, r in zip(seeds, records):
    twin = "-" if r.get("twin_acc") is None else f"{r['twin_acc']:.1f}%"
    wall = "-" if r["wall_s"] is None else f"{r['wall_s']:.0f}"
    print(f"{seed:>5} {r['t2v']['R@1']:>8.1f} {r['t2v']['R@5']:>6.1f} {r['t2v']['MdR']:>5.1f} "
          f"{r['v2t']['R@1']:>8.1f} {twin:>9} {r['step']:>6} {wall:>7}")


def _twin_cells(stats: dict) -> tuple[str, str]:
  """(mean ± std, min) of the twin accuracy as text, "-" where there are no twins."""
  if "twin_acc" not in stats:
    return "-", "-"
  return _pm(stats, "twin_acc") + "%", f"{stats['twin_acc']['min']:.1f}%"


def markdown_rows(results: dict) -> list[str]:
  """The summary as README.md's table: header, rule and one row per config."""
  rows = ["| config | t2v R@1 | min | t2v R@5 | t2v MdR | v2t R@1 | twin accuracy | min |",
          "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for name, stats in results.items():
    twin, twin_min = _twin_cells(stats)
    rows.append(f"| `{name}` | {_pm(stats, 't2v_R@1')} | {stats['t2v_R@1']['min']:.1f} | "
                f"{_pm(stats, 't2v_R@5')} | {_pm(stats, 't2v_MdR')} | {_pm(stats, 'v2t_R@1')} | "
                f"{twin} | {twin_min} |")
  return rows


def markdown_seed_rows(runs: dict) -> list[str]:
  """Per seed: t2v R@1 / twin accuracy of every config, the first config's margin over
  the second, and the first config's selected step and wall time."""
  names = list(runs)
  head = "| seed | " + " | ".join(f"`{n}` t2v R@1 / twin" for n in names)
  rule = "|---:|" + "---:|" * len(names)
  if len(names) > 1:
    head += f" | `{names[0]}` - `{names[1]}`"
    rule += "---:|"
  head += f" | `{names[0]}` step | `{names[0]}` wall s |"
  rule += "---:|---:|"
  rows = [head, rule]
  for k, first in enumerate(runs[names[0]]):
    cells = [str(first["seed"])]
    for n in names:
      r = runs[n][k]
      twin = "-" if r["twin_acc"] is None else f"{r['twin_acc']:.1f}%"
      cells.append(f"{r['t2v_R@1']:.1f} / {twin}")
    if len(names) > 1:
      cells.append(f"{first['t2v_R@1'] - runs[names[1]][k]['t2v_R@1']:+.1f}")
    wall = "-" if first["wall_s"] is None else f"{first['wall_s']:.0f}"
    cells += [str(first["step"]), wall]
    rows.append("| " + " | ".join(cells) + " |")
  return rows


def print_summary(results: dict, seeds: Sequence[int], markdown: bool) -> None:
  n = len(seeds)
  if markdown:
    print("\n" + "\n".join(markdown_rows(results)))
    return
  print(f"\nsummary over seeds {','.join(map(str, seeds))} (mean ± std, min)")
  for name, stats in results.items():
    twin, twin_min = _twin_cells(stats)
    wall = stats["max_wall_s"]
    print(f"{name}: t2v R@1 {_pm(stats, 't2v_R@1')} (min {stats['t2v_R@1']['min']:.1f}), "
          f"twin accuracy {twin} (min {twin_min}), n={n}, longest run "
          f"{'-' if wall is None else f'{wall:.0f} s'}")


# Fields that cannot change a training result, so they do not count towards the digest:
# published numbers printed beside ours, the settings of `--mode compile`, and the moment
# evaluation (`ps_jax.moment_eval`, run after training on the selected checkpoint).
REPORT_ONLY_FIELDS = ("reference", "compile", "moments")


def config_digest(path: str) -> str:
  """sha256 of the config's resolved fields (comments, layout and REPORT_ONLY_FIELDS do
  not count)."""
  fields = load_config_file(path).to_dict()
  for name in REPORT_ONLY_FIELDS:
    fields.pop(name, None)
  text = json.dumps(fields, sort_keys=True, default=str)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


def run_row(seed: int, record: dict) -> dict:
  """What the JSON keeps of one run."""
  return {"seed": seed, "t2v_R@1": record["t2v"]["R@1"], "v2t_R@1": record["v2t"]["R@1"],
          "twin_acc": record.get("twin_acc"), "step": record["step"],
          "wall_s": record["wall_s"]}


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", required=True, help="comma-separated config files")
  parser.add_argument("--seeds", default="0,1,2,3,4")
  parser.add_argument("--root", required=True, help="workdirs go to ROOT/<config>/seed<S>")
  parser.add_argument("--data_dir", default="", help="prepared data (default ROOT/data)")
  parser.add_argument("--rerun", action="store_true", help="run again even if finished")
  parser.add_argument("--markdown", action="store_true")
  parser.add_argument("--min_gap", default="", help="A,B,POINTS: A must beat B by POINTS "
                      "t2v R@1 on every seed (config names without .py)")
  parser.add_argument("--json", default="", help="also write the runs, the summary and "
                      "the command, commit, date and host to this file")
  argv = sys.argv[1:] if argv is None else list(argv)
  args, extra = parser.parse_known_args(argv)
  bad = [a for a in extra if not a.startswith("--config.")]
  if bad:
    parser.error(f"unknown arguments {bad} (only --config.<field>=<value> are passed on)")
  made_by = provenance.record("run_seeds.py", argv)  # the checkout the runs start from
  seeds = [int(s) for s in args.seeds.split(",")]
  data_dir = os.path.abspath(args.data_dir or os.path.join(args.root, "data"))
  results, per_seed, runs, digests = {}, {}, {}, {}
  for config in args.configs.split(","):
    name = os.path.splitext(os.path.basename(config))[0]
    records = [run_one(os.path.abspath(config), seed,
                       os.path.join(os.path.abspath(args.root), name, f"seed{seed}"),
                       data_dir, extra, args.rerun) for seed in seeds]
    print_runs(name, seeds, records)
    results[name] = summarize(records)
    per_seed[name] = [r["t2v"]["R@1"] for r in records]
    runs[name] = [run_row(seed, r) for seed, r in zip(seeds, records)]
    digests[name] = config_digest(config)
  print_summary(results, seeds, args.markdown)
  if args.markdown:
    print("\n" + "\n".join(markdown_seed_rows(runs)))
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump({"provenance": made_by, "seeds": seeds, "extra_args": list(extra),
                 "config_sha256": digests, "summary": results, "t2v_R@1": per_seed,
                 "runs": runs}, f, indent=2)
  if args.min_gap:
    a, b, points = args.min_gap.split(",")
    gaps = np.asarray(per_seed[a]) - np.asarray(per_seed[b])
    print(f"\n{a} - {b} t2v R@1 per seed: {', '.join(f'{g:+.1f}' for g in gaps)} "
          f"(required: >= {float(points):+.1f})")
    if (gaps < float(points)).any():
      return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
