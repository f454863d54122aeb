"""TPU slices without the hardware: topology names, their compile-only devices, chip specs.

Layer: foundation (jax only). With libtpu installed (`pip install -e ".[tpu]"`) the TPU
compiler runs on any x86 CPU: `devices("v5p-128")` gives the 64 chips of that slice as
compile-only devices, over which a `Mesh` and `jax.jit(...).lower(...).compile()` work
as on the slice itself (nothing can be executed on them).

  spec = resolve("v5e-64")      # SliceSpec(generation "v5e", topology "v5e:8x8", 64 chips)
  devs = devices(spec)          # 64 compile-only TPU devices, 16 hosts
  CHIPS["v5e"].peak_flops       # 197e12 bf16 FLOP/s per chip
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
from typing import Any, Sequence

from jax.experimental import topologies

GiB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
  """Public per-chip figures of a TPU generation (bfloat16 peak, HBM, HBM bandwidth)."""
  name: str
  peak_flops: float        # bfloat16 FLOP/s
  hbm_bytes: int
  hbm_bandwidth: float     # bytes/s
  megacore: bool           # two TensorCores driven as one device (v4, v5p)


CHIPS = {
    "v4": Chip("TPU v4", 275e12, 32 * GiB, 1228e9, True),
    "v5e": Chip("TPU v5e", 197e12, 16 * GiB, 819e9, False),
    "v5p": Chip("TPU v5p", 459e12, 95 * GiB, 2765e9, True),
    "v6e": Chip("TPU v6e", 918e12, 32 * GiB, 1640e9, False),
}
# Accelerator-type prefixes (gcloud's --accelerator-type) -> generation.
_TYPE_PREFIXES = {"v4": "v4", "v5p": "v5p", "v5e": "v5e", "v5litepod": "v5e", "v6e": "v6e"}
# Chips -> physical shape of the slice: 3-D tori (v4, v5p), 2-D meshes (v5e, v6e).
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
              256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
              256: "16x16"}


class TopologyError(ValueError):
  """An unknown slice or topology name, or no TPU compiler (libtpu) installed."""


@dataclasses.dataclass(frozen=True)
class SliceSpec:
  """One TPU slice (or `num_slices` identical slices joined over the data-centre network).

  Attributes:
    name: as given ("v5p-128", "v5e:8x8").
    generation: "v4" | "v5e" | "v5p" | "v6e".
    topology: libtpu's topology name, e.g. "v5p:4x4x4".
    chips: chips per slice.
    num_slices: slices (multi-slice when > 1).
  """
  name: str
  generation: str
  topology: str
  chips: int
  num_slices: int = 1

  @property
  def chip(self) -> Chip:
    return CHIPS[self.generation]

  @property
  def total_chips(self) -> int:
    return self.chips * self.num_slices

  def label(self) -> str:
    base = f"{self.name} ({self.topology}, {self.chips} chips)"
    return base if self.num_slices == 1 else f"{self.num_slices} x {base}"


def resolve(name: str, num_slices: int = 1) -> SliceSpec:
  """A slice from an accelerator type ("v4-32", "v5litepod-64", "v5p-128", "v6e-16") or a
  topology name ("v4:2x2x4", "v5e:8x8").

  Accelerator types of v4 and v5p count TensorCores (two per chip), those of v5e and
  v6e count chips, as gcloud's --accelerator-type does.
  """
  if num_slices < 1:
    raise TopologyError(f"num_slices must be >= 1, got {num_slices}")
  m = re.fullmatch(r"(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})", name)
  if m:
    generation, shape = m.groups()
    dims = [int(d) for d in shape.split("x")]
    if len(dims) != (3 if CHIPS[generation].megacore else 2):
      raise TopologyError(f"topology {name!r}: {generation} slices are "
                          f"{'3' if CHIPS[generation].megacore else '2'}-D (e.g. "
                          f"{_example(generation)})")
    return SliceSpec(name, generation, name, math.prod(dims), num_slices)
  m = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e)-(\d+)", name)
  if not m:
    raise TopologyError(f"unknown TPU slice {name!r}: give an accelerator type (v4-32, "
                        "v5litepod-64, v5p-128, v6e-16) or a topology (v4:2x2x4, v5e:8x8)")
  generation = _TYPE_PREFIXES[m.group(1)]
  count = int(m.group(2))
  chip = CHIPS[generation]
  chips = count // 2 if chip.megacore else count
  shapes = _SHAPES_3D if chip.megacore else _SHAPES_2D
  if (chip.megacore and count % 2) or chips not in shapes:
    known = ", ".join(f"{m.group(1)}-{c * 2 if chip.megacore else c}" for c in shapes)
    raise TopologyError(f"no {generation} slice {name!r}; known: {known}")
  return SliceSpec(name, generation, f"{generation}:{shapes[chips]}", chips, num_slices)


def _example(generation: str) -> str:
  return f"{generation}:{'2x2x1' if CHIPS[generation].megacore else '2x2'}"


def devices(spec: SliceSpec) -> Sequence[Any]:
  """The slice's compile-only TPU devices, one per chip (megacore on v4 / v5p).

  Raises TopologyError when libtpu is not installed or does not know the topology.
  """
  kwargs = {"chip_config_name": "megacore"} if spec.chip.megacore else {}
  if spec.num_slices > 1:
    kwargs["num_slices"] = spec.num_slices
  try:
    devs = topologies.get_topology_desc(topology_name=spec.topology, platform="tpu",
                                        **kwargs).devices
  except Exception as e:  # pylint: disable=broad-except  # libtpu's errors are untyped
    hint = ("" if _has_libtpu() else
            ' (no TPU compiler here: pip install -e ".[tpu]" installs libtpu for this jax)')
    raise TopologyError(f"cannot build the TPU topology {spec.topology!r}{hint}: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
  if len(devs) != spec.total_chips:
    raise TopologyError(f"{spec.topology} gave {len(devs)} devices for "
                        f"{spec.total_chips} chips")
  return devs


def num_hosts(devs: Sequence[Any]) -> int:
  return len({d.process_index for d in devs})


def _has_libtpu() -> bool:
  return importlib.util.find_spec("libtpu") is not None
