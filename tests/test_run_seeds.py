"""benchmarks/run_seeds.py: the statistics README's demo table is made of, its gap check,
and the command, commit, date and host its --json file records.

Finished runs are reused (a workdir with metrics.json is not run again), so these tests
feed it workdirs with hand-written metrics instead of training.
"""

import json
import os
import platform
import re
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _finished(root, name, seed, r1, twin, wall=100.0):
  workdir = os.path.join(root, name, f"seed{seed}")
  os.makedirs(workdir)
  direction = {"R@1": r1, "R@5": 50.0, "R@10": 80.0, "R@50": 100.0, "MdR": 3.0, "MnR": 4.0}
  with open(os.path.join(workdir, "metrics.json"), "w") as f:
    json.dump({"step": 10, "t2v": direction, "v2t": direction, "twin_acc": twin}, f)
  with open(os.path.join(workdir, "run_seeds_wall_s.txt"), "w") as f:
    f.write(f"{wall}\n")


def test_mean_std_min_over_seeds(run_seeds, tmp_path, capsys):
  for seed, (r1, twin) in enumerate([(20.0, 70.0), (24.0, 80.0), (16.0, 90.0)]):
    _finished(str(tmp_path), "demo", seed, r1, twin, wall=100.0 + seed)
  out = str(tmp_path / "summary.json")
  assert run_seeds.main(["--configs", "configs/demo.py", "--seeds", "0,1,2",
                         "--root", str(tmp_path), "--json", out, "--markdown"]) == 0
  summary = json.load(open(out))["summary"]["demo"]
  assert summary["t2v_R@1"]["mean"] == pytest.approx(20.0)
  assert summary["t2v_R@1"]["std"] == pytest.approx((32 / 3) ** 0.5)  # population std
  assert summary["t2v_R@1"]["min"] == 16.0
  assert summary["twin_acc"]["min"] == 70.0 and summary["max_wall_s"] == 102.0
  table = capsys.readouterr().out
  assert "| `demo` | 20.0 ± 3.3 | 16.0 |" in table and "80.0 ± 8.2% | 70.0% |" in table
  assert "| 2 | 16.0 / 90.0% | 10 | 102 |" in table.splitlines()  # per seed: step, wall
  runs = json.load(open(out))["runs"]["demo"]
  assert [r["seed"] for r in runs] == [0, 1, 2] and runs[1]["twin_acc"] == 80.0


def test_the_gap_must_hold_on_every_seed(run_seeds, tmp_path, capsys):
  for seed, (a, b) in enumerate([(20.0, 10.0), (14.0, 10.0)]):
    _finished(str(tmp_path), "demo", seed, a, 60.0)
    _finished(str(tmp_path), "demo_noswitch", seed, b, 50.0)
  argv = ["--configs", "configs/demo.py,configs/demo_noswitch.py", "--seeds", "0,1",
          "--root", str(tmp_path)]
  assert run_seeds.main(argv + ["--min_gap", "demo,demo_noswitch,4"]) == 0
  assert run_seeds.main(argv + ["--min_gap", "demo,demo_noswitch,5"]) == 1
  assert "+10.0, +4.0 (required: >= +5.0)" in capsys.readouterr().out
  assert run_seeds.main(argv + ["--markdown"]) == 0
  rows = capsys.readouterr().out.splitlines()
  assert "| 1 | 14.0 / 60.0% | 10.0 / 50.0% | +4.0 | 10 | 100 |" in rows


def test_the_json_records_command_commit_date_and_host(run_seeds, tmp_path):
  """--json writes "provenance" in the shape test_readme reads from
  RESULTS_demo_seeds.json: the command as typed, HEAD's short commit, UTC date, host."""
  _finished(str(tmp_path), "demo", 0, 20.0, 70.0)
  argv = ["--configs", "configs/demo.py", "--seeds", "0", "--root", str(tmp_path),
          "--json", str(tmp_path / "r.json")]
  assert run_seeds.main(argv) == 0
  made_by = json.load(open(tmp_path / "r.json"))["provenance"]
  assert made_by["command"] == "python benchmarks/run_seeds.py " + " ".join(argv)
  head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                        capture_output=True, text=True, check=False)
  if head.returncode == 0:
    assert made_by["commit"] == head.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{7,40}", made_by["commit"])
  else:  # a copy of the tree without .git
    assert made_by["commit"].startswith("unknown")
  assert re.fullmatch(r"20\d\d-\d\d-\d\d", made_by["date"])
  assert made_by["host"].startswith(f"{platform.node()} ({os.cpu_count()} CPUs")
