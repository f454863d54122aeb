"""Smoke runs of the benchmark scripts: each one at its smallest size, as a subprocess.

The numbers themselves are meaningless at these sizes; what is checked is that every
script still runs against the current package and prints the tables it documents, with
finite values where a measurement goes. benchmarks/run_seeds.py has its own tests
(test_run_seeds.py).

Compilation dominates these runs, so XLA's backend optimisation is turned off
(--xla_backend_optimization_level=0: the same programs, compiled in about half the time
on a CPU). XLA_FLAGS is replaced, not extended, so every script sees one CPU device.
"""

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import types

import numpy as np
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



def check_index_folder(out: str) -> None:
  rows = markdown_table(out, "### Decoding (load + eval_clip, no model)")
  assert [(r["GOP"], r["decoding path"]) for r in rows] == [
      (gop, path) for gop in ("default", "g=10") for path in (
          "in-order, 32 frames (old)", "seek, 32 frames",
          "seek, the 12 eval_clip takes (new)")], rows
  for r in rows:
    assert r["videos"] == ("2" if r["GOP"] == "default" else "1"), r
    for column in ("keyframes per clip", "Mbit/s", "videos/s", "x real time",
                   "frames decoded per video", "cores busy", "vs old"):
      positive(r[column])
  for old, new in ((rows[0], rows[2]), (rows[3], rows[5])):  # 30 frames: 1 s at 30 fps
    assert num(old["frames decoded per video"]) == 30, old
    assert num(new["frames decoded per video"]) <= 30, new
  assert "Every path gave the same eval clips, bit for bit, as the in-order one." in out
  rows = markdown_table(out, "### The model alone (encode_video, steady state)")
  assert [(r["model"], r["frames x px"], r["batch"]) for r in rows] == [
      ("tiny, bfloat16", "12 x 32", "2")], rows
  for column in ("videos/s", "x real time", "first call (compile) s"):
    positive(rows[0][column])
  rows = markdown_table(out, "### End to end (embed_source")
  assert rows[0]["videos"] == "2", rows
  for column in ("videos/s", "x real time", "vs goal (2.78 videos/s, 28x)"):
    positive(rows[0][column])
  rows = markdown_table(out, "| CPU s per video in the run |")
  assert 0 < num(rows[0]["decode share"]) <= 100, rows

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


def check_official(out: str) -> None:
  loss = re.search(r"loss at the shared weights \(float32\): official ([-\d.]+), ps_jax "
                   r"([-\d.]+), \|diff\| ([-\d.e+]+)", out)
  assert loss, out
  assert float(loss.group(3)) < 1e-4, loss.group(0)
  rows = markdown_table(out, "### Train step: official PromptCLIP vs ps_jax")
  assert [r["row"] for r in rows] == [
      "official, float32", "official, torch.autocast(bfloat16)",
      "ps_jax, float32, scan_unroll=1", "ps_jax, bfloat16, unrolled"]
  for r in rows:
    positive(r["s/step (min-max)"])
    positive(r["vs official float32"])
    positive(r["vs official autocast"])
  assert rows[0]["vs official float32"] == "1.00x"
  assert rows[1]["vs official autocast"] == "1.00x"


