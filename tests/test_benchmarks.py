"""Smoke runs of the benchmark scripts: each one at its smallest size, as a subprocess.

The numbers themselves are meaningless at these sizes; what is checked is that every
script still runs against the current package and prints the tables it documents, with
finite values where a measurement goes. benchmarks/run_seeds.py has its own tests
(test_run_seeds.py).

Compilation dominates these runs, so XLA's backend optimisation is turned off
(--xla_backend_optimization_level=0: the same programs, compiled in about half the time
on a CPU). XLA_FLAGS is replaced, not extended, so every script sees one CPU device.
"""

import math
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 600

_NUMBER = re.compile(r"\s*([-+]?(?:inf|nan|\d[\d,]*(?:\.\d*)?(?:[eE][-+]?\d+)?))")


def run_benchmark(script: str, args: list[str]) -> str:
  """Runs benchmarks/<script> with `args` from the repository root; returns its stdout."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_backend_optimization_level=0"}
  proc = subprocess.run([sys.executable, os.path.join("benchmarks", script), *args],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=TIMEOUT_S, check=False)
  assert proc.returncode == 0, (
      f"{script} exited with {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
      f"\n--- stderr\n{proc.stderr[-4000:]}")
  return proc.stdout


def num(cell: str) -> float:
  """The number a table cell starts with: '1,000' -> 1000, '0.025 (0.02-0.03)' -> 0.025,
  '2.73x' -> 2.73, '1.11MB' -> 1.11, 'inf' -> inf."""
  match = _NUMBER.match(cell)
  assert match, f"no number in table cell {cell!r}"
  return float(match.group(1).replace(",", ""))


def positive(cell: str) -> float:
  value = num(cell)
  assert math.isfinite(value) and value > 0, f"expected a finite positive number: {cell!r}"
  return value


def markdown_table(text: str, marker: str) -> list[dict[str, str]]:
  """Rows ({header: cell}) of the first markdown table at or after the first line that
  contains `marker`."""
  lines = text.splitlines()
  start = next((i for i, line in enumerate(lines) if marker in line), None)
  assert start is not None, f"{marker!r} not in the output:\n{text}"
  head = next(i for i in range(start, len(lines)) if lines[i].startswith("|"))
  cells = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]
  header = cells(lines[head])
  assert re.fullmatch(r"\|(\s*-+:?\s*\|)+", lines[head + 1].replace(" ", "")), lines[head + 1]
  rows = []
  for line in lines[head + 2:]:
    if not line.startswith("|"):
      break
    row = cells(line)
    assert len(row) == len(header), f"row {line!r} does not match header {header}"
    rows.append(dict(zip(header, row)))
  assert rows, f"the table after {marker!r} has no rows:\n{text}"
  return rows


def plain_table(text: str, header_start: str) -> tuple[list[str], list[list[str]]]:
  """(header words, rows of whitespace-separated cells) of a fixed-width table whose
  header line starts with `header_start`, up to the first line that is not a row."""
  lines = text.splitlines()
  head = next((i for i, line in enumerate(lines) if line.startswith(header_start)), None)
  assert head is not None, f"no line starting with {header_start!r}:\n{text}"
  rows = []
  for line in lines[head + 1:]:
    if set(line.strip()) == {"-"}:
      continue
    if not line.strip() or line.startswith("("):
      break
    rows.append(line.replace("|", " ").split())
  assert rows, f"the table under {header_start!r} has no rows:\n{text}"
  return lines[head].split(), rows


# ----------------------------------------------------------------------------- checks


def check_index(out: str) -> None:
  rows = markdown_table(out, "| model, videos from |")
  assert [r["model, videos from"] for r in rows] == [
      "demo (configs/demo.py), prepared split",
      "demo (configs/demo.py), raw .mp4 (PyAV decode)"]
  for r in rows:
    assert r["frames x px"] == "4 x 32" and r["videos"] == "2", r
    positive(r["videos/s"])
    positive(r["first run videos/s (incl. compile*)"])
  rows = markdown_table(out, "| queries per call |")
  assert [r["queries per call"] for r in rows] == ["1", "2"]
  for r in rows:
    assert positive(r["p50 (ms)"]) <= positive(r["p95 (ms)"]), r


def check_matmul(out: str) -> None:
  rows = markdown_table(out, "| matmul | operands |")
  assert len(rows) == 9, rows  # 3 matmuls x 3 dtype forms
  assert {r["matmul"] for r in rows} == {"forward x @ w", "backward g @ w^T",
                                         "backward x^T @ g"}
  assert {(r["operands"], r["result"]) for r in rows} == {
      ("float32", "float32"), ("bfloat16", "float32"), ("bfloat16", "bfloat16")}
  for r in rows:
    positive(r["ms"])
    assert math.isfinite(num(r["GFLOP/s"])), r
  rows = markdown_table(out, "| patch embedding (12 x 224px, patch 32) |")
  assert [r["patch embedding (12 x 224px, patch 32)"] for r in rows] == [
      "strided convolution", "patches @ kernel"]
  for r in rows:
    positive(r["ms"])
    positive(r["GFLOP/s"])


def check_pipeline(out: str) -> None:
  assert re.search(r"^prepare: 2 videos with 0 decode workers", out, re.M), out
  assert re.search(r"^stored: [\d.]+ MiB/video raw uint8", out, re.M), out
  header, rows = plain_table(out, "workers |")
  assert header[:2] == ["workers", "|"] and "frames/s" in header, header
  assert [r[0] for r in rows] == ["0"], rows
  workers, warmup, batches_per_s, frames_per_s, per_process = map(num, rows[0])
  assert workers == 0 and warmup >= 0, rows
  for value in (batches_per_s, frames_per_s, per_process):
    assert math.isfinite(value) and value > 0, rows
  assert frames_per_s == pytest.approx(batches_per_s * 2 * 2, rel=0.01)  # batch x frames


def check_search(out: str) -> None:
  rows = markdown_table(out, "| N | method |")
  methods = [r["method"] for r in rows]
  assert methods[:3] == ["ps_jax exact (float32)",
                         "ps_jax approx (float32, recall_target 0.95)",
                         "numpy matmul + argpartition (float32)"], methods
  for r in rows:
    assert r["N"] == "1,000", r
    for column in ("1 query p50 (ms)", "4 queries p50 (ms)", "queries/s (batches of 4)"):
      positive(r[column])
    assert 0 <= num(r["recall@10 vs numpy"]) <= 1, r
  recall = {r["method"]: num(r["recall@10 vs numpy"]) for r in rows}
  assert recall["numpy matmul + argpartition (float32)"] == 1.0
  assert recall["ps_jax exact (float32)"] >= 0.99


def check_storage(out: str) -> None:
  assert re.search(r"^generated clip: 6 frames, 320x180 at 12 fps", out, re.M), out
  header, rows = plain_table(out, "storage ")
  assert header == ["storage", "frames", "bytes/video", "prepare", "v/s", "pipeline", "f/s",
                    "PSNR", "dB"], header
  assert [r[0] for r in rows] == ["raw", "jpeg90", "raw", "jpeg90"], rows
  for label, frames, size, prepare, pipe, psnr in rows:
    assert frames == "6" and size.endswith("MB"), (label, frames, size)
    for value in (size, prepare, pipe):
      positive(value)
    if label == "raw":
      assert num(psnr) == math.inf
    else:
      assert 20 < num(psnr) < math.inf, psnr


def _ours_then_pytorch(rows, ours: str, pytorch_prefix: str, columns) -> None:
  assert rows[0]["variant"] == ours, rows
  assert rows[1]["variant"].startswith(pytorch_prefix), rows
  for r in rows:
    for column in columns:
      positive(r[column])


def check_train(out: str) -> None:
  assert "model tiny (32px, patch 8), batch 2 videos x 2 frames = 4 images, P=2" in out
  rows = markdown_table(out, "### Matmul peak")
  assert [(r["dtype"], r["size"]) for r in rows] == [("float32", "128")]
  assert math.isfinite(num(rows[0]["TFLOP/s"]))
  rows = markdown_table(out, "### Model FLOPs per train step")
  assert [r["P"] for r in rows] == ["2"]
  positive(rows[0]["train (x3)"])
  positive(rows[0]["XLA / analytic"])  # --xla_count lowered: counted, not "n/a"
  _ours_then_pytorch(markdown_table(out, "### Train step"), "base",
                     "PyTorch CLIPModel (eager, fp32", ("s/step (min-max)", "frames/s",
                                                        "ps_jax / PyTorch"))
  _ours_then_pytorch(markdown_table(out, "### Eval / index forward"), "base options",
                     "PyTorch vision tower", ("s/batch", "frames/s"))
  rows = markdown_table(out, "### Host input pipeline vs train step")
  assert [r["grain workers"] for r in rows] == ["0"]
  positive(rows[0]["pipeline frames/s"])
  assert rows[0]["limiting"] in ("pipeline", "train step")


def check_vision(out: str) -> None:
  rows = markdown_table(out, "| scan unroll | remat |")
  assert [(r["scan unroll"], r["remat"]) for r in rows] == [
      ("rolled (1)", "none"), ("rolled (1)", "full"), ("unrolled (2)", "none"),
      ("unrolled (2)", "full")]
  for r in rows:
    assert math.isfinite(num(r["s/step"])), r
    positive(r["frames/s"])


BENCHMARKS = [
    pytest.param("bench_index.py",
                 ["--max_videos", "2", "--batch_size", "2", "--num_workers", "1",
                  "--query_index_size", "100", "--query_batch", "2", "--budget_s", "0"],
                 check_index, id="index"),
    pytest.param("bench_matmul.py",
                 ["--rows", "64", "--width", "32", "--inner", "64", "--reps", "1"],
                 check_matmul, id="matmul"),
    pytest.param("bench_pipeline.py",
                 ["--clips", "2", "--stored_short_side", "64", "--frames_per_video", "4",
                  "--image_size", "32", "--num_frames", "2", "--num_prompts", "2",
                  "--batch", "2", "--batches", "1", "--workers", "0",
                  "--prepare_workers", "0"],
                 check_pipeline, id="pipeline"),
    pytest.param("bench_search.py",
                 ["--sizes", "1k", "--dim", "16", "--batch", "4", "--budget_s", "0",
                  "--min_calls", "1", "--max_calls", "2"],
                 check_search, id="search"),
    pytest.param("bench_storage.py",
                 ["--seconds", "0.5", "--rate", "12", "--width", "320", "--height", "180",
                  "--copies", "1", "--batches", "1", "--qualities", "90"],
                 check_storage, id="storage"),
    pytest.param("bench_train.py",
                 ["--model", "tiny", "--frames", "2", "--batch", "2", "--num_prompts", "2",
                  "--text_len", "8", "--sweep", "none", "--rounds", "1", "--steps", "1",
                  "--matmul_size", "128", "--xla_count", "lowered", "--torch",
                  "--pipeline", "--pipeline_workers", "0", "--pipeline_clips", "2",
                  "--pipeline_batches", "1"],
                 check_train, id="train"),
    pytest.param("bench_vision.py", ["--model", "tiny", "--batch", "1", "--steps", "1"],
                 check_vision, id="vision"),
]


@pytest.mark.parametrize("script, args, check", BENCHMARKS)
def test_benchmark_runs_at_smallest_size(script, args, check):
  check(run_benchmark(script, args))


# Smoke-tested where their fixtures are (a trained model): script -> (test file, test).
ELSEWHERE = {"bench_serve.py": ("test_serve.py", "def test_bench_serve_runs_end_to_end(")}


def test_every_benchmark_script_is_smoke_tested():
  scripts = {f for f in os.listdir(os.path.join(REPO, "benchmarks"))
             if f.startswith("bench_") and f.endswith(".py")}
  assert scripts == {p.values[0] for p in BENCHMARKS} | set(ELSEWHERE)
  for test_file, test in ELSEWHERE.values():
    with open(os.path.join(REPO, "tests", test_file), encoding="utf-8") as f:
      assert test in f.read(), (test_file, test)
