"""README.md and docs/: the two Quickstart commands are the ones CI and users run, and
every table and figure they quote is the one its results file recorded, with the
command, commit, date and host that made it."""

import glob
import importlib.util
import json
import os
import re
import subprocess
import sys

from ps_jax.config_defaults import base_config, load_config_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The pages a reader sees: the front page, the launch guide and every docs/ page.
DOCS = ("README.md", "launch/README.md") + tuple(
    os.path.relpath(p, REPO) for p in sorted(glob.glob(os.path.join(REPO, "docs", "*.md"))))

# Tables that quote no measurement, by header line (every other table must be quoted from
# a results file or computed by a command a test runs).
TEXT_TABLES = {
    "| config | what the frames can share |": "docs/demo.md: the three demo configs",
    "| field | demo | official | why |": "docs/demo.md: the demo recipe",
    # Full runs of an earlier recipe that no command reproduces; the page names the
    # commits that recorded them.
    "| overrides | seeds | what happened (twin accuracy) |": "docs/demo.md: earlier probes",
    "| what | official | ps_jax default | test |": "docs/reproducing.md: differences",
    "| dataset | `--dataset` | protocol | train videos / queries | val videos / queries | "
    "test videos / queries | a query is |": "docs/reproducing.md: counts, test_protocols.py",
    "| page | what it holds |": "README.md: the map of docs/",
}
PARAMETER_TABLE = ("| backbone | parameters | params (fsdp=1) | params+adam, fsdp=1 | "
                   "params+adam, fsdp=4 | params+adam, fsdp=8 | params+adam, fsdp=16 | "
                   "params+adam, fsdp=64 |")  # launch/README: memory_estimate.py's output
RESULTS_NAME = re.compile(r"benchmarks/(RESULTS_\w+\.(?:md|json))")


def _read(*path):
  with open(os.path.join(REPO, *path), encoding="utf-8") as f:
    return f.read()


def _doc(name):
  return _read(*name.split("/"))


def _flat(text):
  return " ".join(text.split())


def _quickstart_commands():
  section = _read("README.md").split("## Quickstart", 1)[1].split("\n## ", 1)[0]
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


def test_readme_is_a_front_page_and_links_every_docs_page():
  readme = _read("README.md")
  assert len(readme.splitlines()) <= 250
  for page in DOCS[2:]:
    assert f"]({page})" in readme, f"README.md does not link {page}"


def _lines_outside_code(text):
  """(line, True if it is outside a ``` block) for every line of `text`."""
  fenced = False
  for line in text.splitlines():
    fenced ^= line.startswith("```")
    yield line, not fenced and not line.startswith("```")


def _tables(text):
  """Markdown tables outside code blocks: lists of their lines, header first."""
  tables, current = [], []
  for line, outside in list(_lines_outside_code(text)) + [("", True)]:
    if outside and line.startswith("|"):
      current.append(line)
    elif current:
      tables.append(current)
      current = []
  return tables


def _sections(text):
  """(preamble, [sections]) split at `## ` headings outside code blocks."""
  parts = [[]]
  for line, outside in _lines_outside_code(text):
    if outside and line.startswith("## "):
      parts.append([])
    parts[-1].append(line)
  return "\n".join(parts[0]), ["\n".join(p) for p in parts[1:]]


def _provenance_missing(text):
  """Which of command, commit, date and host `text` does not record."""
  needed = {"command": r"python (benchmarks|launch)/\w+\.py|python -m ps_jax\.",
            "commit": r"[Cc]ommit:? [0-9a-f]{7,40}\b",
            "date": r"\b20\d\d-\d\d-\d\d\b",
            "host": r"\bhost: \S"}
  return [k for k, pattern in needed.items() if not re.search(pattern, text, flags=re.I)]


def _is_rows_of(quoted, table):
  """The quoted table is `table`'s header and rule and some of its rows, in order."""
  if quoted[:2] != table[:2]:
    return False
  rows = iter(table[2:])
  return all(any(r == q for r in rows) for q in quoted[2:])


def _demo_tables(run_seeds):
  recorded = json.loads(_read("benchmarks", "RESULTS_demo_seeds.json"))
  return [run_seeds.markdown_rows(recorded["summary"]),
          run_seeds.markdown_seed_rows(recorded["runs"])]


