"""Resumes a tiny training run on 8 fake CPU devices (mesh data=4, fsdp=2).

Usage: XLA_FLAGS=--xla_force_host_platform_device_count=8 python resume_on_mesh.py WORKDIR DATA
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

from ps_jax import train  # noqa: E402
from train_fixtures import tiny_config  # noqa: E402


def main():
  assert jax.device_count() == 8, jax.devices()
  workdir, data_root = sys.argv[1:3]
  train.train_and_evaluate(tiny_config(**{"data.dir": data_root, "mesh.data": 4,
                                          "mesh.fsdp": 2}), workdir)


if __name__ == "__main__":
  main()
