"""The package's import rule: one direction, down the layers of `.importlinter`.

front ends (main, index_videos, search, serve, data.prepare) > the search service
(retrieval.service) > jobs (train, evaluate, retrieval.build, retrieval.query) > assembly (experiment, embed, train_step,
retrieval.model, retrieval.sources) > model loading (api) > formats (convert,
checkpoints) > foundation. No module imports `ps_jax.train` but `ps_jax.main`, none
imports a command-line module, and no function imports the package lazily.
"""

import ast
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ps_jax"
MAX_LINES = 460
CLI_MODULES = ("ps_jax.main", "ps_jax.index_videos", "ps_jax.search", "ps_jax.serve",
               "ps_jax.data.prepare")


def _lint(root: pathlib.Path) -> subprocess.CompletedProcess:
  """lint-imports with the repository's contracts on the package copy under `root`."""
  env = {**os.environ, "PYTHONPATH": str(root)}
  return subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import "
                         "lint_imports; sys.exit(lint_imports(config_filename=sys.argv[1], "
                         "no_cache=True, no_logo=True))", str(REPO / ".importlinter")],
                        cwd=str(root), env=env, capture_output=True, text=True, timeout=300)


def test_the_import_contracts_hold():
  proc = _lint(REPO)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
  assert "3 kept, 0 broken" in proc.stdout


# The back-edges the layout removed: each, put back, breaks a contract.
BACK_EDGES = [
    ("retrieval/build.py", "from ps_jax import train"),            # a job runs the trainer
    ("index_videos.py", "from ps_jax import train"),               # a CLI runs the trainer
    ("retrieval/query.py", "from ps_jax.retrieval import build"),  # search <- indexing job
    ("search.py", "from ps_jax import index_videos"),              # CLI <- CLI
    ("checkpoints.py", "from ps_jax import api"),                  # format <- loading
    ("experiment.py", "from ps_jax import evaluate"),              # assembly <- job
    ("data/builders.py", "from ps_jax.data import pipeline"),      # inside data
    ("retrieval/service.py", "from ps_jax import serve"),          # service <- web front end
    ("retrieval/query.py", "from ps_jax.retrieval import service"),  # job <- service
    ("retrieval/media.py", "from ps_jax.retrieval import store"),  # media <- index format
]


@pytest.mark.parametrize("module,line", BACK_EDGES)
def test_each_removed_back_edge_would_break_a_contract(tmp_path, module, line):
  shutil.copytree(PACKAGE, tmp_path / "ps_jax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  target = tmp_path / "ps_jax" / module
  source = target.read_text()
  marker = "from __future__ import annotations\n"
  assert marker in source
  target.write_text(source.replace(marker, marker + line + "\n", 1))
  proc = _lint(tmp_path)
  assert proc.returncode != 0, proc.stdout[-2000:]
  assert "BROKEN" in proc.stdout


def _python_files(root: pathlib.Path):
  return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_function_imports_the_package_lazily():
  lazy = []
  for path in _python_files(PACKAGE):
    tree = ast.parse(path.read_text(), str(path))
    for func in ast.walk(tree):
      if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
        continue
      for node in ast.walk(func):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        if any(n == "ps_jax" or n.startswith("ps_jax.") for n in names):
          lazy.append(f"{path.relative_to(REPO)}:{node.lineno}")
  assert not lazy, lazy


def test_benchmarks_and_launch_use_the_library_not_the_trainer_or_a_cli():
  offenders = []
  for path in _python_files(REPO / "benchmarks") + _python_files(REPO / "launch"):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.ImportFrom) and node.module:
        names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
      elif isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      else:
        continue
      if any(n == "ps_jax.train" or n in CLI_MODULES for n in names):
        offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
  assert not offenders, offenders


def test_no_package_module_is_a_kitchen_sink():
  sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines())
           for p in _python_files(PACKAGE)}
  assert max(sizes.values()) <= MAX_LINES, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


def test_every_module_docstring_names_its_layer():
  """README's layout promise: every module of the package says which layer it is in."""
  missing = []
  for path in sorted(PACKAGE.rglob("*.py")):
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    if "\nLayer: " not in "\n" + doc:
      missing.append(str(path.relative_to(REPO)))
  assert not missing, f"no 'Layer: ...' line in the docstring of {missing}"


def test_the_old_module_names_are_gone():
  for name in ("evaluation.py", "index.py"):
    assert not (PACKAGE / name).exists(), name
  for cli in ("search.py", "index_videos.py"):
    assert "re-export" not in (PACKAGE / cli).read_text(encoding="utf-8"), cli
