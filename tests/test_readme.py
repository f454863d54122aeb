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
  # "The switched model learns all three directions ... on every seed: 98.1-100% twin
  # accuracy."
  assert min(round(r["twin_acc"], 1) for r in demo.values()) == 98.1
  # "No-switch learns part of the order on every seed and no more (70.8-75.8% ...)".
  twins = [round(r["twin_acc"], 1) for r in noswitch.values()]
  assert (min(twins), max(twins)) == (70.8, 75.8)
  assert all(demo[s]["twin_acc"] > noswitch[s]["twin_acc"] for s in demo)
  # "beats no-switch by at least 5 points on every seed (+11.2 to +18.5)".
  margin = [demo[s]["t2v_R@1"] - noswitch[s]["t2v_R@1"] for s in range(5)]
  assert min(margin) >= 5.0
  assert (round(min(margin), 1), round(max(margin), 1)) == (11.2, 18.5)
  # "Mean pooling scores a clip and its twin exactly alike (50% on every seed".
  assert all(r["twin_acc"] == 50.0 for r in runs["demo_meanpool"])
  # "Time. A demo run took A-B s wall ...; no-switch C-D s, mean pooling E-F s": each
  # run <= 5 minutes.
  assert all(r["wall_s"] <= 300 for name in names for r in runs[name])
  sentence = " ".join(readme.split("**Time.** A demo run took", 1)[1].split()[:40])
  spans = [f"{min(w)}-{max(w)} s" for w in (
      [round(r["wall_s"]) for r in runs[name]] for name in names)]
  assert sentence.startswith(f"{spans[0]} wall"), sentence
  assert f"no-switch {spans[1]}, mean pooling {spans[2]}." in sentence, sentence


def _read(*path):
  with open(os.path.join(REPO, *path), encoding="utf-8") as f:
    return f.read()


def test_measured_tables_are_quoted_from_their_results_files():
  """README's storage rows are the rows bench_storage.py wrote, the search rows those of
  bench_search.py, the indexing figures those of bench_index.py (training split)."""
  readme = _read("README.md")
  storage = [l for l in _read("benchmarks", "RESULTS_storage.md").splitlines()
             if l.startswith(("| raw ", "| JPEG "))]
  assert len(storage) == 5 and all(row in readme.splitlines() for row in storage)
  search = _read("benchmarks", "RESULTS_search.md")
  kept = {}
  for line in search.splitlines():
    cells = [c.strip() for c in line.strip("|").split("|")]
    if len(cells) == 8 and cells[0][:1].isdigit():
      kept[(cells[0], cells[1].split(" (")[0])] = (cells[2], cells[4], cells[6])
  quoted = [[c.strip() for c in l.strip("|").split("|")] for l in readme.splitlines()
            if re.match(r"\| [\d,]+ \| (ps_jax|numpy|faiss)", l)]
  assert len(quoted) == 9
  for n, method, one, batch, qps in quoted:
    assert kept[(n, method)] == (one, batch, qps), (n, method)
  index = re.search(r"\| demo \(configs/demo.py\), prepared split \| 4 x 32 \| (\d+) \| "
                    r"([\d.]+) \|.*\n\| demo \(configs/demo.py\), raw .mp4 \(PyAV decode\) "
                    r"\| 4 x 32 \| (\d+) \| ([\d.]+) \|", search)
  videos, decoded, raw_videos, raw = index.groups()
  assert videos == raw_videos == "384"  # bench_index.py's default: the training split
  sentence = " ".join(readme.split("Indexing the demo's training split", 1)[1].split()[:30])
  assert f"{float(decoded):,.0f} videos/s from pre-decoded frames" in sentence
  assert f"{float(raw):,.0f} videos/s from raw .mp4" in sentence


def test_serve_table_is_quoted_from_its_results_file():
  kept = [l for l in _read("benchmarks", "RESULTS_serve.md").splitlines() if l.startswith("|")]
  assert len(kept) == 5
  lines = _read("README.md").splitlines()
  start = lines.index(kept[0])
  assert lines[start:start + 5] == kept
  assert os.path.exists(os.path.join(REPO, "docs", "search_page.jpg"))


def test_launch_readme_memory_table_is_the_kept_measurement():
  kept = [l for l in _read("benchmarks", "RESULTS_memory.md").splitlines()
          if l.startswith("| ViT-B/32 |")]
  assert len(kept) == 4
  launch = _read("launch", "README.md").splitlines()
  assert all(row in launch for row in kept)


