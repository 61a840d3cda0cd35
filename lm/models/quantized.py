"""The quantized weight format: symmetric int8 per output channel, int4 in groups.

Every matrix (lm.models.kernels: dense kernels and embedding tables, minus `skip`) is
viewed as W [(X,) I, O] (X: the stacked layers of scan_layers) and stored as
{"q": ..., "scale": ...}:
  int8: q int8 [(X,) I, O], scale float32 [(X,) 1, O] = max_i |W[i, o]| / 127;
  int4: q uint8 [(X,) I/2, O], two values per byte (row 2j in the low nibble, 2j+1 in the high,
        each stored as q + 8), scale float32 [(X,) J, O] = max |W| / 7 over each of the J
        groups of M consecutive input rows (M: the largest divisor of I not above group_size).
W ~= q * scale; rounding to nearest keeps |W - q * scale| <= scale / 2. Norm scales, biases
and the relative-position table stay in float.

A quantized directory's model.json carries {"quantization": {...}}; `lm.load` then keeps the
quantized tree (sharded like the original: a matrix's input and output dimensions keep their
mesh axes where the sizes divide) and runs `QuantizedTransformer`, whose dense layers multiply
activations by the integer weights and scale the outputs: no float copy of the weights is made.
"""
import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.errors import UserError
from lm.models.config import ModelConfig
from lm.models.kernels import Kernel, find_kernels, get_path, set_path
from lm.models.layers import DenseGeneral, Embed
from lm.models.transformer import Transformer

SCHEMES = {"int8": 8, "int4": 4}
QMAX = {8: 127, 4: 7}


def group_for(in_size: int, bits: int, group_size: int) -> int:
  """Rows per scale: all of I for int8; for int4 the largest divisor of I <= group_size."""
  if bits == 8:
    return in_size
  return max(d for d in range(1, min(group_size, in_size) + 1) if in_size % d == 0)


def pack_int4(q):
  """int8 values in [-8, 7], [..., I, O] with I even -> uint8 [..., I/2, O]."""
  u = (q.astype(jnp.int32) + 8).astype(jnp.uint8)
  return u[..., 0::2, :] | (u[..., 1::2, :] << 4)


def unpack_int4(packed):
  """Inverse of pack_int4: uint8 [..., I/2, O] -> int8 [..., I, O]."""
  lo = (packed & 15).astype(jnp.int8) - 8
  hi = (packed >> 4).astype(jnp.int8) - 8
  both = jnp.stack([lo, hi], axis=-2)  # [..., I/2, 2, O]
  return both.reshape(packed.shape[:-2] + (2 * packed.shape[-2], packed.shape[-1]))