def test_every_table_in_the_docs_is_quoted_from_its_results_file(run_seeds):
  """Each table of README, launch/README and docs/ is a text table (TEXT_TABLES), the
  demo's (run_seeds.py's rows of RESULTS_demo_seeds.json), launch/README's parameter
  table (test_launch_readme_parameter_table_is_what_memory_estimate_prints), or the
  header, rule and rows of one table of a results file that the page names, in whose
  section that file records the command, commit, date and host."""
  results = {os.path.basename(p): _read("benchmarks", os.path.basename(p))
             for p in glob.glob(os.path.join(REPO, "benchmarks", "RESULTS_*.md"))}
  demo = _demo_tables(run_seeds)
  quoted_from = set()
  for name in DOCS:
    text = _doc(name)
    for table in _tables(text):
      header = table[0]
      if header in TEXT_TABLES or header == PARAMETER_TABLE:
        continue
      if any(_is_rows_of(table, t) for t in demo):
        assert "benchmarks/RESULTS_demo_seeds.json" in text, name
        continue
      sources = [(f, part) for f, body in results.items()
                 for part in [_sections(body)[0]] + _sections(body)[1]
                 if any(_is_rows_of(table, t) for t in _tables(part))]
      assert sources, f"{name}: a table quoted from no results file: {header}"
      for f, part in sources[:1]:
        assert f"benchmarks/{f}" in text, f"{name} quotes {f} without naming it"
        preamble = _sections(results[f])[0]  # the file's provenance, then the section's
        missing = _provenance_missing(preamble if part == preamble else preamble + part)
        assert not missing, f"benchmarks/{f} records no {missing} for {header}"
        quoted_from.add(f)
  for header, where in TEXT_TABLES.items():  # no stale entries
    assert any(header in _doc(n).splitlines() for n in DOCS), where
  assert {"RESULTS_perf.md", "RESULTS_search.md",
          "RESULTS_serve.md", "RESULTS_scale.md", "RESULTS_storage.md",
          "RESULTS_memory.md", "RESULTS_tpu_compile.md"} <= quoted_from


def test_every_results_file_the_docs_name_records_its_provenance():
  named = {m for n in DOCS for m in RESULTS_NAME.findall(_doc(n))}
  assert "RESULTS_demo_seeds.json" in named
  for f in sorted(named):
    text = _read("benchmarks", f)
    if f.endswith(".json"):
      provenance = json.loads(text)["provenance"]
      for field in ("command", "commit", "date", "host"):
        assert provenance.get(field), (f, field)
      assert re.fullmatch(r"[0-9a-f]{7,40}", provenance["commit"])
      assert re.fullmatch(r"20\d\d-\d\d-\d\d", provenance["date"])
      assert provenance["command"].startswith("python benchmarks/")
    else:
      assert not _provenance_missing(text), (f, _provenance_missing(text))


