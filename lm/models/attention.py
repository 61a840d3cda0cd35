"""Multi-head attention (MHA / GQA / MQA) with masks built from query and key positions.

Masks come from positions and segment ids rather than from a fixed square, so a decoding
step (one query against a cache of keys) runs the same code as training.

KV cache: `KVCache` holds, for every layer, the keys and values of the tokens seen so far in S
slots (only the kv_heads are cached). A token's slot is its index in the decoded stream modulo
S (`KVCache.index` counts the tokens written), so with sliding-window attention S =
attention_window makes the cache a ring buffer whose memory does not grow with the output: the
token a write overwrites is exactly the one that just left every query's window. The slot's
key position is kept in `pos_BS` (-1: empty or padding), and the mask is built from it.
"""
import functools
import logging
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from lm.models.config import ModelConfig
from lm.models.layers import DenseGeneral, Norm, constrain
from lm.models.positions import RelativeBias, alibi_bias, rope, rope_frequencies

_CACHE_AXES = ("batch", "length", "kv_heads", "head_dim")


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer, and where each slot's token sits.

  k, v: per layer [B, S, G, K] in the compute dtype: a tuple of num_layers arrays, or one
    [num_layers, B, S, G, K] array when cfg.scan_layers (the scanned layers read and write
    their slice).
  pos_BS: int32 position of the token in each slot; -1 for an empty slot or a padding token.
  index: int32 scalar, tokens written so far (left padding included); the next goes to slot
    index % S.
  next_pos_B: int32 position the next token of each row takes.
  """
  k: Any
  v: Any
  pos_BS: jax.Array
  index: jax.Array
  next_pos_B: jax.Array

  @property
  def length(self) -> int:
    """S, the number of slots."""
    return self.pos_BS.shape[1]


def init_cache(cfg: ModelConfig, batch: int, length: int) -> KVCache:
  """An empty cache of `length` slots for `batch` rows."""
  shape = (batch, length, cfg.kv_heads, cfg.dim_per_head)
  if cfg.scan_layers:
    k = v = jnp.zeros((cfg.num_layers,) + shape, cfg.compute_dtype)
  else:
    k = v = tuple(jnp.zeros(shape, cfg.compute_dtype) for _ in range(cfg.num_layers))
  return KVCache(k=k, v=v, pos_BS=jnp.full((batch, length), -1, jnp.int32),
                 index=jnp.zeros((), jnp.int32), next_pos_B=jnp.zeros((batch,), jnp.int32))


def write_prefill(buf_BS, new_BL):
  """Writes tokens 0..L-1 of an empty cache into slots t % S (the last S when L > S)."""
  s, l = buf_BS.shape[1], new_BL.shape[1]
  new_BL = new_BL.astype(buf_BS.dtype)
  if l <= s:
    return jax.lax.dynamic_update_slice_in_dim(buf_BS, new_BL, 0, axis=1)
  return jnp.roll(new_BL[:, l - s:], (l - s) % s, axis=1)


def write_step(buf_BS, new_BL, index):
  """Writes tokens index..index+L-1 into slots (index + i) % S (L <= S)."""
  s, l = buf_BS.shape[1], new_BL.shape[1]
  if l > s:
    raise ValueError(f"{l} tokens in one decode call do not fit a cache of {s} slots")
  new_BL = new_BL.astype(buf_BS.dtype)
  if l == 1:  # the decode step: one in-place slice update
    return jax.lax.dynamic_update_slice_in_dim(buf_BS, new_BL, index % s, axis=1)
  return buf_BS.at[:, (index + jnp.arange(l)) % s].set(new_BL)


def make_mask(q_pos_BL, k_pos_BS, q_seg_BL=None, k_seg_BS=None, window: int | None = None,
              sparse_block: int | None = None, sparse_summary: int = 1, sparse_global: int = 0,
              q_prefix_BL=None):
  """Boolean [B, 1, L, S] mask: causal, within one packed segment, optionally local.

  q_prefix_BL: a second segment each query also sees (a context shared by several packed
  continuations, each its own segment positioned after it); padding (segment 0) never.
  window: a query sees only its last `window` keys (itself included).
  sparse_block: the fixed block-sparse pattern of Child et al. (2019): a query sees the keys
  of its own block, the last `sparse_summary` keys of every earlier block (a strided pattern)
  and the first `sparse_global` keys of the sequence.
  """
  q, k = q_pos_BL[:, :, None], k_pos_BS[:, None, :]
  mask_BLS = k <= q
  if window is not None:
    mask_BLS &= q - k < window
  if sparse_block is not None:
    b = sparse_block
    mask_BLS &= (q // b == k // b) | (k % b >= b - sparse_summary) | (k < sparse_global)
  if q_seg_BL is not None:
    same_BLS = q_seg_BL[:, :, None] == k_seg_BS[:, None, :]
    if q_prefix_BL is not None:
      same_BLS |= (q_prefix_BL[:, :, None] == k_seg_BS[:, None, :]) & (k_seg_BS[:, None, :] > 0)
    mask_BLS &= same_BLS
  return mask_BLS[:, None]


@flax.struct.dataclass
class LayerInputs:
  """What every layer reads of one call besides its activations: where each token sits and
  which keys it may see. Transformer builds it once per call; a new per-call input (e.g. an
  encoder's outputs and their segment ids) is one more field here, not one more argument of
  every layer.

  positions_BL: each token's position in its sequence.
  segment_ids_BL: the packed sequence of each token (0: padding); None: one per row.
  prefix_ids_BL: per token a second segment it also sees (make_mask's q_prefix_BL); None: none.
  cache_pos_BS: with a KV cache, the position of the token in each slot once this call's
    tokens are written (-1: empty or padding); None without a cache.
  cache_index: with a KV cache, the tokens written before this call (KVCache.index).
  """
  positions_BL: jax.Array
  segment_ids_BL: jax.Array | None = None
  prefix_ids_BL: jax.Array | None = None
  cache_pos_BS: jax.Array | None = None
  cache_index: jax.Array | None = None

  def keys(self, cfg: ModelConfig, decode: bool):
    """(mask [B, 1, L, S], key positions [B, S]) of what the queries attend over: the call's
    own tokens, or with `decode` every cache slot (a slot is one segment of its own row)."""
    k_pos_BS, q_seg_BL, k_seg_BS = self.positions_BL, self.segment_ids_BL, self.segment_ids_BL
    if decode:
      k_pos_BS, k_seg_BS = self.cache_pos_BS, (self.cache_pos_BS >= 0).astype(jnp.int32)
      q_seg_BL = jnp.ones_like(self.positions_BL, jnp.int32)
    mask_B1LS = make_mask(self.positions_BL, k_pos_BS, q_seg_BL, k_seg_BS,
                          window=cfg.attention_window, sparse_block=cfg.sparse_block_size,
                          sparse_summary=cfg.sparse_summary_tokens,
                          sparse_global=cfg.sparse_global_tokens, q_prefix_BL=self.prefix_ids_BL)
    return mask_B1LS, k_pos_BS


def _xla_implementation(dtype) -> str | None:
  """'cudnn' where jax.nn.dot_product_attention has a cuDNN kernel for `dtype`, else None (XLA)."""
  on_gpu = jax.default_backend() == "gpu"
  return "cudnn" if on_gpu and dtype in (jnp.bfloat16, jnp.float16) else None


@functools.cache
def _warn_cudnn_fallback(reason: str):
  logging.warning("attention_backend='xla': cuDNN attention refused these shapes (%s); "
                  "using XLA's attention instead", reason)


def _xla_attention(q_BLHK, k_BSGK, v_BSGK, mask_B1LS, bias_BHLS, causal: bool,
                   window: int | None):
  """jax.nn.dot_product_attention; a plain causal (or causal sliding-window) mask is passed as
  is_causal / local_window_size so cuDNN can skip the hidden blocks instead of reading a mask."""
  kwargs = dict(bias=bias_BHLS, mask=None if causal else mask_B1LS, is_causal=causal,
                local_window_size=(window - 1, 0) if causal and window is not None else None)
  implementation = _xla_implementation(q_BLHK.dtype)
  if implementation == "cudnn":
    try:
      return jax.nn.dot_product_attention(q_BLHK, k_BSGK, v_BSGK, implementation="cudnn",
                                          **kwargs)
    except (ValueError, NotImplementedError, RuntimeError) as e:  # unsupported shape or mask
      _warn_cudnn_fallback(str(e).splitlines()[0] if str(e) else type(e).__name__)
  return jax.nn.dot_product_attention(q_BLHK, k_BSGK, v_BSGK, implementation=None, **kwargs)


def dot_product_attention(q_BLHK, k_BSGK, v_BSGK, mask_B1LS, backend: str = "jnp", *,
                          bias_BHLS=None, softcap: float | None = None,
                          dropout_rate: float = 0.0, dropout_rng=None, causal: bool = False,
                          window: int | None = None):
  """softmax(cap(q k^T / sqrt(K)) + bias + mask) v; G key/value heads serve H/G query heads.

  `jnp` is the readable reference. `xla` calls `jax.nn.dot_product_attention`: on a GPU with
  bf16/fp16 activations it asks for the cuDNN fused (flash) kernel and falls back to XLA's
  attention, with a warning, where cuDNN refuses the shapes; elsewhere it is XLA's attention
  (the scores are materialised, as in `jnp`). No soft-capping or dropout there.
  causal: the mask is plain causal over aligned positions 0..L-1 (with `window`: also local),
  which the xla backend passes as is_causal / local_window_size instead of the mask array.
  softcap: Gemma 2's cap * tanh(scores / cap). dropout_rng: drops attention probabilities.
  """
  if backend == "xla":
    return _xla_attention(q_BLHK, k_BSGK, v_BSGK, mask_B1LS, bias_BHLS, causal, window)
  b, l, h, k = q_BLHK.shape
  g = k_BSGK.shape[2]
  if g == h:  # MHA: plain 4-D dots, which XLA:CPU runs faster than the grouped 5-D form
    q, scores_eq, out_eq = q_BLHK, "blhk,bshk->bhls", "bhls,bshk->blhk"
  else:  # query heads grouped by the key/value head they share: [B, L, G, Q = H/G, K]
    q = q_BLHK.reshape(b, l, g, h // g, k)
    scores_eq, out_eq = "blgqk,bsgk->bgqls", "bgqls,bsgk->blgqk"
  scores = jnp.einsum(scores_eq, q * (k ** -0.5), k_BSGK).astype(jnp.float32)
  if softcap is not None:
    scores = softcap * jnp.tanh(scores / softcap)
  if bias_BHLS is not None:
    scores += bias_BHLS.reshape(bias_BHLS.shape[:1] + scores.shape[1:])
  mask = mask_B1LS.reshape(mask_B1LS.shape[:2] + (1,) * (scores.ndim - 4) + mask_B1LS.shape[2:])
  scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v_BSGK.dtype)
  if dropout_rng is not None and dropout_rate > 0:
    keep = jax.random.bernoulli(dropout_rng, 1 - dropout_rate, probs.shape)
    probs = jnp.where(keep, probs / (1 - dropout_rate), 0).astype(v_BSGK.dtype)
  return jnp.einsum(out_eq, probs, v_BSGK).reshape(b, l, h, k)


def _layer_slice(cache, layer=None):
  """The layer's [B, S, G, K] keys or values: the cache itself, or its slice of a stack."""
  return cache if layer is None else jax.lax.dynamic_index_in_dim(cache, layer, keepdims=False)


def _write_layer(cache, new_BLGK, layer=None, *, prefill: bool, index):
  """Writes a layer's new keys or values into its cache, or into its slice of the stacked
  [num_layers, B, S, G, K] cache of scanned layers (which rides in the scan's carry, so a
  decode step updates one slot in place instead of copying every layer's cache)."""
  axes = _CACHE_AXES if layer is None else ("layers",) + _CACHE_AXES
  if layer is not None and not prefill and new_BLGK.shape[1] == 1:
    start = (layer, 0, index % cache.shape[2], 0, 0)
    return constrain(jax.lax.dynamic_update_slice(cache, new_BLGK[None].astype(cache.dtype),
                                                  start), axes)
  old = _layer_slice(cache, layer)
  updated = write_prefill(old, new_BLGK) if prefill else write_step(old, new_BLGK, index)
  if layer is not None:
    updated = jax.lax.dynamic_update_index_in_dim(cache, updated, layer, 0)
  return constrain(updated, axes)


class Attention(nn.Module):
  """Self-attention block: projections, optional qk-norm and RoPE, masked attention, output.

  Without `kv` it attends within the given tokens (training). With a layer's cache
  kv = (k_BSGK, v_BSGK), or (k, v, layer) for layer `layer` of the stacked caches of scanned
  layers, it also returns the updated (k, v):
  - cache_mode 'prefill': the cache is empty; the tokens (real ones marked by segment id 1,
    padding by 0) attend among themselves, then are written to slots 0.. (mod S).
  - cache_mode 'decode': the tokens are written at slot `inputs.cache_index` (mod S), then
    attend to every slot whose position `inputs.cache_pos_BS` (after the write) the mask allows.
  causal: positions are 0..L-1 in every row, one segment, no cache (a plain causal mask).
  """
  cfg: ModelConfig
  deterministic: bool = True
  cache_mode: str = "prefill"
  causal: bool = False

  @nn.compact
  def __call__(self, x_BLD, inputs: LayerInputs, kv=None):
    cfg = self.cfg
    d, h, g, k = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
    positions_BL = inputs.positions_BL
    q_BLHK = DenseGeneral((d,), (h, k), ("embed", "heads", "head_dim"), cfg, name="query")(x_BLD)
    k_BLGK = DenseGeneral((d,), (g, k), ("embed", "kv_heads", "head_dim"), cfg, name="key")(x_BLD)
    v_BLGK = DenseGeneral((d,), (g, k), ("embed", "kv_heads", "head_dim"), cfg, name="value")(x_BLD)
    if cfg.qk_norm:
      q_BLHK = Norm(cfg, axis_name="head_dim", name="q_norm")(q_BLHK)
      k_BLGK = Norm(cfg, axis_name="head_dim", name="k_norm")(k_BLGK)
    if cfg.positions == "rope":
      inv_freq = rope_frequencies(cfg)
      q_BLHK = rope(q_BLHK, positions_BL, inv_freq, cfg.rope_layout)
      k_BLGK = rope(k_BLGK, positions_BL, inv_freq, cfg.rope_layout)
    q_BLHK = constrain(q_BLHK, ("batch", "length", "heads", "head_dim"))
    k_BLGK = constrain(k_BLGK, ("batch", "length", "kv_heads", "head_dim"))
    v_BLGK = constrain(v_BLGK, ("batch", "length", "kv_heads", "head_dim"))
    new_kv, decode = None, kv is not None and self.cache_mode == "decode"
    if kv is not None:
      write = functools.partial(_write_layer, prefill=self.cache_mode == "prefill",
                                index=inputs.cache_index)
      new_kv = (write(kv[0], k_BLGK, *kv[2:]), write(kv[1], v_BLGK, *kv[2:]))
      if decode:  # attend over every slot
        k_BLGK, v_BLGK = (_layer_slice(c, *kv[2:]) for c in new_kv)
    mask_B1LS, k_pos_BS = inputs.keys(cfg, decode)
    bias_BHLS = None  # built only when used: the default path adds nothing to the scores
    if cfg.positions == "alibi":
      bias_BHLS = alibi_bias(positions_BL, k_pos_BS, h)
    elif cfg.positions == "relative":
      bias_BHLS = RelativeBias(cfg, name="rel_bias")(positions_BL, k_pos_BS)
    dropout_rng = None
    if cfg.attention_dropout_rate > 0 and not self.deterministic:
      dropout_rng = self.make_rng("dropout")
    out_BLHK = dot_product_attention(
        q_BLHK, k_BLGK, v_BLGK, mask_B1LS, cfg.attention_backend, bias_BHLS=bias_BHLS,
        softcap=cfg.attn_logit_softcap, dropout_rate=cfg.attention_dropout_rate,
        dropout_rng=dropout_rng, causal=self.causal and cfg.sparse_block_size is None,
        window=cfg.attention_window)
    out_BLD = DenseGeneral((h, k), (d,), ("heads", "head_dim", "embed"), cfg,
                           init_std=cfg.residual_init_std, name="out")(out_BLHK)
    return out_BLD if kv is None else (out_BLD, new_kv)
