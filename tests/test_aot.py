"""The TPU compile check: slice names, compile-only devices, and the tiny model's programs
compiled by the real TPU compiler (libtpu) on this CPU for a v5e:2x2 slice.

libtpu comes with `pip install -e ".[test]"` on x86-64 Linux; where it cannot be
installed the compiling tests skip and say so, except in CI (CI=true), where they fail.
"""

import importlib.util
import json
import math
import os
import re
import subprocess
import sys

import jax
import pytest

from ps_jax import aot, compile_check, flops, sharding, topology
from ps_jax.config_defaults import load_config_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "tests", "configs", "tiny.py")
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
GiB = 2 ** 30


@pytest.fixture(autouse=True)
def _needs_libtpu(request):
  if "libtpu" not in request.keywords or HAS_LIBTPU:
    return
  if os.environ.get("CI"):
    pytest.fail("libtpu is not installed: CI must run the TPU compile tests "
                "(pip install -e '.[test]' installs jax[tpu] on x86-64 Linux)")
  pytest.skip("libtpu is not installed (jax[tpu] installs only on x86-64 Linux): "
              "the TPU compiler is not available here")


libtpu = pytest.mark.libtpu  # registered in setup.cfg


def tiny_config(**compile_fields):
  c = load_config_file(TINY)
  c.compile.update({"topology": "v5e:2x2", **compile_fields})
  c.mesh.data, c.mesh.fsdp = 2, 2
  c.compile.index_rows = 1000
  c.compile.search_k = 10
  return c


@pytest.mark.parametrize("name,topo,chips", [
    ("v4-32", "v4:2x2x4", 16), ("v5litepod-64", "v5e:8x8", 64), ("v5e-64", "v5e:8x8", 64),
    ("v5p-128", "v5p:4x4x4", 64), ("v6e-16", "v6e:4x4", 16), ("v5e:2x2", "v5e:2x2", 4),
    ("v4:2x2x1", "v4:2x2x1", 4)])
def test_slice_names_resolve_to_topologies_and_chips(name, topo, chips):
  spec = topology.resolve(name)
  assert (spec.topology, spec.chips) == (topo, chips)


@pytest.mark.parametrize("name,message", [
    ("v5p-7", "no v5p slice 'v5p-7'; known: v5p-8"), ("v9-8", "unknown TPU slice 'v9-8'"),
    ("v5e:2x2x1", "v5e slices are 2-D"), ("v4:4x4", "v4 slices are 3-D")])
def test_unknown_slices_are_refused_by_name(name, message):
  with pytest.raises(topology.TopologyError, match=message):
    topology.resolve(name)


@libtpu
@pytest.mark.parametrize("name,slices,chips,hosts", [
    ("v4-32", 1, 16, 4), ("v5p-128", 1, 64, 16), ("v5e-64", 1, 64, 16), ("v6e-16", 1, 16, 4),
    ("v5e:2x2", 2, 8, 2)])
def test_compile_only_devices_are_one_per_chip(name, slices, chips, hosts):
  devs = topology.devices(topology.resolve(name, slices))
  assert len(devs) == chips and topology.num_hosts(devs) == hosts
  assert all(d.platform == "tpu" for d in devs)
  assert len({getattr(d, "slice_index", 0) for d in devs}) == slices


@libtpu
def test_multi_slice_mesh_keeps_each_fsdp_group_inside_a_slice():
  devs = topology.devices(topology.resolve("v5e:2x2", 2))
  mesh = sharding.make_mesh(-1, 4, devices=devs)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
  for row in mesh.devices:
    assert len({d.slice_index for d in row}) == 1


def _state_bytes_per_chip(config, target) -> int:
  """params + AdamW moments per chip, from the shapes and the run's shardings."""
  model, ps = aot.build_model(config, target.mesh)
  total = 0
  for shape, s in zip(jax.tree_util.tree_leaves(aot.api.param_shapes(model)),
                      jax.tree_util.tree_leaves(ps)):
    total += math.prod(s.shard_shape(shape.shape)) * shape.dtype.itemsize
  return 3 * total


