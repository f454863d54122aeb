"""Ahead-of-time compile check: a run's jitted functions compiled for a TPU slice on a CPU.

Layer: jobs (imports assembly: experiment, train_step, embed; and optim, the search top-k,
topology). Nothing is allocated or executed: every argument is a ShapeDtypeStruct placed
with the run's shardings on the compile-only devices of the slice, and the real TPU
compiler (libtpu) compiles

  train_step      the train step with its state / batch shardings and state donation
  encode_video    the evaluation / index video encoder (eval frames, eval batch)
  encode_text     the text encoder (eval batch of captions)
  search_topk     the sharded top-k of the search service in its TPU (approximate) mode

  target = make_target(config)                  # slice, devices, mesh
  report = compile_programs(config, target)     # {name: Measurement}
  fit = largest_batch(config, target)           # videos per chip whose step fits

Figures are per chip: `memory_analysis()` bytes (arguments, outputs, aliased, temporaries),
`cost_analysis()` FLOPs and bytes accessed, and the compiler's own `optimal_seconds`.
Step times derived from them are estimates (roofline bounds), never measurements.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from ps_jax import api, embed, experiment, optim, sharding, topology
from ps_jax import flops as flops_lib
from ps_jax import train_step as ts
from ps_jax.models.clip import ClipConfig
from ps_jax.retrieval import topk

GiB = topology.GiB
CLIP_VOCAB_SIZE = 49408  # OpenAI CLIP's BPE vocabulary (the HF checkpoints' text.vocab_size)
PROGRAMS = ("train_step", "encode_video", "encode_text", "search_topk")


class CompileCheckError(ValueError):
  """The compile check cannot run as configured; the message names the field."""


@dataclasses.dataclass
class Target:
  """A slice to compile for: its spec, compile-only devices, host count and run mesh."""
  spec: topology.SliceSpec
  devices: Any
  hosts: int
  mesh: Any
  hbm_limit: int  # bytes per chip a program may use


def make_target(config) -> Target:
  """The slice of config.compile.topology and the (data, fsdp) mesh of config.mesh on it."""
  cc = config.compile
  if not cc.topology:
    raise CompileCheckError("config.compile.topology is empty: name a slice, e.g. "
                            "--config.compile.topology=v5p-128 (or v5e:4x4)")
  try:
    spec = topology.resolve(cc.topology, cc.num_slices)
    devs = topology.devices(spec)
  except topology.TopologyError as e:
    raise CompileCheckError(f"config.compile.topology: {e}") from None
  try:
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, devices=devs)
  except ValueError as e:
    raise CompileCheckError(f"{e} (the {len(devs)} chips of {spec.label()})") from None
  limit = int(cc.hbm_gib * GiB) if cc.hbm_gib > 0 else spec.chip.hbm_bytes
  return Target(spec, devs, topology.num_hosts(devs), mesh, limit)


# ----------------------------------------------------------------------------- the model


def clip_config(config) -> ClipConfig:
  """The architecture without weights or tokenizer: the init checkpoint's config.json
  when it is here, else config.model.clip (vocab_size -1 = CLIP's 49,408)."""
  return experiment.clip_config_from(config, vocab_size=CLIP_VOCAB_SIZE)


def build_model(config, mesh):
  """(model, params_sharding) exactly as `experiment.build_setup` makes them."""
  model = api.build_model(clip_config(config), **experiment.model_options(config))
  return model, experiment.model_params_sharding(model, mesh, config.sharding_rules)


def _abstract(tree, shardings):
  return jax.tree_util.tree_map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), tree, shardings)


def _batch_abstract(mesh, batch: int, frames: int, size: int, max_len: int) -> dict:
  shapes = {"frames": ((batch, frames, size, size, 3), jnp.uint8),
            "input_ids": ((batch, max_len), jnp.int32),
            "attention_mask": ((batch, max_len), jnp.int32)}
  return {k: jax.ShapeDtypeStruct(s, d, sharding=sharding.batch_sharding(mesh, len(s)))
          for k, (s, d) in shapes.items()}


# ----------------------------------------------------------------------------- programs


def lower_train_step(config, mesh, model, params_sharding, batch: int):
  """The train step of `train.train_and_evaluate`, lowered for a global `batch`."""
  tx, schedules = optim.make_optimizer(config.optim, max(config.num_train_steps, 1000))
  vocab = model.clip.text.vocab_size
  lc = ts.LossConfig(jnp.ones((vocab,), jnp.float32), vocab - 1, config.loss.caption_weight)
  ema = config.optim.ema_decay > 0
  state = jax.eval_shape(lambda: ts.create_state(api.param_shapes(model), tx,
                                                 jax.random.PRNGKey(0), ema))
  shardings = ts.state_shardings(mesh, params_sharding, state)
  step = ts.jit_train_step(model, tx, lc, schedules, shardings, mesh,
                           grad_accum_steps=config.optim.grad_accum_steps,
                           ema_decay=config.optim.ema_decay)
  d = config.data
  args = (_abstract(state, shardings),
          _batch_abstract(mesh, batch, d.num_frames, d.image_size, d.max_len))
  return step.lower(*args), args


