"""Building blocks with logical axis names on every parameter: dense, embeddings, norms, MLP.

Dense layers multiply 2-D [rows, features] operands: XLA:CPU runs dots with one contracting
dimension much faster than dots over [batch, length, ...] (the weight gradient would contract
over two dimensions), and the reshapes are free on every backend.
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.models.config import ModelConfig


def param_with_axes(module, name, init, shape, axes, dtype):
  """Declares a parameter whose dimensions carry logical axis names."""
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


def constrain(x, axes: Sequence[str | None]):
  """Activation sharding by logical names (a no-op outside a mesh context)."""
  return nn.with_logical_constraint(x, tuple(axes))


class DenseGeneral(nn.Module):
  """y = x @ W (+ b), with W of shape in_shape + out_shape, computed as one 2-D matmul.

  `x` has the in_shape dimensions last; they are contracted and replaced by out_shape.
  """
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  axes: tuple[str | None, ...]
  cfg: ModelConfig
  init_std: float | None = None
  use_bias: bool | None = None  # None: cfg.use_bias

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    std = cfg.init_std if self.init_std is None else self.init_std
    w = param_with_axes(self, "kernel", nn.initializers.normal(std),
                        self.in_shape + self.out_shape, self.axes, cfg.weight_dtype)
    n_in = len(self.in_shape)
    batch_shape = x.shape[:x.ndim - n_in]
    x_NI = x.reshape(-1, w.size // _prod(self.out_shape)).astype(cfg.compute_dtype)
    w_IO = w.reshape(x_NI.shape[1], -1).astype(cfg.compute_dtype)
    y_NO = x_NI @ w_IO
    if cfg.use_bias if self.use_bias is None else self.use_bias:
      b = param_with_axes(self, "bias", nn.initializers.zeros, self.out_shape,
                          self.axes[n_in:], cfg.weight_dtype)
      y_NO = y_NO + b.reshape(-1).astype(cfg.compute_dtype)
    return y_NO.reshape(batch_shape + self.out_shape)


def _prod(shape):
  n = 1
  for s in shape:
    n *= s
  return n


class Norm(nn.Module):
  """LayerNorm or RMSNorm over the last axis, computed in float32."""
  cfg: ModelConfig
  axis_name: str = "embed"  # logical name of the normalized axis ("head_dim" for qk-norm)

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    d = x.shape[-1]
    scale = param_with_axes(self, "scale", nn.initializers.ones, (d,), (self.axis_name,),
                            cfg.weight_dtype)
    x32 = x.astype(jnp.float32)
    if cfg.norm == "layernorm":
      x32 = x32 - jnp.mean(x32, axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + cfg.norm_eps)
    y = y * scale.astype(jnp.float32)
    if cfg.norm == "layernorm" and cfg.use_bias:
      y = y + param_with_axes(self, "bias", nn.initializers.zeros, (d,), (self.axis_name,),
                              cfg.weight_dtype).astype(jnp.float32)
    return y.astype(cfg.compute_dtype)


@jax.custom_vjp
def gelu_exact(x):
  """x * Phi(x) (erf GELU, as torch's default), with a hand-written gradient.

  Autodiff of erf re-derives Phi's derivative through extra elementwise passes; reusing the
  forward's Phi makes the MLP's backward about 4 % cheaper on XLA:CPU, bit-identical values.
  """
  return x * _normal_cdf(x)


def _normal_cdf(x):
  return 0.5 * (1 + jax.lax.erf(x * 0.7071067811865476))


def _gelu_fwd(x):
  cdf = _normal_cdf(x)
  return x * cdf, (x, cdf)


def _gelu_bwd(res, g):
  x, cdf = res
  pdf = jnp.exp(-0.5 * x * x) * 0.3989422804014327  # 1 / sqrt(2 pi)
  return (g * (cdf + x * pdf),)


gelu_exact.defvjp(_gelu_fwd, _gelu_bwd)

_ACTIVATIONS = {
    "gelu": gelu_exact,
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swiglu": jax.nn.silu,
    "geglu": lambda x: jax.nn.gelu(x, approximate=True),
}


class Mlp(nn.Module):
  """Position-wise feed-forward block; gated variants (swiglu, geglu) use two input kernels."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BLD):
    cfg = self.cfg
    d, f = cfg.d_model, cfg.mlp_dim
    act = _ACTIVATIONS[cfg.activation]
    h_BLF = act(DenseGeneral((d,), (f,), ("embed", "mlp"), cfg, name="wi")(x_BLD))
    if cfg.gated:
      h_BLF = h_BLF * DenseGeneral((d,), (f,), ("embed", "mlp"), cfg, name="wi_gate")(x_BLD)
    h_BLF = constrain(h_BLF, ("batch", "length", "mlp"))
    return DenseGeneral((f,), (d,), ("mlp", "embed"), cfg, init_std=cfg.residual_init_std,
                        name="wo")(h_BLF)


class Embed(nn.Module):
  """Token embedding table; `attend` reuses it as the tied output projection."""
  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    self.embedding = param_with_axes(self, "embedding", nn.initializers.normal(cfg.init_std),
                                     (cfg.padded_vocab_size, cfg.d_model), ("vocab", "embed"),
                                     cfg.weight_dtype)

  def __call__(self, tokens_BL):
    return jnp.take(self.embedding, tokens_BL, axis=0).astype(self.cfg.compute_dtype)

  def attend(self, x_BLD):
    x_ND = x_BLD.reshape(-1, x_BLD.shape[-1])
    logits_NV = x_ND @ self.embedding.astype(self.cfg.compute_dtype).T
    return logits_NV.reshape(x_BLD.shape[:-1] + (-1,))