@libtpu
def test_tiny_programs_compile_for_v5e_with_the_runs_shardings(tmp_path):
  config = tiny_config()
  record = compile_check.run_check(config, str(tmp_path), say=lambda *_: None)
  assert record["chips"] == 4 and record["mesh"] == {"data": 2, "fsdp": 2}
  assert record["hbm_limit_bytes"] == 16 * GiB
  assert set(record["programs"]) == set(aot.PROGRAMS)
  assert record["versions"]["libtpu"]
  step = record["programs"]["train_step"]
  target = aot.make_target(config)
  state = _state_bytes_per_chip(config, target)
  # The donated state is the step's arguments (plus the batch and step/rng) and comes
  # back aliased to them; the peak adds the temporaries.
  assert state <= step["argument_bytes"] <= state * 1.05 + 2 ** 20
  assert step["alias_bytes"] >= state
  assert step["total_bytes"] == (step["argument_bytes"] + step["output_bytes"]
                                 - step["alias_bytes"] + step["temp_bytes"]
                                 + step["code_bytes"])
  assert 0 < step["temp_bytes"] < 1 * GiB
  # Every layer unrolled: the compiled FLOPs are the model's, up to the small ops the
  # count leaves out (norms, softmax, loss, optimizer).
  est = record["train_estimate"]
  assert 0.9 < est["flops_ratio"] < 1.6, est
  assert est["estimate_source"] == "roofline" and est["estimate_seconds"] > 0
  saved = json.loads((tmp_path / "compile_v5e_2x2.json").read_text())
  assert saved["programs"]["train_step"]["temp_bytes"] == step["temp_bytes"]


@libtpu
def test_fsdp_splits_the_state_over_the_chips():
  """data=4 keeps the whole state on each chip; fsdp=4 a quarter of its width-sharded
  parameters, as the TPU compiler lays them out."""
  args = {}
  for data, fsdp in ((4, 1), (1, 4)):
    config = tiny_config(programs="train_step")
    config.mesh.data, config.mesh.fsdp = data, fsdp
    target = aot.make_target(config)
    got = aot.compile_programs(aot.checked_config(config, target), target,
                               say=lambda *_: None)["train_step"]
    args[fsdp] = got.argument_bytes
    assert got.argument_bytes >= _state_bytes_per_chip(config, target)
  assert args[4] < 0.45 * args[1]


@libtpu
def test_an_oversize_batch_is_refused_naming_mesh_batch_and_bytes_over(tmp_path):
  """The TPU compiler itself runs out of the chip's 16 GiB; the CLI exits 1."""
  proc = subprocess.run(
      [sys.executable, "-m", "ps_jax.main", "--mode", "compile", "--config", TINY,
       "--workdir", str(tmp_path), "--config.compile.topology=v5e:2x2",
       "--config.mesh.data=2", "--config.mesh.fsdp=2",
       "--config.compile.videos_per_chip=400000", "--config.compile.programs=train_step"],
      capture_output=True, text=True, timeout=600, cwd=REPO,
      env={**os.environ, "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"})
  assert proc.returncode == 1, proc.stderr[-3000:]
  line = [x for x in proc.stderr.splitlines() if x.startswith("does not fit:")]
  assert line, proc.stderr[-3000:]
  assert "train_step does not fit: needs" in line[0]
  assert "of 16.00 GiB" in line[0] and "GiB over" in line[0]
  assert "mesh (data=2, fsdp=2), global batch 1600000 (400000 videos per chip)" in line[0]
  assert not os.listdir(tmp_path)  # nothing recorded for a run that cannot start


@libtpu
def test_the_largest_batch_fits_and_one_more_video_does_not():
  config = tiny_config(probe_batches=(2, 8), hbm_gib=0.08, programs="train_step")
  target = aot.make_target(config)
  found = aot.largest_batch(config, target, say=lambda *_: None)
  assert found.videos_per_chip >= 8 and found.refused_above
  assert found.confirmed.total_bytes <= target.hbm_limit
  # An independent compile at one video more exceeds the budget.
  over = aot.checked_config(config, target, found.videos_per_chip + 1)
  with pytest.raises(aot.DoesNotFit, match=r"needs [\d.]+ GiB per chip of 0.08 GiB"):
    aot.compile_programs(over, target, say=lambda *_: None)
  # The tiny model's plan is not affine at this budget (its code and temporaries jump
  # between 8 and 41 videos): the probes' line over-predicts and the secant recovers.
  assert found.predicted > found.videos_per_chip