def test_official_comparison_table_is_quoted_from_its_results_file():
  """README's table against the official code is bench_official.py's, as recorded."""
  perf = _read("benchmarks", "RESULTS_perf.md")
  section = perf.split("## ViT-B/32: ps_jax against the official PromptCLIP", 1)[1]
  lines = section.split("\n## ", 1)[0].splitlines()
  first = next(i for i, l in enumerate(lines) if l.startswith("|"))
  kept = lines[first:first + 8]  # the first table: header, rule, 2 official, 4 ps_jax rows
  assert all(l.startswith("|") for l in kept) and not lines[first + 8].startswith("|")
  lines = _read("README.md").splitlines()
  start = lines.index(kept[0])
  assert lines[start:start + 8] == kept
  rows = {l.split("|")[1].strip(): l for l in kept[2:]}
  # "float32 runs at 0.96x ...; bfloat16 ... 1.84x ... and 1.05x ... autocast"
  assert "| 0.96x |" in rows["ps_jax, float32, scan_unroll=1"]
  assert "| 1.84x | 1.05x |" in rows["ps_jax, bfloat16, unrolled"]


def test_scale_tables_are_quoted_from_their_results_file():
  """README's prepare (local vs Beam) and multi-process search tables are those of
  benchmarks/RESULTS_scale.md, and the sentences after them are computed from them."""
  scale = _read("benchmarks", "RESULTS_scale.md")
  sizes = [[float(c) for c in l.strip("|").split("|")] for l in scale.splitlines()
           if re.match(r"\| (16|128) \|", l)]
  (n0, local0, _, extra0), (n1, local1, _, extra1) = sizes
  per_video, fixed = (extra1 - extra0) / (n1 - n0), extra0 - n0 * (extra1 - extra0) / (n1 - n0)
  claim = (f"a fixed {fixed:.1f} s and {1e3 * per_video:.0f} ms more per video here, "
           f"against {1e3 * local1 / n1:.0f} ms per video")
  assert claim in " ".join(scale.split())
  readme_claim = (f"a fixed {fixed:.1f} s (building and running two pipelines, staging "
                  f"the results) and {1e3 * per_video:.0f} ms per video")
  assert readme_claim in " ".join(_read("README.md").split())
  kept = [l for l in scale.splitlines() if l.startswith("|") and "Beam extra" not in l
          and not re.match(r"\|(---:\|)+$", l) and not re.match(r"\| (16|128) \|", l)]
  assert len(kept) == 10  # 2 header lines + 4 prepare rows, 2 + 2 search rows
  readme = _read("README.md")
  lines = readme.splitlines()
  for table in (kept[:6], kept[6:]):
    start = lines.index(table[0])
    assert lines[start:start + len(table)] == table
  rate = {l.split("|")[1].strip(): float(l.split("|")[4]) for l in kept[2:6]}
  ratio = rate["Beam DirectRunner, in memory, 1 worker"] / rate["local, in process"]
  assert f"in memory prepares at {ratio:.2f}x the local in-process rate" in readme
  one, two = ([float(c) for c in l.split("|")[3:7]] for l in kept[8:10])
  assert f"costs {two[1] - one[1]:.1f} ms per query call" in readme
  assert f"{100 * (two[2] - one[2]) / one[2]:.0f}% of a 64-query batch" in readme
  assert "same ids and scores in both setups: True" in _read("benchmarks",
                                                             "RESULTS_scale.md")


def test_profile_shares_are_quoted_from_the_recorded_profile():
  perf = _read("benchmarks", "RESULTS_perf.md")
  rows = {l.split("|")[1].strip().split(" (")[0]: [c.strip() for c in l.split("|")[2:6]]
          for l in perf.split("## Where the ViT-B/32 step's time goes", 1)[1].splitlines()
          if l.startswith("| ") and "%" in l}
  f32_copy, bf16_copy = rows["copy"][1], rows["copy"][3]
  f32_matmul = rows["matmul fusion"][1]
  readme = " ".join(_read("README.md").split())
  assert (f"{f32_copy} of the float32 step's thunk time is copies ({f32_matmul} is "
          "matmuls)") in readme
  assert f"(bfloat16 unrolled: {bf16_copy} copies)" in readme


def test_tpu_compile_table_is_quoted_from_its_results_file():
  """README's and launch/README's slice tables are benchmarks/tpu_compile_table.py's, as
  recorded with its command, commit, date and compiler versions; every compiled row fits
  its chip (and says whether one more video per chip was compiled and refused)."""
  kept_text = _read("benchmarks", "RESULTS_tpu_compile.md")
  for field in ("Command: `python benchmarks/tpu_compile_table.py", "Commit: ", "date: 20",
                "jax 0.", "libtpu 0."):
    assert field in kept_text, field
  kept = [l for l in kept_text.splitlines() if l.startswith("|")]
  rows = kept[2:]
  assert len(rows) == 9
  compiled = [r for r in rows if "not compiled" not in r]
  assert compiled
  for r in compiled:
    cells = [c.strip() for c in r.strip("|").split("|")]
    assert ("fsdp=1" in cells[2]) == cells[1].startswith("ViT-B"), r
    assert re.search(r"\*\*\d+\*\* \(\d+; \d+: (refused|not tried)\)", cells[4]), r
    peak, hbm = (float(x) for x in cells[7].split(" / "))
    assert peak <= hbm, r
  for doc in (_read("README.md"), _read("launch", "README.md")):
    lines = doc.splitlines()
    start = lines.index(kept[0])
    assert lines[start:start + len(kept)] == kept