def lower_encoder(config, mesh, model, params_sharding, name: str):
  """One encoder of `embed.make_encoders` ("encode_video" or "encode_text"), lowered for
  the eval batch; returns (lowered, abstract arguments)."""
  encode_video, encode_text = embed.make_encoders(model, mesh, params_sharding)
  params = _abstract(api.param_shapes(model), params_sharding)
  d, b = config.data, config.eval_batch_size
  batch = _batch_abstract(mesh, b, d.eval_num_frames, d.image_size, d.max_len)
  if name == "encode_video":
    args, fn = (params, batch["frames"]), encode_video
  else:
    args, fn = (params, batch["input_ids"], batch["attention_mask"]), encode_text
  return fn.lower(*args), args


def lower_search(config, mesh, dim: int):
  """The search service's sharded top-k over config.compile.index_rows rows (TPU storage
  dtype, approximate per-shard selection), for its largest request."""
  cc = config.compile
  return topk.lower_sharded_topk(mesh, cc.index_rows, dim, cc.search_queries, cc.search_k,
                                 approx=True)


# ----------------------------------------------------------------------------- analysis


@dataclasses.dataclass
class Measurement:
  """Per-chip figures of one compiled program (bytes, FLOPs, seconds)."""
  name: str
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  code_bytes: int
  flops: float
  bytes_accessed: float
  optimal_seconds: Optional[float]
  compile_seconds: float

  @property
  def total_bytes(self) -> int:
    """Peak HBM of the program: arguments + outputs not aliased to them + temporaries."""
    return (self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes
            + self.code_bytes)

  def as_dict(self) -> dict:
    return {**dataclasses.asdict(self), "total_bytes": self.total_bytes}


class DoesNotFit(Exception):
  """The TPU compiler ran out of HBM for a program (or it exceeds the configured limit)."""

  def __init__(self, program: str, needed: Optional[int], limit: int, detail: str = ""):
    super().__init__(program, needed, limit)
    self.program, self.needed, self.limit, self.detail = program, needed, limit, detail

  def __str__(self) -> str:
    over = "" if self.needed is None else (
        f": needs {self.needed / GiB:.2f} GiB per chip of {self.limit / GiB:.2f} GiB "
        f"({(self.needed - self.limit) / GiB:.2f} GiB over)")
    return f"{self.program} does not fit{over}{self.detail}"


# libtpu's out-of-memory messages: "... required for HLO temporaries (5.46T) exceeds
# available HBM (15.75G)" and "Used 20.5G of 15.75G hbm".
_TEMP_MESSAGE = re.compile(r"temporaries \(([\d.]+)([KMGT])\) exceeds available HBM")
_USED_MESSAGE = re.compile(r"Used ([\d.]+)([KMGT]) of ([\d.]+)([KMGT]) hbm")
_UNITS = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per module
    cost = cost[0] if cost else {}
  return cost or {}


