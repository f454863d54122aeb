"""The matmul building blocks against float64 references."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ps_jax.models import layers as L


def bf16_round(a) -> np.ndarray:
  """float64 copy of `a` rounded to bfloat16."""
  return np.asarray(jnp.asarray(a, jnp.float32).astype(jnp.bfloat16), np.float64)


@pytest.mark.parametrize("x_shape", [(5, 24), (2, 7, 24)])
def test_mixed_precision_matmul_is_bf16_operands_with_float32_accumulation(x_shape):
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, x_shape).astype(jnp.bfloat16)
  w = jax.random.normal(kw, (24, 40), jnp.float32)
  g = jax.random.normal(kg, (*x_shape[:-1], 40), jnp.float32)

  y, vjp = jax.vjp(L.mixed_precision_matmul, x, w)
  dx, dw = vjp(g)
  assert (y.dtype, dx.dtype, dw.dtype) == (jnp.float32, jnp.bfloat16, jnp.float32)

  x64, w64, g64 = bf16_round(x), bf16_round(w), bf16_round(g)
  rows = tuple(range(len(x_shape) - 1))
  # float32 accumulation of exactly representable products: float32 rounding only.
  np.testing.assert_allclose(y, x64 @ w64, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, np.tensordot(x64, g64, (rows, rows)), rtol=1e-5, atol=1e-5)
  # dx is rounded to bfloat16 (8-bit mantissa): within half an ulp, 2^-9 relative.
  dx_ref = g64 @ w64.T
  np.testing.assert_allclose(np.asarray(dx, np.float64), dx_ref, rtol=2.0 ** -8,
                             atol=1e-6 * np.abs(dx_ref).max())


def test_matmul_float32_is_the_plain_matmul_and_bf16_tracks_it():
  kx, kw = jax.random.split(jax.random.PRNGKey(1))
  x = jax.random.normal(kx, (3, 6, 32))
  w = jax.random.normal(kw, (32, 16)) * 0.1
  exact = jax.lax.dot_general(x, w, (((2,), (0,)), ((), ())))
  np.testing.assert_array_equal(L.matmul(x, w, jnp.float32), exact)
  low = L.matmul(x, w, jnp.bfloat16)
  assert low.dtype == jnp.float32
  rel = float(jnp.linalg.norm(low - exact) / jnp.linalg.norm(exact))
  assert rel < 1e-2, rel  # two bfloat16 roundings of the operands, ~2^-8 each


def test_dense_bf16_gradients_match_float32_and_kernel_grad_is_float32():
  x = jax.random.normal(jax.random.PRNGKey(2), (4, 9, 16))
  dense32 = L.Dense(12, ("embed", "mlp"))
  dense16 = L.Dense(12, ("embed", "mlp"), dtype=jnp.bfloat16)
  params = nn.unbox(dense32.init(jax.random.PRNGKey(3), x))
  params = jax.tree_util.tree_map(lambda p: p + 0.1, params)  # non-zero bias

  def loss(module, p):
    return jnp.sum(jnp.sin(module.apply(p, x).astype(jnp.float32)))

  g32 = jax.grad(lambda p: loss(dense32, p))(params)
  g16 = jax.grad(lambda p: loss(dense16, p))(params)
  assert dense16.apply(params, x).dtype == jnp.bfloat16
  for path, a in jax.tree_util.tree_flatten_with_path(g16)[0]:
    assert a.dtype == jnp.float32, jax.tree_util.keystr(path)
  for a, b in zip(jax.tree_util.tree_leaves(g16), jax.tree_util.tree_leaves(g32)):
    rel = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
    assert rel < 2e-2, rel


def test_matmul_precision_is_the_default_outside_parity_tests():
  """tests/test_clip.py and test_prompt_switch.py ask for "highest" precision through a
  fixture; it must not leak into other modules (all modules are imported before any
  test runs, so a module-level config update would show here)."""
  assert jax.config.jax_default_matmul_precision is None