def test_demo_table_is_the_recorded_five_seed_run(run_seeds):
  """The demo tables are benchmarks/run_seeds.py's output for the configs as they are
  now, and docs/demo.md's sentences about them name exactly the seeds where they hold."""
  recorded = json.loads(_read("benchmarks", "RESULTS_demo_seeds.json"))
  assert recorded["seeds"] == [0, 1, 2, 3, 4] and recorded["extra_args"] == []
  assert recorded["provenance"]["command"] in _flat(_read("README.md").replace("\\\n", ""))
  names = ["demo", "demo_noswitch", "demo_meanpool"]
  assert list(recorded["summary"]) == names
  for name in names:  # the recorded runs used the configs as committed
    assert recorded["config_sha256"][name] == run_seeds.config_digest(
        os.path.join(REPO, "configs", f"{name}.py")), f"configs/{name}.py changed: rerun"
  page = _read("docs", "demo.md")
  readme = _read("README.md")
  for row in run_seeds.markdown_rows(recorded["summary"]):
    assert row in readme and row in page, row
  for row in run_seeds.markdown_seed_rows(recorded["runs"]):
    assert row in page, row
  runs = recorded["runs"]
  demo = {r["seed"]: r for r in runs["demo"]}
  noswitch = {r["seed"]: r for r in runs["demo_noswitch"]}
  # "The switched model learns all three directions ... on every seed: 98.1-100% twin
  # accuracy."
  assert min(round(r["twin_acc"], 1) for r in demo.values()) == 98.1
  assert "on every seed: 98.1-100% twin accuracy" in _flat(page)
  # "No-switch learns part of the order on every seed and no more (70.8-75.8% ...)".
  twins = [round(r["twin_acc"], 1) for r in noswitch.values()]
  assert (min(twins), max(twins)) == (70.8, 75.8)
  assert all(demo[s]["twin_acc"] > noswitch[s]["twin_acc"] for s in demo)
  # configs/demo_noswitch.py's docstring states the same span and its R@1 range.
  noswitch_doc = _flat(_read("configs", "demo_noswitch.py").split('"""')[1])
  r1 = [round(r["t2v_R@1"], 1) for r in noswitch.values()]
  assert (f"{min(twins)}-{max(twins)}% twin accuracy on every seed, against 98.1-100% "
          f"with the switch, and {min(r1)}-{max(r1)} t2v R@1") in noswitch_doc
  # "beats no-switch by at least 5 points on every seed (+11.2 to +18.5)".
  margin = [demo[s]["t2v_R@1"] - noswitch[s]["t2v_R@1"] for s in range(5)]
  assert min(margin) >= 5.0
  assert (round(min(margin), 1), round(max(margin), 1)) == (11.2, 18.5)
  # "Mean pooling scores a clip and its twin exactly alike (50% on every seed".
  assert all(r["twin_acc"] == 50.0 for r in runs["demo_meanpool"])
  # "Time. A demo run took A-B s wall ...; no-switch C-D s, mean pooling E-F s": each
  # run <= 5 minutes.
  assert all(r["wall_s"] <= 300 for name in names for r in runs[name])
  sentence = " ".join(page.split("**Time.** A demo run took", 1)[1].split()[:40])
  spans = [f"{min(w)}-{max(w)} s" for w in (
      [round(r["wall_s"]) for r in runs[name]] for name in names)]
  assert sentence.startswith(f"{spans[0]} wall"), sentence
  assert f"no-switch {spans[1]}, mean pooling {spans[2]}." in sentence, sentence


def test_demo_recipe_table_names_every_recipe_field_the_demo_changes():
  """docs/demo.md's recipe table has a row for each field of configs/demo.py that
  differs from ps_jax's official defaults, other than sizes and schedule plumbing."""
  demo = load_config_file(os.path.join(REPO, "configs", "demo.py")).to_dict()
  base = base_config().to_dict()

  def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
      out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out

  demo, base = flat(demo), flat(base)
  sizes = ("model.clip.", "data.name", "data.image_size", "data.max_len",
           "data.worker_count", "eval_batch_size", "eval_every_steps",
           "checkpoint.every_steps", "log_every_steps")
  changed = {k for k in demo if demo[k] != base.get(k) and not k.startswith(sizes)}
  table = next(t for t in _tables(_read("docs", "demo.md"))
               if t[0] == "| field | demo | official | why |")
  fields = {f for row in table[2:] for f in re.findall(r"`([a-z_.]+)`", row.split("|")[1])}
  assert changed <= fields, sorted(changed - fields)
  rows = {row.split("|")[1].strip(): [c.strip() for c in row.split("|")[2:4]]
          for row in table[2:]}
  assert rows["`optim.weight_decay`"] == ["0.05", "0.2"]
  assert demo["optim.weight_decay"] == 0.05 and base["optim.weight_decay"] == 0.2
  assert rows["`retain_host_memory`"][1].startswith("- (no such setting")