def shard_bytes(args) -> int:
  """Bytes per device of a tree of sharded ShapeDtypeStructs (a program's arguments)."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
             for x in jax.tree_util.tree_leaves(args))


def measure(name: str, lowered, limit: int, args=None) -> Measurement:
  """Compiles `lowered` and reads its memory and cost analyses.

  Raises DoesNotFit when the compiler runs out of HBM or the program's peak exceeds
  `limit` bytes per chip; when the compiler reports only the temporaries it could not
  place, the bytes needed add the arguments (`args`, the abstract arguments).
  """
  start = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except  # XlaRuntimeError, untyped
    text = str(e)
    if "RESOURCE_EXHAUSTED" not in text and "Ran out of memory" not in text:
      raise
    used, temps = _USED_MESSAGE.search(text), _TEMP_MESSAGE.search(text)
    needed = None
    if used:
      needed = int(float(used.group(1)) * _UNITS[used.group(2)])
    elif temps:
      needed = int(float(temps.group(1)) * _UNITS[temps.group(2)])
      needed += shard_bytes(args) if args is not None else 0
    raise DoesNotFit(name, needed, limit, " (the TPU compiler ran out of HBM)") from None
  seconds = time.perf_counter() - start
  mem = compiled.memory_analysis()
  cost = _cost(compiled)
  optimal = cost.get("optimal_seconds")
  got = Measurement(name, mem.argument_size_in_bytes, mem.output_size_in_bytes,
                    mem.alias_size_in_bytes, mem.temp_size_in_bytes,
                    getattr(mem, "generated_code_size_in_bytes", 0),
                    float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0)),
                    None if optimal is None else float(optimal), seconds)
  if got.total_bytes > limit:
    raise DoesNotFit(name, got.total_bytes, limit)
  return got


# ----------------------------------------------------------------------------- the check


def _with(config, **fields):
  """A copy of `config` with dotted fields set ("model.scan_unroll": 1)."""
  config = config.copy_and_resolve_references()
  for dotted, value in fields.items():
    parent, _, key = dotted.rpartition(".")
    (experiment.get_field(config, parent) if parent else config)[key] = value
  return config


def checked_config(config, target: Target, videos_per_chip: Optional[int] = None):
  """config with the global batch of `videos_per_chip` (default config.compile's, else
  config.batch_size), validated against the slice's chips and hosts."""
  chips = target.spec.total_chips
  vpc = videos_per_chip or config.compile.videos_per_chip
  fields = {"batch_size": vpc * chips} if vpc else {}
  if config.model.init_from and not os.path.exists(config.model.init_from):
    fields["model.init_from"] = ""  # weights are not needed to compile
  config = _with(config, **fields)
  try:
    experiment.validate_config(config, num_devices=chips, num_processes=target.hosts)
  except experiment.ConfigError as e:
    raise CompileCheckError(f"{e} (on {target.spec.label()}, {target.hosts} hosts)") from None
  return config


def describe_run(config, target: Target) -> str:
  mesh = ", ".join(f"{k}={v}" for k, v in target.mesh.shape.items())
  chips = target.spec.total_chips
  return (f"mesh ({mesh}), global batch {config.batch_size} ({config.batch_size / chips:g} "
          f"videos per chip), {config.data.num_frames} frames, {config.model.dtype}")


def compile_programs(config, target: Target, programs=None, say: Callable = print) -> dict:
  """Compiles each of `programs` (default config.compile.programs) for the slice.

  Returns {program: Measurement} in order. Raises DoesNotFit for the first program that
  exceeds the chip's HBM (or config.compile.hbm_gib).
  """
  if programs is None:
    programs = [p.strip() for p in config.compile.programs.split(",") if p.strip()]
  names = list(programs)
  unknown = sorted(set(names) - set(PROGRAMS))
  if unknown:
    raise CompileCheckError(f"config.compile.programs: unknown {unknown}; choose from "
                            f"{list(PROGRAMS)}")
  model, params_sharding = build_model(config, target.mesh)
  out = {}
  for name in names:
    say(f"compiling {name} for {target.spec.label()} ...")
    if name == "train_step":
      lowered, args = lower_train_step(config, target.mesh, model, params_sharding,
                                       config.batch_size)
    elif name == "search_topk":
      lowered, args = lower_search(config, target.mesh, model.clip.projection_dim), None
    else:
      lowered, args = lower_encoder(config, target.mesh, model, params_sharding, name)
    try:
      out[name] = measure(name, lowered, target.hbm_limit, args)
    except DoesNotFit as e:
      e.detail += f" on {target.spec.label()}, {describe_run(config, target)}"
      raise
  return out


def train_estimate(config, target: Target, m: Measurement) -> dict:
  """`step_estimate` of a compiled train step against the model's analytic FLOPs per chip
  (the roofline: one compile cannot show that `optimal_seconds` grows with the batch)."""
  model, _ = build_model(config, target.mesh)
  per_chip = config.batch_size / target.spec.total_chips
  flops = flops_lib.analytic_train_flops(model, per_chip, config.data.num_frames,
                                         config.data.max_len)
  return flops_lib.step_estimate(m.flops, m.bytes_accessed, m.optimal_seconds,
                                 target.spec.chip, flops, optimal_ok=False)


@dataclasses.dataclass
class BatchSearch:
  """The outcome of `largest_batch`: per-chip videos and the compiles behind it."""
  videos_per_chip: int           # the largest that fits (0: not even the smallest probe)
  predicted: int                 # from the affine fit of the two probes
  slope_bytes: float             # peak bytes per extra video per chip (probes)
  intercept_bytes: float
  probes: list                   # [(videos per chip, peak bytes or None, fits)]
  confirmed: Optional[Measurement]  # the config's own step at videos_per_chip
  refused_above: bool            # videos_per_chip + 1 was compiled and refused


