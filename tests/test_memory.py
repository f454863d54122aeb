"""Memory knobs, measured on XLA's own plan of compiled programs (nothing is allocated
for the measurements): remat policies, gradient accumulation, and the activation
estimate of launch/memory_estimate.py against what XLA:CPU compiles."""

import importlib.util
import os

import jax
import pytest

from ps_jax import sharding
from train_fixtures import REPO, make_train_step, tiny_batch, tiny_model

# launch/README.md states it: the estimate is within 30% of XLA:CPU's temporaries.
ESTIMATE_TOLERANCE = 0.3


@pytest.fixture(scope="module")
def memory_estimate():
  spec = importlib.util.spec_from_file_location(
      "memory_estimate", os.path.join(REPO, "launch", "memory_estimate.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def measured(memory_estimate):
  """{remat policy: {"temp", "estimate"}} for the loss gradient of 8 videos x 6 frames
  of the tiny backbone (`memory_estimate.py --measure --models tiny --videos 8`)."""
  return {r: memory_estimate.measure("tiny", 8, 6, r, "float32")
          for r in ("none", "dots_saveable", "full")}


def test_remat_policies_order_the_compiled_temporaries(measured):
  temp = {r: m["temp"] for r, m in measured.items()}
  assert temp["full"] < temp["dots_saveable"] < temp["none"], temp
  assert temp["full"] < 0.5 * temp["none"], temp


def test_activation_estimate_is_within_its_stated_tolerance(measured):
  for remat, m in measured.items():
    assert abs(m["estimate"] / m["temp"] - 1) <= ESTIMATE_TOLERANCE, (remat, m)


def test_gradient_accumulation_cuts_the_steps_temporaries():
  """The trainer's own jitted step at a global batch of 32: 4 micro-batches of 8 need
  less than half the temporaries of one batch of 32."""
  mesh = sharding.make_mesh(1, 1, jax.devices()[:1])
  batch = tiny_batch(batch=32, frames=4)
  temp = {}
  for accum in (1, 4):
    state, step, _ = make_train_step(tiny_model(), mesh, batch, grad_accum_steps=accum)
    compiled = step.lower(state, sharding.global_batch(batch, mesh)).compile()
    temp[accum] = compiled.memory_analysis().temp_size_in_bytes
  assert 0 < temp[4] < 0.5 * temp[1], temp