# A stand-in for a checkout of the official repository, for the smoke run only: the
# two modules bench_official.py imports, with the official names and interfaces
# (PromptCLIP built through CLIPConfig/CLIPModel.from_pretrained, clip_params /
# noclip_params, the forward's output keys), built on tests/torch_prompt_switch.py.
STAND_IN_PROMPT_CLIP = """
import sys
sys.path.insert(0, {tests!r})
import transformers
from torch_prompt_switch import TorchPromptSwitch

CLIPConfig = transformers.CLIPConfig
CLIPModel = transformers.CLIPModel


class PromptCLIP(TorchPromptSwitch):
  def __init__(self, config):
    hf = CLIPConfig.from_pretrained("openai/clip-vit-base-patch32")
    super().__init__(hf, config.num_prompts, config.num_captioner_layers, config.num_frames)
    fresh = CLIPModel.from_pretrained("openai/clip-vit-base-patch32", config=hf)
    fresh.vision_model.encoder.prompt_embedding = self.clip.vision_model.encoder.prompt_embedding
    fresh.vision_model.attn = self.clip.vision_model.attn
    self.clip = fresh
    new = ("prompt", "caption", "attn")
    self.clip_params = [p for n, p in self.named_parameters() if not any(k in n for k in new)]
    self.noclip_params = [p for n, p in self.named_parameters() if any(k in n for k in new)]

  def forward(self, data):
    ids, mask = data["text"]["input_ids"], data["text"]["attention_mask"]
    _, video = self.encode_video(data["video"])
    return {{"text_features": self.encode_text(ids, mask), "video_features_pooled": video,
            "pred_logits": self.caption_logits(ids, data["video"]), "input_ids": ids}}
"""
STAND_IN_METRICS = """
def sim_matrix_training(text, video, pooling_type):
  text = text / text.norm(dim=-1, keepdim=True)
  video = video / video.norm(dim=-1, keepdim=True)
  return text @ video.t()
"""


def test_bench_official_runs_against_a_stand_in_checkout(tmp_path):
  for rel, text in (("model/prompt_clip.py", STAND_IN_PROMPT_CLIP.format(
      tests=os.path.dirname(os.path.abspath(__file__)))),
                    ("modules/metrics.py", STAND_IN_METRICS)):
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_text(text, encoding="utf-8")
  check_official(run_benchmark("bench_official.py", [
      "--official_src", str(tmp_path), "--model", "tiny", "--batch", "2", "--frames", "4",
      "--num_prompts", "4", "--text_len", "8", "--caption", "--rounds", "1",
      "--steps", "1"]))


@pytest.mark.skipif(not os.environ.get("PS_JAX_OFFICIAL_SRC"),
                    reason="set PS_JAX_OFFICIAL_SRC to a checkout of the official code")
def test_bench_official_runs_against_the_official_code():
  check_official(run_benchmark("bench_official.py", [
      "--official_src", os.environ["PS_JAX_OFFICIAL_SRC"], "--model", "tiny", "--batch",
      "2", "--frames", "4", "--num_prompts", "4", "--text_len", "8", "--rounds", "1",
      "--steps", "1"]))


def test_bench_official_names_a_wrong_checkout(tmp_path):
  proc = subprocess.run([sys.executable, "benchmarks/bench_official.py", "--official_src",
                         str(tmp_path), "--model", "tiny"], cwd=REPO, capture_output=True,
                        text=True, timeout=TIMEOUT_S, check=False)
  assert proc.returncode != 0
  assert "model.prompt_clip" in proc.stderr and str(tmp_path) in proc.stderr, proc.stderr
  assert "Traceback" not in proc.stderr