def test_measured_tables_are_quoted_from_their_results_files():
  """The storage rows are the rows bench_storage.py wrote, the search rows those of
  bench_search.py, the indexing figures those of bench_index.py (training split)."""
  data = _read("docs", "data.md")
  storage = [l for l in _read("benchmarks", "RESULTS_storage.md").splitlines()
             if l.startswith(("| raw ", "| JPEG "))]
  assert len(storage) == 5 and all(row in data.splitlines() for row in storage)
  search = _read("benchmarks", "RESULTS_search.md")
  kept = [l for l in search.splitlines() if re.match(r"\| [\d,]+ \| (ps_jax|numpy|faiss)", l)]
  assert len(kept) == 12
  page = _read("docs", "search.md").splitlines()
  assert all(row in page for row in kept)
  front = [l for l in _read("README.md").splitlines() if l in kept]
  assert [l.split("|")[1].strip() for l in front] == ["1,000,000"] * 3
  index = re.search(r"\| demo \(configs/demo.py\), prepared split \| 4 x 32 \| (\d+) \| "
                    r"([\d.]+) \|.*\n\| demo \(configs/demo.py\), raw .mp4 \(PyAV decode\) "
                    r"\| 4 x 32 \| (\d+) \| ([\d.]+) \|", search)
  videos, decoded, raw_videos, raw = index.groups()
  assert videos == raw_videos == "384"  # bench_index.py's default: the training split
  text = "\n".join(page)
  sentence = " ".join(text.split("Indexing the demo's training split", 1)[1].split()[:30])
  assert f"{float(decoded):,.0f} videos/s from pre-decoded frames" in sentence
  assert f"{float(raw):,.0f} videos/s from raw .mp4" in sentence


def test_serve_table_is_quoted_from_its_results_file():
  kept = [l for l in _read("benchmarks", "RESULTS_serve.md").splitlines() if l.startswith("|")]
  assert len(kept) == 5
  lines = _read("docs", "search.md").splitlines()
  start = lines.index(kept[0])
  assert lines[start:start + 5] == kept
  assert os.path.exists(os.path.join(REPO, "docs", "search_page.jpg"))
  assert "](search_page.jpg)" in "\n".join(lines)


def test_launch_readme_memory_table_is_the_kept_measurement():
  kept = [l for l in _read("benchmarks", "RESULTS_memory.md").splitlines()
          if l.startswith("| ViT-B/32 |")]
  assert len(kept) == 4
  launch = _read("launch", "README.md").splitlines()
  assert all(row in launch for row in kept)


