"""README.md's two Quickstart commands are the ones CI and users run."""

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