def _peak(config, target, built, vpc: int) -> tuple[Optional[int], Optional[Measurement]]:
  """(peak bytes or None, Measurement when it fits) of the train step at vpc per chip;
  `built` is `build_model(config, target.mesh)` (the batch does not change it)."""
  config = checked_config(config, target, vpc)
  model, params_sharding = built
  lowered, args = lower_train_step(config, target.mesh, model, params_sharding,
                                   config.batch_size)
  try:
    m = measure("train_step", lowered, target.hbm_limit, args)
    return m.total_bytes, m
  except DoesNotFit as e:
    return e.needed, None


def largest_batch(config, target: Target, say: Callable = print,
                  max_compiles: int = 8) -> BatchSearch:
  """The largest videos per chip whose train step fits in the chip's HBM.

  Peak memory is close to affine in the batch: two probe compiles
  (config.compile.probe_batches, with scan_unroll = config.compile.search_unroll; 0 =
  the model's own) fit a line, and the line predicts the largest batch. The config's own
  step is then compiled at the prediction and at one video more; where the plan bends
  away from the line, the next try is the secant between the largest batch known to
  fit and the smallest known not to (at most `max_compiles` confirmation compiles).
  The result fits, and (`refused_above`) one video more was compiled and refused (not
  tried when config.compile.check_above is False: a batch over the HBM compiles slowly,
  the TPU compiler trying rematerialisation before it gives up).
  """
  cc = config.compile
  unroll = cc.search_unroll or config.model.scan_unroll
  same_program = unroll == config.model.scan_unroll
  probe_config = _with(config, **{"model.scan_unroll": unroll})
  probe_model = build_model(probe_config, target.mesh)
  own_model = probe_model if same_program else build_model(config, target.mesh)
  probes, peaks, fits = [], {}, {}
  for vpc in cc.probe_batches:
    say(f"probe: train step at {vpc} videos per chip (scan_unroll={unroll}) ...")
    peak, m = _peak(probe_config, target, probe_model, vpc)
    say(f"  peak {gib(peak)} GiB per chip: {'fits' if m else 'refused'}")
    probes.append((vpc, peak, m is not None))
    if same_program:
      peaks[vpc] = peak
      if m is not None:
        fits[vpc] = m
  (b1, p1, _), (b2, p2, _) = probes
  if p1 is None or p2 is None or b2 <= b1:
    raise CompileCheckError("config.compile.probe_batches: two increasing batches whose "
                            "peak memory the compiler reports are needed, got "
                            f"{[(b, p) for b, p, _ in probes]}")
  slope = (p2 - p1) / (b2 - b1)
  intercept = p1 - slope * b1
  predicted = max(int((target.hbm_limit - intercept) // slope), 1) if slope > 0 else b2
  lo = max(fits, default=0)                                  # fits
  hi = min((b for b, p in peaks.items() if b not in fits), default=None)  # refused
  guess, confirmed = predicted, False
  for _ in range(max_compiles):
    if (hi is not None and hi - lo <= 1) or (confirmed and not cc.check_above):
      break
    vpc = max(lo + 1, min(guess, hi - 1) if hi is not None else guess)
    say(f"confirm: train step at {vpc} videos per chip (scan_unroll="
        f"{config.model.scan_unroll}) ...")
    peaks[vpc], m = _peak(config, target, own_model, vpc)
    say(f"  peak {gib(peaks[vpc])} GiB per chip: {'fits' if m else 'refused'}")
    if m is not None:
      lo, fits[vpc], confirmed = vpc, m, True
    else:
      hi = vpc
    guess = _secant(lo, peaks.get(lo), hi, peaks.get(hi), target.hbm_limit, slope)
  refused_above = hi is not None and hi - lo <= 1
  return BatchSearch(lo, predicted, slope, intercept, probes, fits.get(lo), refused_above)


def gib(x: Optional[float]) -> str:
  """Bytes as GiB with 2 decimals ("-" when unknown)."""
  return "-" if x is None else f"{x / GiB:.2f}"


def _secant(lo: int, p_lo: Optional[int], hi: Optional[int], p_hi: Optional[int],
            limit: int, slope: float) -> int:
  """The next batch to try: where the line through the nearest fitting and refused
  points (or from the fitting one at the probes' slope) reaches the limit."""
  if hi is None or p_hi is None or p_lo is None or hi == lo:
    base, peak = (lo, p_lo) if p_lo is not None else (hi or 1, p_hi or limit)
    step = (limit - peak) / slope if slope > 0 else 1
    return int(base + step) if step >= 1 else base + 1
  return lo + int((limit - p_lo) * (hi - lo) / max(p_hi - p_lo, 1))