def test_analytic_flops_count_vit_b32_by_hand():
  config = load_config_file(os.path.join(REPO, "configs", "msrvtt_vitb32.py"))
  config.model.init_from = ""
  model = aot.api.build_model(aot.clip_config(config), **aot.experiment.model_options(config))
  parts = flops.forward_flops_per_video(model, frames=12, text_len=77)
  # One ViT-B/32 frame: 7 x 7 patches + CLS + 6 prompts = 56 tokens; 12 layers of
  # 4 x 768^2 projections and a 768 x 3072 MLP (2 FLOPs a multiply-add) plus attention.
  layer = 56 * 2 * (4 * 768 ** 2 + 2 * 768 * 3072) + 4 * 56 ** 2 * 768
  per_frame = 12 * layer + 2 * 3 * 32 ** 2 * 768 * 49 + 2 * 768 * 512
  assert parts["vision"] == pytest.approx(12 * per_frame, rel=0.01)
  assert parts["caption"] > 2 * 512 * 49408 * 76  # the vocabulary head alone
  total = flops.analytic_train_flops(model, 16, 12, 77)
  assert total == pytest.approx(3 * 16 * sum(parts.values()))


def test_the_check_refuses_a_missing_topology_and_a_bad_mesh():
  config = tiny_config(topology="")
  with pytest.raises(aot.CompileCheckError, match="config.compile.topology is empty"):
    aot.make_target(config)
  config = tiny_config(topology="v5x-8")
  with pytest.raises(aot.CompileCheckError, match="config.compile.topology: unknown TPU"):
    aot.make_target(config)


@libtpu
def test_a_mesh_that_does_not_cover_the_slice_is_refused():
  config = tiny_config()
  config.mesh.data, config.mesh.fsdp = 3, 1
  with pytest.raises(aot.CompileCheckError, match="4 chips of v5e:2x2"):
    aot.make_target(config)


@libtpu
def test_hlo_profile_attributes_the_compiled_steps_cycles(capsys):
  """benchmarks/tpu_hlo_profile.py on the tiny model's train step for v5e:2x2: every
  scheduled op is classed, the matmuls and the optimizer have cycles of their own, and
  each table's shares add up to the whole."""
  spec = importlib.util.spec_from_file_location(
      "tpu_hlo_profile", os.path.join(REPO, "benchmarks", "tpu_hlo_profile.py"))
  profile = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(profile)
  profile.main(["--config", TINY, "--topology", "v5e:2x2", "--mesh", "2,2",
                "--videos_per_chip", "2", "--frames", "4"])
  out = capsys.readouterr().out
  assert out.startswith("Command: `python benchmarks/tpu_hlo_profile.py --config ")
  total = float(re.search(r"ops, ([\d.]+) M estimated cycles", out).group(1))
  assert total > 0
  tables = [t for t in out.split("\n\n") if t.startswith("| ")]
  assert len(tables) == 2
  for t in tables:
    rows = {r.split(" | ")[0][2:]: r.split(" | ") for r in t.splitlines()[2:]}
    assert abs(sum(float(r[1]) for r in rows.values()) - total) < 0.005 * len(rows) + 0.01
    assert abs(sum(float(r[2].rstrip("%")) for r in rows.values()) - 100) < 0.05 * len(rows)
  ops = dict((r.split(" | ")[0][2:], float(r.split(" | ")[1]))
             for r in tables[0].splitlines()[2:])
  assert ops["matmuls (projections, MLP, heads)"] > 0
  assert ops["optimizer, clipping, loss scalars"] > 0
  parts = {r.split(" | ")[0][2:] for r in tables[1].splitlines()[2:]}
  assert {"vision", "text", "loss, optimizer"} <= parts
