"""Device mesh, logical-axis sharding rules, global batch assembly and gathering.

Layer: foundation (jax only).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")  # the batch is split over every device


def make_mesh(data: int = -1, fsdp: int = 1, devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A 2-D ("data", "fsdp") mesh over `devices` (default: all, across hosts).

  One of the sizes may be -1: it takes what is left. The product must equal the device
  count.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  sizes = [data, fsdp]
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh: at most one of data/fsdp may be -1, got {sizes}")
  if -1 in sizes:
    known = math.prod(s for s in sizes if s != -1)
    if known <= 0 or n % known:
      raise ValueError(f"config.mesh: {n} devices cannot be split with data={data}, "
                       f"fsdp={fsdp}")
    sizes[sizes.index(-1)] = n // known
  if math.prod(sizes) != n or min(sizes) < 1:
    raise ValueError(f"config.mesh: data x fsdp = {sizes[0]} x {sizes[1]} must equal the "
                     f"{n} available devices")
  slices = len({getattr(d, "slice_index", 0) for d in devices})
  try:
    if slices > 1 and sizes[0] % slices == 0:
      # Multi-slice: the data axis spans the slices (data-centre network), each fsdp
      # group stays inside one slice (ICI).
      grid = mesh_utils.create_hybrid_device_mesh([sizes[0] // slices, sizes[1]],
                                                  [slices, 1], devices)
    else:
      grid = mesh_utils.create_device_mesh(sizes, devices)
  except Exception:  # pylint: disable=broad-except  # e.g. CPU devices with no topology
    grid = np.array(devices).reshape(sizes)
  return Mesh(grid, MESH_AXES)


def _mesh_axes_for(names: Sequence[Optional[str]], rules: Mapping[str, Any],
                   shape: Sequence[int], mesh: Mesh) -> P:
  """Logical names of one array -> PartitionSpec; a mesh axis is used at most once and
  only where it divides the dimension (otherwise that dimension stays replicated)."""
  used, spec = set(), []
  for name, dim in zip(names, shape):
    axes = rules.get(name) if name is not None else None
    if axes is None:
      spec.append(None)
      continue
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
    size = math.prod(mesh.shape[a] for a in axes)
    if not axes or dim % size:
      spec.append(None)
      continue
    used.update(axes)
    spec.append(axes[0] if len(axes) == 1 else axes)
  return P(*spec)


def param_shardings(logical: Any, shapes: Any, mesh: Mesh,
                    rules: Mapping[str, Any]) -> Any:
  """NamedShardings for a params tree.

  Args:
    logical: tree of PartitionSpecs of logical axis names (`clip.logical_axes`).
    shapes: matching tree of arrays or ShapeDtypeStructs.
    mesh: the device mesh.
    rules: logical name -> mesh axis (or tuple of axes, or None), e.g.
      {"embed": "fsdp", "mlp": None}. Names absent from the rules are replicated.
  """
  is_spec = lambda x: isinstance(x, P)
  return jax.tree_util.tree_map(
      lambda names, s: NamedSharding(mesh, _mesh_axes_for(tuple(names), rules, s.shape, mesh)),
      logical, shapes, is_leaf=is_spec)


def opt_state_shardings(abstract_opt_state: Any, params_sharding: Any, params_shapes: Any,
                        mesh: Mesh) -> Any:
  """Shardings for an optimizer state: a leaf that mirrors a parameter (Adam moments,
  found by the parameter's key path at the end of the leaf's path and its shape) is
  placed like that parameter; anything else (counts, masked nodes) is replicated."""
  def dict_keys(path):
    return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))

  by_path = {}
  for (path, sh), (_, shape) in zip(
      jax.tree_util.tree_flatten_with_path(params_sharding)[0],
      jax.tree_util.tree_flatten_with_path(params_shapes)[0]):
    by_path[dict_keys(path)] = (sh, tuple(shape.shape))
  rep = replicated(mesh)

  def place(path, leaf):
    keys = dict_keys(path)
    for i in range(len(keys)):
      hit = by_path.get(keys[i:])
      if hit is not None and hit[1] == tuple(getattr(leaf, "shape", ())):
        return hit[0]
    return rep

  return jax.tree_util.tree_map_with_path(place, abstract_opt_state)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Batch arrays are split on their leading axis over every mesh axis."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def process_batch_rows(mesh: Mesh, global_size: int) -> np.ndarray:
  """int64[b]: the rows of a global batch of `global_size` rows that this process holds.

  `global_batch` places a process's local rows, in order, at these global positions.
  They are contiguous when the mesh lists each host's devices together (`make_mesh` on
  CPU / GPU), but a topology-aware TPU mesh may interleave hosts, so code that must
  know which global row a local row becomes (evaluation order) asks here.
  """
  index_map = batch_sharding(mesh, 1).addressable_devices_indices_map((global_size,))
  ranges = sorted({idx[0].indices(global_size)[:2] for idx in index_map.values()})
  return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in ranges])


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Process-local batch slices -> global jax.Arrays sharded on the batch axis.

  Each process passes its own rows (b = B / process_count); the result has B rows, and
  local row i lands at global row `process_batch_rows(mesh, B)[i]` (process-major
  order when every host's devices are contiguous in the mesh).
  """
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)),
                                                    np.asarray(v))
          for k, v in local.items()}


def gather(x) -> np.ndarray:
  """A batch-sharded global array -> the whole array in global row order, as numpy, on
  every process (an all-gather across hosts; a plain copy on one host)."""
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def describe(shardings: Any) -> str:
  """One line per distinct (spec) with the number of leaves using it, for logs."""
  counts: dict[str, int] = {}
  for s in jax.tree_util.tree_leaves(shardings):
    key = str(s.spec)
    counts[key] = counts.get(key, 0) + 1
  return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))