def quantize_2d(w_IO, bits: int, group: int) -> dict:
  """W [..., I, O] -> {"q", "scale"} (see the module docstring)."""
  *lead, i, o = w_IO.shape
  w = w_IO.astype(jnp.float32).reshape(tuple(lead) + (i // group, group, o))
  qmax = QMAX[bits]
  scale = jnp.max(jnp.abs(w), axis=-2) / qmax  # [..., J, O]
  safe = jnp.where(scale == 0, 1.0, scale)[..., None, :]
  q = jnp.clip(jnp.round(w / safe), -qmax, qmax).astype(jnp.int8).reshape(w_IO.shape)
  return {"q": pack_int4(q) if bits == 4 else q, "scale": scale}


def dequantize_2d(leaf: dict, dtype=jnp.float32):
  """{"q", "scale"} -> W [..., I, O] in `dtype`."""
  q, scale = leaf["q"], leaf["scale"]
  if q.dtype == jnp.uint8:
    q = unpack_int4(q)
  *lead, i, o = q.shape
  groups = scale.shape[-2]
  w = q.reshape(tuple(lead) + (groups, i // groups, o)).astype(jnp.float32)
  return (w * scale[..., None, :].astype(jnp.float32)).reshape(q.shape).astype(dtype)


def is_quantized(leaf) -> bool:
  return isinstance(leaf, dict) and set(leaf) == {"q", "scale"}


def skip_names(k: Kernel, cfg: ModelConfig) -> set[str]:
  """The `skip` names that leave `k` in float: its path's components, and `unembed` for the
  token table of a tied model, which is also its output projection."""
  tied_unembed = cfg.tie_embeddings and k.path == ("embed", "embedding")
  return set(k.path) | ({"unembed"} if tied_unembed else set())


def selected_kernels(cfg: ModelConfig, bits: int, skip=()) -> list[Kernel]:
  """The matrices a scheme quantizes: all but those `skip` names (skip_names), and, for int4,
  those with an odd input size, which cannot be packed."""
  skip = set(skip)
  return [k for k in find_kernels(cfg) if not skip & skip_names(k, cfg)
          and (bits == 8 or k.in_size % 2 == 0)]


def quantize_params(params, cfg: ModelConfig, scheme: str, group_size: int = 128, skip=()):
  """A copy of `params` whose selected matrices are {"q", "scale"} dicts."""
  bits = SCHEMES[scheme]
  for k in selected_kernels(cfg, bits, skip):
    w_IO = k.as_2d(get_path(params, k.path))
    leaf = quantize_2d(w_IO, bits, group_for(k.in_size, bits, group_size))
    params = set_path(params, k.path, leaf)
  return params


def dequantize_params(qparams, cfg: ModelConfig):
  """The float params (cfg.weight_dtype) a quantized tree stands for."""
  for k in find_kernels(cfg):
    leaf = get_path(qparams, k.path)
    if is_quantized(leaf):
      qparams = set_path(qparams, k.path, k.from_2d(dequantize_2d(leaf, cfg.weight_dtype)))
  return qparams


def quantized_matmul(x_NI, leaf: dict, dtype):
  """x [N, I] @ W [I, O] with W = {"q", "scale"}: integer weights enter the dot as they are
  and the scales multiply its outputs (per group for int4), so no float W is formed."""
  q, scale = leaf["q"], leaf["scale"]
  if q.dtype == jnp.uint8:
    q = unpack_int4(q)
  i, o = q.shape
  groups = scale.shape[0]
  if groups == 1:
    y_NO = jax.lax.dot(x_NI, q, preferred_element_type=jnp.float32) * scale[0]
  else:
    x_JNM = jnp.swapaxes(x_NI.reshape(-1, groups, i // groups), 0, 1)
    y_JNO = jax.lax.dot_general(x_JNM, q.reshape(groups, i // groups, o),
                                (((2,), (1,)), ((0,), (0,))),
                                preferred_element_type=jnp.float32)
    y_NO = jnp.einsum("jno,jo->no", y_JNO, scale)
  return y_NO.astype(dtype)


def _take_rows(leaf: dict, tokens, dtype):
  """Rows `tokens` of an embedding table stored as W = table^T: dequantizes those only."""
  cols = {name: jnp.take(x, tokens.reshape(-1), axis=-1) for name, x in leaf.items()}
  rows = dequantize_2d(cols, dtype).T
  return rows.reshape(tokens.shape + (rows.shape[-1],))


def _intercept(cfg: ModelConfig, embed_leaf, next_fun, args, kwargs, context):
  """Runs DenseGeneral and Embed on quantized weights; everything else as usual."""
  module, method = context.module, context.method_name
  if isinstance(module, DenseGeneral) and method == "__call__":
    leaf = module.get_variable("params", "kernel")  # scanned layers: this layer's slice
    if not is_quantized(leaf):
      return next_fun(*args, **kwargs)
    x = args[0]
    n_in = len(module.in_shape)
    x_NI = x.reshape(-1, math.prod(module.in_shape)).astype(cfg.compute_dtype)
    y_NO = quantized_matmul(x_NI, leaf, cfg.compute_dtype)
    if cfg.use_bias if module.use_bias is None else module.use_bias:
      y_NO = y_NO + module.get_variable("params", "bias").reshape(-1).astype(cfg.compute_dtype)
    return y_NO.reshape(x.shape[:x.ndim - n_in] + module.out_shape)
  if isinstance(module, Embed) and embed_leaf is not None:
    if method == "__call__":
      return _take_rows(embed_leaf, args[0], cfg.compute_dtype)
    if method == "attend":
      x_BLD = args[0]
      logits_NV = quantized_matmul(x_BLD.reshape(-1, x_BLD.shape[-1]), embed_leaf,
                                   cfg.compute_dtype)
      return logits_NV.reshape(x_BLD.shape[:-1] + (-1,))
  return next_fun(*args, **kwargs)


@dataclasses.dataclass(frozen=True)
class QuantizedTransformer:
  """Transformer(cfg) over quantized params: `apply` takes {"params": quantized tree}; inside
  the caller's jit, dense layers multiply by the integer weights (quantized_matmul) and the
  token embedding dequantizes only the rows it looks up. Hashable, with `.cfg`, as
  lm.decoding expects."""
  cfg: ModelConfig

  def apply(self, variables, *args, **kwargs):
    cfg, params = self.cfg, variables["params"]
    embed_leaf = params.get("embed", {}).get("embedding")
    if is_quantized(embed_leaf):
      # Embed's methods are intercepted; its table is a placeholder XLA never builds.
      params = set_path(params, ("embed", "embedding"),
                        jnp.zeros((cfg.padded_vocab_size, cfg.d_model), cfg.weight_dtype))
    else:
      embed_leaf = None
    pos = params.get("pos_embed", {}).get("embedding")
    if is_quantized(pos):  # a small table: dequantized whole
      kernel = next(k for k in find_kernels(cfg) if k.path == ("pos_embed", "embedding"))
      params = set_path(params, kernel.path, kernel.from_2d(dequantize_2d(pos,
                                                                          cfg.weight_dtype)))
    intercept = functools.partial(_intercept, cfg, embed_leaf)
    with nn.intercept_methods(intercept):
      return Transformer(cfg).apply({**variables, "params": params}, *args, **kwargs)


def check_meta(meta: dict) -> dict:
  """model.json's "quantization" entry, validated."""
  if meta.get("scheme") not in SCHEMES:
    raise UserError(f"unknown quantization scheme {meta.get('scheme')!r} in model.json")
  return meta
