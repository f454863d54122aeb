"""`python -m ps_jax.main --mode compile`: will this run fit and how fast could it go, on
a TPU slice, answered on a laptop before the slice is booked.

Layer: jobs (imports aot, flops, topology, fileio, reporting). Compiles the run's
programs (`ps_jax.aot`) for config.compile.topology with the run's mesh and batch,
prints per-chip memory against the chip's HBM, compiled and model FLOPs, and a step-time
bound labelled as the estimate it is; with config.compile.find_max_batch it searches the
largest videos per chip whose train step fits. The record goes to
<workdir>/compile_<topology>.json. A program that does not fit raises `aot.DoesNotFit`
(the command exits non-zero), naming the mesh, the batch and the bytes over.
"""

from __future__ import annotations

import datetime
import json
from importlib import metadata
from typing import Callable, Optional

import jax

from ps_jax import aot, fileio, topology
from ps_jax.aot import gib

GiB = topology.GiB


def versions() -> dict:
  """jax, jaxlib and libtpu versions, for the record."""
  out = {"jax": jax.__version__}
  for dist in ("jaxlib", "libtpu"):
    try:
      out[dist] = metadata.version(dist)
    except metadata.PackageNotFoundError:
      out[dist] = None
  return out


def format_programs(measured: dict, limit: int) -> str:
  """A markdown table of per-chip figures, one row per compiled program."""
  rows = ["| program | arguments GiB | outputs GiB | aliased GiB | temporaries GiB | "
          f"peak GiB (of {limit / GiB:.1f}) | TFLOP | GB accessed | compile s |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for name, m in measured.items():
    rows.append(f"| {name} | {gib(m.argument_bytes)} | {gib(m.output_bytes)} | "
                f"{gib(m.alias_bytes)} | {gib(m.temp_bytes)} | {gib(m.total_bytes)} | "
                f"{m.flops / 1e12:.3f} | {m.bytes_accessed / 1e9:.1f} | "
                f"{m.compile_seconds:.0f} |")
  return "\n".join(rows)


def format_estimate(est: dict, optimal_seconds: Optional[float]) -> str:
  opt = "n/a" if optimal_seconds is None else f"{optimal_seconds:.4g} s"
  return (f"train step, ESTIMATED (not measured): model {est['model_flops'] / 1e12:.3f} "
          f"TFLOP per chip, compiled/model FLOPs {est['flops_ratio']:.2f}; roofline "
          f"{est['compute_seconds'] * 1e3:.1f} ms compute, {est['memory_seconds'] * 1e3:.1f} "
          f"ms HBM ({est['bound']}-bound); compiler's optimal_seconds {opt}; bound used: "
          f"{est['estimate_source']} {est['estimate_seconds'] * 1e3:.1f} ms -> MFU <= "
          f"{est['mfu']:.0%}")


def _header(config, target: aot.Target) -> dict:
  return {"slice": target.spec.label(), "topology": target.spec.topology,
          "num_slices": target.spec.num_slices, "chips": target.spec.total_chips,
          "hosts": target.hosts, "mesh": dict(target.mesh.shape),
          "hbm_limit_bytes": target.hbm_limit, "model_dtype": config.model.dtype,
          "scan_unroll": config.model.scan_unroll, "remat_policy": config.model.remat_policy,
          "frames": config.data.num_frames, "versions": versions(),
          "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def run_check(config, workdir: str, say: Callable = print) -> dict:
  """The compile check of `config` (see the module docstring); returns the record."""
  target = aot.make_target(config)
  record = _header(config, target)
  say(f"compile check: {target.spec.label()}, {target.hosts} hosts, "
      f"{target.spec.chip.name} ({target.hbm_limit / GiB:.1f} GiB HBM per chip); "
      f"jax {record['versions']['jax']}, libtpu {record['versions']['libtpu']}")
  if config.compile.find_max_batch:
    found = aot.largest_batch(config, target, say=say)
    record["largest_batch"] = {
        "videos_per_chip": found.videos_per_chip, "predicted": found.predicted,
        "slope_bytes_per_video": found.slope_bytes, "intercept_bytes": found.intercept_bytes,
        "probes": found.probes, "refused_above": found.refused_above}
    say(f"largest batch that fits: {found.videos_per_chip} videos per chip (predicted "
        f"{found.predicted} from {len(found.probes)} probes: "
        f"{found.slope_bytes / GiB:.3f} GiB per video + {found.intercept_bytes / GiB:.2f} "
        f"GiB; {found.videos_per_chip + 1} {'refused' if found.refused_above else 'not tried'})"
        f" -> --config.batch_size={found.videos_per_chip * target.spec.total_chips}")
    if found.videos_per_chip < 1:
      raise aot.DoesNotFit("train_step", found.probes[0][1], target.hbm_limit,
                           f" at 1 video per chip on {target.spec.label()}")
    config = aot.checked_config(config, target, found.videos_per_chip)
    measured = {"train_step": found.confirmed}
    rest = [p for p in config.compile.programs.split(",") if p and p != "train_step"]
    measured.update(aot.compile_programs(config, target, rest, say=say))
  else:
    config = aot.checked_config(config, target)
    measured = aot.compile_programs(config, target, say=say)
  say(f"{aot.describe_run(config, target)}; per chip:")
  say(format_programs(measured, target.hbm_limit))
  record["batch_size"] = config.batch_size
  record["programs"] = {k: m.as_dict() for k, m in measured.items()}
  if "train_step" in measured:
    m = measured["train_step"]
    est = aot.train_estimate(config, target, m)
    record["train_estimate"] = est
    say(format_estimate(est, m.optimal_seconds))
  fileio.makedirs(workdir)
  path = fileio.join(workdir, f"compile_{target.spec.topology.replace(':', '_')}.json")
  fileio.write_text(path, json.dumps(record, indent=1, default=str))
  say(f"record: {path}")
  return record
