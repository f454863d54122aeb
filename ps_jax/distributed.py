"""Multi-host start-up shared by every command line: `jax.distributed.initialize()` when
several processes are detected or asked for.

Layer: foundation. Each setting comes from a flag, else its environment variable
(JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); on Cloud TPU VMs and under
SLURM, JAX detects them itself.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

import jax

ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
       "process_id": "JAX_PROCESS_ID"}
HELP = ("Outside SLURM and Cloud TPU VMs (where they are detected) give "
        "--coordinator_address=host:port, --num_processes and --process_id (or "
        "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)")


class DistributedError(ValueError):
  """A multi-host setting that cannot be used; the message names the flag or variable."""


def settings(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
             process_id: Optional[int] = None,
             env: Optional[Mapping[str, str]] = None) -> dict:
  """{"coordinator_address", "num_processes", "process_id"}: each flag value, else its
  environment variable, else None."""
  env = os.environ if env is None else env
  out = {"coordinator_address": coordinator_address, "num_processes": num_processes,
         "process_id": process_id}
  for key, name in ENV.items():
    raw = env.get(name, "")
    if out[key] is not None or not raw:
      continue
    if key == "coordinator_address":
      out[key] = raw
      continue
    try:
      out[key] = int(raw)
    except ValueError:
      raise DistributedError(f"{name}={raw!r} (the default of --{key}) is not a valid "
                             "int") from None
  return out


def wanted(args: Mapping, force: Optional[bool] = None,
           env: Optional[Mapping[str, str]] = None) -> bool:
  """Whether to call `jax.distributed.initialize()`: `force` if given, else when the
  settings or the environment (SLURM, a multi-worker TPU slice) name several processes."""
  if force is not None:
    return force
  env = os.environ if env is None else env
  if args.get("coordinator_address") or (args.get("num_processes") or 1) > 1:
    return True
  try:
    slurm = int(env.get("SLURM_NTASKS", "1") or 1)
  except ValueError:
    slurm = 1
  return slurm > 1 or "," in env.get("TPU_WORKER_HOSTNAMES", "")


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, force: Optional[bool] = None) -> bool:
  """Joins the processes of a multi-host run if there is one; returns whether it did.

  Raises:
    DistributedError: bad settings, with the flags to give.
  """
  args = settings(coordinator_address, num_processes, process_id)
  if not wanted(args, force):
    return False
  try:
    jax.distributed.initialize(**args)
  except (ValueError, TypeError) as e:
    raise DistributedError(f"jax.distributed.initialize(): {str(e).rstrip('.')}. {HELP}.") from e
  return True