def test_gpu_check_dry_run_starts_and_prints_the_goal_line(tmp_path):
  """benchmarks/gpu_check.sh --dry: every step of the GPU check, on the CPU, tiny."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHON": sys.executable,
         "XLA_FLAGS": "--xla_backend_optimization_level=0"}
  proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry", "--out", str(tmp_path)],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=TIMEOUT_S, check=False)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  assert "tests collected" in (tmp_path / "tests.log").read_text(encoding="utf-8")
  fill = (tmp_path / "fill.md").read_text(encoding="utf-8")
  assert re.search(r"fill: batch \d+ plans", fill), fill
  rows = markdown_table(fill, "### Train step")
  assert rows[0]["variant"] == "base" and positive(rows[0]["MFU"])
  rows = markdown_table((tmp_path / "vs_torch.md").read_text(encoding="utf-8"),
                        "### Train step")
  assert any(r["variant"].startswith("PyTorch CLIPModel (eager, fp32") for r in rows)
  assert any("autocast bfloat16" in r["variant"] for r in rows)
  assert re.search(r"goal \(MFU >= 45%, >= 4x PyTorch float32\): (met|NOT met)",
                   proc.stdout), proc.stdout[-2000:]


def check_prepare(out: str) -> None:
  rows = markdown_table(out, "| prepare runner |")
  assert [r["prepare runner"] for r in rows] == [
      "local, in process", "Beam DirectRunner, in memory, 1 worker"], rows
  for r in rows:
    assert r["videos"] == "4", r
    positive(r["videos/s"])


def check_search_hosts(out: str) -> None:
  rows = markdown_table(out, "| setup | devices |")
  assert [(r["setup"], r["devices"]) for r in rows] == [("1 process", "2"),
                                                        ("2 processes", "2")], rows
  for r in rows:
    for column in ("1 query p50 ms", "64 queries p50 ms", "queries/s (64)"):
      positive(r[column])
  assert "same ids and scores in both setups: True" in out


def check_moment_windows(out: str) -> None:
  rows = markdown_table(out, "| scales (W:S s) |")
  assert [r["scales (W:S s)"] for r in rows] == ["16:8", "8:4,16:8"], rows
  one, two = rows
  assert num(two["windows"]) > num(one["windows"])  # a scale more adds its windows
  for column in ("IoU>=0.3", "IoU>=0.5", "IoU>=0.7"):
    assert 0 <= num(one[column]) <= num(two[column]) <= 100  # and can only raise the ceiling
  assert num(one["IoU>=0.3"]) >= num(one["IoU>=0.5"]) >= num(one["IoU>=0.7"])
  assert "activitynet/moments test: 20 videos," in out


BENCHMARKS = [
    pytest.param("bench_index.py",
                 ["--max_videos", "2", "--batch_size", "2", "--num_workers", "1",
                  "--query_index_size", "100", "--query_batch", "2", "--budget_s", "0"],
                 check_index, id="index"),
    pytest.param("bench_index_folder.py",
                 ["--videos", "2", "--short_gop_videos", "1", "--short_gop", "10",
                  "--seconds", "1", "--width", "96", "--height", "54", "--short_side", "36",
                  "--model", "tiny", "--batch_size", "2", "--model_calls", "1",
                  "--gen_workers", "0"],
                 check_index_folder, id="index_folder"),
    pytest.param("bench_matmul.py",
                 ["--rows", "64", "--width", "32", "--inner", "64", "--reps", "1"],
                 check_matmul, id="matmul"),
    pytest.param("bench_moment_windows.py", ["--max_videos", "20", "--scales", "16:8;8:4,16:8"],
                 check_moment_windows, id="moment_windows"),
    pytest.param("bench_pipeline.py",
                 ["--clips", "2", "--stored_short_side", "64", "--frames_per_video", "4",
                  "--image_size", "32", "--num_frames", "2", "--num_prompts", "2",
                  "--batch", "2", "--batches", "1", "--workers", "0",
                  "--prepare_workers", "0"],
                 check_pipeline, id="pipeline"),
    pytest.param("bench_prepare.py",
                 ["--videos", "4", "--size", "32", "--frames", "4", "--variants",
                  "local,beam", "--markdown"],
                 check_prepare, id="prepare"),
    pytest.param("bench_search_hosts.py",
                 ["--rows", "2000", "--dim", "16", "--calls", "2", "--markdown"],
                 check_search_hosts, id="search_hosts"),
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
ELSEWHERE = {"bench_serve.py": ("test_serve.py", "def test_bench_serve_runs_end_to_end("),
             "bench_official.py": ("test_benchmarks.py",
                                   "def test_bench_official_runs_against_a_stand_in_checkout("),
             "bench_moments.py": ("test_benchmarks.py",
                                  "def test_bench_moments_runs_on_a_tiny_model(")}


def test_every_benchmark_script_is_smoke_tested():
  scripts = {f for f in os.listdir(os.path.join(REPO, "benchmarks"))
             if f.startswith("bench_") and f.endswith(".py")}
  assert scripts == {p.values[0] for p in BENCHMARKS} | set(ELSEWHERE)
  for test_file, test in ELSEWHERE.values():
    with open(os.path.join(REPO, "tests", test_file), encoding="utf-8") as f:
      assert test in f.read(), (test_file, test)


def test_bench_storage_results_file_records_command_commit_date_and_host(tmp_path):
  """--results writes what test_readme looks for beside a table the docs quote: the
  command and `Commit: ...; date: ...; host: ...` (write_results alone, nothing measured)."""
  spec = importlib.util.spec_from_file_location(
      "bench_storage", os.path.join(REPO, "benchmarks", "bench_storage.py"))
  bench_storage = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench_storage)
  made_by = bench_storage.provenance.record("bench_storage.py", ["--results", "r.md"])
  row = "| raw | 6 | 0.10 MB | 1.00 | 100 | exact |"
  bench_storage.write_results(str(tmp_path / "r.md"), 6,
                              types.SimpleNamespace(width=320, height=180, rate=12), [row],
                              made_by)
  lines = (tmp_path / "r.md").read_text().splitlines()
  assert "`python benchmarks/bench_storage.py --results r.md`" in lines
  commit = next(l for l in lines if l.startswith("Commit: "))
  assert re.fullmatch(r"Commit: .+; date: 20\d\d-\d\d-\d\d; host: \S.*", commit), commit
  assert row in lines



def _load_benchmark(script: str) -> types.ModuleType:
  """benchmarks/<script> imported as a module (nothing runs: main is not called)."""
  name = os.path.splitext(script)[0]
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "benchmarks", script))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_bench_index_folder_clips_move_and_a_changed_clip_aborts_the_run():
  bench = _load_benchmark("bench_index_folder.py")
  frames = bench.make_frames(0, 0.2, 30, 64, 36)
  assert frames.shape == (6, 36, 64, 3) and frames.dtype == "uint8"
  assert all((a != b).mean() > 0.1 for a, b in zip(frames, frames[1:]))  # motion
  assert (frames == bench.make_frames(0, 0.2, 30, 64, 36)).all()  # seeded
  clips = np.zeros((2, 12, 4, 4, 3), np.uint8)
  bench.check_same_clips(clips, clips.copy(), ["a", "b"], "new")
  changed = clips.copy()
  changed[1, 5, 0, 0, 0] = 3
  with pytest.raises(SystemExit, match="ABORT: new: the eval clip of b differs"):
    bench.check_same_clips(clips, changed, ["a", "b"], "new")

def test_profile_step_prints_thunk_costs_by_category(tmp_path):
  out = run_benchmark("profile_step.py",
                      ["--model", "tiny", "--batch", "2", "--frames", "2", "--text_len", "8",
                       "--num_prompts", "2", "--steps", "1", "--top", "5",
                       "--variant", "dtype=bfloat16,scan_unroll=0",
                       "--json", str(tmp_path / "p.json")])
  profiles = json.loads((tmp_path / "p.json").read_text())
  assert list(profiles) == ["base (dtype=float32, scan_unroll=1)",
                            "dtype=bfloat16, scan_unroll=full"]
  for label, p in profiles.items():
    assert f"### {label}:" in out
    assert p["thunk_ms_per_step"] > 0 and p["categories"]["matmul fusion"] > 0, p
    busy = sum(ms for c, ms in p["categories"].items() if c != "loop control")
    assert abs(busy - p["thunk_ms_per_step"]) < 1e-6 * busy + 1e-9
    assert all(t["shape"] for t in p["top"])  # every thunk found in the compiled HLO
  rows = markdown_table(out, "| top thunks |")
  assert len(rows) == 5 and all(num(r["ms/step"]) >= 0 for r in rows)
  assert num(rows[0]["ms/step"]) > 0


def check_moments(out: str) -> None:
  assert re.search(r"^2 long videos of 4 events each, 8\.0 s per video on average, 16\.0 s",
                   out, re.M), out
  percent = lambda cell: 0 <= num(cell) <= 100
  for marker, extra in (("### Within the query's own video", ["mIoU"]),
                        ("### Over the whole corpus",
                         [f"R@{n} IoU=0.5, any event so described" for n in (1, 5)])):
    rows = markdown_table(out, marker)
    assert [r["config"] for r in rows] == ["`demo`", "chance (random scores)"], rows
    for r in rows:
      for n in (1, 5):
        for m in (0.3, 0.5, 0.7):
          assert percent(r[f"R@{n} IoU={m}"]), r
        assert all(percent(r[c]) for c in extra), r
      assert num(r["R@1 IoU=0.7"]) <= num(r["R@1 IoU=0.3"]) <= num(r["R@5 IoU=0.3"]), r
  rows = markdown_table(out, "### Order: the time-reversed twin")
  assert all(percent(c) for r in rows for k, c in r.items() if k not in ("config", "seeds"))
  rows = markdown_table(out, "### Per seed")
  assert [(r["config"], r["seed"]) for r in rows] == [("`demo`", "0")], rows
  assert re.search(r"lists with fewer than k=5 moments per seed `demo` \[\d+\]", out), out
  rows = markdown_table(out, "### Window and stride")
  assert [(r["W s"], r["S s"], r["rows"]) for r in rows] == [("2", "1", "14")], rows
  rows = markdown_table(out, "### Costs")
  assert [r["index"] for r in rows] == ["windows W=2 s, S=1 s, 2 videos",
                                        "whole videos, 2 videos"], rows
  assert [r["rows"] for r in rows] == ["14", "2"], rows
  for r in rows:
    for column in ("rows per hour of video", "index bytes per hour of video", "videos/s",
                   "x real time", "process wall s"):
      positive(r[column])
  rows = markdown_table(out, "### Query latency at 2,000 window rows")
  assert rows[0]["rows"] == "2,000" and rows[0]["k (rows fetched)"] == "10 (40)", rows
  for column in ("search_moments p50 ms", "Searcher.search p50 ms", "distinct p50 ms"):
    positive(rows[0][column])


def test_bench_moments_runs_on_a_tiny_model(tmp_path):
  """Two long videos of four tiny moving_shapes events, a random tiny HF CLIP as the one
  model (ROOT/demo/seed0), one (W, S), costs without the copied folder, 2,000 rows."""
  from test_folder_index import write_folder_model  # pylint: disable=import-outside-toplevel
  write_folder_model(str(tmp_path / "root" / "demo" / "seed0"))
  results = tmp_path / "moments.md"
  out = run_benchmark("bench_moments.py", [
      "--root", str(tmp_path / "root"), "--configs", "demo", "--seeds", "0", "--work",
      str(tmp_path / "work"), "--size", "tiny", "--videos", "2", "--events", "4",
      "--event_s", "2", "--event_jitter", "0", "--fps", "4", "--window", "2:1", "--sweep", "2:1",
      "--cost_copies", "0", "--latency_rows", "2000", "--latency_calls", "2",
      "--index_args=--num_prompts 2 --num_frames 4 --tokenizer moving_shapes "
      "--batch_size 2 --num_workers 1", "--results", str(results)])
  check_moments(out)
  lines = results.read_text(encoding="utf-8").splitlines()
  assert lines[2].startswith("`python benchmarks/bench_moments.py --root "), lines[:3]
  commit = next(l for l in lines if l.startswith("Commit: "))
  assert re.fullmatch(r"Commit: .+; date: 20\d\d-\d\d-\d\d; host: \S.*", commit), commit
  assert any(l.startswith("Load averages (1, 5, 15 min): ") and "jax " in l for l in lines)
  check_moments("\n".join(lines))
