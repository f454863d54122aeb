"""README.md's two Quickstart commands are the ones CI and users run."""

import json
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quickstart_commands():
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    text = f.read()
  section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
  return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_ci_runs_exactly_the_readme_test_command():
  demo, tests = _quickstart_commands()
  with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as f:
    ci_lines = [l for l in f.read().splitlines() if l and not l.startswith("#")]
  assert ci_lines[-1] == tests
  assert "pytest -q tests" in tests


def test_both_commands_make_and_use_a_virtual_environment():
  for command in _quickstart_commands():
    steps = command.split(" && ")
    assert steps[0] == "python3 -m venv .venv", command
    assert all(s.startswith(".venv/bin/") for s in steps[1:]), command
  demo = _quickstart_commands()[0]
  assert "-m ps_jax.main --config configs/demo.py" in demo


def test_demo_table_is_the_recorded_five_seed_run(run_seeds):
  """README's demo tables are benchmarks/run_seeds.py's output for the configs as they
  are now, and README's sentences about them name exactly the seeds where they hold."""
  with open(os.path.join(REPO, "benchmarks", "RESULTS_demo_seeds.json"), encoding="utf-8") as f:
    recorded = json.load(f)
  assert recorded["seeds"] == [0, 1, 2, 3, 4] and recorded["extra_args"] == []
  names = ["demo", "demo_noswitch", "demo_meanpool"]
  assert list(recorded["summary"]) == names
  for name in names:  # the recorded runs used the configs as committed
    assert recorded["config_sha256"][name] == run_seeds.config_digest(
        os.path.join(REPO, "configs", f"{name}.py")), f"configs/{name}.py changed: rerun"
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  for row in (run_seeds.markdown_rows(recorded["summary"])
              + run_seeds.markdown_seed_rows(recorded["runs"])):
    assert row in readme, row
  runs = recorded["runs"]
  demo = {r["seed"]: r for r in runs["demo"]}
  noswitch = {r["seed"]: r for r in runs["demo_noswitch"]}
  # "The switched model learns the direction of motion on 4 seeds of 5 (twin accuracy
  # 70-75% on seeds 0, 1, 3, 4) ... On seed 2 [it] never left the ... saddle".
  learnt = {s for s, r in demo.items() if r["twin_acc"] >= 60.0}
  assert learnt == {0, 1, 3, 4}
  assert all(69.5 <= demo[s]["twin_acc"] <= 75.0 for s in learnt)
  assert abs(demo[2]["twin_acc"] - 50.0) < 1.0
  # "no-switch and mean pooling stay at 50% on all five."
  assert all(abs(r["twin_acc"] - 50.0) < 1.0 for r in runs["demo_noswitch"])
  assert all(r["twin_acc"] == 50.0 for r in runs["demo_meanpool"])
  # "It beats no-switch by at least 5 t2v R@1 points on seeds 1, 3 and 4 only."
  margin = {s: demo[s]["t2v_R@1"] - noswitch[s]["t2v_R@1"] for s in demo}
  assert {s for s, m in margin.items() if m >= 5.0} == {1, 3, 4}
  # "A demo run took 283-316 s ... (seed 4: 388 s, beside a profiling job)."
  walls = sorted(round(r["wall_s"]) for r in runs["demo"])
  assert walls == [283, 302, 315, 316, 388]
