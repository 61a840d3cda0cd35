"""Multi-head attention (MHA / GQA / MQA) with masks built from query and key positions.

Masks come from positions and segment ids rather than from a fixed square, so a decoding
step (one query against a cache of keys) runs the same code as training.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.models.config import ModelConfig
from lm.models.layers import DenseGeneral, Norm, constrain
from lm.models.positions import RelativeBias, alibi_bias, rope, rope_frequencies


def make_mask(q_pos_BL, k_pos_BS, q_seg_BL=None, k_seg_BS=None, window: int | None = None,
              sparse_block: int | None = None, sparse_summary: int = 1, sparse_global: int = 0):
  """Boolean [B, 1, L, S] mask: causal, within one packed segment, optionally local.

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
    mask_BLS &= q_seg_BL[:, :, None] == k_seg_BS[:, None, :]
  return mask_BLS[:, None]


def dot_product_attention(q_BLHK, k_BSGK, v_BSGK, mask_B1LS, backend: str = "jnp", *,
                          bias_BHLS=None, softcap: float | None = None,
                          dropout_rate: float = 0.0, dropout_rng=None):
  """softmax(cap(q k^T / sqrt(K)) + bias + mask) v; G key/value heads serve H/G query heads.

  `jnp` is the readable reference; `xla` calls `jax.nn.dot_product_attention`, which picks
  cuDNN flash attention on GPUs that support it (no soft-capping or dropout there).
  softcap: Gemma 2's cap * tanh(scores / cap). dropout_rng: drops attention probabilities.
  """
  if backend == "xla":
    return jax.nn.dot_product_attention(q_BLHK, k_BSGK, v_BSGK, bias=bias_BHLS, mask=mask_B1LS)
  b, l, h, k = q_BLHK.shape
  g = k_BSGK.shape[2]
  if g == h:  # MHA: plain 4-D dots, which XLA:CPU runs faster than the grouped 5-D form
    q, scores_eq, out_eq = q_BLHK, "blhk,bshk->bhls", "bhls,bshk->blhk"
  else:  # query heads grouped by the key/value head they share: [B, L, G, H/G, K]
    q = q_BLHK.reshape(b, l, g, h // g, k)
    scores_eq, out_eq = "blgrk,bsgk->bgrls", "bgrls,bsgk->blgrk"
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


class Attention(nn.Module):
  """Self-attention block: projections, optional qk-norm and RoPE, masked attention, output."""
  cfg: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BLD, positions_BL, segment_ids_BL):
    cfg = self.cfg
    d, h, g, k = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
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
    mask = make_mask(positions_BL, positions_BL, segment_ids_BL, segment_ids_BL,
                     window=cfg.attention_window, sparse_block=cfg.sparse_block_size,
                     sparse_summary=cfg.sparse_summary_tokens,
                     sparse_global=cfg.sparse_global_tokens)
    bias_BHLS = None  # built only when used: the default path adds nothing to the scores
    if cfg.positions == "alibi":
      bias_BHLS = alibi_bias(positions_BL, positions_BL, h)
    elif cfg.positions == "relative":
      bias_BHLS = RelativeBias(cfg, name="rel_bias")(positions_BL, positions_BL)
    dropout_rng = None
    if cfg.attention_dropout_rate > 0 and not self.deterministic:
      dropout_rng = self.make_rng("dropout")
    out_BLHK = dot_product_attention(q_BLHK, k_BLGK, v_BLGK, mask, cfg.attention_backend,
                                     bias_BHLS=bias_BHLS, softcap=cfg.attn_logit_softcap,
                                     dropout_rate=cfg.attention_dropout_rate,
                                     dropout_rng=dropout_rng)
    return DenseGeneral((h, k), (d,), ("heads", "head_dim", "embed"), cfg,
                        init_std=cfg.residual_init_std, name="out")(out_BLHK)
