"""Shared transformer building blocks: attention, MLP, LayerNorm, partitioned params.

Layer: models (no ps_jax imports).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any

# jax.checkpoint policies selectable from config (`remat_policy`); "none" disables remat.
REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole layer
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable":
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

ATTENTION_IMPLS = ("xla", "dot_product_attention")


DENSE_INIT_STD = 0.02  # every projection kernel's init std (CLIP's initializer_range)


def dense_init(stddev: float = DENSE_INIT_STD):
  return nn.initializers.normal(stddev)


def torch_linear_init() -> Callable:
  """`torch.nn.Linear`'s default weight initialisation on a kernel [in, out].

  kaiming_uniform(a=sqrt(5)) over fan_in = in: U(-1/sqrt(in), 1/sqrt(in)).
  """
  return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> Callable:
  """`torch.nn.Linear`'s default bias initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

  Args:
    fan_in: input width of the layer the bias belongs to.
  """
  bound = fan_in ** -0.5

  def init(key: Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def partitioned(init: Callable, names: Sequence[Optional[str]]) -> Callable:
  """Attaches logical axis names to a parameter initialiser (read by sharding rules)."""
  return nn.with_logical_partitioning(init, tuple(names))


def activation(name: str) -> Callable[[Array], Array]:
  """The MLP activations of HF CLIP configs (`hidden_act`)."""
  if name == "quick_gelu":
    return lambda x: x * jax.nn.sigmoid(1.702 * x)
  if name == "gelu":
    return lambda x: jax.nn.gelu(x, approximate=False)
  if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
    return lambda x: jax.nn.gelu(x, approximate=True)
  if name == "relu":
    return jax.nn.relu
  raise ValueError(f"Unsupported hidden_act {name!r}; expected one of quick_gelu, gelu, "
                   "gelu_new, gelu_pytorch_tanh, relu")


class LayerNorm(nn.Module):
  """LayerNorm over the last axis, statistics in float32, params `scale` and `bias`."""
  eps: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d = x.shape[-1]
    scale = self.param("scale", partitioned(nn.initializers.ones, ("norm",)), (d,))
    bias = self.param("bias", partitioned(nn.initializers.zeros, ("norm",)), (d,))
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias
    return y.astype(self.dtype)


@jax.custom_vjp
def mixed_precision_matmul(x: Array, kernel: Array) -> Array:
  """x[..., K] @ kernel[K, N] with low-precision operands and float32 accumulation.

  The kernel (float32) is rounded to x's dtype inside, so a scanned layer saves the
  float32 slice it already holds instead of a stacked low-precision copy. Every matmul,
  forward and backward, has operands in x's dtype and a float32 result: on TPUs and
  GPUs that is what a bfloat16 matmul computes anyway, and on CPUs with AVX512-BF16 it
  is the form XLA runs natively (bfloat16 -> bfloat16 dots are upcast to float32).

  Returns:
    float32[..., N]. Gradients: x's dtype for x, float32 for the kernel.
  """
  return _contract_last(x, kernel.astype(x.dtype))


def _contract_last(x: Array, kernel: Array) -> Array:
  return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())),
                             preferred_element_type=jnp.float32)


def _mixed_precision_matmul_fwd(x, kernel):
  return mixed_precision_matmul(x, kernel), (x, kernel)


def _mixed_precision_matmul_bwd(res, g):
  x, kernel = res
  g = g.astype(x.dtype)
  dx = jax.lax.dot_general(g, kernel.astype(x.dtype), (((g.ndim - 1,), (1,)), ((), ())),
                           preferred_element_type=jnp.float32)
  rows = tuple(range(x.ndim - 1))
  dkernel = jax.lax.dot_general(x, g, ((rows, rows), ((), ())),
                                preferred_element_type=jnp.float32)
  return dx.astype(x.dtype), dkernel


mixed_precision_matmul.defvjp(_mixed_precision_matmul_fwd, _mixed_precision_matmul_bwd)


def matmul(x: Array, kernel: Array, dtype: Dtype) -> Array:
  """x[..., K] @ kernel[K, N] computed in `dtype`.

  float32: a plain float32 matmul (`nn.Dense`'s). Lower precision: operands rounded to
  `dtype`, float32 accumulation (`mixed_precision_matmul`); the result is float32 so
  that a bias is added before rounding, and the caller casts it.
  """
  if jnp.dtype(dtype) == jnp.float32:
    return _contract_last(x.astype(jnp.float32), kernel)
  return mixed_precision_matmul(x.astype(dtype), kernel)


class Dense(nn.Module):
  """`nn.Dense` params (kernel [in, out], bias [out], float32, logical names (in, out))
  computing in `dtype` via `matmul`; returns `dtype`."""
  features: int
  names: tuple[str, str]
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  kernel_init: Callable = dense_init()
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", partitioned(self.kernel_init, self.names),
                        (x.shape[-1], self.features), jnp.float32)
    y = matmul(x, kernel, self.dtype)
    if self.use_bias:
      y = y + self.param("bias", partitioned(self.bias_init, (self.names[1],)),
                         (self.features,), jnp.float32)
    return y.astype(self.dtype)


def cudnn_attention_supported(q: Array, k: Array, bias: Optional[Array]) -> bool:
  """Whether `jax.nn.dot_product_attention(implementation="cudnn")` (cuDNN flash
  attention) accepts these shapes: a CUDA GPU, bfloat16/float16 inputs, a head dim that
  is a multiple of 8 and at most 128, and, with a bias, even query and key lengths (the
  conditions JAX checks for training; Hopper allows head dims up to 256)."""
  if jax.default_backend() != "gpu" or "cuda" not in jax.devices()[0].client.platform_version:
    return False
  if q.dtype not in (jnp.bfloat16, jnp.float16) or q.shape[-1] % 8 or q.shape[-1] > 128:
    return False
  return bias is None or (q.shape[1] % 2 == 0 and k.shape[1] % 2 == 0)


def dot_product_attention(q: Array, k: Array, v: Array, bias: Optional[Array],
                          impl: str = "xla") -> Array:
  """Softmax attention.

  Args:
    q: [B, Tq, H, Dh]; k, v: [B, Tk, H, Dh].
    bias: additive float32 mask broadcastable to [B, H, Tq, Tk], or None.
    impl: "xla" (einsum + float32 softmax) or "dot_product_attention"
      (`jax.nn.dot_product_attention`: cuDNN flash attention where
      `cudnn_attention_supported`, its XLA implementation elsewhere).

  Returns:
    [B, Tq, H, Dh] in q's dtype.
  """
  scale = q.shape[-1] ** -0.5
  if impl == "dot_product_attention":
    if bias is not None:
      bias = bias.astype(q.dtype)
    # implementation=None would always pick XLA: ask for cuDNN explicitly.
    backend = "cudnn" if cudnn_attention_supported(q, k, bias) else "xla"
    return jax.nn.dot_product_attention(q, k, v, bias=bias, scale=scale,
                                        implementation=backend)
  if impl != "xla":
    raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  if bias is not None:
    logits = logits + bias
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


class MultiHeadAttention(nn.Module):
  """HF CLIP attention: separate q/k/v/out projections with biases."""
  num_heads: int
  dtype: Dtype = jnp.float32
  attention_impl: str = "xla"

  @nn.compact
  def __call__(self, x: Array, bias: Optional[Array] = None) -> Array:
    """x: [B, T, D]; bias: additive mask broadcastable to [B, H, T, T] -> [B, T, D]."""
    d = x.shape[-1]
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by num_heads {self.num_heads}")
    head_dim = d // self.num_heads

    def proj(name):
      y = Dense(d, ("embed", "joined_kv"), dtype=self.dtype, name=name)(x)
      return y.reshape(*x.shape[:-1], self.num_heads, head_dim)

    out = dot_product_attention(proj("q_proj"), proj("k_proj"), proj("v_proj"), bias,
                                self.attention_impl)
    out = out.reshape(*x.shape[:-1], d)
    return Dense(d, ("joined_kv", "embed"), dtype=self.dtype, name="out_proj")(out)


class Mlp(nn.Module):
  """fc1 -> activation -> fc2."""
  intermediate_size: int
  hidden_act: str = "quick_gelu"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d = x.shape[-1]
    h = Dense(self.intermediate_size, ("embed", "mlp"), dtype=self.dtype, name="fc1")(x)
    h = activation(self.hidden_act)(h)
    return Dense(d, ("mlp", "embed"), dtype=self.dtype, name="fc2")(h)


def causal_bias(length: int) -> Array:
  """float32[1, 1, L, L]: 0 on and below the diagonal, a large negative number above."""
  keep = jnp.tril(jnp.ones((length, length), jnp.bool_))
  return jnp.where(keep, 0.0, jnp.finfo(jnp.float32).min)[None, None]


def padding_bias(attention_mask: Array) -> Array:
  """attention_mask int[B, L] (1 = keep) -> float32[B, 1, 1, L] additive bias."""
  return jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)


class PackedAttention(nn.Module):
  """`torch.nn.MultiheadAttention` semantics: packed q/k/v in-projection with bias.

  Params: in_proj/{kernel [D, 3D], bias [3D]} (torch in_proj_weight transposed) and
  out_proj/{kernel, bias}. Initialised as torch does: in_proj kernel xavier_uniform over
  the packed [D, 3D], out_proj kernel `torch_linear_init` (zero with `zero_out`), biases 0.
  """
  num_heads: int
  dtype: Dtype = jnp.float32
  attention_impl: str = "xla"
  zero_out: bool = False

  @nn.compact
  def __call__(self, x: Array, memory: Array, bias: Optional[Array] = None) -> Array:
    """x: [B, Tq, D] queries; memory: [B, Tk, D] keys/values -> [B, Tq, D]."""
    d = x.shape[-1]
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by num_heads {self.num_heads}")
    kernel = self.param("in_proj_kernel", partitioned(nn.initializers.xavier_uniform(),
                                                      ("embed", "joined_kv")), (d, 3 * d))
    in_bias = self.param("in_proj_bias", partitioned(nn.initializers.zeros, ("joined_kv",)),
                         (3 * d,))
    split = lambda t: t.reshape(*t.shape[:-1], self.num_heads, d // self.num_heads)
    in_proj = lambda t, part: (matmul(t, kernel[:, part * d:(part + 1) * d], self.dtype)
                               + in_bias[part * d:(part + 1) * d]).astype(self.dtype)
    q, k, v = split(in_proj(x, 0)), split(in_proj(memory, 1)), split(in_proj(memory, 2))
    out = dot_product_attention(q, k, v, bias, self.attention_impl).reshape(*x.shape[:-1], d)
    out_init = nn.initializers.zeros if self.zero_out else torch_linear_init()
    return Dense(d, ("joined_kv", "embed"), dtype=self.dtype, kernel_init=out_init,
                 name="out_proj")(out)