def test_launch_readme_parameter_table_is_what_memory_estimate_prints():
  proc = subprocess.run([sys.executable, os.path.join("launch", "memory_estimate.py")],
                        cwd=REPO, capture_output=True, text=True, timeout=600, check=True,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  printed = next(t for t in _tables(proc.stdout) if t[0] == PARAMETER_TABLE)
  quoted = next(t for t in _tables(_read("launch", "README.md")) if t[0] == PARAMETER_TABLE)
  assert quoted == printed


def test_official_comparison_table_is_quoted_from_its_results_file():
  """The table against the official code is bench_official.py's, as recorded."""
  perf = _read("benchmarks", "RESULTS_perf.md")
  section = perf.split("## ViT-B/32: ps_jax against the official PromptCLIP", 1)[1]
  lines = section.split("\n## ", 1)[0].splitlines()
  first = next(i for i, l in enumerate(lines) if l.startswith("|"))
  kept = lines[first:first + 8]  # the first table: header, rule, 2 official, 4 ps_jax rows
  assert all(l.startswith("|") for l in kept) and not lines[first + 8].startswith("|")
  for name in ("README.md", "docs/performance.md"):
    lines = _doc(name).splitlines()
    start = lines.index(kept[0])
    assert lines[start:start + 8] == kept, name
  rows = {l.split("|")[1].strip(): l for l in kept[2:]}
  # "float32 runs at 0.96x ...; bfloat16 ... 1.84x ... and 1.05x ... autocast"
  assert "| 0.96x |" in rows["ps_jax, float32, scan_unroll=1"]
  assert "| 1.84x | 1.05x |" in rows["ps_jax, bfloat16, unrolled"]
  page = _flat(_read("docs", "performance.md"))
  assert "float32 runs at 0.96x the official float32 step" in page
  assert "1.84x the official float32 step, and 1.05x PyTorch's own" in page
  assert "(here 1.387656 on both sides" in page and "official 1.387656, ps_jax 1.387656" in perf


def test_scale_tables_are_quoted_from_their_results_file():
  """The prepare (local vs Beam) and multi-process search tables are those of
  benchmarks/RESULTS_scale.md, and the sentences after them are computed from them."""
  scale = _read("benchmarks", "RESULTS_scale.md")
  sizes = [[float(c) for c in l.strip("|").split("|")] for l in scale.splitlines()
           if re.match(r"\| (16|128) \|", l)]
  (n0, local0, _, extra0), (n1, local1, _, extra1) = sizes
  per_video, fixed = (extra1 - extra0) / (n1 - n0), extra0 - n0 * (extra1 - extra0) / (n1 - n0)
  claim = (f"a fixed {fixed:.1f} s and {1e3 * per_video:.0f} ms more per video here, "
           f"against {1e3 * local1 / n1:.0f} ms per video")
  assert claim in " ".join(scale.split())
  data, search = _read("docs", "data.md"), _read("docs", "search.md")
  readme_claim = (f"a fixed {fixed:.1f} s (building and running two pipelines, staging "
                  f"the results) and {1e3 * per_video:.0f} ms per video")
  assert readme_claim in _flat(data)
  kept = [l for l in scale.splitlines() if l.startswith("|") and "Beam extra" not in l
          and not re.match(r"\|(---:\|)+$", l) and not re.match(r"\| (16|128) \|", l)]
  assert len(kept) == 10  # 2 header lines + 4 prepare rows, 2 + 2 search rows
  for table, page in ((kept[:6], data), (kept[6:], search)):
    lines = page.splitlines()
    start = lines.index(table[0])
    assert lines[start:start + len(table)] == table
  rate = {l.split("|")[1].strip(): float(l.split("|")[4]) for l in kept[2:6]}
  ratio = rate["Beam DirectRunner, in memory, 1 worker"] / rate["local, in process"]
  assert f"in memory prepares at {ratio:.2f}x the local in-process rate" in data
  one, two = ([float(c) for c in l.split("|")[3:7]] for l in kept[8:10])
  assert f"costs {two[1] - one[1]:.1f} ms per query call" in search
  assert f"{100 * (two[2] - one[2]) / one[2]:.0f}% of a 64-query batch" in search
  assert "same ids and scores in both setups: True" in _read("benchmarks",
                                                             "RESULTS_scale.md")


def test_profile_shares_are_quoted_from_the_recorded_profile():
  perf = _read("benchmarks", "RESULTS_perf.md")
  rows = {l.split("|")[1].strip().split(" (")[0]: [c.strip() for c in l.split("|")[2:6]]
          for l in perf.split("## Where the ViT-B/32 step's time goes", 1)[1].splitlines()
          if l.startswith("| ") and "%" in l}
  f32_copy, bf16_copy = rows["copy"][1], rows["copy"][3]
  f32_matmul = rows["matmul fusion"][1]
  page = _flat(_read("docs", "performance.md"))
  assert (f"{f32_copy} of the float32 step's thunk time is copies ({f32_matmul} is "
          "matmuls)") in page
  assert f"(bfloat16 unrolled: {bf16_copy} copies)" in page


def _tpu_compile_table():
  spec = importlib.util.spec_from_file_location(
      "tpu_compile_table", os.path.join(REPO, "benchmarks", "tpu_compile_table.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_tpu_compile_table_is_quoted_from_its_results_file():
  """The slice tables of docs/training_at_scale.md and launch/README.md (the pages
  tpu_compile_table.py --update_docs writes) are benchmarks/tpu_compile_table.py's, as
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
  docs = _tpu_compile_table().DOCS
  assert set(docs) == {os.path.join("docs", "training_at_scale.md"),
                       os.path.join("launch", "README.md")}
  for doc in docs:
    lines = _read(doc).splitlines()
    start = lines.index(kept[0])
    assert lines[start:start + len(kept)] == kept, doc


def test_tpu_compile_table_rows_are_made_from_the_kept_records():
  """Every row of RESULTS_tpu_compile.md is tpu_compile_table.py's line of the JSON
  record kept for it in benchmarks/tpu_compile/ (or says it was not compiled, and then
  no record is kept), so the table can be rebuilt with --table_only and checked."""
  module = _tpu_compile_table()
  rows = [l for l in _read("benchmarks", "RESULTS_tpu_compile.md").splitlines()
          if l.startswith("|")][2:]
  assert [module.row_line(n, module.record(n)) for n in module.ROWS] == rows
  for name in module.ROWS:
    rec = module.record(name)
    if rec is not None:
      assert rec["slice"].split()[0] == module.ROWS[name][0] and rec["frames"] == module.FRAMES
      lb = rec["largest_batch"]
      assert 1 <= lb["videos_per_chip"] <= lb["predicted"]
      # a probe fits exactly when it is no larger than the batch the search settled on
      assert [fits for _, _, fits in lb["probes"]] == [
          b <= lb["videos_per_chip"] for b, _, _ in lb["probes"]], (name, lb)


def test_tpu_compile_table_update_docs_rewrites_the_quoted_tables(tmp_path, monkeypatch):
  """update_docs finds the table by its header line in every page of DOCS and replaces
  it; written again with the kept table, each page is unchanged."""
  module = _tpu_compile_table()
  for doc in module.DOCS:
    os.makedirs(tmp_path / os.path.dirname(doc), exist_ok=True)
    (tmp_path / doc).write_text(_read(doc), encoding="utf-8")
  monkeypatch.setattr(module, "REPO", str(tmp_path))
  kept = [l for l in _read("benchmarks", "RESULTS_tpu_compile.md").splitlines()
          if l.startswith("|")]
  module.update_docs("\n".join(kept))
  for doc in module.DOCS:
    assert (tmp_path / doc).read_text(encoding="utf-8") == _read(doc), doc
  changed = kept[:2] + [kept[2][:-2] + "changed |"] + kept[3:]
  module.update_docs("\n".join(changed))
  for doc in module.DOCS:
    assert changed[2] in (tmp_path / doc).read_text(encoding="utf-8").splitlines(), doc


def test_bench_train_tables_are_quoted_from_their_results_file():
  """docs/performance.md quotes bench_train.py's ViT-B/32 run from RESULTS_perf.md
  (the section that names its commit, date and host, and says which code it ran), and
  its sentences are computed from those tables."""
  perf = _read("benchmarks", "RESULTS_perf.md")
  heading = "## ViT-B/32, 224 px, 6 frames, batch 2: ps_jax vs `transformers` PyTorch CLIP"
  section = next(s for s in _sections(perf)[1] if s.startswith(heading))
  assert "Commit: 21b3b77" in section and "a convolution" in section
  command = re.search(r"```bash\npython benchmarks/bench_train.py.*?\n```", section, re.S)
  page = _read("docs", "performance.md")
  assert command.group(0) in page  # the command printed is the one that made the run
  assert "recorded at commit 21b3b77" in _flat(page)
  train, evals, pipe = _tables(section)
  lines = page.splitlines()
  for table in (train, evals, pipe):
    start = lines.index(table[0])
    assert lines[start:start + len(table)] == table
  rows = {r.split("|")[1].strip(): [c.strip() for c in r.strip("|").split("|")]
          for r in train[2:]}
  sec = {k: float(v[1].split()[0]) for k, v in rows.items()}
  plain_b16 = sec["ps_jax plain CLIP, bfloat16, unrolled scan"]
  autocast = next(v for k, v in sec.items() if "autocast" in k)
  flat = _flat(page)
  assert (f"In float32 it runs at {rows['ps_jax plain CLIP, float32, rolled scan'][5]} "
          f"(plain) and {rows['ps_jax Prompt Switch, float32, rolled scan'][5]} (Prompt "
          "Switch) of PyTorch") in flat
  assert (f"autocast is {plain_b16 / autocast:.2f}x faster than ps_jax's plain bfloat16 "
          f"step: {autocast:.3f} against {plain_b16:.3f} s/step") in flat
  fps = {r.split("|")[1].strip(): float(r.split("|")[3]) for r in evals[2:]}
  torch_fps = next(v for k, v in fps.items() if k.startswith("PyTorch"))
  ps_fps = fps["Prompt Switch, bfloat16"]
  assert (f"{ps_fps:.1f} frames/s in bfloat16 against PyTorch's {torch_fps:.1f} in "
          f"float32, {ps_fps / torch_fps:.2f}x") in flat
  grain = sorted(float(r.split("|")[2]) for r in pipe[2:])
  step = {float(r.split("|")[3]) for r in pipe[2:]}
  assert f"grain delivers {grain[0]:.0f}–{grain[-1]:.0f} frames/s against the step's " \
         f"{step.pop():.1f}" in flat
